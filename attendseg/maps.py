"""Maps: from per-token attention over image tokens to one map per phrase in the image frame.

The steps of attend-and-segment between a :class:`~attendseg.trace.Trace` and a prompt, each a
pure function (no state, no model):

1. :func:`phrase_map` — aggregate the maps of a phrase's tokens (mean | max | first).
2. :func:`normalise` — subtract the mean map over all recorded tokens (the paper's), or not.
3. :func:`suppress_sinks` — optionally flatten attention-sink cells (view corners, or outliers).
4. :func:`select_views` + :func:`to_image` — the views to use (``"fused"``, ``"base"`` or
   ``"tiles"`` of a multi-view model), bicubic upsampling of every view's grid into the original
   image frame, undoing pad-to-square, resize, centre crop and tiling exactly, and fusion of
   several views into one map (the only place views are fused).
5. :func:`peaks` — the argmax pixel, or the top-k separated peaks for several instances.
6. :func:`threshold_region` — the thresholded map's connected region around a point (used by the
   ``threshold`` refiner and for box prompts).

:func:`trace_image_map` chains steps 1–4 for a :class:`~attendseg.trace.Trace`.

Shapes: ``T`` recorded tokens, ``N`` image-token columns (all views, separators included),
``H × W`` the original image (rows × columns). Token-axis functions take ``torch.Tensor`` or
``np.ndarray`` and return ``torch.Tensor`` float32; image-frame functions take and return
``np.ndarray``.

Coordinates follow :mod:`attendseg.views`: continuous ``(x, y)``, x right, y down, pixel
``(i, j)`` (row i, column j) covering ``[j, j+1) × [i, i+1)``; so the centre of pixel ``(i, j)``
is ``(j + 0.5, i + 0.5)``. Points returned here are pixel centres.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .views import View

AGGREGATES = ("mean", "max", "first")
NORMALISATIONS = ("mean", "none")
SINK_METHODS = ("none", "corners", "outliers")
VIEW_CHOICES = ("fused", "base", "tiles")

__all__ = [
    "AGGREGATES",
    "NORMALISATIONS",
    "SINK_METHODS",
    "phrase_map",
    "normalise",
    "suppress_sinks",
    "sink_cells",
    "view_cells",
    "select_views",
    "to_image",
    "peaks",
    "threshold_region",
    "trace_image_map",
]


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float()
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


# --------------------------------------------------------------------------------- token axis
def phrase_map(token_maps, token_indices: Sequence[int], aggregate: str = "mean") -> torch.Tensor:
    """One phrase's map from its tokens' maps.

    Args:
        token_maps: ``[T, N]`` per-token maps (e.g. :meth:`Trace.token_maps`).
        token_indices: indices into ``T`` of the phrase's tokens (at least one), in text order.
        aggregate: ``"mean"`` (default; the paper's v1), ``"max"`` (cell-wise maximum; the
            paper's later default) or ``"first"`` (the first token's map).

    Returns:
        ``[N]`` float32 tensor.
    """
    maps = _as_tensor(token_maps)
    if maps.dim() != 2:
        raise ValueError(f"token_maps must be [T, N], got {tuple(maps.shape)}")
    idx = [int(i) for i in token_indices]
    if not idx:
        raise ValueError("a phrase needs at least one token index")
    bad = [i for i in idx if not -maps.shape[0] <= i < maps.shape[0]]
    if bad:
        raise IndexError(f"token indices {bad} out of range for {maps.shape[0]} tokens")
    sel = maps[idx]
    if aggregate == "mean":
        return sel.mean(0)
    if aggregate == "max":
        return sel.max(0).values
    if aggregate == "first":
        return sel[0].clone()
    raise ValueError(f"unknown aggregate {aggregate!r}; choose one of {AGGREGATES}")


def normalise(map_, token_maps, method: str = "mean") -> torch.Tensor:
    """Remove what every token attends to.

    Args:
        map_: ``[N]`` a phrase's map.
        token_maps: ``[T, N]`` the maps of *all* recorded tokens (EOS included, as the paper).
        method: ``"mean"`` — ``map_ - token_maps.mean(0)``, cell by cell (the paper's);
            ``"none"`` — returned unchanged.

    Returns:
        ``[N]`` float32 tensor (may be negative).
    """
    m = _as_tensor(map_)
    if method == "none":
        return m.clone()
    if method == "mean":
        maps = _as_tensor(token_maps)
        if maps.dim() != 2 or maps.shape[-1] != m.shape[-1]:
            raise ValueError(f"token_maps {tuple(maps.shape)} do not match map {tuple(m.shape)}")
        return m - maps.mean(0)
    raise ValueError(f"unknown normalisation {method!r}; choose one of {NORMALISATIONS}")


def view_cells(views: Sequence[View]) -> torch.Tensor:
    """``[n_cells]`` int64 indices into ``N`` of every grid cell of ``views`` (separators left out)."""
    out = []
    for v in views:
        h, w = v.grid
        rows = torch.arange(h)[:, None] * v.row_stride
        out.append((v.start + rows + torch.arange(w)[None, :]).reshape(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def sink_cells(token_maps, views: Sequence[View], method: str = "corners", k: float = 5.0) -> torch.Tensor:
    """Indices into ``N`` of the cells treated as attention sinks.

    * ``"corners"``: the four corner cells of every view (the paper's option).
    * ``"outliers"``: cells whose mean attention over all tokens, ``a = token_maps.mean(0)``, is
      an upper outlier among the cells of their own view: ``a > median + k · 1.4826 · MAD`` (MAD = median
      absolute deviation, scaled to a standard deviation for normal data; ``k = 5`` by default).
      When MAD is 0 (at least half the cells equal), any cell above the median by more than
      ``1e-6`` of the median's magnitude counts. Sinks are typically 10–100× the median cell.
    * ``"none"``: no cells.

    Returns:
        int64 tensor of indices (possibly empty).
    """
    if method == "none":
        return torch.zeros(0, dtype=torch.long)
    if method == "corners":
        idx = []
        for v in views:
            h, w = v.grid
            for r, c in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
                idx.append(v.start + r * v.row_stride + c)
        return torch.tensor(sorted(set(idx)), dtype=torch.long)
    if method == "outliers":
        a = _as_tensor(token_maps).mean(0)
        found = []
        for v in views:  # each view has its own scale (a tile grid spreads attention thinner)
            cells = view_cells([v])
            cell_means = a[cells]
            med = cell_means.median()
            mad = (cell_means - med).abs().median()
            if mad > 0:
                limit = med + k * 1.4826 * mad
            else:
                limit = med + 1e-6 * max(med.abs().item(), 1e-12)
            found.append(cells[cell_means > limit])
        return torch.cat(found) if found else torch.zeros(0, dtype=torch.long)
    raise ValueError(f"unknown sink method {method!r}; choose one of {SINK_METHODS}")


def suppress_sinks(map_, token_maps, views: Sequence[View], method: str = "none", k: float = 5.0) -> torch.Tensor:
    """Set attention-sink cells (see :func:`sink_cells`) to their view's minimum.

    Each view's minimum is taken over its cells of ``map_`` *before* suppression.

    Args:
        map_: ``[N]`` a phrase's (normalised) map.
        token_maps: ``[T, N]`` all tokens' maps (used by ``"outliers"``).
        views: the trace's views.
        method: ``"none"`` | ``"corners"`` | ``"outliers"``.
        k: outlier factor for ``"outliers"``.

    Returns:
        ``[N]`` float32 tensor (a copy).
    """
    m = _as_tensor(map_).clone()
    if method == "none":
        return m
    original = m.clone()
    for v in views:
        idx = sink_cells(token_maps, [v], method, k=k)
        if idx.numel():
            m[idx] = original[view_cells([v])].min()
    return m


# -------------------------------------------------------------------------------- image frame
def _cubic_weights(u: np.ndarray, n: int, a: float = -0.75) -> np.ndarray:
    """``[len(u), n]`` bicubic interpolation matrix for sample positions ``u`` in cell units.

    Cell centres sit at integer positions ``0 … n-1``; indices outside are clamped (border
    replicate). Same kernel (Keys, ``a = -0.75``) and edge rule as ``torch.nn.functional.interpolate(
    mode="bicubic", align_corners=False)``.
    """
    i0 = np.floor(u).astype(np.int64)
    t = u - i0
    out = np.zeros((u.shape[0], n), dtype=np.float64)
    rows = np.arange(u.shape[0])
    for off in (-1, 0, 1, 2):
        d = np.abs(t - off)
        w = np.where(
            d <= 1,
            ((a + 2) * d - (a + 3)) * d * d + 1,
            np.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, 0.0),
        )
        np.add.at(out, (rows, np.clip(i0 + off, 0, n - 1)), w)
    return out


def _covered(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Pixel index range ``[a, b)`` whose centres ``p + 0.5`` lie in ``[lo, hi)``, within ``[0, size)``."""
    a = max(0, math.ceil(lo - 0.5))
    b = min(size, math.ceil(hi - 0.5))
    return a, max(a, b)


def select_views(views: Sequence[View], which: str = "fused") -> list[View]:
    """The views a map is built from.

    * ``"fused"``: all of them (default);
    * ``"base"``: the whole-image views (``kind`` ``"global"``: LLaVA-NeXT's base image,
      Idefics3's global image, InternVL's thumbnail);
    * ``"tiles"``: the high-resolution views (``kind`` ``"tile"``: tiles, the stitched tile grid,
      crops).

    A single-view model (``kind`` ``"image"``) answers its one view to every choice.
    """
    if which not in VIEW_CHOICES:
        raise ValueError(f"unknown views choice {which!r}; choose one of {VIEW_CHOICES}")
    if which == "fused":
        return list(views)
    kind = "global" if which == "base" else "tile"
    chosen = [v for v in views if v.kind in (kind, "image")]
    if not chosen:
        raise ValueError(f"these views have no {which} view (kinds: {sorted({v.kind for v in views})})")
    return chosen


def to_image(map_, views: Sequence[View], image_size: tuple[int, int]) -> np.ndarray:
    """A map over image tokens → a float32 ``[H, W]`` map in the original image frame.

    For each view, its ``h × w`` grid is upsampled bicubically onto every image pixel whose
    centre lies inside the view's box: pixel centre ``(x, y)`` samples the grid at cell
    coordinates ``u = (x - x0) / cell_w - 0.5``, ``v = (y - y0) / cell_h - 0.5`` (cell centres at
    integers), i.e. ``F.interpolate(mode="bicubic", align_corners=False)`` of the grid to the
    box's size — but evaluated exactly, even for fractional boxes, and only where the box meets
    the image. A cell's centre therefore lands on its cell box's centre in the original image:
    pad-to-square (box larger than the image: the outside is cropped away), resize (box = image)
    and centre crop / tiles (box inside the image) are all undone exactly.

    Several views are fused as attention *density*: each view's upsampled map is divided by its
    cell area in original pixels (a view with four times as many, four times smaller cells
    spreads the same attention over four times as many tokens) and the views covering a pixel
    are summed, the result multiplied by the largest cell area so that a single view's map is
    returned unchanged. Pixels covered by no view get the minimum of the map over all views'
    cells (never NaN).

    Args:
        map_: ``[N]`` map (torch or numpy).
        views: the views of the trace.
        image_size: ``(W, H)`` of the original image.

    Returns:
        ``np.ndarray`` float32 ``[H, W]``.
    """
    W, H = int(image_size[0]), int(image_size[1])
    m = _as_tensor(map_)
    if m.dim() != 1:
        raise ValueError(f"map must be [N], got {tuple(m.shape)}")
    m = torch.nan_to_num(m.double())
    total = np.zeros((H, W), dtype=np.float64)
    count = np.zeros((H, W), dtype=np.float64)
    lows = []
    largest = max((v.cell_size[0] * v.cell_size[1] for v in views), default=1.0)
    for v in views:
        grid = v.to_grid(m).numpy()  # [h, w]
        lows.append(grid.min())
        h, w = v.grid
        x0, y0, x1, y1 = v.box
        ja, jb = _covered(x0, x1, W)
        ia, ib = _covered(y0, y1, H)
        if ja >= jb or ia >= ib:
            continue
        cw, ch = (x1 - x0) / w, (y1 - y0) / h
        u = (np.arange(ja, jb) + 0.5 - x0) / cw - 0.5
        r = (np.arange(ia, ib) + 0.5 - y0) / ch - 0.5
        up = _cubic_weights(r, h) @ grid @ _cubic_weights(u, w).T
        weight = largest / (cw * ch)
        total[ia:ib, ja:jb] += up if weight == 1.0 else up * weight
        count[ia:ib, ja:jb] += 1
    fill = min(lows) if lows else 0.0
    out = np.full((H, W), fill, dtype=np.float64)
    hit = count > 0
    out[hit] = total[hit]
    return out.astype(np.float32)


def peaks(
    image_map: np.ndarray, k: int = 1, min_distance: int | None = None, prominence: float = 0.1
) -> np.ndarray:
    """The ``k`` highest separated peaks of an image-frame map.

    Args:
        image_map: ``[H, W]`` map (e.g. from :func:`to_image`).
        k: how many peaks. ``k = 1`` is the plain argmax (first maximum in row-major order, the
            paper's point). For ``k > 1``: candidates are ``skimage.feature.peak_local_max``
            local maxima, highest first; a candidate of value ``v`` is kept when it is at least
            ``min_distance`` pixels (Chebyshev) from every kept peak **and** lies on a separate
            hill: in a different 8-connected component of ``map > v - prominence · (max - min)``
            than every kept peak (the map dips by at least that much between them). The global
            argmax is always first.
        min_distance: peak separation in pixels; default ``max(1, round(0.05 · min(H, W)))``.
        prominence: the dip, as a fraction of the map's range, that separates two hills.

    Returns:
        ``np.ndarray`` float64 ``[k', 2]`` of ``(x, y)`` **pixel centres** in continuous
        coordinates: ``(column + 0.5, row + 0.5)``; ``int(x), int(y)`` index the pixel. ``k' ≤ k``
        when the map has fewer separated peaks (``k' ≥ 1`` always).
    """
    a = np.asarray(image_map, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"image_map must be a non-empty [H, W] array, got shape {a.shape}")
    if k < 1:
        raise ValueError("k must be >= 1")
    finite = np.isfinite(a)
    a = np.where(finite, a, a[finite].min() if finite.any() else 0.0)
    i, j = np.unravel_index(int(np.argmax(a)), a.shape)
    found = [(int(i), int(j))]
    if k > 1:
        from scipy import ndimage
        from skimage.feature import peak_local_max

        if min_distance is None:
            min_distance = max(1, round(0.05 * min(a.shape)))
        drop = prominence * (a.max() - a.min())
        cand = peak_local_max(a, min_distance=int(min_distance), num_peaks=8 * k, exclude_border=False)
        eight = np.ones((3, 3), dtype=bool)
        for ci, cj in cand:
            if len(found) >= k:
                break
            ci, cj = int(ci), int(cj)
            if any(max(abs(ci - fi), abs(cj - fj)) < min_distance for fi, fj in found):
                continue
            labels, _ = ndimage.label(a > a[ci, cj] - drop, structure=eight)
            if all(labels[fi, fj] != labels[ci, cj] for fi, fj in found):
                found.append((ci, cj))
    return np.array([[j + 0.5, i + 0.5] for i, j in found], dtype=np.float64)


def threshold_region(
    image_map: np.ndarray,
    points: np.ndarray | None = None,
    threshold: str | float = "otsu",
    fill_holes: bool = True,
) -> np.ndarray:
    """The thresholded map's connected region(s) containing the given points.

    The map is rescaled to ``[0, 1]`` (min → 0, max → 1). Foreground is ``map ≥ t`` where ``t``
    is Otsu's threshold of the rescaled map (``threshold="otsu"``) or the given fraction of the
    peak (``threshold=0.5``: half-way between min and max). The result is the union of the
    8-connected foreground components that contain a point (default: the argmax pixel), with
    holes filled when ``fill_holes``. A point on background contributes nothing.

    Args:
        image_map: ``[H, W]`` float map.
        points: ``[P, 2]`` ``(x, y)`` continuous coordinates (pixel ``(int(y), int(x))``).
        threshold: ``"otsu"`` or a float in ``[0, 1]``.
        fill_holes: fill holes enclosed by the region.

    Returns:
        ``[H, W]`` bool mask.
    """
    from scipy import ndimage

    a = np.nan_to_num(np.asarray(image_map, dtype=np.float64))
    H, W = a.shape
    lo, hi = a.min(), a.max()
    if hi <= lo:
        return np.ones((H, W), dtype=bool)  # flat map: nothing to separate
    s = (a - lo) / (hi - lo)
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise ValueError(f"unknown threshold {threshold!r}; use 'otsu' or a float in [0, 1]")
        from skimage.filters import threshold_otsu

        t = float(threshold_otsu(s))
    else:
        t = float(threshold)
    fg = s >= t
    labels, _ = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    if points is None:
        points = peaks(a, 1)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    keep = set()
    for x, y in pts:
        j, i = min(max(int(math.floor(x)), 0), W - 1), min(max(int(math.floor(y)), 0), H - 1)
        if labels[i, j]:
            keep.add(int(labels[i, j]))
    mask = np.isin(labels, sorted(keep)) if keep else np.zeros((H, W), dtype=bool)
    if fill_holes and keep:
        mask = ndimage.binary_fill_holes(mask)
    return mask


def trace_image_map(
    trace,
    token_indices: Sequence[int],
    *,
    aggregate: str = "mean",
    normalisation: str = "mean",
    sinks: str = "none",
    k: float = 5.0,
    layers=None,
    heads=None,
    views: str = "fused",
) -> np.ndarray:
    """Steps 1–4 in one call: a phrase's ``[H, W]`` float32 map in the original image frame.

    ``trace.token_maps(layers, heads)`` → :func:`phrase_map` (``aggregate``) → :func:`normalise`
    (``normalisation``, over all the trace's tokens) → :func:`suppress_sinks` (``sinks``, ``k``,
    per view) → :func:`to_image` through ``select_views(trace.views, views)`` at
    ``trace.image_size``.
    """
    chosen = select_views(trace.views, views)
    tm = trace.token_maps(layers=layers, heads=heads)
    m = phrase_map(tm, token_indices, aggregate)
    m = normalise(m, tm, normalisation)
    m = suppress_sinks(m, tm, chosen, sinks, k=k)
    return to_image(m, chosen, trace.image_size)
