"""Aya Vision: tiles on the canvas closest to the image's aspect ratio + a thumbnail, pixel shuffle.

References: transformers' eager ``output_attentions``, and the processor's ``pixel_values``
carried through the model's own tower, pixel shuffle and merge (geometry_probe).
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
from geometry_probe import STATS, carry, check_cells, coordinate_image, merge_stats, patch_stats

WORDS = "user assistant describe the image a an red green blue circle square cat dog on of in and is there left".split()
PROMPTS = ["describe the image", "is there a red circle on the left"]
TEXTS = ["a red circle", "a blue square on the left of a green circle"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """32 px tiles, 4 px patches, pixel shuffle 2 → 4 × 4 tokens per tile, ≤ 6 tiles; Cohere 2
    text model (4 heads, 2 kv heads)."""
    from attendseg.tiny.aya_vision import build_aya_vision

    return build_aya_vision(tmp_path_factory.mktemp("tiny-aya"), WORDS, seed=2)


@pytest.fixture(scope="module")
def attender(checkpoint):
    return attendseg.load(checkpoint)


@pytest.fixture(scope="module")
def eager(checkpoint):
    from transformers import AyaVisionForConditionalGeneration

    return AyaVisionForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager").eval()


def photos_pair(photos):
    """3 × 2 and 2 × 2 tiles (+ thumbnails): 112 and 80 image tokens."""
    return [Image.fromarray(photos["coffee"]), Image.fromarray(photos["astronaut"])]


def test_generation_matches_eager(attender, eager, photos):
    traces, prepared, _ = assert_generation_matches_eager(attender, eager, photos_pair(photos), PROMPTS, 6)
    assert [len(k) for k in prepared.key_index] == [7 * 16, 5 * 16]
    for trace in traces:
        assert not set(trace.token_ids.tolist()) & set(attender.adapter.never_generated())


@pytest.mark.parametrize("rows", ["predicting", "own"])
def test_teacher_forcing_matches_eager(attender, eager, photos, rows):
    images = photos_pair(photos)
    assert_teacher_forcing_matches_eager(attender, eager, images, PROMPTS, TEXTS, rows)


def test_mixed_size_batch_equals_each_image_alone(attender, photos):
    images = photos_pair(photos)
    assert_batch_equals_each_alone(attender, images, PROMPTS, TEXTS)


@pytest.mark.parametrize("size, canvas", [((60, 180), (1, 3)), ((180, 60), (3, 1)), ((150, 150), (2, 2)),
                                          ((200, 130), (3, 2)), ((250, 40), (6, 1)), ((20, 20), (1, 1))])
def test_every_token_sees_the_pixels_of_its_cell(attender, size, canvas):
    """Tiles, thumbnail, or the single view of a one-tile canvas (columns, rows)."""
    width, height = size
    model = attender.model.model
    processor = attender.processor.image_processor
    factor = attender.model.config.downsample_factor
    prepared = attender.adapter.prepare([coordinate_image(width, height)], ["describe the image"])
    coords = carry(
        attender.model, prepared.inputs, model.vision_tower, model.multi_modal_projector.layernorm,
        model.language_model, pixels_of=lambda args, kwargs: args[0],
        to_stats=lambda pixels, hidden: patch_stats(pixels, processor.image_mean, processor.image_std,
                                                    model.config.vision_config.patch_size),
        # after the model's pixel shuffle: [n, h', w', factor²·D]
        merged=lambda x: merge_stats(x.reshape(*x.shape[:-1], factor * factor, -1)[..., :STATS]),
        final=model.multi_modal_projector)
    views = prepared.views[0]
    tiles = [v for v in views if v.kind == "tile"]
    columns, rows = canvas
    assert len(tiles) == (columns * rows if columns * rows > 1 else 0)
    assert [v.kind for v in views][-1] == ("global" if tiles else "image")
    if tiles:
        assert tiles[-1].name == f"tile {rows - 1},{columns - 1}"
    assert check_cells(coords[0, prepared.key_index[0]], views, width, height) == len(prepared.key_index[0])


def test_cli_ground_writes_masks_of_the_image_size(checkpoint, photos, tmp_path):
    from attendseg.cli.main import app
    from attendseg.rle import decode

    Image.fromarray(photos["chelsea"]).save(tmp_path / "cat.jpg")
    out = tmp_path / "out"
    run = CliRunner().invoke(app, ["ground", str(tmp_path / "cat.jpg"), "--model", str(checkpoint), "--out", str(out),
                                   "--text", "a cat on the left", "-q"])
    assert run.exit_code == 0, run.output
    data = json.loads((out / "cat.jpg.json").read_text())
    masks = [decode(p["segmentation"]) for p in data["phrases"] if p["segmentation"]]
    assert masks and all(m.shape == (300, 451) for m in masks)


@pytest.mark.parametrize("marker", ["<image>", "<|IMG_PATCH|>", "<|START_OF_IMG|>"])
def test_prompt_with_an_image_marker_is_refused(attender, photos, marker):
    with pytest.raises(AttendsegError, match="attendseg places the image"):
        attender.attend(Image.fromarray(photos["coffee"]), f"describe {marker} the image", max_new_tokens=2)


def test_checkpoint_without_processor_files(checkpoint, tmp_path):
    folder = tmp_path / "no-processor"
    shutil.copytree(checkpoint, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(AttendsegError, match="could not load the processor") as error:
        attendseg.load(folder)
    assert "\n" not in str(error.value)
