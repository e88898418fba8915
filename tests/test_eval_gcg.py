"""`attendseg eval gcg`: GranD-f loaders on hand-written miniatures, GLaMM's AP50 image order
(pycocotools as the reference), the BERT text gate (transformers + scikit-learn as reference),
and the command end to end on the shapes export (bundled model; a tiny random BERT by option)."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from attendseg import AttendsegError, metrics
from attendseg.cli.main import app
from attendseg.evaluation import gcg

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}


def box(y0, y1, x0, x1, h=6, w=8):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 1-layer BERT and its WordPiece tokenizer, saved like a hub checkpoint."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = "[PAD] [UNK] [CLS] [SEP] [MASK] a the red blue green circle square man dog zebra on of".split()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def write_miniature(root, with_images=True):
    """GLaMM's layout with two images whose string ids sort unlike their numbers."""
    ann = root / "GranDf" / "annotations" / "val_test"
    ann.mkdir(parents=True)
    a, b, c = box(0, 3, 0, 3), box(2, 6, 4, 8), box(1, 5, 1, 4)
    images = [{"id": "sa_9", "file_name": "sa_9.jpg", "height": 6, "width": 8},
              {"id": "sa_10", "file_name": "sa_10.jpg", "height": 6, "width": 8}]
    masks = {"images": images, "categories": [{"id": 1, "name": "object"}], "annotations": [
        {"id": 1, "image_id": "sa_9", "category_id": 1, "segmentation": rle(a), "area": 9, "iscrowd": 0},
        {"id": 2, "image_id": "sa_10", "category_id": 1, "segmentation": rle(c), "area": 12, "iscrowd": 0},
        {"id": 3, "image_id": "sa_9", "category_id": 1, "segmentation": rle(b), "area": 16, "iscrowd": 0}]}
    captions = {"images": images, "annotations": [
        {"id": 1, "image_id": "sa_9", "caption": "A man next to a dog.", "labels": ["A man", "a dog"]},
        {"id": 2, "image_id": "sa_10", "caption": "A zebra.", "labels": ["A zebra"]}]}
    (ann / "val_gcg_coco_mask_gt.json").write_text(json.dumps(masks))
    (ann / "val_gcg_coco_caption_gt.json").write_text(json.dumps(captions))
    if with_images:
        (root / "GranDf_HA_images" / "val_test").mkdir(parents=True)
    return a, b, c


# --------------------------------------------------------------------------------- loaders
def test_loader_reads_glamms_layout(tmp_path):
    a, b, c = write_miniature(tmp_path)
    data = gcg.load_gcg(tmp_path, "val")
    assert [im.id for im in data.images] == ["sa_9", "sa_10"]  # the caption file's order
    first = data.images[0]
    assert first.labels == ["A man", "a dog"] and first.caption == "A man next to a dog."
    # masks pair with labels by position: the image's annotations in file order
    np.testing.assert_array_equal(mask_utils.decode(first.masks[0]).astype(bool), a)
    np.testing.assert_array_equal(mask_utils.decode(first.masks[1]).astype(bool), b)
    assert data.images_dir == tmp_path / "GranDf_HA_images" / "val_test"
    # the annotation folder itself works too
    assert len(gcg.load_gcg(tmp_path / "GranDf" / "annotations" / "val_test", "val").images) == 2


def test_loader_errors_are_one_line(tmp_path):
    with pytest.raises(AttendsegError, match="no GranD-f GCG annotations"):
        gcg.load_gcg(tmp_path, "val")
    write_miniature(tmp_path)
    with pytest.raises(AttendsegError, match="--split"):
        gcg.load_gcg(tmp_path, "train")
    path = tmp_path / "GranDf" / "annotations" / "val_test" / "val_gcg_coco_caption_gt.json"
    content = json.loads(path.read_text())
    content["annotations"][1]["labels"].append("a second zebra")
    path.write_text(json.dumps(content))
    with pytest.raises(AttendsegError, match="2 labels .* but 1 masks"):
        gcg.load_gcg(tmp_path, "val")


def test_prediction_files_both_layouts(tmp_path):
    m = rle(box(0, 2, 0, 2))
    flat = {"image_id": "sa_9", "caption": "a man", "phrases": ["a man"], "pred_masks": [m]}
    (tmp_path / "flat.json").write_text(json.dumps(flat))
    (tmp_path / "nested.json").write_text(json.dumps({"sa_9": flat}))
    for name in ("flat.json", "nested.json"):
        pred = gcg.read_prediction(tmp_path / name)
        assert pred["phrases"] == ["a man"] and pred["pred_masks"] == [m]
    (tmp_path / "bad.json").write_text(json.dumps({"caption": "x"}))
    with pytest.raises(AttendsegError, match="not a GCG prediction"):
        gcg.read_prediction(tmp_path / "bad.json")
    gcg.write_prediction(tmp_path / "w.json", "sa_9", "a man", ["a man"], [m], points=[[[1.0, 1.0]]])
    assert gcg.read_prediction(tmp_path / "w.json")["points"] == [[[1.0, 1.0]]]


