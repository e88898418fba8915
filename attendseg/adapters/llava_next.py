"""LLaVA-NeXT family (``LlavaNextForConditionalGeneration``): base image + stitched tile grid.

Also the any-resolution ("anyres") geometry shared with LLaVA-OneVision
(:mod:`attendseg.adapters.llava_onevision`), following transformers' own steps:

1. the image processor picks the best-fit ``(height, width)`` among ``image_grid_pinpoints``
   (``select_best_resolution``), resizes the image into it keeping the aspect ratio
   (``get_patch_output_size``), pads it centred to that canvas (``_get_padding_size``) and cuts
   the canvas into ``tile × tile`` tiles; the base view is the whole image squashed to
   ``tile × tile``;
2. the model stitches the tiles' ``side × side`` feature grids (``side = tile // patch``) into
   one canvas grid, cuts the rows or columns that are mostly padding (``unpad_image``) and
   closes each remaining row with a newline token (written in ``input_ids`` as an image
   placeholder, so ``row_stride = w + 1``).

Token order in the sequence: the base grid (``side × side``, no newline), then the unpadded
grid row by row, each row followed by its newline.

Coordinates: canvas pixels are the padded best-fit canvas's, ``(x, y)`` like
:mod:`attendseg.views`; a canvas feature cell spans ``tile / side`` canvas pixels (exactly one
patch when ``patch`` divides ``tile``; otherwise, e.g. 384-px tiles with 14-px patches, each
tile's ``side`` patches cover its first ``side · patch`` pixels and the grid is spread evenly over
the tile, off by less than ``tile - side · patch`` pixels inside a tile).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import AttendsegError
from ..views import View
from . import Adapter, register_adapter


# --------------------------------------------------------------------------------- geometry
def tile_side(image_processor) -> int:
    """The tile side in pixels the image processor cuts the canvas into (its own rule: crop
    height, else size height, else shortest edge)."""
    crop = getattr(image_processor, "crop_size", None) or {}
    size = getattr(image_processor, "size", None) or {}
    return int(crop.get("height") or size.get("height") or size.get("shortest_edge"))


def anyres_canvas(height: int, width: int, pinpoints) -> tuple:
    """Where the processor puts an ``height × width`` image on its best-fit canvas.

    Returns:
        ``(best, resized, offset)``: the canvas ``(height, width)`` chosen among ``pinpoints``,
        the resized image's ``(height, width)`` on it, and its ``(top, left)`` offset (padding
        before it), all in canvas pixels.
    """
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension

    best = tuple(int(v) for v in select_best_resolution((height, width), [list(p) for p in pinpoints]))
    shape_only = np.broadcast_to(np.zeros((1, 1, 1), dtype=np.uint8), (1, height, width))
    resized = tuple(int(v) for v in get_patch_output_size(shape_only, best, input_data_format=ChannelDimension.FIRST))
    # the processor pastes it centred, the odd pixel after (both backends' _get_padding_size)
    return best, resized, ((best[0] - resized[0]) // 2, (best[1] - resized[1]) // 2)


def unpadded_cells(grid: tuple[int, int], height: int, width: int) -> tuple[int, int, int, int]:
    """The rows ``[r0, r1)`` and columns ``[c0, c1)`` of a stitched ``(rows, cols)`` canvas grid
    that transformers' ``unpad_image`` keeps for an original ``height × width`` image."""
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    kept = unpad_image(torch.empty(0, *grid), (height, width)).shape[1:]  # it cuts evenly on both sides
    r0, c0 = (grid[0] - kept[0]) // 2, (grid[1] - kept[1]) // 2
    return r0, r0 + kept[0], c0, c0 + kept[1]


@register_adapter
class LlavaNextAdapter(Adapter):
    family = "llava_next"
    model_types = ("llava_next",)
    model_class = "LlavaNextForConditionalGeneration"
    hub_ids = ("llava-hf/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf",
               "llava-hf/llama3-llava-next-8b-hf")
    layout = ("base image (24 × 24 at 336 px) + the stitched tile grid of the best-fit resolution, "
              "padding rows/columns cut, a newline token closing each row")

    @property
    def language_model(self):
        return self.model.model.language_model

    def stitched_grid(self, rows: int, cols: int, side: int) -> tuple[int, int]:
        """The ``(h, w)`` token grid the model makes of the ``rows × cols`` unpadded canvas grid
        (LLaVA-NeXT: itself)."""
        return rows, cols

    def row_views(self, batch, row, image) -> list[View]:
        """The base view (``kind="global"``) and the unpadded tile grid (``kind="tile"``, one
        newline per row), from ``image_sizes[row]`` (``(height, width)``), the tiles in
        ``pixel_values[row]`` (``[n_patches, 3, tile, tile]``, zero patches after the row's own
        are batch padding) and the model's pinpoints and vision patch."""
        height, width = (int(v) for v in batch["image_sizes"][row])
        if (width, height) != tuple(image.size):
            raise AttendsegError(f"the processor saw a {width}×{height} image where {image.size[0]}×{image.size[1]} "
                                 f"was given: unsupported processor for the {self.family} adapter")
        config = self.model.config
        tile, patch = config.vision_config.image_size, config.vision_config.patch_size
        side = tile // patch
        pixels = batch["pixel_values"][row]
        if pixels.shape[-1] != tile or tile_side(self.processor.image_processor) != tile:
            raise AttendsegError(f"the image processor cuts {tile_side(self.processor.image_processor)}-px tiles into "
                                 f"{pixels.shape[-1]}-px inputs but the vision tower takes {tile} px: unsupported "
                                 f"image processor settings for the {self.family} adapter")
        best, resized, (top, left) = anyres_canvas(height, width, config.image_grid_pinpoints)
        tiles = (best[0] // tile, best[1] // tile)
        sent = int(pixels.flatten(1).ne(0).any(1).nonzero().max()) + 1
        if sent != 1 + tiles[0] * tiles[1]:
            raise AttendsegError(f"the processor sent {sent} patches for a {width}×{height} image where the model's "
                                 f"pinpoints give 1 + {tiles[0]}×{tiles[1]}: processor and model settings differ")
        if self.strategy() == "full" and getattr(self.processor, "num_additional_image_tokens", 0):
            raise AttendsegError("vision_feature_select_strategy 'full' with a vision tower that has a CLS token: "
                                 "transformers cannot stitch those tiles; use 'default'")
        seen = side * patch / tile  # the patches cover the first side · patch pixels of the input
        base = View(start=0, grid=(side, side), box=(0, 0, width * seen, height * seen), name="base", kind="global")
        r0, r1, c0, c1 = unpadded_cells((tiles[0] * side, tiles[1] * side), height, width)
        if r1 <= r0 or c1 <= c0:
            raise AttendsegError(f"the image is too thin ({width}×{height}) for {self.family}: unpadding its tile grid "
                                 f"keeps no {'row' if r1 <= r0 else 'column'}; crop or pad it to a less extreme "
                                 f"aspect ratio")
        cell = tile / side  # canvas pixels per feature cell
        sx, sy = resized[1] / width, resized[0] / height  # canvas pixels per original pixel
        box = ((c0 * cell - left) / sx, (r0 * cell - top) / sy, (c1 * cell - left) / sx, (r1 * cell - top) / sy)
        grid = self.stitched_grid(r1 - r0, c1 - c0, side)
        return [base, View(start=base.stop, grid=grid, box=box, row_stride=grid[1] + 1,
                           name=f"tiles {tiles[0]}x{tiles[1]}", kind="tile")]

    def strategy(self) -> str:
        return self.model.config.vision_feature_select_strategy
