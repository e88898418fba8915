"""Shared fixtures. No hub is reachable: everything is built from configs or shipped data."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # tiny models: one thread is faster and steadier than two

WORDS = (
    "user assistant describe the image a an red green blue yellow white black circle square "
    "triangle star cat dog person on of in and with is there left right top bottom large small"
).split()


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """A random tiny LLaVA (CLIP + Llama, MHA), 64 px input, 8×8 = 64 image tokens, crop mode."""
    from attendseg.tiny import build_llava

    return build_llava(tmp_path_factory.mktemp("tiny-llava"), WORDS, seed=0)


@pytest.fixture(scope="session")
def tiny_llava_gqa_pad(tmp_path_factory):
    """A random tiny LLaVA with a Qwen2 text model (GQA: 4 heads, 2 kv heads), pad-to-square."""
    from attendseg.tiny import build_llava

    return build_llava(
        tmp_path_factory.mktemp("tiny-llava-qwen2"),
        WORDS,
        text_model="qwen2",
        kv_heads=2,
        pad_to_square=True,
        seed=1,
    )


@pytest.fixture(scope="session")
def photos():
    """Real photographs shipped by packages: (name, HxWx3 uint8 array), non-square."""
    from skimage import data

    return {
        "astronaut": data.astronaut(),  # 512x512
        "coffee": data.coffee(),  # 400x600
        "chelsea": data.chelsea(),  # 300x451
        "rocket": data.rocket(),  # 427x640
    }


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory):
    """A random SamModel (64 px input, 4×4 embedding, 16×16 low-res masks) + SamProcessor folder."""
    from attendseg.tiny import build_sam

    return build_sam(tmp_path_factory.mktemp("tiny-sam"))
