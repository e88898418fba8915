"""Aya Vision (``AyaVisionForConditionalGeneration``): tiles of the resized image plus a
thumbnail, each pixel-shuffled into a small token grid.

The image processor (GotOcr2's, ``crop_to_patches``) picks the ``cols × rows`` tile canvas
closest to the image's aspect ratio (``min_patches`` … ``max_patches`` tiles), resizes the whole
image onto it, cuts the tiles row by row and, when there is more than one, appends the whole
image squashed to one tile (the thumbnail, kind ``global``). The text holds
``<|START_OF_IMG|> TILE_1 <|IMG_PATCH|>×n … TILE_GLOBAL <|IMG_PATCH|>×n <|END_OF_IMG|>``; each run of
``n`` patch tokens is one tile's ``(t / patch / downsample)²`` grid, row-major (the projector's
pixel shuffle keeps the row-major order of its ``downsample²`` blocks).

The processor returns the number of tiles but not the canvas: :meth:`AyaVisionAdapter.row_views`
reads the tiles from the runs of image tokens in the row's ``input_ids`` and the tile size from
``pixel_values``, and the canvas from the image processor's own ``get_optimal_tiled_canvas``
for this image, checked against the tile count.
"""

from __future__ import annotations

from ..errors import AttendsegError
from ..views import View
from . import Adapter, register_adapter
from .got_ocr2 import tile_views
from .idefics3 import image_runs, refuse_markers


@register_adapter
class AyaVisionAdapter(Adapter):
    shared_prefix = True
    family = "aya_vision"
    model_types = ("aya_vision",)
    model_class = "AyaVisionForConditionalGeneration"
    hub_ids = ("CohereLabs/aya-vision-8b", "CohereLabs/aya-vision-32b")
    layout = "≤ 12 tiles of 364 px on the canvas closest to the image's aspect ratio + a thumbnail, 13 × 13 tokens each"

    @property
    def language_model(self):
        return self.model.model.language_model

    def marker_tokens(self) -> list[str]:
        """The processor's image tokens (start, end, patch, line break), besides ``<image>``."""
        p = self.processor
        return [p.start_of_img_token, p.end_of_img_token, p.img_patch_token, p.img_line_break_token]

    def never_generated(self) -> list[int]:
        ids = self.tokenizer.convert_tokens_to_ids(self.marker_tokens())
        return [i for i in ids if i is not None and i != self.tokenizer.unk_token_id]

    def encode(self, images, chats):
        refuse_markers(chats, self.marker_tokens())
        return self.processor(images=images, text=chats, return_tensors="pt", padding=True)

    def row_views(self, batch, row, image) -> list[View]:
        """Tiles (``kind="tile"``, row-major on the canvas) then the thumbnail (``"global"``), or
        one view (``"image"``) when the processor made a single tile."""
        runs = image_runs(batch["input_ids"][row], self.image_token_id)
        tile_h, tile_w = batch["pixel_values"].shape[-2:]
        step = self.processor.patch_size  # the tower's patch × the pixel shuffle's factor
        grid = (tile_h // step, tile_w // step)
        if any(count != grid[0] * grid[1] for _, count in runs):
            raise AttendsegError(f"image-token runs of {[c for _, c in runs]} where {tile_h} px tiles give "
                                 f"{grid[0]}×{grid[1]}: unsupported processor or model settings")
        width, height = image.size
        cover = (grid[1] * step / tile_w, grid[0] * step / tile_h)  # share of a tile the grid covers
        return tile_views(self.processor.image_processor, width, height, (tile_h, tile_w),
                          [start for start, _ in runs], grid, cover, self.family)

