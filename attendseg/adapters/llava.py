"""LLaVA-1.5 family (``LlavaForConditionalGeneration``): one square image, one token grid.

The processor either resizes the short side and centre-crops (llava-hf) or pads to a square
first (``do_pad=True``, the original LLaVA code); :func:`processor_box` follows the processor's
own steps so the View's box is the exact original-image region the token grid sees.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import AttendsegError
from ..views import View
from . import Adapter, Prepared, register_adapter


@register_adapter
class LlavaAdapter(Adapter):
    family = "llava"

    @classmethod
    def matches(cls, config) -> bool:
        return getattr(config, "model_type", None) == "llava"

    @classmethod
    def load(cls, path, dtype, device):
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device).eval()
        processor = AutoProcessor.from_pretrained(path)
        return cls(model, processor)

    @property
    def language_model(self):
        return self.model.model.language_model

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def chat_prompt(self, prompt: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def views(self, image: Image.Image) -> list[View]:
        box, (height, width) = processor_box(self.processor.image_processor, *image.size)
        patch = self.processor.patch_size
        return [View(start=0, grid=(height // patch, width // patch), box=box)]

    def prepare(self, images, prompts, texts=None) -> Prepared:
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"
        image_token = getattr(self.processor, "image_token", "<image>")
        for what, values in (("prompt", prompts), ("text", texts or [])):
            if any(image_token in v for v in values):
                raise AttendsegError(f"the {what} contains {image_token!r}: attendseg places the image "
                                     f"itself; write the {what} without it")
        chat = [self.chat_prompt(p) for p in prompts]
        batch = self.processor(images=images, text=chat, return_tensors="pt", padding=True)
        text_ids, text_offsets = [], []
        if texts is not None:
            rows = []
            for ids, mask, text in zip(batch["input_ids"], batch["attention_mask"], texts):
                encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                text_ids.append(torch.tensor(encoded["input_ids"], dtype=torch.long))
                text_offsets.append(torch.tensor(encoded["offset_mapping"], dtype=torch.long).view(-1, 2))
                rows.append(torch.cat([ids[mask.bool()], text_ids[-1]]))
            batch["input_ids"], batch["attention_mask"] = left_pad(rows, tokenizer.pad_token_id)
        ids = batch["input_ids"]
        key_index = [torch.nonzero(row == self.image_token_id).squeeze(1) for row in ids]
        views = [self.views(image) for image in images]
        for keys, row_views in zip(key_index, views):
            expected = sum(v.n_tokens for v in row_views)
            if keys.numel() != expected:
                raise AttendsegError(
                    f"{keys.numel()} image tokens in the sequence, but the processor's grid has {expected}: "
                    f"unsupported processor settings (vision_feature_select_strategy "
                    f"{getattr(self.model.config, 'vision_feature_select_strategy', '?')!r})")
        device = self.model.device
        inputs = {k: v.to(device) for k, v in batch.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return Prepared(
            inputs=inputs,
            key_index=torch.stack(key_index),
            views=views,
            text_lengths=[len(t) for t in text_ids],
            text_ids=text_ids,
            text_offsets=text_offsets,
        )


def left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors, left-padded: ``([B, S] ids, [B, S] attention mask)``."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = row
        mask[i, length - len(row) :] = 1
    return ids, mask


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
