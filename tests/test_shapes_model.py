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
    assert metrics["point_accuracy_true_caption"] >= 0.7
    assert len(list(tmp_path.glob("scene_*.png"))) == len(shapes.DEMO_SEEDS)
