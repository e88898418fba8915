"""Checks every model family's tests share: the geometry probe, the CLI run, a broken checkpoint.

Gradient geometry probe: which original pixels does each image token see? (A companion of
``geometry_probe.py``, which carries coordinate summaries through hooks on the tower and the
projector; this one needs only the vision encoder's layers, so pooling inside a projector, as in
Gemma 3, runs as the model's own code.)

An image whose pixels encode their own coordinates (red = x, green = y; sides ≤ 255 px) goes
through the family's real processor (resize, crops, tiles); the vision encoder's layers are made
the identity (a forward hook), so every token the vision tower outputs depends on its own patch
only; the model's own code then arranges the patches (pooling, pixel shuffle, tiles, thumbnail)
and scatters them into the language model's input embeddings. The gradient of each image
token's input embedding with respect to ``pixel_values`` marks the processor pixels that reach it;
their values, normalisation undone, are the original coordinates they were resampled from.
"""

import json
import shutil

import numpy as np
import torch
from PIL import Image


class _Stop(Exception):
    pass


def token_sources(adapter, encoder: torch.nn.Module, image: Image.Image, prompt: str = "describe the image"):
    """Per image token (map order), the ``[n, 2]`` original ``(x, y)`` centres of the processor
    pixels that reach it, and the row's Views.

    ``encoder`` is the vision tower's stack of layers (made the identity while probing).
    """
    prepared = adapter.prepare([image], [prompt])
    inputs = dict(prepared.inputs)
    pixels = inputs["pixel_values"].detach().float().clone().requires_grad_(True)
    inputs["pixel_values"] = pixels
    image_processor = adapter.processor.image_processor
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    values = (pixels.detach() * std + mean) / image_processor.rescale_factor  # the resampled bytes
    coords = values[:, :2] + 0.5  # pixel i covers [i, i + 1): its centre

    def identity(module, args, kwargs, output):
        output.last_hidden_state = args[0] if args else kwargs["inputs_embeds"]
        return output

    captured = {}

    def grab(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]
        raise _Stop

    hooks = [encoder.register_forward_hook(identity, with_kwargs=True),
             adapter.language_model.register_forward_pre_hook(grab, with_kwargs=True)]
    try:
        with torch.enable_grad():
            adapter.model(**inputs)
    except _Stop:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    embeds = captured["embeds"][0]
    sources = []
    for position in prepared.key_index[0].tolist():
        (grad,) = torch.autograd.grad(embeds[position].sum(), pixels, retain_graph=True)
        reached = grad.abs().sum(1) > 0  # [n_images, H, W]
        sources.append(coords.permute(0, 2, 3, 1)[reached])
    return sources, prepared.views[0]


def check_sources(sources, views, reach: float = 1.0) -> int:
    """Every token's source pixels lie in its cell box (within ``reach`` original pixels), and
    fill it (the box of their centres is inset by at most half a processor pixel plus ``reach``).
    Returns the number of tokens checked (each view's cells, separators excluded)."""
    checked = 0
    for view in views:
        h, w = view.grid
        cell_w, cell_h = view.cell_size
        for r in range(h):
            for c in range(w):
                got = sources[view.start + r * view.row_stride + c]
                assert len(got), f"{view.name}: cell {(r, c)} sees no pixel"
                x0, y0, x1, y1 = view.cell_box(r, c)
                xs, ys = got[:, 0], got[:, 1]
                where = f"{view.name} cell {(r, c)} box {(x0, y0, x1, y1)}"
                assert xs.min() >= x0 - reach and xs.max() <= x1 + reach, f"{where}: x {xs.min()}..{xs.max()}"
                assert ys.min() >= y0 - reach and ys.max() <= y1 + reach, f"{where}: y {ys.min()}..{ys.max()}"
                # a processor pixel spans (cell side / pixels per cell side) original pixels
                side = int(round(len(got) ** 0.5))
                inset_x, inset_y = cell_w / side / 2 + reach, cell_h / side / 2 + reach
                assert xs.min() <= x0 + inset_x and xs.max() >= x1 - inset_x, f"{where}: x {xs.min()}..{xs.max()}"
                assert ys.min() <= y0 + inset_y and ys.max() >= y1 - inset_y, f"{where}: y {ys.min()}..{ys.max()}"
                checked += 1
    return checked


def cli_ground_masks(folder, tmp_path, photo: np.ndarray) -> list[dict]:
    """Run ``attendseg ground PHOTO --model FOLDER --out OUT`` (typer's CliRunner, a fixed text)
    and return the COCO RLE masks of the JSON it writes (after checking the image size)."""
    from typer.testing import CliRunner

    from attendseg.cli.main import app

    Image.fromarray(photo).save(tmp_path / "photo.jpg")
    run = CliRunner().invoke(app, ["ground", str(tmp_path / "photo.jpg"), "--model", str(folder), "--out",
                                   str(tmp_path / "out"), "--text", "a red circle on the left of a blue square", "-q"])
    assert run.exit_code == 0, run.output
    data = json.loads((tmp_path / "out" / "photo.jpg.json").read_text())
    assert (data["image"]["height"], data["image"]["width"]) == photo.shape[:2] and data["phrases"]
    return [p["segmentation"] for p in data["phrases"] if p["segmentation"] is not None]


def without_processor_files(folder, tmp_path):
    """A copy of a checkpoint folder without its tokenizer and processor files."""
    broken = tmp_path / "no-processor"
    shutil.copytree(folder, broken)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        (broken / name).unlink()
    return broken
