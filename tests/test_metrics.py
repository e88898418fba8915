"""Metrics: IoU against pycocotools, GLaMM's greedy matching, recall gate, AP50, points."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from attendseg import metrics as M
from attendseg import rle
from attendseg.results import GroundedPhrase, Grounding

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def strip(a, b, n=20):
    """A 1 × n mask set on columns [a, b)."""
    m = np.zeros((1, n), bool)
    m[0, a:b] = True
    return m


def box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# --------------------------------------------------------------------------- IoU


def test_iou_matrix_equals_pycocotools(rng, photos):
    mask_utils = pytest.importorskip("pycocotools.mask")
    grey = photos["rocket"].mean(axis=2)
    preds = np.stack([grey > np.percentile(grey, q) for q in (10, 35, 60, 85)] + [np.zeros_like(grey, bool)])
    gts = np.stack([rng.random(grey.shape) < p for p in (0.1, 0.5)] + [grey > 120, np.ones_like(grey, bool)])
    got = M.iou_matrix(preds, gts)
    enc = lambda ms: [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in ms]
    want = mask_utils.iou(enc(preds), enc(gts), [0] * len(gts))
    assert got.shape == (5, 4) and got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    for i in range(len(preds)):
        for j in range(len(gts)):
            assert M.mask_iou(preds[i], gts[j]) == want[i, j]
    # lists and RLEs are accepted
    np.testing.assert_array_equal(M.iou_matrix(list(preds), [rle.encode(g) for g in gts]), want)


def test_iou_edge_cases():
    z = np.zeros((4, 4), bool)
    assert M.mask_iou(z, z) == 0.0
    assert M.iou_matrix(np.zeros((0, 4, 4)), np.ones((2, 4, 4))).shape == (0, 2)
    assert M.iou_matrix([z], []).shape == (1, 0)
    with pytest.raises(ValueError):
        M.iou_matrix(np.zeros((1, 4, 4)), np.zeros((1, 5, 4)))


def test_iou_matrix_crowd_rule_equals_pycocotools(rng):
    mask_utils = pytest.importorskip("pycocotools.mask")
    preds = rng.random((3, 9, 11)) < 0.4
    gts = rng.random((4, 9, 11)) < 0.5
    crowd = [0, 1, 0, 1]
    enc = lambda ms: [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in ms]
    want = mask_utils.iou(enc(preds), enc(gts), crowd)
    np.testing.assert_array_equal(M.iou_matrix(preds, gts, crowd), want)
    np.testing.assert_array_equal(rle.iou([rle.encode(m) for m in preds], gts, crowd), want)


# --------------------------------------------------------------------------- referring expressions


def test_box_iou_equals_pycocotools(rng):
    mask_utils = pytest.importorskip("pycocotools.mask")
    a = np.concatenate([rng.uniform(0, 50, (6, 2)), rng.uniform(0, 30, (6, 2))], axis=1)
    b = np.concatenate([rng.uniform(0, 50, (5, 2)), rng.uniform(0, 30, (5, 2))], axis=1)
    b[0] = a[0]  # identical boxes
    b[1] = [200, 200, 5, 5]  # disjoint from all
    got = M.box_iou(a, b)
    want = mask_utils.iou(a.tolist(), b.tolist(), [0] * len(b))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert got[0, 0] == pytest.approx(1.0)
    # by hand: [0,0,2,2] vs [1,1,2,2]: intersection 1, union 7
    assert M.box_iou([0, 0, 2, 2], [1, 1, 2, 2])[0, 0] == pytest.approx(1 / 7)


def test_referring_scores_by_hand():
    # two expressions: 1 of 2 pixels right (IoU 0.5), 9 of 10 (IoU 0.9)
    a, b = strip(0, 2), strip(1, 2)
    c, d = strip(0, 10), strip(0, 9)
    counts = [M.intersection_union(a, b), M.intersection_union(c, d)]
    assert counts == [(1, 2), (9, 10)]
    got = M.referring_scores([i for i, _ in counts], [u for _, u in counts], box_ious=[0.49, 0.5])
    assert got["ciou"] == pytest.approx(10 / 12)  # Σ inter / Σ union, not the mean
    assert got["giou"] == pytest.approx((0.5 + 0.9) / 2)
    assert got["acc@0.5"] == 0.5  # 0.5 counts, 0.49 does not
    assert got["n"] == 2
    # against pycocotools' per-pair IoU
    mask_utils = pytest.importorskip("pycocotools.mask")
    enc = lambda m: mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    assert counts[1][0] / counts[1][1] == mask_utils.iou([enc(c)], [enc(d)], [0])[0, 0]
    empty = M.referring_scores([], [], box_ious=[])
    assert np.isnan(empty["ciou"]) and np.isnan(empty["giou"]) and empty["n"] == 0


# --------------------------------------------------------------------------- greedy matching


def test_greedy_differs_from_hungarian():
    # gt0 = [0, 10), gt1 = [10, 20); pred0 = [0, 4), pred1 = [0, 19)
    gts = [strip(0, 10), strip(10, 20)]
    preds = [strip(0, 4), strip(0, 19)]
    iou = M.iou_matrix(preds, gts)
    np.testing.assert_allclose(iou, [[0.4, 0.0], [10 / 19, 9 / 20]])
    # greedy takes pred1-gt0 (10/19) first; pred0-gt1 has IoU 0, so nothing else pairs
    assert M.greedy_match(iou) == [(1, 0, 10 / 19)]
    assert M.image_miou(preds, gts) == 10 / 19
    # the optimal assignment would pair both: pred0-gt0 + pred1-gt1
    r, c = linear_sum_assignment(-iou)
    assert list(zip(r, c)) == [(0, 0), (1, 1)]
    assert iou[r, c].sum() > 10 / 19


def test_greedy_unmatched_gt_does_not_count_in_miou():
    gts = [box(10, 10, 0, 5, 0, 5), box(10, 10, 6, 10, 6, 10)]  # the second gt is never hit
    preds = [box(10, 10, 0, 5, 0, 4)]
    s = M.evaluate_image(preds, gts)
    assert s.pairs == [(0, 0, 20 / 25)]
    assert s.miou == 0.8  # GLaMM: mean over pairs only
    assert s.matches == [(0, 0, 0.8)] and s.recall == 0.5
    assert M.image_miou([], gts) == 0.0 and M.image_miou(preds, []) == 0.0


def test_greedy_ties_and_thresholds():
    iou = np.array([[0.5, 0.5], [0.5, 0.2]])
    assert M.greedy_match(iou) == [(0, 0, 0.5), (1, 1, 0.2)]  # row-major first, like np.argmax
    assert M.greedy_match(iou, 0.5) == []  # strict: needs > 0.5
    assert M.greedy_match(iou, 0.5, inclusive=True) == [(0, 0, 0.5)]
    assert M.greedy_match(np.zeros((2, 3))) == []
    assert M.greedy_match(np.zeros((0, 3))) == []


def test_greedy_matches_glamm_loop(rng):
    """The sorted scan equals GLaMM's argmax / delete loop on random matrices with ties."""

    def glamm(m):
        m = m.copy()
        rows, cols, out = list(range(m.shape[0])), list(range(m.shape[1])), []
        while m.size > 0 and np.max(m) > 0:
            i, j = np.unravel_index(np.argmax(m, axis=None), m.shape)
            out.append((rows[i], cols[j], m[i, j]))
            m = np.delete(np.delete(m, i, axis=0), j, axis=1)
            rows.pop(i), cols.pop(j)
        return out

    for _ in range(200):
        m = rng.integers(0, 4, size=rng.integers(1, 6, size=2)) / 4  # many ties and zeros
        assert M.greedy_match(m) == glamm(m)


