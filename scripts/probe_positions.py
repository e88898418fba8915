"""How much of each image token's grid position a shapes-world LLaVA keeps, layer by layer.

For 300 training-range tune scenes (``shapes.TUNE_SEEDS[5000:5300]``), every image token's
features are taken at three places: the CLIP input embeddings (patch + position), the CLIP last
layer (what LLaVA reads with ``vision_feature_layer=-1``) and the projector's output (what the
language model reads). A least-squares linear probe (fitted on 200 scenes, tested on 100)
predicts the token's grid column and row; the script prints the test R² of each.

    python scripts/probe_positions.py attendseg/data/shapes-llava [OTHER_MODEL ...]

RESULTS.md ("How v3 got there") uses it to show where the column is lost.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attendseg import shapes  # noqa: E402
from train_shapes import pixel_values  # noqa: E402

N_FIT, N_TEST = 200, 100


def probe_r2(features: np.ndarray, target: np.ndarray) -> float:
    """Test R² of a linear probe; ``features [scenes, tokens, dim]``, ``target [tokens]``."""
    n_scenes, n_tokens, dim = features.shape
    x = np.c_[features.reshape(-1, dim), np.ones(n_scenes * n_tokens)]
    y = np.tile(target, n_scenes).astype(np.float64)
    fit = slice(0, N_FIT * n_tokens)
    test = slice(N_FIT * n_tokens, None)
    weights = np.linalg.lstsq(x[fit], y[fit], rcond=None)[0]
    residual = x[test] @ weights - y[test]
    return float(1 - (residual**2).mean() / y[test].var())


def main(folders: list[str]) -> None:
    from transformers import LlavaForConditionalGeneration

    seeds = shapes.TUNE_SEEDS[5000 : 5000 + N_FIT + N_TEST]
    for folder in folders:
        model = LlavaForConditionalGeneration.from_pretrained(folder).eval()
        size = model.config.vision_config.image_size
        grid = size // model.config.vision_config.patch_size
        images = pixel_values([shapes.make_scene(seed, size=size).image for seed in seeds])
        with torch.no_grad():
            hidden = model.model.vision_tower(pixel_values=images, output_hidden_states=True).hidden_states
            places = {
                "CLIP input embeddings": hidden[0][:, 1:],
                "CLIP last layer": hidden[-1][:, 1:],
                "projector output": model.model.multi_modal_projector(hidden[-1][:, 1:]),
            }
        rows, cols = np.divmod(np.arange(grid * grid), grid)
        print(folder)
        for place, features in places.items():
            features = features.numpy()
            print(f"  {place:22s} column R² {probe_r2(features, cols):.3f}   row R² {probe_r2(features, rows):.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
