"""The shapes training script's pieces on tiny models: batches built through the family's real
processor carry labels on the caption (and its closing token) only, the options reach the
configs, and stage 1's poolings read each image's own tokens."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import train_shapes  # noqa: E402

from attendseg import shapes  # noqa: E402

TINY = ["--patch", "8", "--merge", "1", "--vision-hidden", "32", "--vision-layers", "1", "--text-hidden", "32",
        "--text-layers", "1", "--heads", "2", "--batch", "3", "--world", "mixed"]


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen3_vl"])
def qwen_run(request, tmp_path_factory):
    args = train_shapes.parse_args(["--family", request.param, *TINY, "--text-heads", "1", "--rope-theta", "100",
                                    "--mrope-section", "2,4,10", "--vision-rope-theta", "10"])
    folder = train_shapes.build(args, tmp_path_factory.mktemp(request.param))
    model, processor = train_shapes.load_model(args, folder)
    return args, model, train_shapes.make_batcher(args, processor)


def test_options_reach_the_qwen_configs(qwen_run):
    args, model, _ = qwen_run
    text, vision = model.config.text_config, model.config.vision_config
    assert text.num_attention_heads == 1 and text.rope_parameters["rope_theta"] == 100
    assert text.rope_parameters["mrope_section"] == [2, 4, 10]  # head_dim 32: 16 rotary pairs
    assert vision.rope_parameters["rope_theta"] == 10
    assert text.rope_parameters.get("mrope_interleaved", False) == (args.family == "qwen3_vl")


def test_qwen_batches_label_the_caption_only_and_train(qwen_run):
    args, model, batcher = qwen_run
    scenes = train_shapes.training_scenes(args, [0, 1, 2])
    assert len({sc.aspect for sc in scenes}) > 1  # rows of different aspect ratios in one batch
    batch = batcher(scenes)
    tok = batcher.tok
    for row, sc in enumerate(scenes):
        labelled = batch["labels"][row][batch["labels"][row] >= 0].tolist()
        assert tok.decode(labelled[:-1]).split() == tok.decode(tok(sc.caption)["input_ids"]).split()
        assert labelled[-1] == tok.eos_token_id
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.visual.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("pool", ["mean", "max", "attention"])
def test_stage_one_pools_each_image_alone(qwen_run, pool):
    """One logit row per image, and an image's row does not depend on the other images."""
    args, model, batcher = qwen_run
    net = train_shapes.CaptionWords(train_shapes.vision_tower(model), len(batcher.tok), pool)
    scenes = train_shapes.training_scenes(args, [3, 4, 5])
    both = net(**train_shapes.vision_inputs(batcher, scenes))
    alone = net(**train_shapes.vision_inputs(batcher, scenes[1:2]))
    assert both.shape == (3, len(batcher.tok))
    torch.testing.assert_close(both[1], alone[0], atol=1e-5, rtol=1e-4)


def test_llava_stage_one_pools_without_cls(tmp_path):
    args = train_shapes.parse_args(TINY[:-2] + ["--image-size", "32"])
    model, processor = train_shapes.load_model(args, train_shapes.build(args, tmp_path / "llava"))
    batcher = train_shapes.make_batcher(args, processor)
    net = train_shapes.CaptionWords(train_shapes.vision_tower(model), len(batcher.tok), "mean")
    scenes = [shapes.make_scene(s, size=32) for s in range(2)]
    inputs = train_shapes.vision_inputs(batcher, scenes)
    tokens = model.model.vision_tower(**inputs).last_hidden_state[:, 1:]
    torch.testing.assert_close(net(**inputs), net.head(tokens.mean(1)))


def test_tower_parameters_are_the_blocks_not_the_merger_or_language_model(qwen_run):
    _, model, _ = qwen_run
    names = [n for n, _ in model.named_parameters()]
    tower = {n for n in names if train_shapes.is_tower_parameter(n)}
    assert tower == {n for n in names if n.startswith(("model.visual.blocks.", "model.visual.patch_embed.",
                                                            "model.visual.pos_embed."))}
    assert any(".merger." in n for n in names) and tower


@pytest.mark.parametrize("pool", ["avg", "max,mean,max"])
def test_a_wrong_stage_one_pooling_is_refused(pool, capsys):
    with pytest.raises(SystemExit):
        train_shapes.parse_args(["--vision-pool", pool])
    assert "--vision-pool" in capsys.readouterr().err


def test_the_learning_rate_holds_its_peak_then_decays_by_cosine():
    args = train_shapes.parse_args(["--warmup", "10", "--steps", "100", "--lr-hold", "0.5"])
    assert train_shapes.lr_factor(args, 4, 0.04) == pytest.approx(0.5)  # warmup: (step + 1) / warmup
    assert train_shapes.lr_factor(args, 40, 0.4) == train_shapes.lr_factor(args, 50, 0.5) == 1.0
    assert train_shapes.lr_factor(args, 75, 0.75) == pytest.approx(0.05 + 0.95 * 0.5)  # halfway down
    assert train_shapes.lr_factor(args, 100, 1.0) == pytest.approx(0.05)
    no_hold = train_shapes.parse_args(["--warmup", "10", "--steps", "100"])
    # without the hold the cosine starts after the warmup (progress 0.1 here)
    assert train_shapes.lr_factor(no_hold, 50, 0.5) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.4 / 0.9)))


def test_a_frozen_tower_stays_as_it_was_while_the_merger_and_language_model_train(tmp_path):
    """``--freeze-vision-until``: for that fraction of stage 2 the tower's blocks get no gradient
    (no backward pass through them) and do not move; the merger and the language model do."""
    args = train_shapes.parse_args(["--family", "qwen2_vl", *TINY, "--steps", "2", "--warmup", "1",
                                    "--freeze-vision-until", "1", "--out", str(tmp_path)])
    model, processor = train_shapes.load_model(args, train_shapes.build(args, tmp_path / "model"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_shapes.train(args, model, train_shapes.make_batcher(args, processor), tmp_path / "model",
                       tmp_path / "state.pt", train_shapes.make_accelerator(), log=lambda msg: None)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    tower = {n for n in before if train_shapes.is_tower_parameter(n)}
    assert tower and not moved & tower
    assert any(".merger." in n for n in moved) and any(n.startswith("model.language_model.") for n in moved)
    assert all(p.grad is None for n, p in model.named_parameters() if n in tower)
