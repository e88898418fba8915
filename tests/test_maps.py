"""attendseg.maps: aggregation, normalisation, sinks, the image frame, peaks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attendseg.maps import (
    normalise,
    select_views,
    peaks,
    phrase_map,
    sink_cells,
    suppress_sinks,
    threshold_region,
    to_image,
    trace_image_map,
    view_cells,
)
from attendseg.views import View, square_box


# ----------------------------------------------------------------------------- token axis
def test_phrase_map_aggregates():
    tm = torch.tensor([[1.0, 5.0, 0.0], [3.0, 1.0, 2.0], [8.0, 8.0, 8.0]])
    assert torch.allclose(phrase_map(tm, [0, 1], "mean"), torch.tensor([2.0, 3.0, 1.0]))
    assert torch.allclose(phrase_map(tm, [0, 1], "max"), torch.tensor([3.0, 5.0, 2.0]))
    assert torch.allclose(phrase_map(tm, [1, 0], "first"), torch.tensor([3.0, 1.0, 2.0]))
    assert torch.allclose(phrase_map(tm.numpy(), [2]), tm[2])  # numpy in, torch out
    with pytest.raises(ValueError):
        phrase_map(tm, [], "mean")
    with pytest.raises(ValueError):
        phrase_map(tm, [0], "median")
    with pytest.raises(IndexError):
        phrase_map(tm, [3])


def test_normalise():
    tm = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    m = torch.tensor([5.0, 5.0])
    assert torch.allclose(normalise(m, tm, "mean"), torch.tensor([3.0, 1.0]))
    assert torch.equal(normalise(m, tm, "none"), m)
    with pytest.raises(ValueError):
        normalise(m, tm, "zscore")


def two_views():
    # base view: 3x4 grid with a separator token closing each row (row_stride 5), tokens 0..14;
    # tile: 2x2 grid, tokens 15..18
    return [
        View(0, (3, 4), (0, 0, 40, 30), row_stride=5, name="base"),
        View(15, (2, 2), (0, 0, 20, 15), name="tile"),
    ]


def test_view_cells_skip_separators():
    cells = view_cells(two_views()).tolist()
    assert cells == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18]


def test_suppress_corners():
    views = two_views()
    m = torch.arange(19, dtype=torch.float32) + 10
    m[4] = -100.0  # a separator: not a cell, must not count as the minimum
    out = suppress_sinks(m, torch.zeros(2, 19), views, "corners")
    corners = [0, 3, 10, 13, 15, 16, 17, 18]
    assert sink_cells(None, views, "corners").tolist() == corners
    assert torch.all(out[corners[:4]] == 10.0)  # each view's own minimum over its cells
    assert torch.all(out[corners[4:]] == 25.0)
    others = [i for i in range(19) if i not in corners]
    assert torch.equal(out[others], m[others])
    assert torch.equal(suppress_sinks(m, None, views, "none"), m)


def test_suppress_outliers():
    views = [View(0, (4, 4), (0, 0, 4, 4))]
    g = torch.Generator().manual_seed(0)
    tm = 0.01 + 0.001 * torch.rand(6, 16, generator=g)
    tm[:, 5] += 0.3  # a sink: every token attends to it
    m = torch.rand(16, generator=g)
    m[5] = 7.0
    assert sink_cells(tm, views, "outliers").tolist() == [5]
    out = suppress_sinks(m, tm, views, "outliers")
    assert out[5] == m[[i for i in range(16) if i != 5]].min()
    assert sink_cells(torch.ones(6, 16), views, "outliers").numel() == 0  # flat
    with pytest.raises(ValueError):
        sink_cells(tm, views, "middle")


# ---------------------------------------------------------------------------- image frame
@pytest.mark.parametrize("size", [(37, 23), (64, 64), (5, 9)])
def test_to_image_equals_bicubic_interpolate_for_full_box(size):
    W, H = size
    g = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    out = to_image(g.reshape(-1), [View(0, (6, 8), (0, 0, W, H))], (W, H))
    ref = F.interpolate(g[None, None].double(), size=(H, W), mode="bicubic", align_corners=False)[0, 0]
    assert out.dtype == np.float32 and out.shape == (H, W)
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)


def test_to_image_undoes_pad_and_crop_like_the_paper():
    """'pad': upsample to the long side's square and centre-crop; 'crop': only the crop region."""
    W, H = 60, 40
    g = torch.randn(6, 6, generator=torch.Generator().manual_seed(2))
    pad = to_image(g.reshape(-1), [View(0, (6, 6), square_box(W, H, "pad"))], (W, H))
    ref = F.interpolate(g[None, None].double(), size=(60, 60), mode="bicubic", align_corners=False)[0, 0]
    np.testing.assert_allclose(pad, ref[10:50].numpy(), atol=1e-5)
    crop = to_image(g.reshape(-1), [View(0, (6, 6), square_box(W, H, "crop"))], (W, H))
    ref = F.interpolate(g[None, None].double(), size=(40, 40), mode="bicubic", align_corners=False)[0, 0]
    np.testing.assert_allclose(crop[:, 10:50], ref.numpy(), atol=1e-5)
    # outside the crop box: not covered by the view → the map's minimum
    assert np.all(crop[:, :10] == np.float32(g.min())) and np.all(crop[:, 50:] == np.float32(g.min()))


