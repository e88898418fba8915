"""COCO run-length encoding (RLE) in numpy, byte-for-byte compatible with pycocotools.

pycocotools is an optional extra; this module needs only numpy and produces (and reads) exactly
the same compressed RLE as ``pycocotools.mask.encode``:

* A mask ``[H, W]`` is flattened in **column-major (Fortran) order** (down the first column, then
  the next, …) and cut into alternating runs of 0s and 1s, starting with 0s (so the first count
  is 0 when the mask's top-left pixel is set).
* The counts are compressed into an ASCII string: from the fourth count on, each count is stored
  as the difference to the count two places before; every value is written as little-endian
  5-bit groups with a continuation bit (0x20) and sign extension from bit 0x10, each group
  offset by 48 (``'0'``).
* The RLE object is ``{"size": [H, W], "counts": "<ascii string>"}``. This module returns
  ``counts`` as :class:`str` (JSON-ready); pycocotools returns ``bytes``. Both kinds, and
  uncompressed RLE (``counts`` a list of ints), are accepted as input everywhere.

Every non-zero pixel counts as "in the mask".

Boxes follow the COCO convention ``[x, y, width, height]`` in pixels (x right, y down), as
``pycocotools.mask.toBbox`` returns them; :func:`to_xyxy` gives ``(x0, y0, x1, y1)`` with
``x1 = x + width`` (pixel edges, the convention of :mod:`attendseg.views`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "encode",
    "decode",
    "area",
    "to_bbox",
    "to_xyxy",
    "mask_to_bbox",
    "mask_to_xyxy",
    "iou",
    "counts_from_mask",
    "counts_to_string",
    "counts_from_string",
]

RLE = Mapping[str, Any]


# --------------------------------------------------------------------------- counts ↔ mask


def counts_from_mask(mask: np.ndarray) -> np.ndarray:
    """Uncompressed run lengths (int64) of a 2-D mask, column-major, first run = zeros."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask [H, W], got shape {mask.shape}")
    flat = mask.ravel(order="F") != 0
    n = flat.size
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], change, [n]))
    runs = np.diff(edges).astype(np.int64)
    if flat[0]:
        runs = np.concatenate(([0], runs))
    return runs


def _counts_to_mask(counts: np.ndarray, h: int, w: int) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size and counts.min() < 0:
        raise ValueError("invalid RLE: negative run length")
    if int(counts.sum()) != h * w:
        raise ValueError(f"invalid RLE: runs sum to {int(counts.sum())}, expected {h}*{w}={h * w}")
    values = (np.arange(counts.size) % 2).astype(bool)
    flat = np.repeat(values, counts)
    return flat.reshape((h, w), order="F")


# --------------------------------------------------------------------------- string codec


def counts_to_string(counts: Sequence[int] | np.ndarray) -> str:
    """Compress uncompressed run lengths into pycocotools' ASCII form (vectorised)."""
    cnts = np.asarray(counts, dtype=np.int64).ravel()
    if cnts.size == 0:
        return ""
    x = cnts.copy()
    if cnts.size > 3:
        x[3:] = cnts[3:] - cnts[1:-2]
    # At most ceil(64 / 5) groups per value; emit groups column by column.
    groups = []
    active = np.ones(x.size, dtype=bool)
    for _ in range(13):
        c = x & 0x1F
        x = x >> 5  # arithmetic shift, as in C for signed long
        more = np.where((c & 0x10) != 0, x != -1, x != 0)
        c = np.where(more, c | 0x20, c) + 48
        groups.append(np.where(active, c, -1))
        active = active & more
        if not active.any():
            break
    table = np.stack(groups, axis=1).ravel()
    return table[table >= 0].astype(np.uint8).tobytes().decode("ascii")


def counts_from_string(s: str | bytes) -> np.ndarray:
    """Decompress pycocotools' ASCII counts into run lengths (int64, vectorised)."""
    if isinstance(s, str):
        s = s.encode("ascii")
    if len(s) == 0:
        return np.zeros(0, dtype=np.int64)
    c = np.frombuffer(s, dtype=np.uint8).astype(np.int64) - 48
    if c.min() < 0 or c.max() > 63:
        raise ValueError("invalid RLE string: character outside '0'..'o'")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("invalid RLE string: truncated value")
    ends = ~more
    value_id = np.concatenate(([0], np.cumsum(ends)[:-1]))
    starts = np.flatnonzero(np.concatenate(([True], ends[:-1])))
    k = np.arange(c.size) - starts[value_id]  # group index within its value
    if k.max() > 11:
        raise ValueError("invalid RLE string: value too long")
    parts = (c & 0x1F) << (5 * k)
    x = np.add.reduceat(parts, starts)
    last = c[ends]
    nk = k[ends] + 1
    neg = (last & 0x10) != 0
    x = np.where(neg, x | (np.int64(-1) << (5 * nk)), x)
    # Undo the delta coding: cnts[i] = x[i] + cnts[i-2] for i > 2.
    cnts = x.copy()
    if cnts.size > 3:
        odd = cnts[1::2]  # indices 1, 3, 5, …: cumulative from index 1
        cnts[1::2] = np.cumsum(odd)
        even = cnts[2::2]  # indices 2, 4, …: cumulative from index 2
        cnts[2::2] = np.cumsum(even)
    # pycocotools stores counts as uint32.
    return cnts & 0xFFFFFFFF


