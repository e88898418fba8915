"""PaliGemma 1 and 2: one squashed square grid, prefix-LM attention (image + prompt bidirectional).

References: transformers' eager ``output_attentions`` (with the model's own prefix-LM mask), and
the processor's ``pixel_values`` carried through the model's own code (geometry_probe).
"""

import json
import shutil

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import attendseg
from attendseg import AttendsegError
from eager_reference import (assert_batch_equals_each_alone, assert_generation_matches_eager,
                             assert_teacher_forcing_matches_eager)
from geometry_probe import STATS, carry, check_cells, coordinate_image, patch_stats

WORDS = "describe caption en the image a an red green blue circle square cat dog on of in and is there left".split()
PROMPTS = ["caption en", "is there a red circle on the left"]
TEXTS = ["a red circle", "a blue square on the left of a green circle"]


@pytest.fixture(scope="module", params=["gemma", "gemma2"])
def checkpoint(request, tmp_path_factory):
    """PaliGemma 1 (Gemma, multi-query attention) and 2 (Gemma 2: logit soft-capping, GQA);
    32 px input, 4 px patches → 8 × 8 image tokens."""
    from attendseg.tiny.paligemma import build_paligemma

    kv_heads = 1 if request.param == "gemma" else 2
    return build_paligemma(tmp_path_factory.mktemp(f"tiny-paligemma-{request.param}"), WORDS,
                           text_model=request.param, kv_heads=kv_heads, seed=3)


@pytest.fixture(scope="module")
def attender(checkpoint):
    return attendseg.load(checkpoint)


@pytest.fixture(scope="module")
def eager(checkpoint):
    from transformers import PaliGemmaForConditionalGeneration

    return PaliGemmaForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager").eval()


def photos_pair(photos):
    return [Image.fromarray(photos["coffee"]), Image.fromarray(photos["astronaut"])]


def test_generation_matches_eager(attender, eager, photos):
    traces, prepared, _ = assert_generation_matches_eager(attender, eager, photos_pair(photos), PROMPTS, 6)
    mask = prepared.inputs["attention_mask"]
    assert mask[0].sum() != mask[1].sum()  # prompts of different lengths: a padded batch
    assert all(trace.n_image_tokens == 64 for trace in traces)


@pytest.mark.parametrize("rows", ["predicting", "own"])
def test_teacher_forcing_matches_eager(attender, eager, photos, rows):
    images = photos_pair(photos)
    assert_teacher_forcing_matches_eager(attender, eager, images, PROMPTS, TEXTS, rows)


def test_teacher_forced_text_is_causal(attender, photos):
    """The teacher-forced text is the answer (``token_type_ids`` 1, causal): a token's row never
    depends on the tokens after it."""
    image = Image.fromarray(photos["coffee"])
    a = attender.attend_text(image, PROMPTS[1], "a red circle on the left", rows="own")
    b = attender.attend_text(image, PROMPTS[1], "a red square in the dog", rows="own")
    # "a red" sees nothing after it: exactly equal (as prefix tokens they would differ by ~3e-6)
    assert torch.equal(a.maps[:2], b.maps[:2])
    assert not torch.equal(a.maps[2:], b.maps[2:])
    types = attender.adapter.prepare([image], [PROMPTS[1]], ["a red circle"]).inputs["token_type_ids"][0]
    assert types[-3:].tolist() == [1, 1, 1] and not types[:-3].any()


def test_mixed_batch_equals_each_image_alone(attender, photos):
    images = photos_pair(photos)
    assert_batch_equals_each_alone(attender, images, PROMPTS, TEXTS)


@pytest.mark.parametrize("size", [(60, 180), (180, 60), (150, 150), (200, 130)])
def test_every_token_sees_the_pixels_of_its_cell(attender, size):
    width, height = size
    model = attender.model.model
    processor = attender.processor.image_processor
    prepared = attender.adapter.prepare([coordinate_image(width, height)], ["caption en"])
    coords = carry(attender.model, prepared.inputs, model.vision_tower, model.multi_modal_projector,
                   model.language_model, pixels_of=lambda args, kwargs: args[0],
                   to_stats=lambda pixels, hidden: patch_stats(pixels, processor.image_mean, processor.image_std,
                                                               model.config.vision_config.patch_size),
                   merged=lambda x: x[..., :STATS])
    views = prepared.views[0]
    assert [v.kind for v in views] == ["image"] and views[0].box == (0, 0, width, height)
    assert check_cells(coords[0, prepared.key_index[0]], views, width, height) == 64


def test_cli_ground_writes_masks_of_the_image_size(checkpoint, photos, tmp_path):
    from attendseg.cli.main import app
    from attendseg.rle import decode

    Image.fromarray(photos["chelsea"]).save(tmp_path / "cat.jpg")
    out = tmp_path / "out"
    run = CliRunner().invoke(app, ["ground", str(tmp_path / "cat.jpg"), "--model", str(checkpoint), "--out", str(out),
                                   "--prompt", "caption en", "--text", "a cat on the left", "-q"])
    assert run.exit_code == 0, run.output
    data = json.loads((out / "cat.jpg.json").read_text())
    masks = [decode(p["segmentation"]) for p in data["phrases"] if p["segmentation"]]
    assert masks and all(m.shape == (300, 451) for m in masks)


def test_prompt_with_the_image_token_is_refused(attender, photos):
    with pytest.raises(AttendsegError, match="attendseg places the image"):
        attender.attend(Image.fromarray(photos["coffee"]), "caption <image> en", max_new_tokens=2)


def test_checkpoint_without_processor_files(checkpoint, tmp_path):
    folder = tmp_path / "no-processor"
    shutil.copytree(checkpoint, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(AttendsegError, match="could not load the processor") as error:
        attendseg.load(folder)
    assert "\n" not in str(error.value)
