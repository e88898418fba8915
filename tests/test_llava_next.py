"""LLaVA-NeXT and LLaVA-OneVision (any-resolution tiles): capture against transformers' eager
``output_attentions``, geometry carried through the models' own tiling / unpadding / pooling code,
the CLI, and bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import attendseg
from attendseg import AttendsegError
from attendseg.tiny.llava_next import build_llava_next, build_llava_onevision
from conftest import WORDS
from eager_reference import (assert_batch_equals_each_alone, assert_generation_matches_eager,
                             assert_teacher_forcing_matches_eager)

PROMPTS = ["describe the image", "is there a red circle on the left of the blue square"]
TEXTS = ["a red circle", "a blue square on the left of a large green star"]
BUILDERS = {
    "next": lambda folder: build_llava_next(folder, WORDS, seed=0),
    "next_full": lambda folder: build_llava_next(folder, WORDS, seed=1, strategy="full", text_model="llama"),
    "onevision": lambda folder: build_llava_onevision(folder, WORDS, seed=2),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = BUILDERS[name](tmp_path_factory.mktemp(name))
        return cache[name]

    return get


@pytest.fixture(scope="module", params=list(BUILDERS))
def checkpoint(request, built):
    return built(request.param)


@pytest.fixture(scope="module")
def attender(checkpoint):
    return attendseg.load(checkpoint)


@pytest.fixture(scope="module")
def eager(attender, checkpoint):
    model_class = getattr(transformers, attender.adapter.model_class)
    return model_class.from_pretrained(checkpoint, attn_implementation="eager").eval()


def two_photos(photos):
    """Square and 3:2 photos: different tile grids, different image-token counts."""
    return [Image.fromarray(photos["astronaut"]), Image.fromarray(photos["coffee"])]


# ------------------------------------------------------------------------------------ capture
def test_generation_matches_eager_output_attentions(attender, eager, photos):
    _, prepared, _ = assert_generation_matches_eager(attender, eager, two_photos(photos), PROMPTS, 6)
    assert prepared.key_index[0].numel() != prepared.key_index[1].numel()


@pytest.mark.parametrize("rows", ["predicting", "own"])
def test_teacher_forcing_matches_eager(attender, eager, photos, rows):
    images = two_photos(photos)
    assert_teacher_forcing_matches_eager(attender, eager, images, PROMPTS, TEXTS, rows)


def test_mixed_sizes_batch_equals_one_by_one(attender, photos):
    images = two_photos(photos)
    assert_batch_equals_each_alone(attender, images, PROMPTS, TEXTS)


def test_vision_special_tokens_are_never_generated(attender, photos):
    banned = {t for t in attender.adapter.never_generated() if t is not None}
    assert attender.model.config.image_token_id in banned
    if attender.adapter.family == "llava_onevision":
        assert attender.model.config.video_token_id in banned
    traces = attender.attend(two_photos(photos), PROMPTS, max_new_tokens=12)
    assert all(not banned & set(t.token_ids.tolist()) for t in traces)


# ----------------------------------------------------------------------------------- geometry
def coordinate_image(width, height):
    """R = column, G = row, B = 255: every pixel tells where it came from (padding has B = 0)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.arange(width)[None, :]
    image[..., 1] = np.arange(height)[:, None]
    image[..., 2] = 255
    return Image.fromarray(image)


STATS = 7  # per token: Σx, Σy, count, min x, max x, min y, max y of the original pixels it holds