@pytest.mark.parametrize("mode,size,n", [("crop", (100, 66), 6), ("pad", (110, 78), 10)])
def test_cell_centres_land_on_cell_box_centres(mode, size, n):
    """Sizes chosen so every cell centre falls on a pixel centre: the map there is the cell value."""
    W, H = size
    view = View(0, (n, n), square_box(W, H, mode))
    g = torch.randn(n, n, generator=torch.Generator().manual_seed(3))
    img = to_image(g.reshape(-1), [view], (W, H))
    checked = 0
    for r in range(n):
        for c in range(n):
            x0, y0, x1, y1 = view.cell_box(r, c)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            if not (0 <= cx < W and 0 <= cy < H):
                continue
            assert cx % 1 == 0.5 and cy % 1 == 0.5
            assert img[int(cy), int(cx)] == pytest.approx(float(g[r, c]), abs=1e-5)
            checked += 1
    assert checked >= n * n * (0.7 if mode == "pad" else 1.0)


@pytest.mark.parametrize("mode", ["pad", "crop"])
@pytest.mark.parametrize("size", [(91, 60), (60, 91)])
def test_peak_cell_lands_in_its_pixel_region(mode, size):
    """A map peaked in one cell peaks, in the image, at that cell's box centre (non-square image,
    fractional pad offsets included)."""
    W, H = size
    n = 8
    view = View(0, (n, n), square_box(W, H, mode))
    for r, c in [(2, 5), (4, 4), (6, 1), (3, 3)]:
        x0, y0, x1, y1 = view.cell_box(r, c)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        if not (0 <= cx < W and 0 <= cy < H):
            continue
        m = torch.zeros(n * n)
        m[r * n + c] = 1.0
        img = to_image(m, [view], (W, H))
        (px, py), = peaks(img, 1)
        assert abs(px - cx) <= 0.5 and abs(py - cy) <= 0.5, (mode, r, c, px, py, cx, cy)
        assert x0 <= px < x1 and y0 <= py < y1
        assert view.cell_of(px, py) == (r, c)


def test_to_image_fuses_views_as_attention_density():
    W, H = 40, 30
    views = two_views()  # base cells 10 × 10 px, tile cells 10 × 7.5 px
    m = torch.zeros(19)
    m[view_cells(views[:1])] = 3.0
    m[15:19] = 1.0
    img = to_image(m, views, (W, H))
    assert np.allclose(img[:15, :20], 3.0 + 1.0 * 100 / 75)  # overlap: densities summed, base's scale
    assert np.allclose(img[15:, :], 3.0) and np.allclose(img[:, 20:], 3.0)
    # the same attention mass per pixel through a coarse and a fine view gives a flat map
    coarse, fine = View(0, (3, 4), (0, 0, W, H), kind="global"), View(12, (6, 8), (0, 0, W, H), kind="tile")
    flat = torch.cat([torch.full((12,), 1 / 12), torch.full((48,), 1 / 48)])
    assert np.allclose(to_image(flat, [coarse, fine], (W, H)), 2 / 12, atol=1e-6)
    assert select_views([coarse, fine], "base") == [coarse] and select_views([coarse, fine], "tiles") == [fine]
    single = View(0, (2, 2), (0, 0, W, H))  # kind "image": the answer to every choice
    assert select_views([single], "tiles") == select_views([single], "base") == [single]
    with pytest.raises(ValueError, match="no tiles view"):
        select_views([coarse], "tiles")
    # a view covering only part of the image: the rest is the minimum, never NaN
    part = to_image(torch.arange(4.0) + 5, [View(0, (2, 2), (10, 10, 20, 20))], (W, H))
    assert np.isfinite(part).all() and part[0, 0] == 5.0 and part[:10].max() == 5.0


def test_peaks():
    img = np.zeros((50, 80), np.float32)
    img[10, 20] = 5.0
    img[40, 70] = 4.0
    img[11, 21] = 4.5  # next to the first: not a separate peak
    assert peaks(img).tolist() == [[20.5, 10.5]]
    two = peaks(img, k=2, min_distance=5)
    assert two.tolist() == [[20.5, 10.5], [70.5, 40.5]]
    assert len(peaks(np.ones((10, 10)), k=3)) >= 1
    with pytest.raises(ValueError):
        peaks(np.zeros((0, 3)))


def test_threshold_region():
    yy, xx = np.mgrid[0:60, 0:80]
    blob = np.exp(-((xx - 20) ** 2 + (yy - 30) ** 2) / 50.0) + 0.8 * np.exp(-((xx - 60) ** 2 + (yy - 30) ** 2) / 50.0)
    one = threshold_region(blob)  # argmax's component only
    assert one[30, 20] and not one[30, 60]
    both = threshold_region(blob, np.array([[20.5, 30.5], [60.5, 30.5]]))
    assert both[30, 20] and both[30, 60]
    assert threshold_region(blob, np.array([[0.5, 0.5]])).sum() == 0  # point on background
    assert threshold_region(blob, threshold=0.95).sum() < one.sum()


def test_trace_image_map_chain():
    """A trace whose phrase token attends to one cell: the chain puts its peak on that cell."""
    from attendseg.trace import Trace

    W, H, n = 90, 60, 6
    view = View(0, (n, n), square_box(W, H, "pad"))
    T = 4
    maps = torch.full((T, 1, 1, n * n), 1.0 / (n * n))
    maps[:, 0, 0, 0] = 0.5  # a sink every token attends to
    maps[2, 0, 0, 3 * n + 4] = 0.4  # the phrase token looks at cell (3, 4)
    trace = Trace(
        token_ids=torch.arange(T), text="a b c d", offsets=torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]]),
        maps=maps, views=[view], image_size=(W, H), layers=(0,), heads=(0,),
    )
    img = trace_image_map(trace, [2], sinks="corners")
    assert img.shape == (H, W) and img.dtype == np.float32
    (px, py), = peaks(img)
    assert view.cell_of(px, py) == (3, 4)
