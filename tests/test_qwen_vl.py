"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL: capture against eager ``output_attentions``, geometry through the
models' own patch arrangement, the CLI, and the family's bad input.

Tiny random checkpoints built with the families' real config, model and processor classes
(``attendseg.tiny.qwen_vl``), loaded by folder like hub checkpoints.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

import attendseg
from attendseg.tiny.qwen_vl import MODEL_TYPES, build_qwen_vl
from eager_reference import (assert_batch_equals_each_alone, assert_generation_matches_eager,
                             assert_teacher_forcing_matches_eager, generation_maps)

WORDS = "describe the image is there a red circle on left of blue square large green star".split()
PROMPTS = ["describe the image", "is there a red circle on the left"]
TEXTS = ["a red circle", "a blue square on the left of a large green star"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-vl")
    return {t: build_qwen_vl(root / t, WORDS, model_type=t, seed=i) for i, t in enumerate(MODEL_TYPES)}


@pytest.fixture(scope="module", params=MODEL_TYPES)
def model_type(request):
    return request.param


@pytest.fixture(scope="module")
def attender(folders, model_type):
    return attendseg.load(folders[model_type])


@pytest.fixture(scope="module")
def eager(attender):
    cls = getattr(transformers, attender.adapter.model_class)
    return cls.from_pretrained(attender.model_id, attn_implementation="eager").eval()


def photos():
    """Two real photos of different aspect ratios (landscape 3:2, portrait 1:2)."""
    from skimage import data

    return [Image.fromarray(data.coffee()), Image.fromarray(data.astronaut()[:, 128:384])]


def test_load_gives_the_family_adapter_and_processor(attender, model_type):
    assert attender.adapter.family == model_type
    assert type(attender.model).__name__ == attender.adapter.model_class
    assert type(attender.processor).__name__ == attender.adapter.model_class.replace(
        "ForConditionalGeneration", "Processor")
    assert attender.adapter.language_model is attender.model.model.language_model


def test_generation_matches_eager_output_attentions(attender, eager):
    _, prepared, _ = assert_generation_matches_eager(attender, eager, photos(), PROMPTS, 6)
    grids = prepared.inputs["image_grid_thw"]
    assert [k.numel() for k in prepared.key_index] == (grids.prod(-1) // 4).tolist()
    assert prepared.key_index[0].numel() != prepared.key_index[1].numel()


def test_generated_tokens_identical_to_plain_sdpa(attender):
    plain = getattr(transformers, attender.adapter.model_class).from_pretrained(
        attender.model_id, attn_implementation="sdpa").eval()
    prepared = attender.adapter.prepare(photos(), PROMPTS)
    with torch.no_grad():
        expected = plain.generate(**prepared.inputs, max_new_tokens=10, do_sample=False,
                                  pad_token_id=attender.adapter.tokenizer.pad_token_id,
                                  **attender.adapter.generation_defaults())
    start = prepared.inputs["input_ids"].shape[1]
    for b, trace in enumerate(attender.attend(photos(), PROMPTS, max_new_tokens=10)):
        assert torch.equal(trace.token_ids, expected[b, start:start + len(trace)])


@pytest.mark.parametrize("rows", ["predicting", "own"])
def test_teacher_forcing_matches_eager(attender, eager, rows):
    images = photos()
    prepared = assert_teacher_forcing_matches_eager(attender, eager, images, PROMPTS, TEXTS, rows)
    assert (prepared.inputs["mm_token_type_ids"] == 1).sum(1).tolist() == [k.numel() for k in prepared.key_index]


def test_teacher_forcing_the_answer_gives_the_generation_maps(attender):
    """M-RoPE: the model derives positions from ``mm_token_type_ids`` in one forward over prompt
    + text, and from cached rope deltas while generating; both must put the text at the same
    positions, so teacher-forcing the generated answer reproduces its maps."""
    images = photos()
    generated = attender.attend(images, PROMPTS, max_new_tokens=6, min_new_tokens=6, per_layer=True)
    answers = [attender.adapter.tokenizer.decode(t.token_ids) for t in generated]
    forced = attender.attend_text(images, PROMPTS, answers, per_layer=True)
    for g, f in zip(generated, forced):
        assert torch.equal(f.token_ids, g.token_ids)
        assert torch.allclose(f.maps, g.maps, atol=1e-5, rtol=0)


def test_mixed_size_batch_equals_each_image_alone(attender):
    images = photos()
    assert_batch_equals_each_alone(attender, images, PROMPTS, TEXTS)


def test_vision_tokens_are_never_generated(attender):
    tokenizer = attender.adapter.tokenizer
    vision = {tokenizer.convert_tokens_to_ids(t) for t in
              ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")}
    assert vision <= set(attender.adapter.generation_defaults()["suppress_tokens"])
    for trace in attender.attend(photos(), PROMPTS, max_new_tokens=12):
        assert not vision & set(trace.token_ids.tolist())


def test_qwen3_deepstack_is_injected_and_capture_still_matches_eager(folders, tmp_path):
    """Deepstack adds merged visual features into the hidden states after the first decoder
    layer(s): the next layers' attention changes (it is really on), and capture, which reads
    attention only, stays equal to eager (the eager test above runs with deepstack on)."""
    attender = attendseg.load(folders["qwen3_vl"])
    assert attender.model.config.vision_config.deepstack_visual_indexes
    on = attender.attend_text(photos()[0], PROMPTS[0], TEXTS[0], per_layer=True)
    for merger in attender.model.model.visual.deepstack_merger_list:
        torch.nn.init.zeros_(merger.linear_fc2.weight)
        torch.nn.init.zeros_(merger.linear_fc2.bias)
    off = attender.attend_text(photos()[0], PROMPTS[0], TEXTS[0], per_layer=True)
    assert torch.allclose(on.maps[:, 0], off.maps[:, 0], atol=1e-6)  # layer 0 runs before any injection
    assert not torch.allclose(on.maps[:, 1], off.maps[:, 1], atol=1e-4)


# ----------------------------------------------------------------------------------- geometry
def coordinate_image(width: int, height: int) -> tuple[Image.Image, tuple[float, float]]:
    """An image whose red channel codes the pixel's column and green its row, in steps of
    ``(sx, sy)`` pixels per level (1 up to 256 px; coarser beyond, to fit 8 bits)."""
    sx, sy = max(1.0, (width - 1) / 255), max(1.0, (height - 1) / 255)
    ys, xs = np.mgrid[0:height, 0:width]
    codes = np.stack([np.round(xs / sx), np.round(ys / sy), np.full_like(xs, 128)], -1)
    return Image.fromarray(codes.astype(np.uint8)), (sx, sy)


def token_regions(attender, image, steps=(1.0, 1.0)):
    """Per image token, the ``(x_min, x_max, y_min, y_max)`` original-pixel coordinates (pixel
    centres) read from the pixels the processor placed in its 2 × 2 patches, carried through the
    model's own code to the language model's input: the patch embedding is replaced by the
    decoded coordinates of its pixels (normalisation undone), the vision blocks, the merger's
    norm and Qwen3-VL's position table by identity / zero, the merger by min / max over the
    group the model's own reshape hands it; Qwen2.5-VL's window permutation and its inverse,
    the split per image and the scatter into the image-token positions are the model's."""
    visual = attender.model.model.visual
    image_processor = attender.processor.image_processor
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1, 1)
    patch, frames = visual.patch_embed.patch_size, visual.patch_embed.temporal_patch_size
    merger = visual.merger
    grouped, seen = {}, {}

    def embed(module, args, out):
        pixels = (args[0].view(-1, 3, frames, patch, patch).float() * std + mean) * 255
        x, y = pixels[:, 0, 0].flatten(1) * steps[0], pixels[:, 1, 0].flatten(1) * steps[1]
        codes = torch.stack([x.amin(1), x.amax(1), y.amin(1), y.amax(1)], 1)
        return torch.nn.functional.pad(codes, (0, out.shape[1] - 4))

    def merge(module, args, out):
        group = grouped["input"].view(grouped["input"].shape[0], 4, -1)  # the model's [n / 4, 4 · C]
        codes = torch.stack([group[:, :, 0].amin(1), group[:, :, 1].amax(1),
                             group[:, :, 2].amin(1), group[:, :, 3].amax(1)], 1)
        return torch.nn.functional.pad(codes, (0, out.shape[1] - 4))

    norm = merger.ln_q if hasattr(merger, "ln_q") else merger.norm
    first_linear = merger.mlp[0] if hasattr(merger, "mlp") else merger.linear_fc1
    hooks = [visual.patch_embed.register_forward_hook(embed),
             norm.register_forward_hook(lambda m, args, out: args[0]),
             first_linear.register_forward_hook(lambda m, args, out: grouped.update(input=args[0])),
             merger.register_forward_hook(merge),
             attender.adapter.language_model.register_forward_pre_hook(
                 lambda m, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)]
    hooks += [block.register_forward_hook(lambda m, args, kwargs, out: args[0] if args else kwargs["hidden_states"],
                                          with_kwargs=True) for block in visual.blocks]
    if hasattr(visual, "pos_embed"):
        hooks.append(visual.pos_embed.register_forward_hook(lambda m, args, out: torch.zeros_like(out)))
    prepared = attender.adapter.prepare([image], ["describe the image"])
    try:
        with torch.no_grad():
            attender.model(**prepared.inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen["embeds"][0, prepared.key_index[0], :4] + 0.5, prepared.views[0]  # index → pixel centre


def check_cells(attender, width, height) -> tuple[float, float]:
    """Assert that every token's cell contains, and is filled by, the pixels of its patches.
    Returns (the largest overshoot of a token's pixels beyond its cell, the smallest share of a
    cell's side its pixels span), in pixels and as a fraction."""
    image, steps = coordinate_image(width, height)
    regions, views = token_regions(attender, image, steps)
    assert len(views) == 1 and views[0].box == (0, 0, width, height)
    view = views[0]
    assert regions.shape[0] == view.n_tokens
    tolerance = max(steps) * 0.5 + 0.5  # the 8-bit code's step and the resampled uint8 rounding
    spacing = max(view.cell_size) / (2 * attender.model.model.visual.patch_embed.patch_size)  # a resized pixel
    overshoot, fill = 0.0, 1.0
    for k, (x_min, x_max, y_min, y_max) in enumerate(regions.tolist()):
        x0, y0, x1, y1 = view.cell_box(*divmod(k, view.grid[1]))
        overshoot = max(overshoot, x0 - x_min, x_max - x1, y0 - y_min, y_max - y1)
        fill = min(fill, (x_max - x_min) / (x1 - x0), (y_max - y_min) / (y1 - y0))
        assert x0 - tolerance <= x_min and x_max <= x1 + tolerance, (k, x0, x1, x_min, x_max)
        assert y0 - tolerance <= y_min and y_max <= y1 + tolerance, (k, y0, y1, y_min, y_max)
        # and the pixels fill the cell (one resampled pixel short): the box is tight
        assert x_max - x_min >= x1 - x0 - spacing - 2 * tolerance
        assert y_max - y_min >= y1 - y0 - spacing - 2 * tolerance
    return overshoot, fill


# 3:1, 1:3, 4:3, 3:4, 1:1 downscaled (above max_pixels), 4:3 upscaled (below min_pixels)
SIZES = [(240, 80), (80, 240), (200, 150), (150, 200), (256, 256), (40, 30)]


@pytest.mark.parametrize("width, height", SIZES)
def test_every_token_cell_contains_the_pixels_of_its_patches(attender, width, height):
    check_cells(attender, width, height)


#: The released Qwen3-VL image processor's settings (16 px patches; 0.5 mean / std).
QWEN3_RELEASED = dict(min_pixels=65536, max_pixels=16777216, image_mean=[0.5] * 3, image_std=[0.5] * 3)


@pytest.mark.parametrize("width, height", [(1024, 768), (768, 1024), (1600, 400)])
def test_qwen3_views_at_the_released_processor_settings(tmp_path_factory, width, height):
    folder = tmp_path_factory.getbasetemp() / "qwen3-released"
    if not (folder / "config.json").exists():
        build_qwen_vl(folder, WORDS, model_type="qwen3_vl", image_processor=QWEN3_RELEASED)
    check_cells(attendseg.load(folder), width, height)


# ----------------------------------------------------------------------------------- CLI
def test_cli_ground_writes_masks_of_the_image_size(folders, tmp_path):
    from skimage import data

    photo = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(photo)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "attendseg.cli.main", "ground", str(photo), "--model",
                             str(folders["qwen2_5_vl"]), "--out", str(tmp_path / "out"), "--text",
                             "a red circle on the left of a blue square", "--masks-png", "-q"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "out" / "chelsea.png.json").read_text())
    assert (record["image"]["width"], record["image"]["height"]) == (451, 300)
    assert record["phrases"] and all(p["segmentation"]["size"] == [300, 451] for p in record["phrases"])
    masks = list((tmp_path / "out" / "chelsea.png.masks").glob("*.png"))
    assert masks and all(Image.open(m).size == (451, 300) for m in masks)


# ----------------------------------------------------------------------------------- bad input
def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_images_beyond_the_pixel_limits_are_resized_whole(folders):
    attender = attendseg.load(folders["qwen2_vl"])
    size = attender.processor.image_processor.size
    for width, height in [(3, 2), (1, 150), (4000, 3000)]:
        image = Image.new("RGB", (width, height), "white")
        (view,) = attender.adapter.prepare([image], ["describe the image"]).views[0]
        h, w = view.grid
        assert view.box == (0, 0, width, height)
        assert size["shortest_edge"] <= h * w * 28 * 28 <= size["longest_edge"]


def test_too_elongated_image_is_one_line(folders):
    attender = attendseg.load(folders["qwen2_vl"])
    with pytest.raises(attendseg.AttendsegError) as error:
        attender.attend(Image.new("RGB", (402, 2)), "describe the image", max_new_tokens=2)
    assert "402×2" in one_line(error) and "aspect ratio" in one_line(error)


@pytest.mark.parametrize("token", ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"])
def test_prompt_with_a_vision_token_is_one_line(folders, token):
    attender = attendseg.load(folders["qwen2_vl"])
    image = Image.new("RGB", (64, 48))
    with pytest.raises(attendseg.AttendsegError) as error:
        attender.attend(image, f"describe {token} the image", max_new_tokens=2)
    assert token in one_line(error) and "prompt" in one_line(error)
    with pytest.raises(attendseg.AttendsegError, match="the text contains"):
        attender.attend_text(image, "describe the image", f"a {token}")


def test_checkpoint_without_processor_files_is_one_line(folders, tmp_path):
    folder = shutil.copytree(folders["qwen2_5_vl"], tmp_path / "bare")
    for path in folder.iterdir():
        if path.name.startswith(("tokenizer", "processor", "preprocessor", "chat_template")):
            path.unlink()
    with pytest.raises(attendseg.AttendsegError) as error:
        attendseg.load(folder)
    assert "could not load the processor" in one_line(error)


@pytest.mark.parametrize("layout", ["nested", "files"])
def test_video_only_checkpoint_is_one_line(folders, tmp_path, layout):
    """A checkpoint whose processor has a video processor but no image processor: settings nested
    in processor_config.json (transformers 5) or in video_preprocessor_config.json (older)."""
    folder = shutil.copytree(folders["qwen3_vl"], tmp_path / "video")
    config = json.loads((folder / "processor_config.json").read_text())
    del config["image_processor"]
    if layout == "files":
        (folder / "video_preprocessor_config.json").write_text(json.dumps(config.pop("video_processor")))
    (folder / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(attendseg.AttendsegError) as error:
        attendseg.load(folder)
    assert "video processor but no image processor" in one_line(error)
