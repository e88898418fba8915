"""LLaVA-OneVision family (``LlavaOnevisionForConditionalGeneration``): LLaVA-NeXT's layout
(:mod:`attendseg.adapters.llava_next` holds the shared any-resolution geometry) plus
``anyres_max_N``: when the unpadded grid holds more than about N tiles' worth of cells, the model
shrinks it bilinearly (``align_corners=False``) to ``(int(h // ratio), int(w // ratio))`` with
``ratio = sqrt(h · w / (N · side²))`` (only when ``ratio > 1.1``). The shrunk grid covers the
same original-image box, with proportionally larger cells. Single-image rows only (one image per
prompt), as attendseg sends them; the processor's video part is not needed.
"""

from __future__ import annotations

import math

from . import register_adapter
from .llava_next import LlavaNextAdapter


@register_adapter
class LlavaOnevisionAdapter(LlavaNextAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)
    model_class = "LlavaOnevisionForConditionalGeneration"
    hub_ids = ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-hf/llava-onevision-qwen2-7b-ov-hf")
    layout = ("base image (27 × 27 at 384 px) + the stitched tile grid of the best-fit resolution (up to 6 × 6 "
              "tiles), padding cut, shrunk to about 9 tiles' worth of cells, a newline token closing each row")

    def stitched_grid(self, rows: int, cols: int, side: int) -> tuple[int, int]:
        """``anyres_max_N``: the model's ``int(rows // ratio), int(cols // ratio)`` when
        ``ratio = sqrt(rows · cols / (N · side²)) > 1.1``, else the grid unchanged."""
        most = int(self.model.config.vision_aspect_ratio.strip("anyres_max_"))
        ratio = math.sqrt(rows * cols / (most * side**2))
        if ratio > 1.1:
            return int(rows // ratio), int(cols // ratio)
        return rows, cols

    def never_generated(self) -> list[int]:
        return [*super().never_generated(), getattr(self.model.config, "video_token_id", None)]
