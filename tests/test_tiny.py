"""The random-weight model builders in ``attendseg.tiny``: the sine-cosine CLIP position table."""

import math

import pytest
import torch

from attendseg.tiny import build_llava, sincos_positions


def test_sincos_table_layout_and_shift_invariance():
    grid, dim, norm = 8, 64, 1.5
    table = sincos_positions(grid, dim, norm=norm)
    assert table.shape == (1 + grid * grid, dim)
    assert torch.count_nonzero(table[0]) == 0  # CLS
    patches = table[1:].view(grid, grid, dim)
    assert torch.allclose(patches.norm(dim=-1), torch.full((grid, grid), norm))
    cols, rows = patches[..., : dim // 2], patches[..., dim // 2 :]
    # the first half depends on the column only, the second on the row only
    assert torch.allclose(cols, cols[:1].expand_as(cols))
    assert torch.allclose(rows, rows[:, :1].expand_as(rows))
    # sin·sin + cos·cos: the dot product of two columns is a function of their distance alone
    freqs = [10000.0 ** (-k / (dim // 4)) for k in range(dim // 4)]
    scale = norm**2 / (dim / 2)
    for c1 in range(grid):
        for c2 in range(grid):
            expected = scale * sum(math.cos(f * (c1 - c2)) for f in freqs)
            assert float(cols[0, c1] @ cols[0, c2]) == pytest.approx(expected, abs=1e-5)
    # every patch gets its own code
    assert torch.cdist(table[1:], table[1:]).add(torch.eye(grid * grid)).min() > 0.1


def test_sincos_table_rejects_odd_width():
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_positions(4, 30)


def test_build_llava_writes_the_table_into_an_ordinary_clip_checkpoint(tmp_path):
    from transformers import LlavaForConditionalGeneration

    folder = build_llava(tmp_path / "m", ["red", "circle"], vision_hidden=32, vision_positions="sincos")
    model = LlavaForConditionalGeneration.from_pretrained(folder)
    table = model.model.vision_tower.embeddings.position_embedding.weight
    assert torch.equal(table, sincos_positions(8, 32))
    with pytest.raises(ValueError, match="vision_positions"):
        build_llava(tmp_path / "bad", ["red"], vision_positions="rope")
