"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``):
a grid of tiles plus a global image, each tile pixel-shuffled into a small token grid.

The image processor resizes the whole image (longest edge to ``size``, then each side up to a
multiple of the tile side ``max_image_size``) and cuts it into ``rows × cols`` tiles, then appends
the whole image squashed to one tile (the global image). The processor writes, per image::

    <fake_token_around_image><row_1_col_1><image>×n … <fake_token_around_image><row_1_col_C><image>×n \\n
    …                                                                                        \\n
    \\n<fake_token_around_image><global-img><image>×n<fake_token_around_image>

(without splitting: only the global part). Each run of ``n`` image tokens is one tile's
``(t / patch / scale) × (t / patch / scale)`` grid, row-major (the connector's pixel shuffle
merges ``scale × scale`` patch blocks and keeps their row-major order). The marker tokens and
newlines are never image cells, and are never generated.

The processor does not return its split, so :meth:`Idefics3Adapter.row_views` reads it from what
the processor produced: the marker token before each run of image tokens (the tile's row and
column, or the global image), the real (non-zero) tiles in ``pixel_values`` and their size.
"""

from __future__ import annotations

import re

import torch

from ..errors import AttendsegError
from ..views import View
from . import Adapter, register_adapter

FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
ROW_COL = re.compile(r"<row_(\d+)_col_(\d+)>")
#: Marker tokens the processor writes around tiles (the processors know rows/cols up to 6 × 6).
MARKERS = (FAKE_TOKEN, GLOBAL_TOKEN, *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)))


@register_adapter
class Idefics3Adapter(Adapter):
    shared_prefix = True
    family = "idefics3"
    model_types = ("idefics3",)
    model_class = "Idefics3ForConditionalGeneration"
    hub_ids = ("HuggingFaceM4/Idefics3-8B-Llama3",)
    layout = ("rows × cols tiles of the resized image (≤ 4 × 4 at 364 px) + a global image, "
              "13 × 13 tokens each after pixel shuffle; marker tokens between tiles")

    @property
    def language_model(self):
        return self.model.model.text_model

    def never_generated(self) -> list[int]:
        """The image placeholder and every tile marker (``<fake_token_around_image>``,
        ``<global-img>``, ``<row_r_col_c>``) the vocabulary holds."""
        tokenizer = self.tokenizer
        ids = [tokenizer.convert_tokens_to_ids(t) for t in MARKERS]
        return [self.image_token_id, *(i for i in ids if i is not None and i != tokenizer.unk_token_id)]

    def chat_prompt(self, prompt: str) -> str:
        # the tokenizer's renderer: SmolVLM's processor reads video settings in apply_chat_template
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.tokenizer.apply_chat_template(messages, chat_template=self.processor.chat_template,
                                                  tokenize=False, add_generation_prompt=True)

    def encode(self, images, chats):
        """The processor's output, images nested one list per chat (``[[image], …]``)."""
        refuse_markers(chats, MARKERS)
        return self.processor(images=[[image] for image in images], text=chats, return_tensors="pt",
                              padding=True)

    def row_views(self, batch, row, image) -> list[View]:
        """One View per tile (``kind="tile"``, the tile's share of the whole image) and one for the
        global image (``kind="global"``, the whole image; ``"image"`` when it is the only view), in
        sequence order, read from the markers before each run of image tokens in ``input_ids`` and
        the real tiles of ``pixel_values`` ``[B, tiles, 3, t, t]``."""
        blocks = self.image_blocks(batch["input_ids"][row])
        pixels = batch["pixel_values"][row]
        real = (pixels != 0).flatten(1).any(1)  # the model drops all-zero (padding) tiles alike
        if int(real.sum()) != len(blocks):
            raise AttendsegError(f"{len(blocks)} runs of image tokens but {int(real.sum())} tiles in pixel_values: "
                                 f"unsupported processor for the {self.family} adapter")
        mask = batch.get("pixel_attention_mask")
        if mask is not None and not bool(mask[row][real].all()):
            raise AttendsegError(f"padded tiles are not supported by the {self.family} adapter")
        config = self.model.config
        step = config.vision_config.patch_size * config.scale_factor
        grid = (pixels.shape[-2] // step, pixels.shape[-1] // step)
        tiles = [marker for _, _, marker in blocks if marker is not None]
        rows = max((r for r, _ in tiles), default=0)
        cols = max((c for _, c in tiles), default=0)
        if sorted(tiles) != [(r, c) for r in range(1, rows + 1) for c in range(1, cols + 1)]:
            raise AttendsegError(f"the tile markers do not form a grid: unsupported processor for the "
                                 f"{self.family} adapter")
        # the tower's patches cover floor(t / patch) · patch pixels of a tile (378 of 384 px on
        # SmolVLM-Instruct): the grid covers that share of the tile's box
        fy, fx = grid[0] * step / pixels.shape[-2], grid[1] * step / pixels.shape[-1]
        width, height = image.size
        views = []
        for start, count, marker in blocks:
            if count != grid[0] * grid[1]:
                raise AttendsegError(f"{count} image tokens per tile where {pixels.shape[-2]} px tiles give "
                                     f"{grid[0]}×{grid[1]}: unsupported processor or model settings")
            if marker is None:
                kind = "global" if tiles else "image"
                views.append(View(start=start, grid=grid, box=(0, 0, width * fx, height * fy), name=kind, kind=kind))
            else:
                r, c = marker[0] - 1, marker[1] - 1
                x0, y0 = c * width / cols, r * height / rows
                box = (x0, y0, x0 + fx * width / cols, y0 + fy * height / rows)
                views.append(View(start=start, grid=grid, box=box, name=f"tile {r},{c}", kind="tile"))
        return views

    def image_blocks(self, ids: torch.Tensor) -> list[tuple[int, int, tuple[int, int] | None]]:
        """Runs of image tokens in one row's ``[S]`` ids: ``(first map index, length, marker)`` with
        marker ``(row, col)`` (1-based) after ``<row_r_col_c>``, None after ``<global-img>``."""
        positions = torch.nonzero(ids == self.image_token_id).squeeze(1)
        blocks = []
        for start, count in image_runs(ids, self.image_token_id):
            before = self.tokenizer.convert_ids_to_tokens(int(ids[positions[start] - 1]))
            found = ROW_COL.fullmatch(before or "")
            if found:
                marker = (int(found[1]), int(found[2]))
            elif before == GLOBAL_TOKEN:
                marker = None
            else:
                raise AttendsegError(f"image tokens after {before!r}, not a tile marker: unsupported processor "
                                     f"for the {self.family} adapter")
            blocks.append((start, count, marker))
        return blocks


@register_adapter
class SmolVLMAdapter(Idefics3Adapter):
    family = "smolvlm"
    model_types = ("smolvlm",)
    model_class = "SmolVLMForConditionalGeneration"
    hub_ids = ("HuggingFaceTB/SmolVLM-256M-Instruct", "HuggingFaceTB/SmolVLM-500M-Instruct",
               "HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceTB/SmolVLM2-2.2B-Instruct")
    layout = ("rows × cols tiles of the resized image (512 px, ≤ 4 × 4; 384 px on the 2B models) + a global "
              "image, 8 × 8 tokens each after pixel shuffle (9 × 9 on the 2B models); marker tokens between tiles")


def image_runs(ids: torch.Tensor, image_token_id: int) -> list[tuple[int, int]]:
    """Runs of consecutive image tokens in one row's ``[S]`` ids: ``(first map index, length)``."""
    positions = torch.nonzero(ids == image_token_id).squeeze(1)
    if positions.numel() == 0:
        return []
    breaks = (torch.nonzero(positions[1:] != positions[:-1] + 1).squeeze(1) + 1).tolist()
    return [(start, stop - start) for start, stop in zip([0, *breaks], [*breaks, len(positions)])]


def refuse_markers(chats: list[str], markers) -> None:
    """One-line AttendsegError if a chat prompt holds one of the family's image marker tokens."""
    for chat in chats:
        found = [m for m in markers if m in chat]
        if found:
            raise AttendsegError(f"the prompt contains {found[0]!r}: attendseg places the image and its markers "
                                 f"itself; write the prompt without it")
