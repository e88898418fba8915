"""``eval refcoco``: the refer layout and manifests, the safe unpickler, expression grounding,
the shapes-world export and the command end to end."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from attendseg.errors import AttendsegError
from attendseg.evaluation import refer
from attendseg.evaluation.records import SampleLog

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.mask")


def ref(ref_id, ann_id, image_id, split, *sentences, sent_id=0):
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
            "sent_ids": list(range(sent_id, sent_id + len(sentences))),
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "sentences": [{"tokens": s.split(), "raw": s, "sent": s, "sent_id": sent_id + k}
                          for k, s in enumerate(sentences)]}


@pytest.fixture
def mini(tmp_path, photos):
    """A hand-written miniature of the real layout: refs(unc).p + instances.json + train2014."""
    root = tmp_path / "refer_seg"
    (root / "refcoco").mkdir(parents=True)
    images = root / "images" / "mscoco" / "images" / "train2014"
    images.mkdir(parents=True)
    Image.fromarray(photos["chelsea"]).save(images / "COCO_train2014_000000000042.jpg")  # 451 × 300
    Image.fromarray(photos["coffee"]).save(images / "COCO_train2014_000000000007.jpg")  # 600 × 400
    instances = {
        "images": [{"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "height": 300, "width": 451},
                   {"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "height": 400, "width": 600}],
        "annotations": [
            {"id": 100, "image_id": 42, "category_id": 1, "iscrowd": 0, "area": 5000.0, "bbox": [100.0, 50.0, 100.0, 50.0],
             "segmentation": [[100.0, 50.0, 200.0, 50.0, 200.0, 100.0, 100.0, 100.0]]},  # a rectangle
            {"id": 101, "image_id": 42, "category_id": 2, "iscrowd": 0, "area": 1.0, "bbox": [10.0, 10.0, 30.0, 40.0],
             "segmentation": [[10.0, 10.0, 40.0, 10.0, 40.0, 50.0]]},
            {"id": 102, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": 1.0, "bbox": [0.0, 0.0, 60.0, 40.0],
             "segmentation": [[0.0, 0.0, 60.0, 0.0, 60.0, 40.0, 0.0, 40.0]]},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "ear"}],
    }
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    refs = [ref(0, 100, 42, "val", "cat on the left", "the grey cat", sent_id=10),
            ref(1, 101, 42, "testA", "pointy ear", sent_id=12),
            ref(2, 102, 7, "testB", "the cup", sent_id=13),
            ref(3, 102, 7, "train", "cup", sent_id=14)]
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


def test_refer_loader_reads_the_miniature(mini):
    mask_utils = pytest.importorskip("pycocotools.mask")
    val = refer.load_refer(mini, "refcoco", "val")
    assert [(e.id, e.text, e.image_id) for e in val] == [("0/10", "cat on the left", 42), ("0/11", "the grey cat", 42)]
    assert val[0].image.name == "COCO_train2014_000000000042.jpg" and val[0].image.is_file()
    assert val[0].box == [100.0, 50.0, 100.0, 50.0] and val[0].meta["category"] == "cat"
    mask = val[0].mask(300, 451)
    want = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([[100.0, 50.0, 200.0, 50.0, 200.0, 100.0, 100.0, 100.0]], 300, 451)))
    np.testing.assert_array_equal(mask, want.astype(bool))
    rows, cols = np.nonzero(mask)  # the rectangle, up to the rasteriser's edge rule
    assert abs(rows.min() - 50) <= 1 and abs(rows.max() - 100) <= 1 and abs(cols.min() - 100) <= 1 and abs(cols.max() - 200) <= 1
    # "test" on RefCOCO means testA and testB, as in the refer API; the dataset folder works as root
    assert [e.id for e in refer.load_refer(mini, "refcoco", "test")] == ["1/12", "2/13"]
    assert [e.id for e in refer.load_refer(mini / "refcoco", "refcoco", "testB")] == ["2/13"]
    groups = refer.group_by_image(refer.load_refer(mini, "refcoco", "test") + val)
    assert [[e.id for e in g] for g in groups] == [["1/12", "0/10", "0/11"], ["2/13"]]


def test_refer_loader_errors_are_one_line(mini, tmp_path):
    cases = [
        (lambda: refer.load_refer(tmp_path / "nowhere"), "data folder not found"),
        (lambda: refer.load_refer(mini, "refcoco", "testC"), "has no split 'testC'"),
        (lambda: refer.load_refer(mini, "refclef"), "unknown dataset"),
        (lambda: refer.load_refer(mini, "refcocog", "val"), "no refcocog/instances.json"),
        (lambda: refer.load_refer(mini, "refcoco", "val", split_by="google"), r"refs\(google\).p"),
        (lambda: refer.load_refer(mini, "refcoco", "val", images=tmp_path / "none"), "image folder not found"),
    ]
    for call, message in cases:
        with pytest.raises(AttendsegError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))  # would create a file if it were ever called


def test_pickle_that_asks_for_a_class_is_refused_before_it_runs(mini, tmp_path):
    marker = tmp_path / "pwned"
    path = mini / "refcoco" / "refs(unc).p"
    path.write_bytes(pickle.dumps([ref(0, 100, 42, "val", "x"), Evil(marker)], protocol=2))
    with pytest.raises(AttendsegError, match=r"refused: it asks for (builtins|io)\.open"):
        refer.load_refer(mini, "refcoco", "val")
    assert not marker.exists()
    path.write_bytes(pickle.dumps([ref(0, 100, 42, "val", "x")], protocol=2)[:-7])  # truncated
    with pytest.raises(AttendsegError, match="not a readable pickle"):
        refer.load_refer(mini, "refcoco", "val")
    path.write_bytes(pickle.dumps({"refs": []}))
    with pytest.raises(AttendsegError, match="expected a list of refs"):
        refer.load_refer(mini, "refcoco", "val")
    path.write_bytes(pickle.dumps([{"ref_id": 1}], protocol=0))
    with pytest.raises(AttendsegError, match="a ref lacks ann_id"):
        refer.load_refer(mini, "refcoco", "val")
    # old protocols' sets are plain containers and load
    assert refer.safe_load_pickle_bytes(pickle.dumps([{1, 2}], protocol=2)) == [{1, 2}]


def test_manifest(tmp_path, photos):
    from attendseg import rle

    Image.fromarray(photos["coffee"]).save(tmp_path / "cup.png")
    m = np.zeros((400, 600), bool)
    m[10:20, 30:50] = True
    lines = [{"image": "cup.png", "expression": "the cup", "mask": rle.encode(m), "id": "a"},
             {"image": str(tmp_path / "cup.png"), "expression": "a saucer", "box": [1, 2, 3, 4],
              "mask": [[30.0, 10.0, 50.0, 10.0, 50.0, 20.0, 30.0, 20.0]], "source": "me"}]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    items = refer.load_manifest(path)
    assert [(e.id, e.text, e.image) for e in items] == [("a", "the cup", tmp_path / "cup.png"), ("2", "a saucer", tmp_path / "cup.png")]
    np.testing.assert_array_equal(items[0].mask(400, 600), m)
    assert items[0].target_box(m) == [30.0, 10.0, 20.0, 10.0] and items[1].target_box(m) == [1, 2, 3, 4]
    assert items[1].meta == {"source": "me"} and len(refer.group_by_image(items)) == 1
    with pytest.raises(AttendsegError, match="the mask is 600×400, the image 60×40"):
        items[0].mask(40, 60)
    for bad, message in [("{", "line 1: not JSON"), ('{"image": "x"}', "missing expression, mask"),
                         ('{"image": "x", "expression": "", "mask": {}}', "non-empty string")]:
        path.write_text(bad + "\n")
        with pytest.raises(AttendsegError, match=message):
            refer.load_manifest(path)


# ----------------------------------------------------------------------------- grounding


@pytest.fixture(scope="module")
def shapes_export(tmp_path_factory):
    from attendseg.shapes.export import export

    folder = tmp_path_factory.mktemp("shapes-refcoco")
    counts = export("refcoco", folder, n=4)
    return folder, counts


def test_shapes_export_is_the_real_layout(shapes_export):
    from attendseg import shapes

    folder, counts = shapes_export
    assert set(counts["images"]) == {"val", "testA", "testB"}  # the refer splits, nothing else
    assert {r["split"] for r in refer.load_refs_pickle(folder / "refcoco" / "refs(unc).p")} == {"val", "testA", "testB"}
    for split in ("val", "testA", "testB"):
        items = refer.load_refer(folder, "refcoco", split)
        assert len(items) == counts["expressions"][split] > 0
        for e in items:
            seed = next(i["seed"] for i in json.loads((folder / "refcoco" / "instances.json").read_text())["images"]
                        if i["id"] == e.image_id)
            scene = shapes.make_scene(seed)
            np.testing.assert_array_equal(np.asarray(Image.open(e.image)), scene.image)  # lossless
            target = e.mask(64, 64)
            k = [i for i, m in enumerate(scene.masks) if (m == target).all()]
            assert len(k) == 1  # the annotation is exactly one object's mask
            obj = scene.objects[k[0]]
            assert e.text.split()[-1] == obj.shape
            assert (obj.colour in e.text) == (split != "testB")
            if split == "testB":  # the expression still singles out one object
                assert sum(o.shape == obj.shape for o in scene.objects) == 1


def test_expression_tokens_root_and_all():
    import attendseg
    from attendseg.bundled import bundled_model
    from attendseg.evaluation.refcoco import expression_span, expression_tokens
    from attendseg.phrases import VocabularyPhrases

    text, span = expression_span("from left to right, {expression}.", "a red circle")
    assert text[span[0]:span[1]] == "a red circle"
    trace = attendseg.load(bundled_model()).attend_text(np.zeros((64, 64, 3), np.uint8), "list the objects from left to right.", text)
    words = VocabularyPhrases(["circle", "left"])
    assert [trace.tokens[i] for i in expression_tokens(trace, span, "root", words)] == ["circle"]
    assert [trace.tokens[i].strip() for i in expression_tokens(trace, span, "all", words)] == ["a", "red", "circle"]
    # the expression is parsed on its own: spaCy finds no noun chunk in the whole template text
    from attendseg.phrases import make_phrase_extractor

    spacy = make_phrase_extractor("spacy")
    assert [trace.tokens[i] for i in expression_tokens(trace, span, "root", spacy)] == ["circle"]
    none = VocabularyPhrases(["dog"])  # no noun phrase: all the expression's tokens
    assert expression_tokens(trace, span, "root", none) == expression_tokens(trace, span, "all", none)
    with pytest.raises(AttendsegError, match="exactly once"):
        expression_span("no slot", "x")


def test_evaluate_skips_a_missing_image_and_resumes(shapes_export, tmp_path):
    from attendseg.bundled import bundled_model
    from attendseg.evaluation import refcoco

    folder, _ = shapes_export
    items = refer.load_refer(folder, "refcoco", "val")
    missing = items[-1].image
    gone = tmp_path / missing.name
    os.replace(missing, gone)
    try:
        out = refcoco.evaluate(items, bundled_model(), tmp_path / "r.jsonl", source={"t": 1}, progress=False,
                               prompt="list the objects from left to right.", random_point=True)
    finally:
        os.replace(gone, missing)
    skipped = sum(e.image == missing for e in items)
    model_row = out["rows"][0]
    assert model_row["n"] == len(items) - skipped and any(f"skipped {skipped} expression(s): image missing" in line
                                                          for line in out["stats"]["model"])
    header, records = SampleLog.read(tmp_path / "r.jsonl")
    assert header["settings"]["prompt"] == "list the objects from left to right." and len(records) == model_row["n"]
    r = records[0]
    assert set(r) >= {"id", "point", "box", "target_box", "intersection", "union", "iou", "box_iou", "mask"}
    assert r["iou"] == pytest.approx(r["intersection"] / r["union"]) and r["mask"]["size"] == [64, 64]
    again = refcoco.evaluate(items, bundled_model(), tmp_path / "r.jsonl", source={"t": 1}, progress=False,
                             prompt="list the objects from left to right.")
    assert again["rows"][0]["n"] == len(items) and any(f"1" in line for line in again["stats"]["model"])


def cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "attendseg.cli.main", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_export_and_eval_end_to_end(tmp_path):
    from attendseg import shapes

    data = tmp_path / "data"
    done = cli("shapes", "export", "refcoco", data, "--n", "3")
    assert done.returncode == 0, done.stderr
    assert (data / "refcoco" / "refs(unc).p").is_file() and "val: 3 images" in done.stdout
    args = ["eval", "refcoco", "--data", data, "--split", "testA", "--prompt", "list the objects from left to right.",
            "--out", tmp_path / "r.jsonl", "--phrases", "vocab:" + ",".join(shapes.SHAPES), "-q"]
    full = cli(*args, "--random-point", "--untrained", "--json")
    assert full.returncode == 0, full.stderr
    rows = {r["name"]: r for r in json.loads(full.stdout)["rows"]}
    n = len(refer.load_refer(data, "refcoco", "testA"))
    assert set(rows) == {"model", "untrained", "random point"} and all(r["n"] == n for r in rows.values())
    assert 0 <= rows["random point"]["giou"] < rows["model"]["giou"] <= 1
    assert len(SampleLog.read(tmp_path / "r.jsonl")[1]) == n
    for bad, message in [(["--split", "testC"], "has no split 'testC'"), (["--data", tmp_path / "none"], "data folder not found")]:
        run = cli("eval", "refcoco", "--data", data, *bad)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
    (data / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([Evil(tmp_path / "x")]))
    run = cli("eval", "refcoco", "--data", data)
    assert run.returncode == 2 and "refused: it asks for" in run.stderr and len(run.stderr.strip().splitlines()) == 1
