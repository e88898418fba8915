"""The refiner protocol, its prompt and result types, and prompt helpers.

A refiner turns prompts (points, an optional box, the attention heatmap) on one image into one
mask per prompt. Like segment-anything's predictor: :meth:`Refiner.set_image` does the expensive
per-image work once (SAM's image embedding, superpixels), :meth:`Refiner.refine` answers all of
the image's prompts in one call (SAM: one batched decoder pass).

Coordinates are original-image pixels, continuous, as in :mod:`attendseg.views`: ``(x, y)``, x
right, y down, pixel ``(i, j)`` covering ``[j, j+1) × [i, i+1)``. The points made by
:func:`map_prompt` are pixel centres ``(column + 0.5, row + 0.5)``; ``(int(x), int(y))`` indexes
the pixel. Boxes are ``(x0, y0, x1, y1)`` with ``x1, y1`` exclusive edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import AttendsegError


@dataclass
class Prompt:
    """One phrase's prompt, in original-image pixel coordinates.

    Attributes:
        points: ``[P, 2]`` float ``(x, y)`` (``P`` may be 0 when a box is given).
        labels: ``[P]`` int, 1 positive / 0 negative.
        box: ``[4]`` ``(x0, y0, x1, y1)`` or None.
        heatmap: ``[H, W]`` float32 attention map in the image frame (from
            :func:`attendseg.maps.to_image`) or None. Weight-free refiners need it; SAM ignores it.
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.labels.shape[0] != self.points.shape[0]:
            raise ValueError(f"{self.points.shape[0]} points but {self.labels.shape[0]} labels")
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float64).reshape(4)
        if self.heatmap is not None:
            self.heatmap = np.asarray(self.heatmap, dtype=np.float32)
            if self.heatmap.ndim != 2:
                raise ValueError(f"heatmap must be [H, W], got shape {self.heatmap.shape}")

    @property
    def positives(self) -> np.ndarray:
        """``[P+, 2]`` the positive points."""
        return self.points[self.labels == 1]

    @property
    def negatives(self) -> np.ndarray:
        """``[P-, 2]`` the negative points."""
        return self.points[self.labels == 0]


@dataclass
class MaskResult:
    """One prompt's mask.

    Attributes:
        mask: ``[H, W]`` bool, the original image's size.
        score: the refiner's confidence (SAM: its predicted IoU of the chosen mask; superpixel /
            threshold: mean of the [0, 1]-rescaled heatmap inside the mask minus its mean
            outside, clipped to [0, 1]; 0.0 for an empty mask).
        index: which of several candidate masks was chosen (SAM's multimask output index), or 0.
    """

    mask: np.ndarray
    score: float
    index: int = 0


@runtime_checkable
class Refiner(Protocol):
    """Prompts → masks on one image. See the module docstring."""

    name: str

    def set_image(self, image: np.ndarray) -> None:
        """``[H, W, 3]`` uint8 RGB. Does and caches the expensive per-image work."""
        ...

    def refine(self, prompts: list[Prompt]) -> list[MaskResult]:
        """One :class:`MaskResult` per prompt, in order, masks ``[H, W]`` bool."""
        ...


# ----------------------------------------------------------------------------- helpers
def as_rgb(image) -> np.ndarray:
    """An image (``[H, W]``, ``[H, W, 1|3|4]`` array of any int/float dtype, or a PIL image) →
    ``[H, W, 3]`` uint8 RGB. Floats are taken as ``[0, 1]``; 16-bit as ``[0, 65535]``."""
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL
        image = np.asarray(image.convert("RGB"))
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise AttendsegError(f"expected an [H, W, 3] RGB image, got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[..., :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        return (a / 257.0).round().astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        return (np.clip(np.nan_to_num(a), 0, 1) * 255).round().astype(np.uint8)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    return np.clip(a, 0, 255).astype(np.uint8)


def heat_score(heat01: np.ndarray, mask: np.ndarray) -> float:
    """Mean of a [0, 1] heatmap inside ``mask`` minus outside, clipped to [0, 1] (0 if empty)."""
    if not mask.any():
        return 0.0
    inside = float(heat01[mask].mean())
    outside = float(heat01[~mask].mean()) if (~mask).any() else 0.0
    return float(np.clip(inside - outside, 0.0, 1.0))


def rescale01(heatmap: np.ndarray) -> np.ndarray:
    """Min-max rescale to [0, 1] (float64); a flat map becomes all ones."""
    a = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    lo, hi = a.min(), a.max()
    if hi <= lo:
        return np.ones_like(a)
    return (a - lo) / (hi - lo)


def point_pixels(points: np.ndarray, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """``(x, y)`` continuous points → ``(row, col)`` pixel indices, clamped into the image."""
    H, W = shape
    out = []
    for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2):
        out.append((min(max(int(np.floor(y)), 0), H - 1), min(max(int(np.floor(x)), 0), W - 1)))
    return out


def box_mask(box, shape: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` bool: pixels whose centre lies in ``box`` ``(x0, y0, x1, y1)``."""
    H, W = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    ys = np.arange(H) + 0.5
    xs = np.arange(W) + 0.5
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight ``(x0, y0, x1, y1)`` box of a bool mask (pixel edges, x1/y1 exclusive), None if empty."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def map_prompt(
    image_map: np.ndarray,
    k: int = 1,
    *,
    min_distance: int | None = None,
    box: bool = False,
    threshold: str | float = "otsu",
    heatmap: bool = True,
) -> Prompt:
    """A :class:`Prompt` from an image-frame map: its peak point(s) as positives.

    Args:
        image_map: ``[H, W]`` map (from :func:`attendseg.maps.to_image`).
        k: number of positive points: the argmax, then further separated peaks
            (:func:`attendseg.maps.peaks`). All go into *one* prompt (one mask); for one mask per
            instance use :func:`instance_prompts`.
        min_distance: peak separation for ``k > 1``.
        box: also give the box of :func:`attendseg.maps.threshold_region` around the points
            (``threshold`` as there).
        heatmap: attach ``image_map`` as the prompt's heatmap (weight-free refiners need it).

    Returns:
        a Prompt with points ``[k', 2]`` pixel centres, labels all 1.
    """
    from ..maps import peaks, threshold_region

    pts = peaks(image_map, k=k, min_distance=min_distance)
    b = None
    if box:
        b = mask_box(threshold_region(image_map, pts, threshold=threshold))
    return Prompt(
        points=pts,
        labels=np.ones(len(pts), dtype=np.int64),
        box=b,
        heatmap=np.asarray(image_map, dtype=np.float32) if heatmap else None,
    )


def instance_prompts(
    image_map: np.ndarray,
    k: int,
    *,
    min_distance: int | None = None,
    box: bool = False,
    threshold: str | float = "otsu",
    heatmap: bool = True,
) -> list[Prompt]:
    """One single-point :class:`Prompt` per separated peak (up to ``k``): one mask per instance.

    Arguments as :func:`map_prompt`; each prompt's box (when ``box``) is the thresholded region
    around its own peak.
    """
    from ..maps import peaks, threshold_region

    hm = np.asarray(image_map, dtype=np.float32) if heatmap else None
    out = []
    for p in peaks(image_map, k=k, min_distance=min_distance):
        b = mask_box(threshold_region(image_map, p[None], threshold=threshold)) if box else None
        out.append(Prompt(points=p[None], labels=np.ones(1, dtype=np.int64), box=b, heatmap=hm))
    return out
