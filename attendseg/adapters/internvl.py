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


@register_adapter
class InternVLAdapter(Adapter):
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
        read from this row's image tokens, their arrangement from the image processor's own
        ``get_optimal_tiled_canvas`` (checked against that number)."""
        per_tile = self.processor.image_seq_length
        g = self.tile_grid()
        if g * g != per_tile:
            raise AttendsegError(f"the processor gives {per_tile} tokens per tile, the model {g}×{g}: "
                                 f"unsupported processor or model settings for the internvl adapter")
        n_tiles = int((batch["input_ids"][row] == self.image_token_id).sum()) // per_tile
        width, height = image.size
        if n_tiles == 1:  # crop_to_patches off, or a one-tile canvas: the whole image squashed
            return [View(start=0, grid=(g, g), box=(0, 0, width, height), name="image", kind="image")]
        cols, rows = self.tile_layout(width, height)
        if cols * rows + 1 != n_tiles:
            raise AttendsegError(f"the processor made {n_tiles} tiles of a {width}×{height} image where its "
                                 f"settings give a {cols}×{rows} grid and a thumbnail: unsupported processor")
        views = []
        for i in range(cols * rows):
            r, c = divmod(i, cols)
            box = (c * width / cols, r * height / rows, (c + 1) * width / cols, (r + 1) * height / rows)
            views.append(View(start=i * per_tile, grid=(g, g), box=box, name=f"tile {r},{c}", kind="tile"))
        views.append(View(start=cols * rows * per_tile, grid=(g, g), box=(0, 0, width, height),
                          name="thumbnail", kind="global"))
        return views

    def tile_grid(self) -> int:
        """Tokens per tile side: the vision patch grid's side times ``downsample_ratio``."""
        config = self.model.config
        vision = config.vision_config
        side = vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size
        patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
        return int(side // patch * config.downsample_ratio)

    def tile_layout(self, width: int, height: int) -> tuple[int, int]:
        """``(cols, rows)`` of the tile grid the image processor picks for a ``width × height``
        image (its own function and settings)."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        image_processor = self.processor.image_processor
        size = image_processor.size
        tile = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
        return get_optimal_tiled_canvas((height, width), tile, image_processor.min_patches,
                                        image_processor.max_patches)
