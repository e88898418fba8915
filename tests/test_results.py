"""Grounding results: JSON round trips, pycocotools readability, PNG masks, COCO results."""

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from attendseg import AttendsegError, rle
from attendseg.results import SCHEMA_VERSION, GroundedPhrase, Grounding, slugify

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


@pytest.fixture
def grounding(photos):
    """Three phrases on the chelsea photo (300 × 451): real-edge masks, one phrase without a mask."""
    img = photos["chelsea"]
    h, w = img.shape[:2]
    grey = img.mean(axis=2)
    yy, xx = np.mgrid[:h, :w]
    cat = grey > np.percentile(grey, 55)
    eye = ((xx - 150) ** 2 + (yy - 120) ** 2) < 20**2
    answer = "A tabby cat with green eyes sits on a floor."

    def span(t):
        s = answer.index(t)
        return s, s + len(t)

    heat = (grey / 255.0).astype(np.float32)
    phrases = [
        GroundedPhrase("A tabby cat", span("A tabby cat"), "cat", (2, 3), [[200.5, 150.5], [10.0, 20.0]], cat, None, 0.91, heat),
        GroundedPhrase("green eyes", span("green eyes"), "eyes", (5,), np.array([150.0, 120.0]), eye, (130.0, 100.0, 171.0, 141.0), 0.5),
        GroundedPhrase("a floor", span("a floor"), "floor", (9,), [[400.0, 280.0]], None, None, float("nan")),
    ]
    return Grounding((w, h), answer, "Describe the image.", "tiny-llava", "threshold", phrases, image_path="photos/chelsea.png",
                     meta={"layers": np.arange(3), "scale": np.float32(0.5), "nan": float("nan"), "t": (1, 2)})


def assert_same(a: Grounding, b: Grounding):
    assert (a.image_size, a.answer, a.prompt, a.model, a.refiner, a.image_path) == (
        b.image_size, b.answer, b.prompt, b.model, b.refiner, b.image_path)
    assert len(a.phrases) == len(b.phrases)
    for p, q in zip(a.phrases, b.phrases):
        assert (p.text, p.span, p.root, p.tokens, p.box) == (q.text, q.span, q.root, q.tokens, q.box)
        np.testing.assert_array_equal(p.points, q.points)
        assert (p.score == q.score) or (math.isnan(p.score) and math.isnan(q.score))
        if p.mask is None:
            assert q.mask is None
        else:
            assert q.mask.dtype == bool
            np.testing.assert_array_equal(p.mask, q.mask)


def test_json_round_trip(grounding, tmp_path):
    d = grounding.to_json()
    text = json.dumps(d, allow_nan=False)  # strictly valid JSON
    assert d["schema_version"] == SCHEMA_VERSION and d["image"] == {"path": "photos/chelsea.png", "width": 451, "height": 300}
    back = Grounding.from_json(json.loads(text))
    assert_same(grounding, back)
    assert back.phrases[0].heatmap is None  # heatmaps are opt-in
    path = grounding.save_json(tmp_path / "sub" / "chelsea.json")
    assert_same(grounding, Grounding.load_json(path))
    assert sorted(os.listdir(tmp_path / "sub")) == ["chelsea.json"]  # no temporary left


def test_heatmaps_opt_in_exact(grounding):
    back = Grounding.from_json(json.loads(json.dumps(grounding.to_json(include_heatmaps=True))))
    np.testing.assert_array_equal(back.phrases[0].heatmap, grounding.phrases[0].heatmap)
    assert back.phrases[1].heatmap is None


def test_json_fields_and_conventions(grounding):
    d = grounding.to_json()
    p0, p1, p2 = d["phrases"]
    cat = grounding.phrases[0].mask
    # box auto-filled from the mask: pixel edges; bbox is the same box as COCO xywh
    assert p0["box_xyxy"] == list(rle.mask_to_xyxy(cat))
    assert p0["bbox_xywh"] == rle.mask_to_bbox(cat)
    x0, y0, x1, y1 = p1["box_xyxy"]
    assert p1["bbox_xywh"] == [x0, y0, x1 - x0, y1 - y0] == [130.0, 100.0, 41.0, 41.0]
    assert p0["area"] == int(cat.sum())
    assert p0["points"] == [[200.5, 150.5], [10.0, 20.0]] and p1["points"] == [[150.0, 120.0]]
    assert d["answer"][slice(*p1["span"])] == "green eyes"
    assert p2["segmentation"] is None and p2["box_xyxy"] is None and p2["score"] is None
    assert isinstance(p0["segmentation"]["counts"], str) and p0["segmentation"]["size"] == [300, 451]
    assert d["meta"] == {"layers": [0, 1, 2], "scale": 0.5, "nan": None, "t": [1, 2]}


