"""``threshold`` refiner: the attention heatmap itself, thresholded. No weights, no image cues.

For each prompt: the heatmap is rescaled to ``[0, 1]``; foreground is ``heat ≥ t`` with ``t``
Otsu's threshold of the rescaled map (default) or a fixed fraction of the peak; the mask is the
union of the 8-connected foreground components that contain a positive point (the heatmap's argmax
when the prompt has none), holes filled, and clipped to the prompt's box when it has one
(:func:`attendseg.maps.threshold_region`). Score: mean rescaled heat inside the mask minus
outside, clipped to ``[0, 1]``. Negative points are ignored (only components around positives
are ever kept).
"""

from __future__ import annotations

import numpy as np

from ..errors import AttendsegError
from .base import MaskResult, Prompt, as_rgb, box_mask, heat_score, rescale01


class ThresholdRefiner:
    """The heatmap thresholded into a mask.

    Args:
        threshold: ``"otsu"`` (default) or a float in ``[0, 1]``: a fraction of the way from the
            map's minimum to its peak.
        fill_holes: fill holes in the region.
    """

    name = "threshold"

    def __init__(self, threshold: str | float = "otsu", fill_holes: bool = True):
        if not (threshold == "otsu" or isinstance(threshold, (int, float))):
            raise AttendsegError(f"threshold must be 'otsu' or a float in [0, 1], got {threshold!r}")
        self.threshold = threshold
        self.fill_holes = fill_holes
        self._shape: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray) -> None:
        """Only records the image size (the image itself is not used)."""
        self._shape = as_rgb(image).shape[:2]

    def refine(self, prompts: list[Prompt]) -> list[MaskResult]:
        """One mask per prompt; every prompt needs a ``heatmap`` of the image's size."""
        from ..maps import threshold_region

        if self._shape is None:
            raise AttendsegError("call set_image(image) before refine(prompts)")
        out = []
        for p in prompts:
            if p.heatmap is None:
                raise AttendsegError("the threshold refiner needs Prompt.heatmap (see map_prompt)")
            if p.heatmap.shape != self._shape:
                raise AttendsegError(f"heatmap shape {p.heatmap.shape} != image shape {self._shape}")
            heat = rescale01(p.heatmap)
            pos = p.positives
            if len(pos) == 0:
                from ..maps import peaks

                pos = peaks(heat, 1)
            mask = threshold_region(heat, pos, self.threshold, self.fill_holes)
            if p.box is not None:
                mask &= box_mask(p.box, self._shape)
            out.append(MaskResult(mask=mask, score=heat_score(heat, mask)))
        return out