# --------------------------------------------------------------------------- public API


def encode(mask: np.ndarray) -> dict:
    """Encode a 2-D mask ``[H, W]`` (bool or any numeric dtype; non-zero = set) as compressed RLE.

    Returns ``{"size": [H, W], "counts": str}``; ``counts`` equals
    ``pycocotools.mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask [H, W], got shape {mask.shape}")
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": counts_to_string(counts_from_mask(mask))}


def _size(rle: RLE) -> tuple[int, int]:
    try:
        h, w = rle["size"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError("invalid RLE: needs 'size': [H, W]") from e
    return int(h), int(w)


def _counts(rle: RLE) -> np.ndarray:
    counts = rle.get("counts") if isinstance(rle, Mapping) else None
    if counts is None:
        raise ValueError("invalid RLE: needs 'counts'")
    if isinstance(counts, (str, bytes)):
        return counts_from_string(counts)
    return np.asarray(counts, dtype=np.int64).ravel()  # uncompressed RLE


def decode(rle: RLE) -> np.ndarray:
    """Decode an RLE (compressed str/bytes counts, or an uncompressed list) into a bool ``[H, W]``.

    pycocotools returns uint8 (Fortran order); this returns bool (C order) with the same values.
    """
    h, w = _size(rle)
    return _counts_to_mask(_counts(rle), h, w)


def area(rle_or_mask: RLE | np.ndarray) -> int:
    """Number of set pixels (``pycocotools.mask.area``)."""
    if isinstance(rle_or_mask, Mapping):
        return int(_counts(rle_or_mask)[1::2].sum())
    return int(np.count_nonzero(rle_or_mask))


def to_bbox(rle_or_mask: RLE | np.ndarray) -> list[float]:
    """Tight COCO box ``[x, y, width, height]`` (floats), all zeros for an empty mask.

    Equal to ``pycocotools.mask.toBbox``: x/y are the first set column/row; width/height count
    pixels, so the box's right edge is ``x + width`` (one past the last set column).
    """
    if isinstance(rle_or_mask, Mapping):
        h, _ = _size(rle_or_mask)
        cnts = _counts(rle_or_mask)
        m = (cnts.size // 2) * 2
        if m == 0 or h == 0:
            return [0.0, 0.0, 0.0, 0.0]
        cnts = cnts[:m]
        ends = np.cumsum(cnts)
        first = ends[0::2]  # flat index of the first pixel of each run of ones
        last = ends[1::2] - 1  # flat index of its last pixel
        ones = cnts[1::2] > 0
        if not ones.any():
            return [0.0, 0.0, 0.0, 0.0]
        first, last = first[ones], last[ones]
        xs, ys = first // h, first % h
        xe, ye = last // h, last % h
        x0, x1 = int(xs.min()), int(xe.max())
        if (xe > xs).any():  # a run wraps from one column into the next: full height
            y0, y1 = 0, h - 1
        else:
            y0, y1 = int(min(ys.min(), ye.min())), int(max(ys.max(), ye.max()))
        return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]
    return mask_to_bbox(rle_or_mask)


def mask_to_bbox(mask: np.ndarray) -> list[float]:
    """Tight COCO box ``[x, y, width, height]`` of a 2-D mask; zeros when empty."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask [H, W], got shape {mask.shape}")
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    rows = np.flatnonzero(mask.any(axis=1))
    x0, x1, y0, y1 = cols[0], cols[-1], rows[0], rows[-1]
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def to_xyxy(bbox_xywh: Sequence[float]) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` → ``(x0, y0, x1, y1)`` (pixel edges)."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    return x, y, x + w, y + h


def mask_to_xyxy(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight ``(x0, y0, x1, y1)`` box of a mask in pixel-edge coordinates, or None when empty."""
    mask = np.asarray(mask)
    if not mask.any():
        return None
    return to_xyxy(mask_to_bbox(mask))


def iou(dt: Sequence[RLE | np.ndarray], gt: Sequence[RLE | np.ndarray], iscrowd=None) -> np.ndarray:
    """IoU matrix ``[len(dt), len(gt)]`` float64 like ``pycocotools.mask.iou`` for masks.

    For a crowd ground truth (``iscrowd[j]`` true) the denominator is the area of the detection.
    A pair with an empty union (or an empty mask) scores 0. Items may be RLEs or 2-D masks.
    (The one implementation is :func:`attendseg.metrics.iou_matrix`.)
    """
    from .metrics import iou_matrix

    return iou_matrix(list(dt), list(gt), iscrowd)