def test_recall_text_gate_stop_and_skip():
    gts = [box(8, 8, 0, 4, 0, 4), box(8, 8, 4, 8, 4, 8)]
    preds = [box(8, 8, 0, 4, 0, 4), box(8, 8, 4, 8, 4, 7)]  # IoU 1.0 and 0.75
    same = lambda a, b: 1.0 if a == b else 0.0
    # gate off: both recalled
    assert M.evaluate_image(preds, gts).n_matched == 2
    # the best pair (IoU 1.0) fails the text gate: GLaMM stops there
    s = M.evaluate_image(preds, gts, ["dog", "cat"], ["cat", "cat"], text_similarity=same)
    assert s.matches == [] and s.miou == pytest.approx(0.875)  # mIoU ignores text
    s = M.evaluate_image(preds, gts, ["dog", "cat"], ["cat", "cat"], text_similarity=same, on_reject="skip")
    assert s.matches == [(1, 1, 0.75)]
    # labels agree: both pass
    s = M.evaluate_image(preds, gts, ["cat", "dog"], ["cat", "dog"], text_similarity=same)
    assert [(g, p) for g, p, _ in s.matches] == [(0, 0), (1, 1)]
    with pytest.raises(ValueError):
        M.evaluate_image(preds, gts, text_similarity=same)


