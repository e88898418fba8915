"""InternVL (transformers' port): capture against eager ``output_attentions``, tiles + thumbnail,
geometry through the model's own pixel shuffle, CLI, bad input, the processor without torchvision.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import InternVLForConditionalGeneration

import attendseg
from attendseg import AttendsegError
from conftest import WORDS
from eager_reference import (assert_batch_equals_each_alone, assert_generation_matches_eager,
                             assert_teacher_forcing_matches_eager)
from family_checks import check_sources, cli_ground_masks, token_sources, without_processor_files
from geometry_probe import coordinate_image

PROMPTS = ["describe the image", "is there a red circle on the left of the blue square"]
TEXTS = ["a red circle", "a blue square on the left of a large green star"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from attendseg.tiny.internvl import build_internvl

    return build_internvl(tmp_path_factory.mktemp("tiny-internvl"), WORDS)


@pytest.fixture(scope="module")
def attender(folder):
    return attendseg.load(folder)


@pytest.fixture(scope="module")
def eager(folder):
    return InternVLForConditionalGeneration.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def images(photos):
    """A 3:2 photo (3 × 2 tiles + thumbnail: 112 tokens) and a 3:7 one (1 × 2 + thumbnail: 48)."""
    return [Image.fromarray(photos["coffee"]).resize((150, 100)),
            Image.fromarray(photos["chelsea"]).resize((60, 140))]


def test_processor_loads_without_torchvision_and_keeps_its_settings(attender):
    from attendseg.adapters import has_torchvision

    processor = attender.processor
    assert has_torchvision() or not hasattr(processor, "video_processor")
    assert processor.image_seq_length == 16  # saved by the builder, not the class default (256)
    assert processor.image_processor.max_patches == 6


def test_generation_matches_eager_output_attentions(attender, eager, images):
    _, prepared, _ = assert_generation_matches_eager(attender, eager, images, PROMPTS, 8)
    assert [len(k) for k in prepared.key_index] == [112, 48]


@pytest.mark.parametrize("rows", ["predicting", "own"])
def test_teacher_forcing_matches_eager(attender, eager, images, rows):
    assert_teacher_forcing_matches_eager(attender, eager, images, PROMPTS, TEXTS, rows)


def test_mixed_batch_rows_equal_each_image_alone(attender, images):
    assert_batch_equals_each_alone(attender, images, PROMPTS, TEXTS)


def test_views_are_tiles_then_thumbnail(attender, images):
    views = attender.adapter.prepare(images[1:], PROMPTS[1:]).views[0]
    assert [(v.name, v.kind, v.start, v.grid, v.box) for v in views] == [
        ("tile 0,0", "tile", 0, (4, 4), (0, 0, 60, 70)), ("tile 1,0", "tile", 16, (4, 4), (0, 70, 60, 140)),
        ("thumbnail", "global", 32, (4, 4), (0, 0, 60, 140))]


@pytest.mark.parametrize("width, height, tiles", [(240, 80, 3), (80, 240, 3), (200, 150, 6), (120, 160, 6),
                                                  (100, 100, 4), (40, 40, 1)])
def test_every_cell_sees_its_box(attender, width, height, tiles):
    encoder = attender.model.model.vision_tower.encoder
    sources, views = token_sources(attender.adapter, encoder, coordinate_image(width, height))
    assert len(views) == (tiles + 1 if tiles > 1 else 1) and len(sources) == 16 * len(views)
    assert check_sources(sources, views) == len(sources)
    # the probe can fail: the pixel-shuffled grid read column-major puts cells in the wrong boxes
    transposed = list(sources)
    for view in views:
        h, w = view.grid
        for r in range(h):
            for c in range(w):
                transposed[view.start + r * w + c] = sources[view.start + c * w + r]
    with pytest.raises(AssertionError):
        check_sources(transposed, views)


def test_vision_special_tokens_are_never_generated(attender, images):
    special = set(attender.adapter.never_generated())
    assert len(special) == 4 and special <= set(attender.adapter.generation_defaults()["suppress_tokens"])
    traces = attender.attend(images, PROMPTS, max_new_tokens=16)
    assert all(not special & set(t.token_ids.tolist()) for t in traces)


def test_cli_ground_writes_masks_of_the_image_size(folder, tmp_path, photos):
    masks = cli_ground_masks(folder, tmp_path, photos["coffee"])
    assert masks and all(mask["size"] == [400, 600] for mask in masks)


@pytest.mark.parametrize("token", ["<img>", "<IMG_CONTEXT>", "</img>", "<video>"])
def test_image_tokens_in_prompt_or_text_are_refused(attender, token):
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(AttendsegError, match=f"prompt contains '{token}'"):
        attender.attend(image, f"{token} describe", max_new_tokens=2)
    with pytest.raises(AttendsegError, match=f"text contains '{token}'"):
        attender.attend_text(image, "describe", f"a {token} cat")


def test_checkpoint_without_processor_files(folder, tmp_path):
    with pytest.raises(AttendsegError, match="could not load the processor"):
        attendseg.load(without_processor_files(folder, tmp_path))
