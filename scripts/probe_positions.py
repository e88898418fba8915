"""How much of each image token's grid position a shapes-world model keeps, place by place.

For 300 training-range tune scenes (``shapes.TUNE_SEEDS[5000:5300]``), every image token's
features are taken at several places, and a least-squares linear probe (fitted on the tokens of
200 scenes, tested on those of the other 100) predicts the token's grid column and row (as
fractions of the grid's width and height, so that grids of different shapes share one target).
The script prints the test R² of each.

* LLaVA (square scenes): the CLIP input embeddings (patch + position), the CLIP last layer (what
  LLaVA reads with ``vision_feature_layer=-1``) and the projector's output (what the language
  model reads).
* Qwen2-VL (scenes of ``--world``, mixed by default): the patch embeddings (the tower has no
  position table: its 2-D rotary positions act inside attention only), the tower's last block,
  the merger's output (what the language model reads), and the language model's hidden state at
  the image tokens after each layer, the true caption teacher-forced (M-RoPE acts inside
  attention too, so a column in these states was written there by attention).

    python scripts/probe_positions.py attendseg/data/shapes-llava attendseg/data/shapes-qwen2vl [--world mixed]

RESULTS.md uses it to show where the column is lost (LLaVA) and whether the Qwen2-VL model's
contents carry it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attendseg import shapes  # noqa: E402
from attendseg.bundled import resolve_model  # noqa: E402
from train_shapes import QwenBatcher, pixel_values  # noqa: E402

N_FIT, N_TEST = 200, 100


def probe_r2(features: list[np.ndarray], targets: list[np.ndarray]) -> float:
    """Test R² of a linear probe (with bias): one ``[tokens, dim]`` feature array and one
    ``[tokens]`` target array per scene; fitted on the first ``N_FIT`` scenes, tested on the rest."""
    def stack(part):
        x = np.concatenate(features[part])
        return np.c_[x, np.ones(len(x))], np.concatenate(targets[part]).astype(np.float64)

    x_fit, y_fit = stack(slice(0, N_FIT))
    x_test, y_test = stack(slice(N_FIT, None))
    weights = np.linalg.lstsq(x_fit, y_fit, rcond=None)[0]
    residual = x_test @ weights - y_test
    return float(1 - (residual**2).mean() / y_test.var())


def grid_fractions(h: int, w: int, merge: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(column, row)`` of each token of an ``h × w`` grid as fractions of the width / height
    (cell centres), in the token order: raster, or Qwen2-VL's patch order for ``merge`` > 1
    (``merge × merge`` windows in raster order, each window's patches in raster order)."""
    hb, wb, mr, mc = np.meshgrid(np.arange(h // merge), np.arange(w // merge), np.arange(merge), np.arange(merge),
                                 indexing="ij")
    rows, cols = (hb * merge + mr).ravel(), (wb * merge + mc).ravel()
    return (cols + 0.5) / w, (rows + 0.5) / h


def llava_places(folder: str, scenes) -> tuple[dict[str, list[np.ndarray]], list, list]:
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    with torch.no_grad():
        hidden = model.model.vision_tower(pixel_values=pixel_values([sc.image for sc in scenes]),
                                          output_hidden_states=True).hidden_states
        places = {"CLIP input embeddings": hidden[0][:, 1:], "CLIP last layer": hidden[-1][:, 1:],
                  "projector output": model.model.multi_modal_projector(hidden[-1][:, 1:])}
    cols, rows = grid_fractions(grid, grid)
    return ({name: list(f.numpy()) for name, f in places.items()}, [cols] * len(scenes), [rows] * len(scenes))


def qwen_places(folder: str, scenes) -> tuple[dict[str, list[np.ndarray]], list, list]:
    from transformers import Qwen2VLForConditionalGeneration

    from attendseg.adapters import load_processor

    model = Qwen2VLForConditionalGeneration.from_pretrained(folder).eval()
    batcher = QwenBatcher(load_processor(folder))
    merge = model.config.vision_config.spatial_merge_size
    image_token = model.config.image_token_id
    places: dict[str, list[np.ndarray]] = {}
    patch_targets, token_targets = [], []
    for sc in scenes:
        batch = batcher([sc])
        _, h, w = batch["image_grid_thw"][0].tolist()
        with torch.no_grad():
            visual = model.model.visual
            embedded = visual.patch_embed(batch["pixel_values"])
            tower = visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
            out = model(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
        image = batch["input_ids"][0] == image_token
        rows = {"patch embeddings": embedded, "tower last block": tower.last_hidden_state,
                "merger output (language model input)": tower.pooler_output}
        rows.update({f"language model layer {i}": state[0, image] for i, state in enumerate(out.hidden_states) if i})
        for name, features in rows.items():
            places.setdefault(name, []).append(features.numpy())
        patch_targets.append(grid_fractions(h, w, merge))
        token_targets.append(grid_fractions(h // merge, w // merge))
    targets = {name: (patch_targets if name in ("patch embeddings", "tower last block") else token_targets)
               for name in places}
    return places, targets


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="shapes model folders or bundled names (LLaVA or Qwen2-VL)")
    p.add_argument("--world", choices=shapes.WORLDS, default="mixed", help="Qwen2-VL models' scenes (LLaVA: square)")
    args = p.parse_args(argv)
    seeds = shapes.TUNE_SEEDS[5000 : 5000 + N_FIT + N_TEST]
    print("| model | features | column R² | row R² |\n|---|---|---|---|")
    for name in args.models:
        folder = str(resolve_model(name))
        model_type = __import__("json").loads((Path(folder) / "config.json").read_text())["model_type"]
        if model_type == "llava":
            places, cols, rows = llava_places(folder, [shapes.make_scene(s) for s in seeds])
            targets = {place: (cols, rows) for place in places}
        else:
            places, pairs = qwen_places(folder, [shapes.world_scene(s, args.world) for s in seeds])
            targets = {place: ([c for c, _ in pairs[place]], [r for _, r in pairs[place]]) for place in places}
        for place, features in places.items():
            cols, rows = targets[place]
            print(f"| {name} | {place} | {probe_r2(features, cols):.3f} | {probe_r2(features, rows):.3f} |", flush=True)


if __name__ == "__main__":
    main()
