"""Gemma 3: capture against eager ``output_attentions``, pan-and-scan views, geometry, CLI, bad input.

The tiny model has 3 text layers (sliding, global, sliding) with a 24-token window, so decoding
drops image keys on the sliding layers, and image tokens attend to each other bidirectionally.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Gemma3ForConditionalGeneration

import attendseg
from attendseg import AttendsegError
from conftest import WORDS
from eager_reference import (assert_batch_equals_each_alone, assert_generation_matches_eager,
                             assert_teacher_forcing_matches_eager)
from family_checks import check_sources, cli_ground_masks, token_sources, without_processor_files
from geometry_probe import coordinate_image

PROMPTS = ["describe the image", "is there a red circle on the left of the blue square"]
TEXTS = ["a red circle", "a blue square on the left of a large green star"]
TEXT_SETTINGS = {"num_hidden_layers": 3, "sliding_window": 24, "attn_logit_softcapping": 50.0,
                 "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from attendseg.tiny.gemma3 import build_gemma3

    return build_gemma3(tmp_path_factory.mktemp("tiny-gemma3"), WORDS, text=TEXT_SETTINGS)


@pytest.fixture(scope="module")
def attender(folder):
    return attendseg.load(folder, pan_and_scan=True)


@pytest.fixture(scope="module")
def eager(folder):
    return Gemma3ForConditionalGeneration.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def images(photos):
    """A 3:2 photo (pan-and-scan gives 2 crops: 48 image tokens) and a square one (16 tokens)."""
    return [Image.fromarray(photos["coffee"]).resize((150, 100)),
            Image.fromarray(photos["astronaut"]).resize((96, 96))]


def test_generation_matches_eager_output_attentions(attender, eager, images):
    _, prepared, reference = assert_generation_matches_eager(attender, eager, images, PROMPTS, 8)
    assert [len(k) for k in prepared.key_index] == [48, 16]
    # the sliding layers' window really dropped image keys; the global layer kept them all
    assert (reference[0][:, [0, 2]] == 0).any() and (reference[0][:, 1] > 0).all()


@pytest.mark.parametrize("rows", ["predicting", "own"])
def test_teacher_forcing_matches_eager(attender, eager, images, rows):
    assert_teacher_forcing_matches_eager(attender, eager, images, PROMPTS, TEXTS, rows)


def test_image_tokens_attend_bidirectionally(attender, eager, images):
    """Without ``token_type_ids`` the image block is causal: the text rows' maps change from
    layer 1 on, so the match above depends on capture running under the bidirectional mask."""
    prepared = attender.adapter.prepare(images, PROMPTS, TEXTS)
    causal = dict(prepared.inputs)
    del causal["token_type_ids"]
    with torch.no_grad():
        bidirectional = eager(**prepared.inputs, output_attentions=True).attentions[1]
        plain = eager(**causal, output_attentions=True).attentions[1]
    assert (bidirectional[:, :, -1] - plain[:, :, -1]).abs().max() > 1e-4


def test_mixed_batch_rows_equal_each_image_alone(attender, images):
    assert_batch_equals_each_alone(attender, images, PROMPTS, TEXTS)


def test_pan_and_scan_is_off_unless_asked(folder, attender, images):
    plain = attendseg.load(folder)
    views = plain.adapter.prepare(images[:1], PROMPTS[:1]).views[0]
    assert [(v.kind, v.box, v.grid) for v in views] == [("image", (0, 0, 150, 100), (4, 4))]
    views = attender.adapter.prepare(images[:1], PROMPTS[:1]).views[0]
    assert [(v.kind, v.name, v.box) for v in views] == [
        ("global", "image", (0, 0, 150, 100)), ("tile", "crop 0", (0, 0, 75, 100)), ("tile", "crop 1", (75, 0, 150, 100))]
    assert [v.start for v in views] == [0, 16, 32]


@pytest.mark.parametrize("width, height", [(240, 80), (80, 240), (200, 150), (120, 160), (100, 100)])
def test_every_cell_sees_its_box(attender, width, height):
    encoder = attender.model.model.vision_tower.encoder
    sources, views = token_sources(attender.adapter, encoder, coordinate_image(width, height))
    n_crops = {(240, 80): 3, (80, 240): 3, (200, 150): 2, (120, 160): 2, (100, 100): 0}[(width, height)]
    assert len(views) == 1 + n_crops and len(sources) == 16 * (1 + n_crops)
    assert check_sources(sources, views) == len(sources)
    if n_crops:  # the probe can fail: crops in the wrong order see the wrong pixels
        swapped = [views[0], views[2].__class__(**{**views[2].to_dict(), "start": views[1].start}),
                   views[1].__class__(**{**views[1].to_dict(), "start": views[2].start})]
        with pytest.raises(AssertionError):
            check_sources(sources, swapped)


@pytest.mark.parametrize("width, height", [(240, 80), (90, 200)])
def test_cells_pooled_like_the_released_models(tmp_path, width, height):
    """The released models pool 4 × 4 patches per token (64 × 64 → 16 × 16); so does this one."""
    from attendseg.tiny.gemma3 import build_gemma3

    attender = attendseg.load(build_gemma3(tmp_path / "k4", WORDS, patch_size=4), pan_and_scan=True)
    assert attender.model.model.multi_modal_projector.kernel_size == 4
    sources, views = token_sources(attender.adapter, attender.model.model.vision_tower.encoder,
                                   coordinate_image(width, height))
    assert len(views) > 1 and check_sources(sources, views) == len(sources)


def test_vision_special_tokens_are_never_generated(attender, images):
    config = attender.model.config
    special = {config.image_token_id, config.boi_token_id, config.eoi_token_id}
    assert special <= set(attender.adapter.generation_defaults()["suppress_tokens"])
    traces = attender.attend(images, PROMPTS, max_new_tokens=16)
    assert all(not special & set(t.token_ids.tolist()) for t in traces)


def test_cli_ground_writes_masks_of_the_image_size(folder, tmp_path, photos):
    masks = cli_ground_masks(folder, tmp_path, photos["chelsea"])
    assert masks and all(mask["size"] == [300, 451] for mask in masks)


@pytest.mark.parametrize("token", ["<start_of_image>", "<image_soft_token>", "<end_of_image>"])
def test_image_tokens_in_prompt_or_text_are_refused(attender, token):
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(AttendsegError, match=f"prompt contains '{token}'"):
        attender.attend(image, f"{token} describe", max_new_tokens=2)
    with pytest.raises(AttendsegError, match=f"text contains '{token}'"):
        attender.attend_text(image, "describe", f"a {token} cat")


def test_checkpoint_without_processor_files(folder, tmp_path):
    with pytest.raises(AttendsegError, match="could not load the processor"):
        attendseg.load(without_processor_files(folder, tmp_path))
