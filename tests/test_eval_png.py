"""`attendseg eval png`: the PNG loader on a hand-written miniature (both panoptic layouts), the
average-recall curve against hand-computed values and the PNG definition, and the command end
to end on the shapes export."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from attendseg import AttendsegError, metrics
from attendseg.cli.main import app
from attendseg.evaluation import png

PROMPT = ["--prompt", "list the objects from left to right."]


def png_definition(ious):
    """The PNG evaluation's average accuracy, written out as its loop over 100,000 thresholds."""
    ious = np.asarray(ious, dtype=np.float64)
    thresholds = np.arange(0, 1, 0.00001)
    recall = [np.sum(ious >= t) / len(ious) for t in thresholds]
    return sum((thresholds[i + 1] - thresholds[i]) * recall[i] for i in range(len(thresholds) - 1))


# --------------------------------------------------------------------------------- metric
def test_average_recall_hand_computed():
    # a phrase with IoU v counts at thresholds 0, 1e-5, …, ≤ v, at most 99,999 of them, each 1e-5 wide
    assert metrics.average_recall([0.300004]) == pytest.approx(0.30001, abs=1e-9)
    assert metrics.average_recall([1.0]) == pytest.approx(0.99999, abs=1e-9)
    assert metrics.average_recall([0.0]) == pytest.approx(1e-5, abs=1e-12)  # t = 0 counts every phrase
    assert metrics.average_recall([0.300004, 1.0]) == pytest.approx((0.30001 + 0.99999) / 2, abs=1e-9)
    assert np.isnan(metrics.average_recall([]))
    t, r = metrics.recall_curve([0.2, 0.6, 0.6, 1.0], [0.0, 0.5, 0.6, 0.61, 1.0])
    np.testing.assert_allclose(r, [1.0, 0.75, 0.75, 0.25, 0.25])


def test_average_recall_equals_png_definition(rng):
    ious = np.concatenate([rng.uniform(0, 1, 40), [0.0, 0.0, 1.0, 0.5]])
    assert metrics.average_recall(ious) == pytest.approx(png_definition(ious), abs=1e-12)


# --------------------------------------------------------------------------------- loader
def write_miniature(root, layout="png"):
    """One 6×8 image: a thing segment (id 3), a second thing (id 256 + 7, uses the G channel) and
    a stuff segment (id 65536 · 2 + 5, the B channel); one narrative of five utterances."""
    ann = root / "annotations"
    ids = np.full((6, 8), 3, np.int64)
    ids[:, 4:] = 256 + 7
    ids[4:, :] = 2 * 65536 + 5
    pan_dir = ann / ("panoptic_segmentation/val2017" if layout == "png" else "panoptic_val2017")
    img_dir = root / ("images/val2017" if layout == "png" else "val2017")
    pan_dir.mkdir(parents=True)
    img_dir.mkdir(parents=True)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(pan_dir / "000000000139.png")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(img_dir / "000000000139.jpg")
    panoptic = {"images": [{"id": 139, "file_name": "000000000139.jpg", "height": 6, "width": 8}],
                "annotations": [{"image_id": 139, "file_name": "000000000139.png", "segments_info": [
                    {"id": 3, "category_id": 1, "iscrowd": 0}, {"id": 263, "category_id": 1, "iscrowd": 0},
                    {"id": 131077, "category_id": 184, "iscrowd": 0}]}],
                "categories": [{"id": 1, "name": "person", "isthing": 1}, {"id": 184, "name": "tree-merged", "isthing": 0}]}
    narrative = {"image_id": "139", "annotator_id": 1, "caption": "In this image we can see two people on the grass.",
                 "segments": [{"utterance": "In this image we can see", "segment_ids": [], "noun": False, "plural": False},
                              {"utterance": "two people", "segment_ids": ["3", "263"], "noun": True, "plural": True},
                              {"utterance": "on", "segment_ids": [], "noun": False, "plural": False},
                              {"utterance": "the grass", "segment_ids": ["131077"], "noun": True, "plural": False},
                              {"utterance": ".", "segment_ids": [], "noun": False, "plural": False}]}
    (ann / "png_coco_val2017.json").write_text(json.dumps([narrative]))
    (ann / "panoptic_val2017.json").write_text(json.dumps(panoptic))
    return ids


@pytest.mark.parametrize("layout", ["png", "coco"])
def test_loader_reads_the_png_layout(tmp_path, layout):
    ids = write_miniature(tmp_path, layout)
    data = png.load_png(tmp_path)
    (n,) = data.narratives
    assert n.text == "In this image we can see two people on the grass." and n.image_id == 139
    people, grass = n.phrases
    assert n.text[slice(*people.span)] == "two people" and n.text[slice(*grass.span)] == "the grass"
    assert (people.plural, people.isthing, people.segment_ids) == (True, True, [3, 263])
    assert (grass.plural, grass.isthing) == (False, False)
    gt_people, gt_grass = data.gt_masks(n)
    np.testing.assert_array_equal(gt_people, np.isin(ids, [3, 263]))  # the union of the segments
    np.testing.assert_array_equal(gt_grass, ids == 131077)
    assert data.image_path(n).is_file()


