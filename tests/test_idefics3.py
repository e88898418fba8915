"""Idefics3 and SmolVLM: tiles + a global image, pixel shuffle, marker tokens between tiles.

References no one here wrote: transformers' eager ``output_attentions`` for capture, and for
geometry the processor's real ``pixel_values`` carried through the model's own vision tower
outputs, pixel shuffle and token merge (forward hooks) to the language model's input positions.
"""

import json
import shutil

import pytest
import torch
from PIL import Image

import attendseg
from attendseg import AttendsegError
from eager_reference import (assert_batch_equals_each_alone, assert_generation_matches_eager,
                             assert_teacher_forcing_matches_eager)
from geometry_probe import STATS, carry, check_cells, coordinate_image, merge_stats, patch_stats

WORDS = "user assistant describe the image a an red green blue circle square cat dog on of in and is there left".split()
PROMPTS = ["describe the image", "is there a red circle on the left"]
TEXTS = ["a red circle", "a blue square on the left of a green circle"]


@pytest.fixture(scope="module")
def tiny_idefics3(tmp_path_factory):
    """Idefics3: 32 px tiles, 4 px patches, pixel shuffle 2 → 4 × 4 tokens per tile, ≤ 3 × 3
    tiles, Llama text model with 4 heads (MHA)."""
    from attendseg.tiny.idefics3 import build_idefics3

    return build_idefics3(tmp_path_factory.mktemp("tiny-idefics3"), WORDS, kv_heads=None, seed=0)


@pytest.fixture(scope="module")
def tiny_smolvlm(tmp_path_factory):
    """SmolVLM: 34 px tiles (the tower's 4 px patches see 32 of them, as SmolVLM-Instruct's
    14 px patches see 378 of its 384 px tiles), GQA text model (4 heads, 2 kv heads)."""
    pytest.importorskip("num2words")  # SmolVLM's processor needs it (the test extra installs it)
    from attendseg.tiny.idefics3 import build_smolvlm

    return build_smolvlm(tmp_path_factory.mktemp("tiny-smolvlm"), WORDS, tile=34, kv_heads=2, seed=1)


