"""attendseg.rle agrees with pycocotools exactly: strings, masks, areas, boxes, IoUs."""

import numpy as np
import pytest

from attendseg import rle

mask_utils = pytest.importorskip("pycocotools.mask")

# pycocotools 2.0.x on numpy 2 warns inside its own decode; not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def ref_encode(m):
    return mask_utils.encode(np.asfortranarray(np.asarray(m, dtype=np.uint8)))


def assert_same_as_pycocotools(m):
    ref = ref_encode(m)
    mine = rle.encode(m)
    assert isinstance(mine["counts"], str)
    assert mine["counts"] == ref["counts"].decode("ascii")
    assert mine["size"] == [int(v) for v in ref["size"]]
    # decode both ways
    np.testing.assert_array_equal(rle.decode(mine), np.asarray(m) != 0)
    np.testing.assert_array_equal(rle.decode(ref), mask_utils.decode(ref).astype(bool))
    np.testing.assert_array_equal(mask_utils.decode(mine), np.asarray(m, dtype=np.uint8))
    # area and box, from the RLE and from the mask
    assert rle.area(mine) == int(mask_utils.area(ref)) == rle.area(m)
    assert rle.to_bbox(mine) == mask_utils.toBbox(ref).tolist()
    assert rle.to_bbox(m) == mask_utils.toBbox(ref).tolist()
    assert rle.to_bbox(ref) == mask_utils.toBbox(ref).tolist()


SHAPES = [(1, 1), (1, 7), (9, 1), (2, 3), (13, 17), (64, 64), (31, 200), (257, 129)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.0, 0.002, 0.05, 0.5, 0.95, 1.0])
def test_random_masks(shape, density, rng):
    assert_same_as_pycocotools(rng.random(shape) < density)


def test_blobs_and_structures(rng):
    for _ in range(40):
        h, w = rng.integers(1, 120, size=2)
        m = np.zeros((h, w), dtype=bool)
        for _ in range(rng.integers(0, 5)):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
        assert_same_as_pycocotools(m)


@pytest.mark.parametrize(
    "where",
    [(0, 0), (-1, -1), (0, -1), (-1, 0), (5, 7)],
    ids=["top-left", "bottom-right", "top-right", "bottom-left", "inside"],
)
def test_single_pixel(where):
    m = np.zeros((11, 13), dtype=bool)
    m[where] = True
    assert_same_as_pycocotools(m)
    assert rle.area(rle.encode(m)) == 1


def test_empty_full_and_degenerate():
    for shape in [(5, 5), (1, 1), (300, 451)]:
        assert_same_as_pycocotools(np.zeros(shape, bool))
        assert_same_as_pycocotools(np.ones(shape, bool))
        assert rle.to_bbox(rle.encode(np.zeros(shape, bool))) == [0.0, 0.0, 0.0, 0.0]
    for shape in [(0, 5), (5, 0), (0, 0)]:
        m = np.zeros(shape, bool)
        assert rle.encode(m)["counts"] == ref_encode(m)["counts"].decode()
        assert rle.decode(rle.encode(m)).shape == shape


def test_run_wrapping_columns_gives_full_height_box():
    m = np.zeros((6, 4), bool)
    m[4:, 1] = True  # bottom of column 1 …
    m[:2, 2] = True  # … continues at the top of column 2 in Fortran order
    assert_same_as_pycocotools(m)
    assert rle.to_bbox(rle.encode(m)) == [1.0, 0.0, 2.0, 6.0]


def test_real_photo_masks(photos):
    for name, img in photos.items():
        grey = img.mean(axis=2)
        for q in (10, 50, 90):
            assert_same_as_pycocotools(grey > np.percentile(grey, q))
        # a thin, ragged edge mask
        assert_same_as_pycocotools(np.abs(np.diff(grey, axis=1, prepend=0)) > 20)


def test_large_masks_and_long_runs(rng):
    big = np.zeros((1500, 2100), bool)
    big[-1, -1] = True  # one run of ~3.15 M zeros: many 5-bit groups
    assert_same_as_pycocotools(big)
    noisy = rng.random((700, 900)) < 0.5  # ~315 k runs: the vectorised codec path
    assert_same_as_pycocotools(noisy)


def test_inputs_of_other_dtypes_and_forms():
    m = np.zeros((8, 9), np.uint8)
    m[2:5, 3:7] = 255  # any non-zero value is "set"
    e = rle.encode(m)
    assert e == rle.encode(m > 0)
    ref = ref_encode(m > 0)
    # bytes counts (pycocotools' own form) and uncompressed list counts decode too
    np.testing.assert_array_equal(rle.decode({"size": ref["size"], "counts": ref["counts"]}), m > 0)
    uncompressed = {"size": [8, 9], "counts": rle.counts_from_mask(m).tolist()}
    np.testing.assert_array_equal(rle.decode(uncompressed), m > 0)
    assert rle.area(uncompressed) == 12
    fr = mask_utils.frPyObjects(uncompressed, 8, 9)
    assert fr["counts"].decode() == e["counts"]


def test_counts_string_roundtrip_extremes():
    counts = np.array([0, 1, 2**31 - 1, 5, 2**31, 1, 7, 2**20, 3])
    s = rle.counts_to_string(counts)
    np.testing.assert_array_equal(rle.counts_from_string(s), counts)


def test_iou_matches_pycocotools(rng, photos):
    grey = photos["coffee"].mean(axis=2)
    masks = [grey > np.percentile(grey, q) for q in (20, 40, 60, 80)]
    masks += [rng.random(grey.shape) < 0.3, np.zeros(grey.shape, bool), np.ones(grey.shape, bool)]
    refs = [ref_encode(m) for m in masks]
    for crowd in ([0] * len(masks), [1, 0, 1, 0, 0, 1, 0]):
        want = mask_utils.iou(refs, refs, crowd)
        got = rle.iou([rle.encode(m) for m in masks], masks, crowd)
        np.testing.assert_array_equal(got, want)


def test_box_conversions():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:8] = True
    assert rle.mask_to_bbox(m) == [3.0, 2.0, 5.0, 3.0]
    assert rle.mask_to_xyxy(m) == (3.0, 2.0, 8.0, 5.0)
    assert rle.to_xyxy([3, 2, 5, 3]) == (3.0, 2.0, 8.0, 5.0)
    assert rle.mask_to_xyxy(np.zeros((4, 4))) is None


@pytest.mark.parametrize(
    "bad",
    [{"size": [2, 2], "counts": "\x01"}, {"size": [2, 2], "counts": "0`"}, {"size": [3, 3], "counts": "04"}, {"counts": "0"}],
)
def test_invalid_rles_raise(bad):
    with pytest.raises(ValueError):
        rle.decode(bad)