def test_loader_errors_are_one_line(tmp_path):
    with pytest.raises(AttendsegError, match="no PNG annotation"):
        png.load_png(tmp_path)
    write_miniature(tmp_path)
    content = json.loads((tmp_path / "annotations" / "png_coco_val2017.json").read_text())
    content[0]["segments"][1]["segment_ids"] = ["99"]
    (tmp_path / "annotations" / "png_coco_val2017.json").write_text(json.dumps(content))
    with pytest.raises(AttendsegError, match="segment 99 is not in panoptic_val2017.json"):
        png.load_png(tmp_path)


def test_narrative_text_joins_when_the_caption_differs():
    text, spans = png.narrative_text("something else", ["a man", "on", "a horse"])
    assert text == "a man on a horse" and [text[slice(*s)] for s in spans] == ["a man", "on", "a horse"]


# --------------------------------------------------------------------------------- command
def test_eval_png_end_to_end(tmp_path):
    runner = CliRunner()
    data = tmp_path / "data"
    result = runner.invoke(app, ["shapes", "export", "png", str(data), "--n", "3"])
    assert result.exit_code == 0, result.output
    loaded = png.load_png(data)
    n_phrases = sum(len(n.phrases) for n in loaded.narratives)
    stuff = [p for n in loaded.narratives for p in n.phrases if not p.isthing]
    assert len(stuff) == 3 and all(p.text == "a background" for p in stuff)
    out = tmp_path / "run"
    args = ["eval", "png", str(data), "--out", str(out), *PROMPT, "-q"]
    result = runner.invoke(app, [*args, "--limit", "2"])
    assert result.exit_code == 0, result.output
    assert "| model | 2 |" in result.output
    result = runner.invoke(app, [*args, "--random-point", "--json"])  # resumes the model's records
    assert result.exit_code == 0, result.output
    rows = {row["run"]: row for row in json.loads(result.output)["rows"]}
    model = rows["model"]
    assert model["phrases"] == rows["random_point"]["phrases"] == n_phrases
    records = [json.loads(line) for line in (out / "model.jsonl").read_text().splitlines()[1:]]
    assert len(records) == n_phrases and len({r["id"] for r in records}) == n_phrases
    ious = [r["iou"] for r in records]
    assert model["ar_all"] == pytest.approx(png_definition(ious), abs=1e-12)
    things = [r["iou"] for r in records if r["isthing"]]
    assert model["ar_things"] == pytest.approx(png_definition(things), abs=1e-12)
    assert model["n_stuff"] == 3 and model["curve"]["recall"][0] == 1.0
    assert model["ar_things"] > rows["random_point"]["ar_things"] + 0.2  # the bundled model finds objects


def test_proposals_protocol_picks_the_segment_under_the_point(tmp_path):
    """With the ground-truth panoptic PNGs as proposals, a single-segment phrase's mask is exactly
    its segment when the point lands on it (IoU 1), else another segment (IoU 0)."""
    runner = CliRunner()
    data = tmp_path / "data"
    runner.invoke(app, ["shapes", "export", "png", str(data), "--n", "2"])
    proposals = data / "annotations" / "panoptic_segmentation" / "val2017"
    result = runner.invoke(app, ["eval", "png", str(data), "--out", str(tmp_path / "run"), "--proposals",
                                 str(proposals), *PROMPT, "-q"])
    assert result.exit_code == 0, result.output
    loaded = png.load_png(data)
    records = [json.loads(line) for line in (tmp_path / "run" / "model.jsonl").read_text().splitlines()[1:]]
    assert records
    for r in records:
        if len(r["segment_ids"]) == 1:
            n = loaded.narratives[r["narrative"]]
            ids = png.read_panoptic(proposals / n.segm_file)
            x, y = (int(v) for v in r["point"])
            assert r["iou"] == (1.0 if ids[y, x] == r["segment_ids"][0] else 0.0)


def test_eval_png_user_mistakes_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["eval", "png", str(tmp_path / "missing"), "-q"])
    assert result.exit_code == 2 and "no such folder" in result.output


def test_span_phrases_keep_the_annotation_order():
    from attendseg.phrases import SpanPhrases

    text = "two people on the grass"
    offsets = [(0, 3), (3, 10), (10, 13), (13, 17), (17, 23)]  # "two", " people", " on", " the", " grass"
    phrases = SpanPhrases([(14, 23), (0, 10), (0, 10), (30, 40)]).extract(text, offsets)
    assert [p.text for p in phrases] == ["the grass", "two people", "two people"]  # given order, duplicates kept
    assert phrases[0].tokens == (3, 4) and phrases[1].tokens == (0, 1)  # every token overlapping the span
    assert phrases[0].root == "the grass" and phrases[0].root_span == (14, 23)
