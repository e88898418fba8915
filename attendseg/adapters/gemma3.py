"""Gemma 3 family (``Gemma3ForConditionalGeneration``): 256 pooled tokens per image, optional
pan-and-scan crops.

The image processor squashes the whole image (and each pan-and-scan crop) to a square; SigLIP
sees a ``p × p`` patch grid that the projector average-pools with a ``k × k`` kernel into
``t × t`` tokens (``t² = mm_tokens_per_image``; 64 × 64 patches → 16 × 16 tokens in the released
models). Each image (then each crop) is ``<start_of_image>``, ``t²`` ``<image_soft_token>`` cells
(``config.image_token_id``), ``<end_of_image>``; only the soft tokens are image cells.

Pan-and-scan is off unless asked: ``attendseg.load(model, pan_and_scan=True)`` (or
``adapter.image_kwargs["do_pan_and_scan"] = True``); the crops' boxes come from the image
processor's own ``pan_and_scan`` run on an array of pixel coordinates.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import AttendsegError
from ..views import View
from . import Adapter, register_adapter

#: The image processor's pan-and-scan settings, passed explicitly on every call (the processor's
#: class defaults would otherwise override the checkpoint's saved values).
PAN_AND_SCAN = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
                "pan_and_scan_min_ratio_to_activate")


@register_adapter
class Gemma3Adapter(Adapter):
    family = "gemma3"
    model_types = ("gemma3",)
    model_class = "Gemma3ForConditionalGeneration"
    hub_ids = ("google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it")
    layout = ("the whole image squashed to a square, 16 × 16 pooled tokens (kind image); with "
              "pan_and_scan=True, the whole image (global) then each crop's 16 × 16 (tile)")

    def __init__(self, model, processor, **image_kwargs):
        super().__init__(model, processor)
        defaults = {"do_pan_and_scan": False, "pan_and_scan_min_crop_size": 256,
                    "pan_and_scan_max_num_crops": 4, "pan_and_scan_min_ratio_to_activate": 1.2}
        own = processor.image_processor
        self.image_kwargs = {name: getattr(own, name, None) if getattr(own, name, None) is not None
                             else defaults[name] for name in PAN_AND_SCAN}
        self.image_kwargs.update(image_kwargs)

    @classmethod
    def load(cls, path, dtype, device, pan_and_scan: bool = False, **options):
        """As :meth:`Adapter.load`; ``pan_and_scan=True`` adds the image processor's crops as
        extra views (off by default, as in transformers)."""
        adapter = super().load(path, dtype, device, **options)
        adapter.image_kwargs["do_pan_and_scan"] = bool(pan_and_scan)
        return adapter

    @property
    def language_model(self):
        return self.model.model.language_model

    def reserved_tokens(self) -> list[str]:
        tokenizer = self.tokenizer
        return [tokenizer.boi_token, tokenizer.image_token, tokenizer.eoi_token]

    def never_generated(self) -> list[int]:
        config = self.model.config
        return [config.image_token_id, config.boi_token_id, config.eoi_token_id]

    def encode(self, images, chats):
        return self.processor(images=[[image] for image in images], text=chats, return_tensors="pt",
                              padding=True, **self.image_kwargs)

    def row_views(self, batch, row, image) -> list[View]:
        """The whole image, then its pan-and-scan crops (in ``pixel_values`` order), each a
        ``t × t`` grid of pooled cells over the region the processor squashed to the square."""
        t = self.pooled_side()
        n_views = int((batch["input_ids"][row] == self.image_token_id).sum()) // (t * t)
        boxes = self.crop_boxes(*image.size)
        if n_views != 1 + len(boxes):
            raise AttendsegError(f"the processor gave {n_views} views of a {image.size[0]}×{image.size[1]} "
                                 f"image, its pan-and-scan settings give {1 + len(boxes)}: unsupported processor")
        width, height = image.size
        kind = "global" if boxes else "image"
        views = [View(start=0, grid=(t, t), box=(0, 0, width, height), name="image", kind=kind)]
        for i, box in enumerate(boxes):
            views.append(View(start=(i + 1) * t * t, grid=(t, t), box=box, name=f"crop {i}",
                              kind="tile"))
        return views

    def crop_boxes(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """The ``(x0, y0, x1, y1)`` original-pixel boxes of this image's pan-and-scan crops (empty
        when pan-and-scan is off or does not activate), from the image processor's own
        ``pan_and_scan`` applied to an array of pixel coordinates."""
        settings = self.image_kwargs
        if not settings["do_pan_and_scan"]:
            return []
        ys, xs = np.mgrid[0:height, 0:width]
        crops = self.processor.image_processor.pan_and_scan(
            image=np.stack([ys, xs]),
            pan_and_scan_min_crop_size=settings["pan_and_scan_min_crop_size"],
            pan_and_scan_max_num_crops=settings["pan_and_scan_max_num_crops"],
            pan_and_scan_min_ratio_to_activate=settings["pan_and_scan_min_ratio_to_activate"],
        )
        return [(int(c[1].min()), int(c[0].min()), int(c[1].max()) + 1, int(c[0].max()) + 1) for c in crops]

    def pooled_side(self) -> int:
        """``t``: the side of the pooled token grid. The patches must tile the square input and the
        pooling kernel the patch grid (``AvgPool2d`` would otherwise give more than ``t²`` tokens,
        which the model refuses), so the grid covers the whole squashed region."""
        config = self.model.config
        t = int(round(config.mm_tokens_per_image ** 0.5))
        vision = config.vision_config
        patches = vision.image_size // vision.patch_size
        if t * t != config.mm_tokens_per_image or patches % t or vision.image_size % vision.patch_size:
            raise AttendsegError(f"{config.mm_tokens_per_image} image tokens do not pool a {patches}×{patches} "
                                 f"patch grid evenly: unsupported gemma3 configuration")
        return t