# --------------------------------------------------------------------------------- AP50 order
def _glamm_ap50(gt_dict, results):
    """What GLaMM's evaluate.py does: COCO gt, loadRes, COCOeval segm on category 1."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt_dict
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "segm")
        ev.params.catIds = [1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[1]


def test_ap50_follows_glamms_sorted_string_ids():
    """The issue's case: sa_9 hit, sa_10 miss, sa_100 hit, sa_11 miss, every score 1.0."""
    ids = ["sa_9", "sa_10", "sa_100", "sa_11"]
    gt_mask, other = box(0, 3, 0, 3), box(3, 6, 4, 8)
    gts = [[gt_mask]] * 4
    preds = [[gt_mask], [other], [gt_mask], [other]]
    gt_dict = {"images": [{"id": i, "height": 6, "width": 8} for i in ids],
               "categories": [{"id": 1, "name": "object"}],
               "annotations": [{"id": k + 1, "image_id": i, "category_id": 1, "segmentation": rle(gt_mask),
                                "area": 9, "iscrowd": 0} for k, i in enumerate(ids)]}
    results = [{"image_id": i, "category_id": 1, "segmentation": rle(p[0]), "score": 1.0} for i, p in zip(ids, preds)]
    reference = _glamm_ap50(gt_dict, results)
    assert reference == pytest.approx(0.252475, abs=1e-6)
    assert metrics.ap50(preds, gts, image_ids=ids) == pytest.approx(reference, abs=1e-12)
    assert metrics.ap50(preds, gts) == pytest.approx(0.422442, abs=1e-6)  # numbered 1..N as added
    ev = metrics.GCGEvaluator(compute_ap=True)
    for i, p, g in zip(ids, preds, gts):
        ev.add(p, g, image_id=i)
    assert ev.summary().ap50 == pytest.approx(reference, abs=1e-12)
    # and through the GCG command's own path: the mask ground truth file as GLaMM reads it
    data = gcg.GCGData("val", [gcg.GCGImage(i, f"{i}.jpg", "", ["x"], [rle(gt_mask)]) for i in ids], None,
                       gt_dict, {})
    records = [{"id": i, "pred_masks": [rle(p[0])]} for i, p in zip(ids, preds)]
    assert gcg.ap50_glamm(data, records) == pytest.approx(reference, abs=1e-12)


# --------------------------------------------------------------------------------- text gate
def test_text_similarity_is_glamms_mean_pooled_cosine(tiny_bert):
    import torch
    from sklearn.metrics.pairwise import cosine_similarity
    from transformers import AutoModel, AutoTokenizer

    from attendseg.evaluation.textsim import TextSimilarity

    sim = TextSimilarity(str(tiny_bert))
    tok, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()

    def embedding(text):  # GLaMM's get_bert_embedding, written out
        inputs = tok(text, return_tensors="pt", max_length=512, truncation=True)
        assert inputs["input_ids"][0, 0] == tok.cls_token_id and inputs["input_ids"][0, -1] == tok.sep_token_id
        with torch.no_grad():
            return model(**inputs).last_hidden_state[0].mean(dim=0).numpy()

    for a, b in [("a red circle", "the man"), ("a dog", "a dog on the square"), ("zebra", "blue")]:
        want = cosine_similarity([embedding(a)], [embedding(b)])[0, 0]
        assert sim(a, b) == pytest.approx(float(want), abs=1e-6)
    assert sim("a dog", "a dog") == pytest.approx(1.0)


def test_text_encoder_missing_is_one_clear_line(tmp_path):
    from attendseg.evaluation.textsim import TextSimilarity, make_text_similarity

    with pytest.raises(AttendsegError, match="text encoder .* could not be loaded.*--text-encoder"):
        TextSimilarity(str(tmp_path / "no-such-encoder"))
    assert make_text_similarity("none") is None


def test_text_gate_really_gates():
    """A perfect mask whose phrase means something else does not count for recall (mIoU still 1)."""
    a, b = box(0, 3, 0, 3), box(2, 6, 4, 8)
    image = gcg.GCGImage("sa_1", "sa_1.jpg", "A man and a dog.", ["A man", "a dog"], [rle(a), rle(b)])
    pred = {"caption": "", "phrases": ["a man", "a zebra"], "pred_masks": [rle(a), rle(b)]}
    same_words = lambda x, y: float(set(x.lower().split()) == set(y.lower().split()))  # noqa: E731
    record = gcg.image_record(image, pred, same_words)
    assert record["miou"] == 1.0 and record["matched"] == 1 and record["matches"][0][:2] == [0, 0]
    assert gcg.image_record(image, pred, None)["matched"] == 2  # no gate: masks only
    # more masks than phrases: the phraseless mask cannot match (GLaMM would drop the image)
    short = {**pred, "phrases": ["a man"]}
    record = gcg.image_record(image, short, same_words)
    assert record["matched"] == 1 and record["phrase_mask_mismatch"]


