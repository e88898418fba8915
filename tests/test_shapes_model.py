"""The bundled shapes-world model grounds what it reads: the strongest end-to-end capture test.

24 fixed held-out scenes (never seen in training); each scene's true caption is teacher-forced
and each shape word's map (the row that predicts it, the model's default layer) must peak inside
the named object. The negative control records each word's *own* row instead, one position
later, and the accuracy collapses: the test can fail.
"""

import pytest

import attendseg
from attendseg import shapes
from attendseg.demo import bundled_model
from attendseg.grounder import Settings, checkpoint_settings
from attendseg.shapes_eval import point_hits


@pytest.fixture(scope="module")
def model():
    return attendseg.load(bundled_model())


@pytest.fixture(scope="module")
def scenes():
    return [shapes.make_scene(seed) for seed in shapes.DEMO_SEEDS]


def point_accuracy(model, scenes, rows):
    settings = Settings(**checkpoint_settings(bundled_model()))
    traces = model.attend_text([s.image for s in scenes], [s.prompt for s in scenes], [s.caption for s in scenes],
                               rows=rows, layers=settings.layers)
    hits = sum(point_hits(trace, scene, settings) for trace, scene in zip(traces, scenes))
    return hits / sum(len(s.objects) for s in scenes)


def test_bundled_model_loads_like_a_hub_checkpoint(model):
    assert model.adapter.family == "llava"
    layers = checkpoint_settings(bundled_model())["layers"]  # measured defaults ship with it
    n_layers = model.model.config.text_config.num_hidden_layers
    assert layers == "all" or (layers and all(0 <= layer < n_layers for layer in layers))


def test_attention_points_at_the_named_objects(model, scenes):
    assert len(scenes) >= 20
    assert point_accuracy(model, scenes, "predicting") >= 0.7


def test_negative_control_shifted_rows_collapse(model, scenes):
    assert point_accuracy(model, scenes, "own") <= 0.4


def test_demo_command_writes_overlays_sheet_and_metrics(tmp_path):
    from attendseg.demo import run_demo

    metrics = run_demo(tmp_path, progress=False)
    assert metrics["scenes"] == len(shapes.DEMO_SEEDS)
    assert (tmp_path / "contact_sheet.png").exists() and (tmp_path / "metrics.json").exists()
    assert metrics["point_acc_tf"] >= 0.7 and metrics["world"] == "square"  # the world it was trained in
    assert len(list(tmp_path.glob("scene_*.png"))) == len(shapes.DEMO_SEEDS)


def test_eval_shapes_command_agrees_with_transformers_generate():
    """``attendseg eval shapes --json``: its caption exact-match equals greedy decoding by plain
    transformers (processor + chat template + ``generate``); the splits add up to the total."""
    import json
    import os
    import subprocess
    import sys

    import numpy as np
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    n = 12
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "attendseg.cli.main", "eval", "shapes", "--n", str(n),
                          "-r", "threshold", "--per-layer", "--json", "-q"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout)
    ours = figures["model"]

    model = LlavaForConditionalGeneration.from_pretrained(bundled_model()).eval()
    processor = AutoProcessor.from_pretrained(bundled_model())
    scenes = [shapes.make_scene(seed) for seed in shapes.heldout_seeds(n, 0)]
    exact = []
    for scene in scenes:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": scene.prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=[scene.image], text=[text], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
        answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        exact.append(answer.strip() == scene.caption)
    assert ours["scenes"] == n and ours["caption_exact"] == pytest.approx(np.mean(exact))
    for kind, key in (("order", lambda s: s.order), ("objects", lambda s: str(len(s.objects))),
                      ("aspect", lambda s: s.aspect)):
        split = ours[f"by_{kind}"]
        assert set(split) == {key(s) for s in scenes}
        for value, figures_of in split.items():
            assert figures_of["caption_exact"] == pytest.approx(
                np.mean([e for e, s in zip(exact, scenes) if key(s) == value]))
        assert sum(f["objects"] for f in split.values()) == ours["objects"]
    n_layers = model.config.text_config.num_hidden_layers
    assert len(ours["per_layer_point_acc_tf"]) == 2 * (n_layers + 1)  # each layer and their mean, raw and normalised
    assert 0 <= figures["random_point"] <= 1 and figures["untrained"]["caption_exact"] == 0


def test_bundled_model_by_short_name_with_its_own_prompt_and_words(photos, capfd):
    grounder = attendseg.Grounder.from_pretrained("shapes-llava", refiner="threshold")
    assert "Loading weights" not in capfd.readouterr().err  # no progress bar on every load
    assert attendseg.BUNDLED_MODELS["shapes-llava"] == bundled_model()
    assert grounder.attender.model_id == "shapes-llava"  # results name it portably, not by its install path
    assert grounder.prompt in {prompt for prompt, _ in shapes.ORDERS.values()}  # what it was trained on
    g = grounder.ground(photos["chelsea"], max_new_tokens=48)  # a photo: far from its world
    assert g.answer.startswith("from ") and g.meta["hit_token_limit"] is False
    assert g.phrases and all(p.text in shapes.SHAPES for p in g.phrases)  # its words, not "a orange star"


def test_trace_prints_in_one_short_line(model, scenes):
    trace = model.attend_text(scenes[0].image, scenes[0].prompt, scenes[0].caption, layers=[1, 2], per_layer=True)
    text = repr(trace)
    assert "\n" not in text and len(text) < 300 and "tensor(" not in text
    assert f"maps {list(trace.maps.shape)}" in text and "layers 1,2 (separate)" in text
    assert "heads 0–3 (averaged)" in text