@pytest.fixture(scope="module", params=["tiny_idefics3", "tiny_smolvlm"])
def checkpoint(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def attender(checkpoint):
    return attendseg.load(checkpoint)


@pytest.fixture(scope="module")
def eager(attender, checkpoint):
    import transformers

    cls = getattr(transformers, attender.adapter.model_class)
    return cls.from_pretrained(checkpoint, attn_implementation="eager").eval()


def photos_pair(photos):
    """Two real photos of different aspect ratios: 2 × 3 and 3 × 3 tiles (+ the global image)."""
    return [Image.fromarray(photos["coffee"]), Image.fromarray(photos["astronaut"])]


# ----------------------------------------------------------------------------------- capture
def test_generation_matches_eager(attender, eager, photos):
    _, prepared, _ = assert_generation_matches_eager(attender, eager, photos_pair(photos), PROMPTS, 6)
    assert [len(k) for k in prepared.key_index] == [7 * 16, 10 * 16]  # rows differ in image tokens


@pytest.mark.parametrize("rows", ["predicting", "own"])
def test_teacher_forcing_matches_eager(attender, eager, photos, rows):
    images = photos_pair(photos)
    assert_teacher_forcing_matches_eager(attender, eager, images, PROMPTS, TEXTS, rows)


def test_mixed_size_batch_equals_each_image_alone(attender, photos):
    images = photos_pair(photos)
    assert_batch_equals_each_alone(attender, images, PROMPTS, TEXTS)


def test_markers_are_never_generated(checkpoint, photos):
    """With the markers' output rows made dominant, plain generation emits them; capture's
    generation never does (the newline and end of utterance stay allowed)."""
    import transformers

    attender = attendseg.load(checkpoint)
    tokenizer = attender.adapter.tokenizer
    banned = attender.adapter.never_generated()
    names = set(tokenizer.convert_ids_to_tokens(banned))
    assert {"<image>", "<fake_token_around_image>", "<global-img>", "<row_1_col_1>", "<row_6_col_6>"} <= names
    assert "\n" not in names and "<end_of_utterance>" not in names
    head = attender.model.lm_head.weight
    with torch.no_grad():
        head[banned] *= 50
    prepared = attender.adapter.prepare(photos_pair(photos), PROMPTS)
    with torch.no_grad():
        plain = attender.model.generate(**prepared.inputs, max_new_tokens=8, do_sample=False,
                                        pad_token_id=tokenizer.pad_token_id)
    assert set(plain[:, prepared.inputs["input_ids"].shape[1]:].flatten().tolist()) & set(banned)
    for trace in attender.attend(photos_pair(photos), PROMPTS, max_new_tokens=8):
        assert not set(trace.token_ids.tolist()) & set(banned)
    assert isinstance(attender.model, getattr(transformers, attender.adapter.model_class))


# ----------------------------------------------------------------------------------- geometry
def token_coordinates(attender, image):
    """``[N, 6]`` coordinates each image token's patches hold (geometry_probe), and the Views."""
    model = attender.model.model
    processor = attender.processor.image_processor
    patch, scale = model.config.vision_config.patch_size, model.config.scale_factor
    prepared = attender.adapter.prepare([image], ["describe the image"])
    coords = carry(
        attender.model, prepared.inputs, model.vision_model, model.connector.modality_projection, model.text_model,
        pixels_of=lambda args, kwargs: kwargs["pixel_values"],
        to_stats=lambda pixels, hidden: patch_stats(pixels, processor.image_mean, processor.image_std, patch),
        # the pixel shuffle concatenates scale² patches' channels: [n, P/s², s²·D]
        merged=lambda x: merge_stats(x.reshape(*x.shape[:2], scale * scale, -1)[..., :STATS]))
    return coords[0, prepared.key_index[0]], prepared.views[0]


@pytest.mark.parametrize("size", [(60, 180), (180, 60), (150, 150), (200, 130), (90, 250)])
def test_every_token_sees_the_pixels_of_its_cell(attender, size):
    """Each image token's patches hold original pixels inside its cell's box, with their mean at
    the box's centre; tiles and the global image alike. (Measured: 0 px outside, means within
    0.03 cell; a transposed token order is 3 cells off, a box over the whole 34 px tile instead
    of the 32 px the patches see drifts by up to 0.25 cell.)"""
    width, height = size
    coords, views = token_coordinates(attender, coordinate_image(width, height))
    kinds = [v.kind for v in views]
    assert kinds.count("global") == 1 and kinds.count("tile") >= 3
    tiles = [v for v in views if v.kind == "tile"]
    rows = max(int(v.name.split()[1].split(",")[0]) for v in tiles) + 1
    assert (rows > len(tiles) // rows) == (height > width) or width == height
    assert check_cells(coords, views, width, height) == len(coords)


def test_the_unseen_strip_of_a_tile_is_outside_every_box(tiny_smolvlm):
    """SmolVLM with 34 px tiles: the 4 px patches see 32 px per tile; the boxes stop there."""
    attender = attendseg.load(tiny_smolvlm)
    views = attender.adapter.prepare([coordinate_image(204, 102)], ["describe the image"]).views[0]
    tile = next(v for v in views if v.name == "tile 0,0")
    assert tile.box == pytest.approx((0, 0, 68 * 32 / 34, 51 * 32 / 34))  # 2 × 3 tiles of 68 × 51 px


# ----------------------------------------------------------------------------------- CLI
def test_cli_ground_writes_masks_of_the_image_size(checkpoint, photos, tmp_path):
    from typer.testing import CliRunner

    from attendseg.cli.main import app
    from attendseg.rle import decode

    Image.fromarray(photos["chelsea"]).save(tmp_path / "cat.jpg")
    out = tmp_path / "out"
    run = CliRunner().invoke(app, ["ground", str(tmp_path / "cat.jpg"), "--model", str(checkpoint), "--out", str(out),
                                   "--text", "a cat on the left", "-q"])
    assert run.exit_code == 0, run.output
    data = json.loads((out / "cat.jpg.json").read_text())
    assert (data["image"]["width"], data["image"]["height"]) == (451, 300)
    masks = [decode(p["segmentation"]) for p in data["phrases"] if p["segmentation"]]
    assert masks and all(m.shape == (300, 451) for m in masks)


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("marker", ["<image>", "<row_1_col_2>", "<global-img>", "<fake_token_around_image>"])
def test_prompt_with_an_image_marker_is_refused(attender, photos, marker):
    with pytest.raises(AttendsegError, match="attendseg places the image") as error:
        attender.attend(Image.fromarray(photos["coffee"]), f"describe {marker} the image", max_new_tokens=2)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("size", [(1, 300), (300, 1), (3000, 40)])
def test_no_size_limits_extreme_images_are_tiled_like_any_other(attender, size):
    """The processor has no size limits (it upscales to its longest edge, caps at 4096 px)."""
    views = attender.adapter.prepare([Image.new("RGB", size, "red")], ["describe the image"]).views[0]
    tiles = [v for v in views if v.kind == "tile"]
    assert [v.kind for v in views][-1] == "global" and len(tiles) == 3
    assert min(v.box[0] for v in tiles) == 0 and min(v.box[1] for v in tiles) == 0


def test_checkpoint_without_processor_files(checkpoint, tmp_path):
    folder = tmp_path / "no-processor"
    shutil.copytree(checkpoint, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(AttendsegError, match="could not load the processor") as error:
        attendseg.load(folder)
    assert "\n" not in str(error.value)


def test_smolvlm_processor_without_num2words_is_one_line(tiny_smolvlm, monkeypatch):
    import transformers.models.smolvlm.processing_smolvlm as smolvlm

    monkeypatch.setattr(smolvlm, "num2words", None)
    with pytest.raises(AttendsegError, match="num2words") as error:
        attendseg.load(tiny_smolvlm)
    assert "\n" not in str(error.value)


def test_processor_without_its_video_part_keeps_its_settings(tiny_smolvlm):
    """SmolVLM's processor is saved and loaded without its video processor (no torchvision
    needed) and keeps its own settings (image_seq_len = 16 here, 169 by default)."""
    from attendseg.adapters import load_processor

    assert json.loads((tiny_smolvlm / "processor_config.json").read_text())["image_seq_len"] == 16
    processor = load_processor(str(tiny_smolvlm))
    assert processor.image_seq_len == 16 and type(processor).__name__ == "SmolVLMProcessor"
