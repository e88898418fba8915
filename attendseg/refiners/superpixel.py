"""``superpixel`` refiner: weight-free masks that follow image edges, placed by the attention.

``set_image`` cuts the image into superpixels once (scikit-image SLIC or Felzenszwalb, on a copy
downscaled to at most ``max_side`` pixels; labels are mapped back to full resolution by nearest
neighbour) and caches each superpixel's mean CIE-Lab colour and the superpixel adjacency graph.

``refine``, per prompt:

1. The heatmap is rescaled to ``[0, 1]``; ``heat(s)`` is its mean over superpixel ``s``.
2. Seeds: the superpixels under the positive points (the heatmap's argmax when there are none);
   ``peak = max(heat(seeds))``.
3. Region growing over the adjacency graph (breadth first from the seeds): a neighbour ``n`` of an
   accepted superpixel ``a`` is accepted when

   * ``heat(n) ≥ fraction · peak`` (attention says it belongs to the phrase), **and**
   * ``ΔE(n, a) ≤ color_tol`` (its mean Lab colour is close to its accepted neighbour's: the region
     does not cross an image edge; comparing neighbours, not the seed, lets it follow shading), or
     ``heat(n) ≥ strong · peak`` (attention is so high that an internal edge does not stop it).

   Superpixels under negative points are never accepted. ``color_tol=None`` drops the colour test
   (pure attention-weighted growth).
4. The accepted superpixels form the mask; enclosed holes are filled; a prompt box clips it.

Score: mean rescaled heat inside the mask minus outside, clipped to ``[0, 1]``. A prompt without
a heatmap is grown on colour alone (uniform heat).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ..errors import AttendsegError
from .base import MaskResult, Prompt, as_rgb, box_mask, heat_score, point_pixels, rescale01

METHODS = ("slic", "felzenszwalb")


class SuperpixelRefiner:
    """Superpixels grown from the peak, weighted by the attention heatmap (module docstring).

    Args:
        method: ``"slic"`` (default) or ``"felzenszwalb"``.
        n_segments: SLIC's target number of superpixels.
        compactness: SLIC's compactness (higher: squarer superpixels).
        scale, sigma, min_size: Felzenszwalb's parameters (``min_size`` in pixels of the
            downscaled image).
        max_side: the long side the image is downscaled to for segmentation (speed).
        fraction: heat gate, a fraction of the seed superpixels' heat.
        color_tol: largest Lab colour difference (ΔE 1976) between adjacent accepted superpixels;
            None disables the colour test.
        strong: heat fraction above which colour is not checked.
        fill_holes: fill holes enclosed by the mask.
    """

    name = "superpixel"

    def __init__(
        self,
        method: str = "slic",
        n_segments: int = 400,
        compactness: float = 20.0,
        scale: float = 100.0,
        sigma: float = 0.8,
        min_size: int = 50,
        max_side: int = 512,
        fraction: float = 0.3,
        color_tol: float | None = 12.0,
        strong: float = 0.85,
        fill_holes: bool = True,
    ):
        if method not in METHODS:
            raise AttendsegError(f"unknown superpixel method {method!r}; choose one of {METHODS}")
        self.method = method
        self.n_segments = n_segments
        self.compactness = compactness
        self.scale = scale
        self.sigma = sigma
        self.min_size = min_size
        self.max_side = max_side
        self.fraction = fraction
        self.color_tol = color_tol
        self.strong = strong
        self.fill_holes = fill_holes
        self.labels: np.ndarray | None = None  # [H, W] int, full resolution
        self.colors: np.ndarray | None = None  # [S, 3] mean Lab
        self.neighbours: list[np.ndarray] = []

    # ------------------------------------------------------------------------------ image
    def set_image(self, image: np.ndarray) -> None:
        """Segment ``image`` (``[H, W, 3]`` uint8 RGB) into superpixels; cache colours and graph."""
        from skimage.color import rgb2lab
        from skimage.segmentation import felzenszwalb, slic
        from skimage.transform import resize

        rgb = as_rgb(image)
        H, W = rgb.shape[:2]
        f = min(1.0, self.max_side / max(H, W))
        h, w = max(1, round(H * f)), max(1, round(W * f))
        small = rgb if (h, w) == (H, W) else resize(rgb, (h, w), anti_aliasing=True, preserve_range=True)
        small = np.asarray(small, dtype=np.float64) / 255.0
        if self.method == "slic":
            lab = slic(small, n_segments=self.n_segments, compactness=self.compactness, start_label=0, convert2lab=True)
        else:
            lab = felzenszwalb(small, scale=self.scale, sigma=self.sigma, min_size=self.min_size)
        _, lab = np.unique(lab, return_inverse=True)
        lab = lab.reshape(h, w).astype(np.int64)
        S = int(lab.max()) + 1
        # full-resolution labels by nearest neighbour (pixel centres)
        ri = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
        ci = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
        self.labels = lab[ri[:, None], ci[None, :]]
        # mean Lab colour per superpixel (on the small image)
        lab_img = rgb2lab(small).reshape(-1, 3)
        counts = np.maximum(np.bincount(lab.ravel(), minlength=S), 1)
        self.colors = np.stack(
            [np.bincount(lab.ravel(), weights=lab_img[:, c], minlength=S) / counts for c in range(3)], 1
        )
        # adjacency from 4-neighbour pixel pairs
        pairs = np.concatenate(
            [
                np.stack([lab[:, :-1].ravel(), lab[:, 1:].ravel()], 1),
                np.stack([lab[:-1, :].ravel(), lab[1:, :].ravel()], 1),
            ]
        )
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        pairs = np.unique(np.sort(pairs, 1), axis=0)
        nb: list[list[int]] = [[] for _ in range(S)]
        for a, b in pairs:
            nb[a].append(int(b))
            nb[b].append(int(a))
        self.neighbours = [np.array(n, dtype=np.int64) for n in nb]

    @property
    def n_superpixels(self) -> int:
        return 0 if self.colors is None else len(self.colors)

    # ------------------------------------------------------------------------------ prompts
    def refine(self, prompts: list[Prompt]) -> list[MaskResult]:
        """One mask per prompt (module docstring); heatmaps must have the image's size."""
        if self.labels is None:
            raise AttendsegError("call set_image(image) before refine(prompts)")
        return [self._one(p) for p in prompts]

    def _one(self, p: Prompt) -> MaskResult:
        from scipy import ndimage

        shape = self.labels.shape
        S = self.n_superpixels
        flat = self.labels.ravel()
        counts = np.maximum(np.bincount(flat, minlength=S), 1)
        if p.heatmap is not None:
            if p.heatmap.shape != shape:
                raise AttendsegError(f"heatmap shape {p.heatmap.shape} != image shape {shape}")
            heat01 = rescale01(p.heatmap)
            heat = np.bincount(flat, weights=heat01.ravel(), minlength=S) / counts
        else:
            heat01 = np.ones(shape)
            heat = np.ones(S)
        pos = p.positives
        if len(pos) == 0:
            i, j = np.unravel_index(int(np.argmax(heat01)), shape)
            seeds = {int(self.labels[i, j])}
        else:
            seeds = {int(self.labels[i, j]) for i, j in point_pixels(pos, shape)}
        banned = {int(self.labels[i, j]) for i, j in point_pixels(p.negatives, shape)} - seeds
        peak = max(heat[s] for s in seeds)
        gate = self.fraction * peak
        accepted = np.zeros(S, dtype=bool)
        for s in seeds:
            accepted[s] = True
        queue = deque(seeds)
        while queue:
            a = queue.popleft()
            for n in self.neighbours[a]:
                if accepted[n] or n in banned or heat[n] < gate:
                    continue
                if self.color_tol is not None and heat[n] < self.strong * peak:
                    if np.linalg.norm(self.colors[n] - self.colors[a]) > self.color_tol:
                        continue
                accepted[n] = True
                queue.append(n)
        mask = accepted[self.labels]
        if self.fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        if p.box is not None:
            mask &= box_mask(p.box, shape)
        return MaskResult(mask=mask, score=heat_score(heat01, mask))
