"""Geometry probe: which original pixels each image token sees, through the model's own code.

An image whose pixels encode their own coordinates (red = column, green = row) goes through the
real processor; forward hooks replace the vision tower's output by each patch's coordinate
summary (from the processor's ``pixel_values``, normalisation undone), let the model's own
arrangement code (pixel shuffle / patch merge, tiles, the merge into the sequence) move them,
and read them back at the language model's input, at the adapter's image-token positions.
"""

import numpy as np
import torch
from PIL import Image

#: Channels of a patch summary: x min, x max, y min, y max, x mean, y mean, and a constant 1 that
#: undoes any scaling between the projector and the language model (PaliGemma divides by √d).
STATS = 7


def coordinate_image(width: int, height: int) -> Image.Image:
    """RGB image whose red value is each pixel's column and green value its row (≤ 255)."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    return Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8))


def patch_stats(pixels: torch.Tensor, mean, std, patch: int) -> torch.Tensor:
    """``[n, 3, H, W]`` normalised pixels → ``[n, (H//p)·(W//p), STATS]`` per patch (row-major),
    coordinates of pixel centres in the original image."""
    mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    coords = (pixels.float() * std + mean)[:, :2] * 255 + 0.5
    n, _, h, w = coords.shape
    gh, gw = h // patch, w // patch
    blocks = coords[:, :, :gh * patch, :gw * patch].reshape(n, 2, gh, patch, gw, patch)
    blocks = blocks.permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, 2, patch * patch)
    x, y = blocks[:, :, 0], blocks[:, :, 1]
    return torch.stack([x.amin(-1), x.amax(-1), y.amin(-1), y.amax(-1), x.mean(-1), y.mean(-1),
                        torch.ones_like(x[..., 0])], -1)


def merge_stats(stats: torch.Tensor) -> torch.Tensor:
    """``[..., m, STATS]`` summaries of m patches → ``[..., STATS]`` of their union."""
    return torch.stack([stats[..., 0].amin(-1), stats[..., 1].amax(-1), stats[..., 2].amin(-1),
                        stats[..., 3].amax(-1), stats[..., 4].mean(-1), stats[..., 5].mean(-1),
                        stats[..., 6].mean(-1)], -1)


def carry(model, inputs, tower, projector, text_model, pixels_of, to_stats, merged, final=None):
    """Run ``model(**inputs)`` with hooks: ``tower``'s output hidden states (all of them) become
    ``to_stats(pixels, hidden)`` (summaries in channels ``:STATS``, zeros elsewhere);
    ``projector``'s output becomes ``merged(projector_input)`` (``[..., STATS]``, padded), and so
    does ``final``'s (a later module of per-token layers, e.g. the MLP after a pixel shuffle);
    returns the language model's ``inputs_embeds[..., :STATS]``, scale undone: ``[B, S, 6]``."""
    seen = {}

    def on_tower(module, args, kwargs, output):
        hidden = output.last_hidden_state
        feats = torch.zeros_like(hidden)
        feats[..., :STATS] = to_stats(pixels_of(args, kwargs), hidden)
        output.last_hidden_state = feats
        if getattr(output, "hidden_states", None) is not None:  # towers read from a chosen layer
            output.hidden_states = tuple(feats for _ in output.hidden_states)
        return output

    def padded(output, stats):
        out = torch.zeros_like(output)
        out[..., :STATS] = stats
        return out

    def on_projector(module, args, output):
        seen["stats"] = merged(args[0])
        return padded(output, seen["stats"])

    def on_final(module, args, output):
        return padded(output, seen["stats"])

    def on_text(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().float()

    hooks = [tower.register_forward_hook(on_tower, with_kwargs=True),
             projector.register_forward_hook(on_projector),
             text_model.register_forward_pre_hook(on_text, with_kwargs=True)]
    if final is not None:
        hooks.append(final.register_forward_hook(on_final))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    embeds = seen["embeds"][..., :STATS]
    return embeds[..., :6] / embeds[..., 6:7]


def cells(views):
    """Per map index: (view, row, column), or None for a separator column."""
    out = {}
    for view in views:
        for k in range(view.n_tokens):
            r, c = divmod(k, view.row_stride)
            out[view.start + k] = (view, r, c) if c < view.grid[1] else None
    return out


def check_cells(coords: torch.Tensor, views, width: int, height: int, slack: float = 0.05,
                centre: float = 0.1) -> int:
    """Every image token's patches hold original pixels inside its cell's box (± ``slack`` cell
    + 0.5 px of resampling), their mean within ``centre`` cell of the box's centre (clipped to
    the image). ``coords`` ``[N, 6]`` in map order. Returns the number of cells checked."""
    layout = cells(views)
    assert len(layout) == len(coords)
    checked = 0
    for k, (x_min, x_max, y_min, y_max, x_mean, y_mean) in enumerate(coords.tolist()):
        if layout[k] is None:
            continue
        view, r, c = layout[k]
        x0, y0, x1, y1 = view.cell_box(r, c)
        cw, ch = view.cell_size
        tol_x, tol_y = 0.5 + slack * cw, 0.5 + slack * ch
        where = (view.name, r, c)
        assert x0 - tol_x <= x_min and x_max <= x1 + tol_x, (where, x_min, x_max, x0, x1)
        assert y0 - tol_y <= y_min and y_max <= y1 + tol_y, (where, y_min, y_max, y0, y1)
        cx, cy = (max(x0, 0) + min(x1, width)) / 2, (max(y0, 0) + min(y1, height)) / 2
        assert abs(x_mean - cx) <= centre * cw and abs(y_mean - cy) <= centre * ch, (where, x_mean, cx, y_mean, cy)
        checked += 1
    return checked
