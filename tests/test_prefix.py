"""Prefix reuse: ``Attender.attend_texts`` (image + prompt encoded once, texts teacher-forced from
its KV cache) gives the maps of recomputing every text from scratch with ``attend_text``."""

import numpy as np
import pytest
import torch

import attendseg
from attendseg.errors import AttendsegError

TEXTS = ["a red circle", "the dog on the left of a large white cat", "cat", "a blue square and a green star"]


def photo(h=48, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def check_equal(attender, image, prompt, texts, **options):
    got = attender.attend_texts(image, prompt, texts, **options)
    assert len(got) == len(texts)
    for text, trace in zip(texts, got):
        want = attender.attend_text(image, prompt, text, **options)
        assert trace.text == text and torch.equal(trace.token_ids, want.token_ids)
        assert torch.equal(trace.offsets, want.offsets) and trace.views == want.views
        assert trace.maps.shape == want.maps.shape
        torch.testing.assert_close(trace.maps, want.maps, atol=1e-5, rtol=0)
        assert trace.mode == "teacher" and trace.rows == want.rows
    return got


@pytest.mark.parametrize("rows", ["predicting", "own"])
def test_prefix_reuse_equals_recomputation_llava(tiny_llava, rows):
    attender = attendseg.load(tiny_llava)
    assert attender.adapter.shared_prefix
    check_equal(attender, photo(), "describe the image", TEXTS, rows=rows, per_layer=True, per_head=True)
    # batches smaller than the texts, chosen layers and heads
    check_equal(attender, photo(30, 50, 1), "is there a cat", TEXTS, rows=rows, layers=[0, -1], heads=[1],
                batch_size=3)


def test_prefix_reuse_equals_recomputation_gqa_pad_to_square(tiny_llava_gqa_pad):
    attender = attendseg.load(tiny_llava_gqa_pad)
    check_equal(attender, photo(20, 60, 2), "describe the image", TEXTS, per_layer=True, per_head=True, batch_size=2)


def test_prefix_reuse_equals_recomputation_difflmm(tmp_path):
    from attendseg import capture
    from attendseg.attender import Attender
    from attendseg.encoders import DiffLMMAdapter
    from attendseg.encoders.tiny import build_tiny_difflmm

    model, processor = build_tiny_difflmm(seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    adapter = DiffLMMAdapter.load(str(tmp_path), dtype=torch.float32, device=torch.device("cpu"))
    capture.enable(adapter.language_model)
    attender = Attender(adapter, model_id=str(tmp_path))
    check_equal(attender, photo(20, 30), "describe the image", ["a red circle", "a cat"], per_layer=True)


def test_recomputing_families_and_bad_input(tiny_llava, monkeypatch):
    attender = attendseg.load(tiny_llava)
    monkeypatch.setattr(attender.adapter, "shared_prefix", False)  # e.g. M-RoPE families
    check_equal(attender, photo(), "describe the image", TEXTS[:2])
    for texts, message in [([], "no texts"), (["a cat", " "], "the text is empty"), (["<image> cat"], "contains")]:
        with pytest.raises(AttendsegError, match=message):
            attender.attend_texts(photo(), "describe the image", texts)
    monkeypatch.setattr(attender.adapter, "shared_prefix", True)
    with pytest.raises(AttendsegError, match="contains"):
        attender.attend_texts(photo(), "describe the image", ["<image> cat"])
    with pytest.raises(AttendsegError, match="rows must be"):
        attender.attend_texts(photo(), "describe the image", ["cat"], rows="next")
