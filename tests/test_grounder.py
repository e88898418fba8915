"""End to end through the Python API: tiny random LLaVA (+ tiny random SAM) on real photos."""

import json

import numpy as np
import pytest
from PIL import Image

import attendseg
from attendseg import AttendsegError, Grounder, Grounding
from attendseg.rle import decode


@pytest.fixture(scope="module")
def grounder(tiny_llava):
    return Grounder.from_pretrained(tiny_llava, refiner="superpixel", phrases="simple")


def test_ground_text_gives_one_mask_per_phrase_at_image_size(grounder, photos):
    text = "a red circle on the left of a blue square"
    result = grounder.ground_text(photos["coffee"], text, prompt="describe the image")
    assert isinstance(result, Grounding)
    assert [p.text for p in result.phrases] == ["a red circle", "a blue square"]
    for phrase in result.phrases:
        assert phrase.mask.shape == photos["coffee"].shape[:2] and phrase.mask.any()
        x, y = phrase.points[0]
        assert 0 <= x < 600 and 0 <= y < 400
        assert [text[i] for i in range(*phrase.span)] == list(phrase.text)


def test_ground_generates_and_batches(grounder, photos):
    results = grounder.ground([photos["chelsea"], photos["rocket"]], prompt="describe the image",
                              max_new_tokens=6)
    assert len(results) == 2
    for result, key in zip(results, ["chelsea", "rocket"]):
        h, w = photos[key].shape[:2]
        assert result.image_size == (w, h)
        assert result.answer and result.model
        json.dumps(result.to_json())


def test_sam_refiner_end_to_end(tiny_llava, tiny_sam, photos):
    grounder = Grounder.from_pretrained(tiny_llava, refiner="sam", sam_model=str(tiny_sam), phrases="simple")
    result = grounder.ground_text(photos["astronaut"], "a person with a white star", prompt="describe")
    assert result.refiner == "sam" and len(result.phrases) == 2
    for phrase in result.phrases:
        assert phrase.mask.shape == (512, 512)
        assert np.isfinite(phrase.score)


def test_json_round_trip_through_pycocotools(grounder, photos, tmp_path):
    from pycocotools import mask as cocomask

    result = grounder.ground_text(photos["chelsea"], "a cat on a red square", prompt="describe")
    path = result.save_json(tmp_path / "g.json")
    data = json.loads(path.read_text())
    for phrase, saved in zip(result.phrases, data["phrases"]):
        rle = dict(saved["segmentation"], counts=saved["segmentation"]["counts"].encode())
        assert np.array_equal(cocomask.decode(rle).astype(bool), phrase.mask)
        assert np.array_equal(decode(saved["segmentation"]), phrase.mask)
    again = Grounding.load_json(path)
    assert [p.text for p in again.phrases] == [p.text for p in result.phrases]


def test_answer_without_phrases_is_a_valid_empty_result(grounder, photos):
    result = grounder.ground_text(photos["coffee"], "on the left of", prompt="describe")
    assert result.phrases == []
    assert Grounding.from_json(result.to_json()).phrases == []


def test_saved_trace_grounds_like_a_live_one(grounder, photos, tmp_path):
    trace = grounder.attender.attend_text(photos["coffee"], "describe", "a red circle")
    reloaded = attendseg.Trace.load(trace.save(tmp_path / "t.safetensors"))
    a = grounder.ground_trace(trace, photos["coffee"])
    b = grounder.ground_trace(reloaded, photos["coffee"])
    assert np.array_equal(a.phrases[0].mask, b.phrases[0].mask)
    with pytest.raises(AttendsegError, match="recorded on"):
        grounder.ground_trace(trace, photos["chelsea"])


def test_vocabulary_mode_grounds_only_given_words(tiny_llava, photos):
    grounder = Grounder.from_pretrained(tiny_llava, phrases=["square"])
    result = grounder.ground_text(photos["coffee"], "a red circle and a blue square", prompt="describe")
    assert [p.root for p in result.phrases] == ["square"]


def test_bad_settings_fail_before_loading(tiny_llava):
    with pytest.raises(AttendsegError, match="normalisation"):
        Grounder.from_pretrained(tiny_llava, normalisation="zscore")
    with pytest.raises(AttendsegError, match="refiner"):
        Grounder.from_pretrained(tiny_llava, refiner="magic")
    with pytest.raises(AttendsegError, match="sam refiner"):
        Grounder.from_pretrained(tiny_llava, sam_model="x")


def test_checkpoint_settings_file_sets_defaults(tiny_llava, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_llava, folder)
    (folder / "attendseg.json").write_text(json.dumps({"settings": {"layers": [1], "normalisation": "none"}}))
    grounder = Grounder.from_pretrained(folder, phrases="simple")
    assert grounder.settings.layers == [1] and grounder.settings.normalisation == "none"
    assert Grounder.from_pretrained(folder, normalisation="mean", phrases="simple").settings.normalisation == "mean"


def test_from_pretrained_shares_a_loaded_attender(grounder):
    again = Grounder.from_pretrained(grounder.attender, refiner="threshold", phrases="simple")
    assert again.attender is grounder.attender and again.refiner.name == "threshold"