def test_pycocotools_reads_the_json(grounding, tmp_path):
    mask_utils = pytest.importorskip("pycocotools.mask")
    path = grounding.save_json(tmp_path / "g.json")
    d = json.loads(path.read_text())
    for p, src in zip(d["phrases"][:2], grounding.phrases):
        seg = p["segmentation"]
        np.testing.assert_array_equal(mask_utils.decode(seg).astype(bool), src.mask)
        assert int(mask_utils.area(seg)) == p["area"]
        assert mask_utils.toBbox(seg).tolist() == rle.mask_to_bbox(src.mask)


def test_coco_results_load_in_pycocotools(grounding):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    res = grounding.to_coco_results(image_id=3)
    assert len(res) == 2  # the phrase without a mask is skipped
    assert [r["score"] for r in res] == [0.91, 0.5]
    assert [r["score"] for r in grounding.to_coco_results(3, score=1.0)] == [1.0, 1.0]
    gt = COCO()
    gt.dataset = {"images": [{"id": 3, "width": 451, "height": 300}], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    gt.createIndex()
    dt = gt.loadRes(res)
    anns = dt.loadAnns(dt.getAnnIds(imgIds=[3]))
    assert [a["area"] for a in anns] == [int(p.mask.sum()) for p in grounding.phrases[:2]]
    np.testing.assert_array_equal(dt.annToMask(anns[1]).astype(bool), grounding.phrases[1].mask)


def test_save_masks_png(grounding, tmp_path):
    paths = grounding.save_masks_png(tmp_path / "masks")
    assert [p.name for p in paths] == ["00_a-tabby-cat.png", "01_green-eyes.png"]
    for p, ph in zip(paths, grounding.phrases):
        a = np.asarray(Image.open(p))
        assert a.dtype == np.uint8 and a.shape == (300, 451)
        assert set(np.unique(a)) <= {0, 255}
        np.testing.assert_array_equal(a == 255, ph.mask)


def test_atomic_write_keeps_old_file_on_failure(grounding, tmp_path, monkeypatch):
    path = tmp_path / "g.json"
    path.write_text("old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        grounding.save_json(path)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["g.json"]


def test_empty_grounding_round_trips(tmp_path):
    g = Grounding((640, 427), "", "Describe.", "m", "sam", [])
    back = Grounding.load_json(g.save_json(tmp_path / "e.json"))
    assert_same(g, back)
    assert back.to_coco_results(1) == [] and back.save_masks_png(tmp_path / "m") == []
    assert back.mask_stack().shape == (0, 427, 640)


def test_validation_and_bad_files(tmp_path, grounding):
    with pytest.raises(ValueError):  # mask is not [H, W] of the image
        Grounding((10, 20), "x", "", "m", "r", [GroundedPhrase("x", (0, 1), "x", (), [], np.zeros((10, 20), bool), None, 1.0)])
    with pytest.raises(ValueError):
        GroundedPhrase("x", (0, 1), "x", (), [[1, 2, 3]], None, None, 1.0)
    d = grounding.to_json()
    with pytest.raises(AttendsegError, match="schema_version"):
        Grounding.from_json({**d, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(AttendsegError):
        Grounding.from_json({"foo": 1})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AttendsegError, match="bad.json"):
        Grounding.load_json(bad)
    with pytest.raises(AttendsegError):
        Grounding.load_json(tmp_path / "missing.json")


def test_slugify():
    assert slugify("A red Cat!") == "a-red-cat"
    assert slugify("  ") == "phrase"
    assert slugify("x" * 100) == "x" * 40