def test_recall_threshold_is_inclusive():
    gts = [strip(0, 10)]
    assert M.evaluate_image([strip(0, 5)], gts).n_matched == 1  # IoU exactly 0.5 counts
    assert M.evaluate_image([strip(0, 4)], gts).n_matched == 0


def test_dataset_aggregation():
    gts = [[strip(0, 10), strip(10, 20)], [strip(0, 10)], [strip(5, 15)]]
    preds = [[strip(0, 10), strip(10, 14)], [strip(0, 4)], []]
    scores = M.evaluate(preds, gts)
    # image 0: IoUs 1.0 and 0.4 -> 0.7, 1 recalled; image 1: 0.4, 0 recalled; image 2: nothing
    assert [s.miou for s in scores.per_image] == pytest.approx([0.7, 0.4, 0.0])
    assert scores.miou == pytest.approx((0.7 + 0.4 + 0.0) / 3)
    assert scores.recall == pytest.approx(1 / 4)  # micro: matches / all gts
    assert scores.recall_image_mean == pytest.approx((0.5 + 0 + 0) / 3)
    assert (scores.n_images, scores.n_pred, scores.n_gt, scores.n_matched) == (3, 3, 4, 1)
    assert scores.ap50 is None
    assert set(scores.as_dict()) >= {"miou", "recall", "ap50"}


# --------------------------------------------------------------------------- points


def test_point_in_mask_pixel_convention():
    m = np.zeros((5, 6), bool)
    m[2, 3] = True  # covers x in [3, 4), y in [2, 3)
    assert M.point_in_mask((3.0, 2.0), m) is True
    assert M.point_in_mask((3.99, 2.99), m) is True
    assert M.point_in_mask((4.0, 2.5), m) is False
    assert M.point_in_mask((2.99, 2.5), m) is False
    got = M.point_in_mask([[3.5, 2.5], [-0.1, 0], [6.0, 2], [np.nan, 2], [3.5, 5.0]], m)
    assert got.tolist() == [True, False, False, False, False]
    assert M.point_accuracy([[3.5, 2.5], [0.5, 0.5]], [m, m]) == 0.5
    assert np.isnan(M.point_accuracy(np.zeros((0, 2)), []))


# --------------------------------------------------------------------------- AP50


def test_ap50_known_answers():
    pytest.importorskip("pycocotools")
    a, b = box(20, 20, 0, 10, 0, 10), box(20, 20, 10, 20, 10, 20)
    # every gt found exactly: AP 1
    assert M.ap50([[a], [b]], [[a], [b]]) == pytest.approx(1.0)
    # one of two gts found, no false positive: precision 1 up to recall 0.5 -> 51 of 101 points
    assert M.ap50([[a], []], [[a], [b]]) == pytest.approx(51 / 101)
    # IoU 0.6 (>= 0.5) counts; IoU 0.4 does not
    p06 = box(20, 20, 0, 10, 0, 6)  # 60 / 100
    p04 = box(20, 20, 0, 10, 0, 4)
    assert M.ap50([[p06]], [[a]]) == pytest.approx(1.0)
    assert M.ap50([[p04]], [[a]]) == pytest.approx(0.0)
    # no predictions at all; no ground truth at all
    assert M.ap50([[]], [[a]]) == 0.0
    assert np.isnan(M.ap50([[a]], [[]]))


def test_ap50_through_evaluator_and_coco_results():
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    a, b = box(20, 20, 0, 10, 0, 10), box(20, 20, 10, 20, 10, 20)
    ev = M.GCGEvaluator(compute_ap=True)
    ev.add([a], [a, b])
    assert ev.summary().ap50 == pytest.approx(51 / 101)
    # the same through Grounding.to_coco_results and a COCO ground truth object
    g = Grounding((20, 20), "a box", "", "m", "r", [GroundedPhrase("a box", (0, 5), "box", (1,), [[5, 5]], a, None, 0.3)])
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 7, "width": 20, "height": 20}],
        "annotations": [
            {"id": i + 1, "image_id": 7, "category_id": 1, "segmentation": rle.encode(m), "area": float(m.sum()), "bbox": rle.to_bbox(m), "iscrowd": 0}
            for i, m in enumerate([a, b])
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    gt.createIndex()
    assert M.ap50_coco(gt, g.to_coco_results(7, score=1.0)) == pytest.approx(51 / 101)


def test_ap50_without_pycocotools_says_what_to_install(monkeypatch):
    import sys

    for name in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)  # import now fails
    a = box(4, 4, 0, 2, 0, 2)
    with pytest.raises(ImportError, match="pycocotools"):
        M.ap50([[a]], [[a]])
    # everything else works without it
    assert M.evaluate([[a]], [[a]]).miou == 1.0
