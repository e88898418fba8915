"""Views of GotOcr2's dynamic tiles (the image processor of InternVL and Aya Vision).

With ``crop_to_patches`` the processor picks the ``cols × rows`` canvas whose aspect ratio is
closest to the image's (``min_patches`` … ``max_patches`` tiles, its own
``get_optimal_tiled_canvas``), squashes the whole image onto ``cols·s × rows·s`` pixels, cuts the
``s × s`` tiles row by row and, when there is more than one, appends the whole image squashed to
one tile (the thumbnail). Tile ``(r, c)`` therefore covers the original box
``[c·W/cols, (c+1)·W/cols) × [r·H/rows, (r+1)·H/rows)``.
"""

from __future__ import annotations

from ..errors import AttendsegError
from ..views import View


def tile_views(image_processor, width: int, height: int, tile: tuple[int, int], starts: list[int],
               grid: tuple[int, int], cover: tuple[float, float] = (1.0, 1.0), family: str = "") -> list[View]:
    """The Views of one image's tiles, from what the processor made of it.

    Args:
        image_processor: the GotOcr2 image processor (its ``min_patches`` / ``max_patches``).
        width, height: the original image's size.
        tile: ``(h, w)`` pixels of one processed tile (``pixel_values.shape[-2:]``).
        starts: the map index of each processed tile's first token, in ``pixel_values`` order
            (tiles, then the thumbnail); their number is the number of tiles the processor made.
        grid: ``(h, w)`` tokens per tile.
        cover: the share ``(x, y)`` of a tile that the token grid covers (1 unless the patches
            do not fill the tile).

    Returns:
        One ``image`` view for a single tile; else the tiles (``tile r,c``, kind ``tile``)
        row-major, then the thumbnail (``global``). :class:`AttendsegError` when the number of
        tiles is not the processor's canvas for this image plus a thumbnail.
    """
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    fx, fy = cover
    whole = (0, 0, width * fx, height * fy)
    if len(starts) == 1:
        return [View(start=starts[0], grid=grid, box=whole, name="image", kind="image")]
    cols, rows = get_optimal_tiled_canvas((height, width), tuple(tile), image_processor.min_patches,
                                          image_processor.max_patches)
    if cols * rows + 1 != len(starts):
        raise AttendsegError(f"the processor made {len(starts)} tiles of a {width}×{height} image, but its canvas "
                             f"for this image is {cols}×{rows} tiles + thumbnail: unsupported processor for {family}")
    views = []
    for i, start in enumerate(starts[:-1]):
        r, c = divmod(i, cols)
        x0, y0 = c * width / cols, r * height / rows
        box = (x0, y0, x0 + fx * width / cols, y0 + fy * height / rows)
        views.append(View(start=start, grid=grid, box=box, name=f"tile {r},{c}", kind="tile"))
    views.append(View(start=starts[-1], grid=grid, box=whole, name="thumbnail", kind="global"))
    return views