def carried_pixels(attender, prepared):
    """Per batch row, ``[N_b, STATS]``: for each image-token position of the language model's
    input, statistics of the original pixels (centres, in original coordinates) in that token's
    patch(es), carried there by the model's own forward: the vision tower's projected features
    are replaced by each patch's statistics, read back from ``pixel_values`` with normalisation
    undone; the model then stitches, unpads, pools and places them itself. Newline tokens read
    count = -1."""
    model = attender.model
    processor = attender.processor.image_processor
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    patch = model.config.vision_config.patch_size
    seen = {}

    def tower_input(module, args, kwargs):
        seen["pixels"] = args[0] if args else kwargs["pixel_values"]

    def patch_statistics(module, args, output):
        rgb = (seen["pixels"].double() * std + mean) * 255  # [n, 3, t, t], the processor's pixels
        n, _, t, _ = rgb.shape
        side = t // patch
        tiles = rgb[:, :, : side * patch, : side * patch].reshape(n, 3, side, patch, side, patch)
        tiles = tiles.permute(0, 2, 4, 1, 3, 5).reshape(n, side * side, 3, patch * patch)
        x, y, real = tiles[:, :, 0] + 0.5, tiles[:, :, 1] + 0.5, tiles[:, :, 2] > 127
        big = torch.tensor(1e6, dtype=torch.float64)
        stats = torch.stack([
            (x * real).sum(-1), (y * real).sum(-1), real.sum(-1).double(),
            torch.where(real, x, big).amin(-1), torch.where(real, x, -big).amax(-1),
            torch.where(real, y, big).amin(-1), torch.where(real, y, -big).amax(-1),
        ], -1)
        out = torch.zeros_like(output)
        out[..., :STATS] = stats.to(output.dtype)
        return out

    def language_input(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()

    newline = model.model.image_newline.data.clone()
    model.model.image_newline.data.zero_()
    model.model.image_newline.data[2] = -1
    hooks = [model.model.vision_tower.register_forward_pre_hook(tower_input, with_kwargs=True),
             model.model.multi_modal_projector.register_forward_hook(patch_statistics),
             model.model.language_model.register_forward_pre_hook(language_input, with_kwargs=True)]
    try:
        with torch.no_grad():
            model(**prepared.inputs)
    finally:
        for hook in hooks:
            hook.remove()
        model.model.image_newline.data.copy_(newline)
    return [seen["embeds"][b, keys, :STATS].double() for b, keys in enumerate(prepared.key_index)]


SIZES = [(60, 180), (180, 60), (200, 150), (97, 151), (250, 250), (255, 40)]  # (width, height): 1:3, 3:1, …
TOLERANCE = 0.51  # px: the resize rounds each pixel's carried coordinate to a whole value


@pytest.mark.parametrize("width, height", SIZES)
def test_every_token_holds_the_pixels_of_its_cell_box(attender, width, height):
    """Every image token's cell box (through the Views) holds the original pixels the processor put
    in its patch (pooled grids: the weighted pixels it reads), and a patch full of image pixels is
    centred on its cell box; each newline token closes a row."""
    prepared = attender.adapter.prepare([coordinate_image(width, height)], ["describe the image"])
    views = prepared.views[0]
    assert [v.kind for v in views] == ["global", "tile"] and views[1].start == views[0].stop
    stats = carried_pixels(attender, prepared)[0]
    assert stats.shape[0] == views[-1].stop
    full = attender.model.config.vision_config.patch_size ** 2
    worst = 0.0
    for view in views:
        h, w = view.grid
        pooled = attender.adapter.family == "llava_onevision" and view.kind == "tile"
        for r in range(h):
            row = view.start + r * view.row_stride
            if view.row_stride > w:
                assert stats[row + w, 2] == -1, "a newline token closes every row"
            for c in range(w):
                sx, sy, count, x0, x1, y0, y1 = stats[row + c].tolist()
                assert count >= 0, f"{view.name} ({r}, {c}) is not an image cell"
                if count < 1e-9:
                    continue  # a cell of padding only
                bx0, by0, bx1, by1 = view.cell_box(r, c)
                cx, cy = sx / count, sy / count
                assert bx0 - TOLERANCE <= cx <= bx1 + TOLERANCE and by0 - TOLERANCE <= cy <= by1 + TOLERANCE
                if abs(count - full) < 1e-6:
                    worst = max(worst, abs(cx - (bx0 + bx1) / 2), abs(cy - (by0 + by1) / 2))
                if not pooled:
                    assert bx0 - TOLERANCE <= x0 and x1 <= bx1 + TOLERANCE, (view.name, r, c, x0, x1, bx0, bx1)
                    assert by0 - TOLERANCE <= y0 and y1 <= by1 + TOLERANCE, (view.name, r, c, y0, y1, by0, by1)
    assert worst <= TOLERANCE


def test_onevision_shrinks_a_large_tile_grid(built):
    """anyres_max_9: a 6 × 6-tile image's 18 × 18 unpadded grid reaches the text model shrunk
    (the geometry test above proves where its cells lie)."""
    attender = attendseg.load(built("onevision"))
    prepared = attender.adapter.prepare([coordinate_image(250, 250)], ["describe the image"])
    tiles = prepared.inputs["pixel_values"].shape[1] - 1
    side = attender.model.config.vision_config.image_size // attender.model.config.vision_config.patch_size
    h, w = prepared.views[0][1].grid
    assert tiles == 36 and h * w <= tiles * side * side / 2


# ---------------------------------------------------------------------------------- CLI, input
@pytest.mark.parametrize("name", ["next", "onevision"])
def test_cli_ground_writes_masks_of_the_image_size(built, photos, tmp_path, name):
    Image.fromarray(photos["coffee"]).save(tmp_path / "coffee.jpg")
    from typer.testing import CliRunner

    from attendseg.cli.main import app

    result = CliRunner().invoke(app, ["ground", str(tmp_path / "coffee.jpg"), "--model", str(built(name)),
                                      "--out", str(tmp_path / "out"), "--text", "a red circle", "--masks-png", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "coffee.jpg.json").read_text())
    assert data["phrases"] and all(p["segmentation"]["size"] == [400, 600] for p in data["phrases"])
    masks = list((tmp_path / "out" / "coffee.jpg.masks").glob("*.png"))
    assert masks and all(Image.open(m).size == (600, 400) for m in masks)


def test_onevision_processor_loads_without_torchvision_with_its_settings(built):
    from attendseg.adapters import has_torchvision, load_processor

    processor = load_processor(str(built("onevision")))
    assert type(processor).__name__ == "LlavaOnevisionProcessor"
    assert (processor.num_image_tokens, processor.vision_feature_select_strategy, processor.vision_aspect_ratio) == (
        9, "full", "anyres_max_9")
    if not has_torchvision():
        assert getattr(processor, "video_processor", None) is None


@pytest.mark.parametrize("name", ["next", "onevision"])
def test_prompt_with_the_image_token(built, photos, name):
    attender = attendseg.load(built(name))
    with pytest.raises(AttendsegError, match="contains '<image>'"):
        attender.attend(two_photos(photos)[0], "<image> describe the image")


@pytest.mark.parametrize("name", ["next", "onevision"])
def test_checkpoint_without_processor_files(built, tmp_path, name):
    for file in ("config.json", "model.safetensors"):
        shutil.copy(built(name) / file, tmp_path / file)
    with pytest.raises(AttendsegError, match="could not load the processor"):
        attendseg.load(tmp_path)


@pytest.mark.parametrize("size, lost", [((400, 2), "row"), ((2, 400), "column")])
def test_image_too_thin_for_the_tile_grid(built, size, lost):
    """LLaVA-NeXT's processor has no size limits, but unpadding a 400 × 2 image's tile grid keeps
    no row (transformers would feed the model an empty grid): one clear line instead."""
    attender = attendseg.load(built("next"))
    with pytest.raises(AttendsegError, match=f"too thin.*keeps no {lost}"):
        attender.attend(Image.new("RGB", size), "describe the image")


def test_full_strategy_with_a_cls_tower_is_refused(built, tmp_path):
    """transformers cannot stitch tiles whose features keep CLIP's CLS token."""
    shutil.copytree(built("next"), tmp_path / "m")
    for file, key in (("config.json", "vision_feature_select_strategy"),
                      ("processor_config.json", "vision_feature_select_strategy")):
        data = json.loads((tmp_path / "m" / file).read_text())
        data[key] = "full"
        (tmp_path / "m" / file).write_text(json.dumps(data))
    attender = attendseg.load(tmp_path / "m")
    with pytest.raises(AttendsegError, match="CLS token"):
        attender.attend(Image.new("RGB", (64, 48)), "describe the image")
