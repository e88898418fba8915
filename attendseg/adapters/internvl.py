"""InternVL family (transformers' ``InternVLForConditionalGeneration``, the ``-hf`` checkpoints):
dynamic tiles plus a thumbnail, pixel shuffle.

The image processor (GotOcr2's, ``crop_to_patches``) picks a ``cols × rows`` tile grid whose
aspect ratio is closest to the image's (``get_optimal_tiled_canvas``), squashes the image to
``cols·s × rows·s`` pixels and cuts it into ``s × s`` tiles, row-major, then appends the whole
image squashed to ``s × s`` (the thumbnail) when there is more than one tile. Each tile's
``p × p`` patch grid is pixel-shuffled (2 × 2 patches → one token, ``downsample_ratio`` 0.5) into a
``p/2 × p/2`` row-major grid. The sequence is ``<img>``, the tiles' and thumbnail's
``<IMG_CONTEXT>`` cells, ``</img>``; only ``<IMG_CONTEXT>`` are image cells.
"""

from __future__ import annotations

from ..errors import AttendsegError
from ..views import View
from . import Adapter, register_adapter
from .got_ocr2 import tile_views


@register_adapter
class InternVLAdapter(Adapter):
    shared_prefix = True
    family = "internvl"
    model_types = ("internvl",)
    model_class = "InternVLForConditionalGeneration"
    hub_ids = ("OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-2B-hf", "OpenGVLab/InternVL3-8B-hf",
               "OpenGVLab/InternVL3_5-8B-HF")
    layout = ("dynamic tiles (cols × rows ≤ max_patches, 16 × 16 tokens each after pixel shuffle, kind "
              "tile) then a thumbnail of the whole image (global); one image-kind view when one tile")

    @property
    def language_model(self):
        return self.model.model.language_model

    def reserved_tokens(self) -> list[str]:
        processor = self.processor
        return [processor.start_image_token, processor.image_token, processor.end_image_token, processor.video_token]

    def never_generated(self) -> list[int]:
        processor = self.processor
        video = self.tokenizer.convert_tokens_to_ids(processor.video_token)
        return [self.image_token_id, processor.start_image_token_id, processor.end_image_token_id, video]

    def row_views(self, batch, row, image) -> list[View]:
        """The tiles (row-major) then the thumbnail, each a ``g × g`` grid; the number of tiles is
        read from this row's image tokens, their arrangement from the image processor's own canvas
        choice (:func:`~attendseg.adapters.got_ocr2.tile_views`, checked against that number)."""
        per_tile = self.processor.image_seq_length
        g = self.tile_grid()
        if g * g != per_tile:
            raise AttendsegError(f"the processor gives {per_tile} tokens per tile, the model {g}×{g}: "
                                 f"unsupported processor or model settings for the internvl adapter")
        n_tiles = int((batch["input_ids"][row] == self.image_token_id).sum()) // per_tile
        starts = [i * per_tile for i in range(n_tiles)]
        tile = tuple(batch["pixel_values"].shape[-2:])
        return tile_views(self.processor.image_processor, *image.size, tile, starts, (g, g), family=self.family)

    def tile_grid(self) -> int:
        """Tokens per tile side: the vision patch grid's side times ``downsample_ratio``."""
        config = self.model.config
        vision = config.vision_config
        side = vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size
        patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
        return int(side // patch * config.downsample_ratio)
