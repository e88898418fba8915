"""User mistakes give an AttendsegError that names the problem, never a deep traceback."""

import json

import numpy as np
import pytest
from PIL import Image

import attendseg
from attendseg import AttendsegError
from attendseg.images import load_image


@pytest.fixture(scope="module")
def attender(tiny_llava):
    return attendseg.load(tiny_llava)


def test_missing_model_folder(tmp_path):
    with pytest.raises(AttendsegError, match="not found"):
        attendseg.load(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    with pytest.raises(AttendsegError, match="no config.json"):
        attendseg.load(tmp_path)


def test_unreachable_hub_id():
    with pytest.raises(AttendsegError, match="not a local folder"):
        attendseg.load("someone/no-such-model-xyz")


def test_not_a_llava_architecture(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(AttendsegError, match=r"no adapter.*\(bert\).*supported families.*difflmm.*llava \(llava\)"):
        attendseg.load(tmp_path)


def test_empty_prompt(attender):
    with pytest.raises(AttendsegError, match="prompt is empty"):
        attender.attend(np.zeros((32, 32, 3), np.uint8), "   ")


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_bad_max_new_tokens(attender, n):
    with pytest.raises(AttendsegError, match="max_new_tokens"):
        attender.attend(np.zeros((32, 32, 3), np.uint8), "describe", max_new_tokens=n)


def test_bad_layers_and_heads(attender):
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(AttendsegError, match="layers .* out of range"):
        attender.attend(image, "describe", layers=[7])
    with pytest.raises(AttendsegError, match="heads .* out of range"):
        attender.attend(image, "describe", heads=[99])
    with pytest.raises(AttendsegError, match="rows must be"):
        attender.attend_text(image, "describe", "a cat", rows="middle")


def test_prompt_count_mismatch(attender):
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(AttendsegError, match="2 prompts for 1 images"):
        attender.attend([image], ["a", "b"])


def test_not_an_image(tmp_path, attender):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(AttendsegError, match="not an image"):
        attender.attend(str(text), "describe")
    with pytest.raises(AttendsegError, match="not an image"):
        load_image({"a": 1})
    with pytest.raises(AttendsegError, match="not an image array"):
        load_image(np.zeros((4, 4, 7)))


def test_empty_and_truncated_files(tmp_path, photos):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(AttendsegError, match="empty file"):
        load_image(empty)
    good = tmp_path / "good.jpg"
    Image.fromarray(photos["coffee"]).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(AttendsegError, match="truncated"):
        load_image(truncated)
    with pytest.raises(AttendsegError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_image_modes_are_converted(tmp_path, photos):
    rgb = Image.fromarray(photos["chelsea"])
    for mode in ("L", "RGBA", "P", "CMYK", "I;16", "LA"):
        image = rgb.convert(mode) if mode != "I;16" else Image.fromarray(
            (np.asarray(rgb.convert("L")).astype(np.uint16) * 257))
        out = load_image(image)
        assert out.mode == "RGB" and out.size == rgb.size
    sixteen = np.asarray(load_image(Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257)))
    assert abs(int(sixteen[..., 0].astype(int).mean()) - int(np.asarray(rgb.convert("L")).mean())) <= 2


def test_exif_rotation_is_applied(tmp_path, photos):
    image = Image.fromarray(photos["rocket"])  # 640 wide, 427 high
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (427, 640)


def test_beam_search_is_refused(attender):
    with pytest.raises(AttendsegError, match="num_beams"):
        attender.attend(np.zeros((32, 32, 3), np.uint8), "describe", num_beams=3)


def test_very_large_image_is_refused_before_decoding(tmp_path, monkeypatch):
    import attendseg.images

    path = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(path)
    monkeypatch.setattr(attendseg.images, "MAX_PIXELS", 100_000)
    with pytest.raises(AttendsegError, match="too large .*120,000 pixels"):
        load_image(path)


def test_image_token_in_prompt_or_text(attender):
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(AttendsegError, match="prompt contains '<image>'"):
        attender.attend(image, "<image>\ndescribe")
    with pytest.raises(AttendsegError, match="text contains '<image>'"):
        attender.attend_text(image, "describe", "a <image> cat")


@pytest.mark.parametrize("device, message", [("gpu", "unknown device"), ("cuda:7", "CUDA is not available|only")])
def test_bad_or_missing_device(tiny_llava, device, message):
    with pytest.raises(AttendsegError, match=message):
        attendseg.load(tiny_llava, device=device)


def test_inputs_writing_the_same_output_are_refused(tmp_path, photos):
    from attendseg.batch import collect

    for name in ("a", "b"):
        (tmp_path / name / "images").mkdir(parents=True)
        Image.fromarray(photos["coffee"]).save(tmp_path / name / "images" / "cat.jpg")
    with pytest.raises(AttendsegError, match="would write the same output"):
        collect([tmp_path / "a" / "images", tmp_path / "b" / "images"])
    with pytest.raises(AttendsegError, match="would write the same output"):
        collect([tmp_path / "a" / "images" / "cat.jpg", tmp_path / "b" / "images" / "cat.jpg"])
    jobs, _ = collect([tmp_path / "a" / "images"])
    assert [j.output(tmp_path / "out", ".json").name for j in jobs] == ["cat.jpg.json"]


def test_bad_types_for_layers_heads_batch_size(attender):
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(AttendsegError, match="layers must be"):
        attender.attend(image, "describe", layers="0-3")
    with pytest.raises(AttendsegError, match="batch_size"):
        attender.attend([image], "describe", batch_size=0)
    assert load_image(np.full((4, 4), 65535, np.uint16)).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(AttendsegError, match="empty image array"):
        load_image(np.zeros((0, 0, 3), np.uint8))
