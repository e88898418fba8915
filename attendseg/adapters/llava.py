"""LLaVA-1.5 family (``LlavaForConditionalGeneration``): one square image, one token grid.

The processor either resizes the short side and centre-crops (llava-hf) or pads to a square
first (``do_pad=True``, the original LLaVA code); :func:`processor_box` follows the processor's
own steps so the View's box is the exact original-image region the token grid sees.
"""

from __future__ import annotations

import numpy as np

from ..errors import AttendsegError
from ..views import View
from . import Adapter, register_adapter


@register_adapter
class LlavaAdapter(Adapter):
    shared_prefix = True
    family = "llava"
    model_types = ("llava",)
    model_class = "LlavaForConditionalGeneration"
    hub_ids = ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf")
    layout = "one square grid (24 × 24 at 336 px): centre crop or pad-to-square, mapped to original pixels"

    @property
    def language_model(self):
        return self.model.model.language_model

    def row_views(self, batch, row, image) -> list[View]:
        """One grid: the output tensor's size (``pixel_values`` ``[B, 3, h·p, w·p]``) over the
        patch size, covering the original-image box the processor's steps keep."""
        box, expected = processor_box(self.processor.image_processor, *image.size)
        out_h, out_w = batch["pixel_values"].shape[-2:]
        if (out_h, out_w) != tuple(expected):
            raise AttendsegError(f"the image processor returned {out_h}×{out_w} pixels where its settings "
                                 f"give {expected[0]}×{expected[1]}: unsupported image processor")
        patch = self.processor.patch_size
        return [View(start=0, grid=(out_h // patch, out_w // patch), box=box)]


def processor_box(image_processor, width: int, height: int):
    """The original-image box a square-input image processor turns into its output tensor.

    Follows the processor's steps (optional pad to square, resize, optional centre crop) with
    transformers' own size rules.

    Returns:
        ``((x0, y0, x1, y1), (out_height, out_width))``: the box in original pixels (it may stick
        out of the image where the processor padded) and the output tensor's size.
    """
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.image_utils import ChannelDimension

    def get(name, default=None):
        value = getattr(image_processor, name, default)
        return default if value is None else value

    x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
    cur_w, cur_h = width, height
    if get("do_pad", False):
        side = max(width, height)
        ox, oy = (side - width) // 2, (side - height) // 2
        x0, y0, x1, y1 = -ox, -oy, side - ox, side - oy
        cur_w = cur_h = side
    if get("do_resize", True):
        size = dict(get("size", {}))
        if size.get("shortest_edge") and not size.get("longest_edge"):
            new_h, new_w = get_resize_output_image_size(
                np.zeros((1, cur_h, cur_w), dtype=np.uint8),
                size=size["shortest_edge"],
                default_to_square=False,
                input_data_format=ChannelDimension.FIRST,
            )
        elif size.get("height") and size.get("width"):
            new_h, new_w = size["height"], size["width"]
        else:
            raise NotImplementedError(f"unsupported image processor size {size}")
    else:
        new_h, new_w = cur_h, cur_w
    scale_x, scale_y = new_w / (x1 - x0), new_h / (y1 - y0)
    out_h, out_w = new_h, new_w
    if get("do_center_crop", False):
        crop = dict(get("crop_size", {}))
        out_h, out_w = crop["height"], crop["width"]
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        x0, y0 = x0 + left / scale_x, y0 + top / scale_y
        x1, y1 = x0 + out_w / scale_x, y0 + out_h / scale_y
    return (x0, y0, x1, y1), (out_h, out_w)
