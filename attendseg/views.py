"""Views: where a block of image tokens sits in the map and in the original image.

Coordinate conventions (used everywhere in attendseg):

* Pixels: ``(x, y)`` with x to the right, y down, in the *original* image (before any
  processor resize/crop/pad), continuous coordinates where pixel ``(i, j)`` (row i, column j)
  covers ``[j, j+1) × [i, i+1)``. Boxes are ``(x0, y0, x1, y1)`` in those coordinates.
* Grids: ``(h, w)`` = (rows, columns); cell ``(r, c)`` is row r, column c, row-major order in the
  token sequence.

A View says that the image-token columns ``start : start + n_tokens`` of a map form an
``h × w`` grid (optionally with one separator token closing each row, e.g. LLaVA-NeXT's newline),
and that this grid covers the box ``box`` of the original image. The box may stick out of the
image (pad-to-square) or lie inside it (centre crop, a tile).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


VIEW_KINDS = ("image", "global", "tile")


@dataclass(frozen=True)
class View:
    """One grid of image tokens and the original-image box it covers.

    Attributes:
        start: index of the view's first token in the map's image-token axis (``N``).
        grid: ``(h, w)`` cells.
        box: ``(x0, y0, x1, y1)`` in original-image pixels covered by the whole grid.
        row_stride: tokens per grid row in the sequence: ``w``, or ``w + 1`` when every row ends
            with a separator token (which :meth:`to_grid` drops).
        name: a label ("base", "tile 0,1", …), informational.
        kind: the view's role among a row's views: ``"image"`` (the only view), ``"global"`` (the
            whole image at low resolution beside tiles: LLaVA-NeXT's base image, Idefics3's global
            image, InternVL's thumbnail) or ``"tile"`` (a tile, the stitched tile grid, or a
            crop). Multi-view fusion (:func:`attendseg.maps.select_views`) chooses by kind.
    """

    start: int
    grid: tuple[int, int]
    box: tuple[float, float, float, float]
    row_stride: int = 0
    name: str = "image"
    kind: str = "image"

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(int(v) for v in self.grid))
        object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        if self.row_stride == 0:
            object.__setattr__(self, "row_stride", self.grid[1])
        if self.row_stride < self.grid[1]:
            raise ValueError(f"row_stride {self.row_stride} < grid width {self.grid[1]}")
        if self.kind not in VIEW_KINDS:
            raise ValueError(f"kind must be one of {VIEW_KINDS}, got {self.kind!r}")

    @property
    def n_tokens(self) -> int:
        """Tokens this view occupies in the map (separators included)."""
        return self.grid[0] * self.row_stride

    @property
    def stop(self) -> int:
        return self.start + self.n_tokens

    @property
    def cell_size(self) -> tuple[float, float]:
        """(width, height) of one cell in original-image pixels."""
        x0, y0, x1, y1 = self.box
        return (x1 - x0) / self.grid[1], (y1 - y0) / self.grid[0]

    def to_grid(self, maps: torch.Tensor) -> torch.Tensor:
        """``[..., N]`` maps → ``[..., h, w]`` grids of this view (separator tokens dropped)."""
        h, w = self.grid
        block = maps[..., self.start : self.stop]
        return block.reshape(*block.shape[:-1], h, self.row_stride)[..., :w]

    def cell_of(self, x: float, y: float) -> tuple[int, int] | None:
        """The grid cell ``(r, c)`` that covers original pixel coordinate ``(x, y)``, or None."""
        x0, y0, _, _ = self.box
        cw, ch = self.cell_size
        c, r = int((x - x0) // cw), int((y - y0) // ch)
        if 0 <= r < self.grid[0] and 0 <= c < self.grid[1]:
            return r, c
        return None

    def cell_box(self, r: int, c: int) -> tuple[float, float, float, float]:
        """The original-image box ``(x0, y0, x1, y1)`` covered by cell ``(r, c)``."""
        x0, y0, _, _ = self.box
        cw, ch = self.cell_size
        return x0 + c * cw, y0 + r * ch, x0 + (c + 1) * cw, y0 + (r + 1) * ch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "View":
        return cls(
            start=d["start"],
            grid=tuple(d["grid"]),
            box=tuple(d["box"]),
            row_stride=d.get("row_stride", 0),
            name=d.get("name", "image"),
            kind=d.get("kind", "image"),
        )


def square_box(width: int, height: int, mode: str) -> tuple[float, float, float, float]:
    """The centred square box a square-input processor sees of a ``width × height`` image.

    ``mode="pad"``: the image is padded to a square of its long side (box sticks out of the
    short side). ``mode="crop"``: the short side is resized to the input and the long side
    centre-cropped (box of side ``min(width, height)`` inside the image). ``mode="resize"``: the
    image is squashed to the square (box = the whole image).
    """
    if mode == "resize":
        return 0.0, 0.0, float(width), float(height)
    side = max(width, height) if mode == "pad" else min(width, height)
    x0 = (width - side) / 2
    y0 = (height - side) / 2
    return x0, y0, x0 + side, y0 + side
