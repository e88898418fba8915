"""The position probe's token geometry against the Qwen2-VL image processor's own patch order."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import probe_positions  # noqa: E402
import train_shapes  # noqa: E402


@pytest.mark.parametrize("merge", [1, 2])
def test_grid_fractions_follow_the_processor_patch_order(merge, tmp_path):
    args = train_shapes.parse_args(["--family", "qwen2_vl", "--patch", "8", "--merge", str(merge), "--vision-hidden", "32",
                                    "--vision-layers", "1", "--text-hidden", "32", "--text-layers", "1", "--heads", "2"])
    _, processor = train_shapes.load_model(args, train_shapes.build(args, tmp_path / "model"))
    h, w = 4, 8  # patches: a 32 x 64 image, every 8 px patch painted with its row (red) and column (green)
    image = np.zeros((8 * h, 8 * w, 3), np.uint8)
    for r in range(h):
        for c in range(w):
            image[8 * r:8 * r + 8, 8 * c:8 * c + 8] = (20 * r, 20 * c, 0)
    out = processor.image_processor(images=[image], return_tensors="pt")
    assert out["image_grid_thw"][0].tolist() == [1, h, w]
    patches = out["pixel_values"].numpy()  # [h * w, 3 * temporal * 8 * 8], channel-major
    per_channel = patches.shape[1] // 3
    rows = np.unique(patches[:, 0], return_inverse=True)[1]
    cols = np.unique(patches[:, per_channel], return_inverse=True)[1]
    col_frac, row_frac = probe_positions.grid_fractions(h, w, merge)
    np.testing.assert_allclose(col_frac, (cols + 0.5) / w)
    np.testing.assert_allclose(row_frac, (rows + 0.5) / h)


def test_the_probe_finds_a_linear_position_and_not_noise():
    rng = np.random.default_rng(0)
    n = probe_positions.N_FIT + probe_positions.N_TEST
    targets = [rng.random(20) for _ in range(n)]
    carried = [np.c_[3 * t + 1, rng.normal(size=(20, 4))] for t in targets]
    noise = [rng.normal(size=(20, 5)) for _ in range(n)]
    assert probe_positions.probe_r2(carried, targets) > 0.999
    assert probe_positions.probe_r2(noise, targets) < 0.05