# --------------------------------------------------------------------------------- command
GCG_ARGS = ["--prompt", "list the objects from left to right.", "--phrases",
            "vocab:circle,square,triangle,star,cross,bar", "--max-new-tokens", "48", "--no-captions", "-q"]


def test_eval_gcg_end_to_end_resume_and_predictions(tmp_path, tiny_bert):
    runner = CliRunner()
    data = tmp_path / "data"
    result = runner.invoke(app, ["shapes", "export", "gcg", str(data), "--n", "2"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (data / "GranDf_HA_images" / "val_test").iterdir()) == \
        ["sa_1.jpg", "sa_2.jpg", "sa_3.jpg", "sa_4.jpg"]
    out = tmp_path / "run"
    args = ["eval", "gcg", str(data), "--out", str(out), "--text-encoder", str(tiny_bert), *GCG_ARGS]
    result = runner.invoke(app, [*args, "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert "| model | 1 |" in result.output and "METEOR / CIDEr not computed" in result.output
    result = runner.invoke(app, [*args, "--json"])  # resumes: one more image
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)["rows"][0]
    assert figures["images"] == 2 and figures["gt_phrases"] > 0
    lines = (out / "model.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["header"]["benchmark"] == "gcg"
    assert sorted(p.name for p in (out / "model").iterdir()) == ["sa_1.json", "sa_2.json"]  # GLaMM's layout
    # the written predictions, scored as another method's folder, give the same figures
    result = runner.invoke(app, ["eval", "gcg", str(data), "--predictions", str(out / "model"), "--out",
                                 str(tmp_path / "scored"), "--text-encoder", str(tiny_bert), "--no-captions", "--json",
                                 "-q"])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output)["rows"][0]
    for key in ("images", "miou", "recall", "ap50", "gt_phrases", "pred_phrases"):
        assert scored[key] == pytest.approx(figures[key]), key
    # a resumed run with other settings is refused in one line
    result = runner.invoke(app, [*args, "--max-new-tokens", "40"])
    assert result.exit_code == 2 and "other settings" in result.output


def test_eval_gcg_user_mistakes_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "gcg", str(tmp_path), "-q"])
    assert result.exit_code == 2 and "no GranD-f GCG annotations" in result.output
    write_miniature(tmp_path)
    result = runner.invoke(app, ["eval", "gcg", str(tmp_path), "--text-encoder", str(tmp_path / "nope"), "-q"])
    assert result.exit_code == 2 and "could not be loaded" in result.output
    result = runner.invoke(app, ["eval", "gcg", str(tmp_path), "--predictions", str(tmp_path), "--text-encoder",
                                 "none", "--out", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 2 and "2 of 2 images have no prediction" in result.output
    result = runner.invoke(app, ["eval", "gcg", str(tmp_path), "--text-encoder", "none", "--out",
                                 str(tmp_path / "run"), "-q"])
    assert result.exit_code == 2 and "images are missing" in result.output


@pytest.mark.slow
def test_caption_metrics_equal_coco_eval_cap(monkeypatch):
    """METEOR and CIDEr as GLaMM's COCOEvalCap run computes them (its SPICE, which downloads
    models, replaced by a stub). Needs pycocoevalcap and Java; skipped without them."""
    import shutil

    pytest.importorskip("pycocoevalcap.eval")
    if shutil.which("java") is None:
        pytest.skip("Java is not installed")
    import contextlib
    import io

    import pycocoevalcap.eval as cap_eval
    from pycocotools.coco import COCO

    class NoSpice:
        def method(self):
            return "SPICE"

        def compute_score(self, gts, res):
            return 0.0, [{"All": {"f": 0.0}}] * len(res)

    monkeypatch.setattr(cap_eval, "Spice", NoSpice)
    refs = {"sa_1": "from left to right, a red circle and a blue star.", "sa_2": "from left to right, a green square.",
            "sa_3": "from left to right, a white bar, a red cross and a blue star."}
    cands = {"sa_1": "from left to right, a red circle and a blue star.", "sa_2": "from left to right, a green circle.",
             "sa_3": "from left to right, a white bar and a red cross."}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": k} for k in refs],
                      "annotations": [{"id": n + 1, "image_id": k, "caption": c} for n, (k, c) in enumerate(refs.items())]}
        gt.createIndex()
        res = gt.loadRes([{"image_id": k, "caption": c} for k, c in cands.items()])
        reference = cap_eval.COCOEvalCap(gt, res)
        reference.params["image_id"] = res.getImgIds()
        reference.evaluate()
    figures, why = gcg.caption_metrics({k: [c] for k, c in refs.items()}, cands)
    assert why is None
    assert figures["meteor"] == pytest.approx(reference.eval["METEOR"], abs=1e-12)
    assert figures["cider"] == pytest.approx(reference.eval["CIDEr"], abs=1e-12)
