"""Capture against transformers' own eager ``output_attentions`` (the reference no one here wrote)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

import attendseg
from eager_reference import assert_teacher_forcing_matches_eager, generation_maps

PROMPTS = ["describe the image", "is there a red circle on the left of the blue square"]
TEXTS = ["a red circle", "a blue square on the left of a large green star"]


def images():
    rs = np.random.RandomState(0)
    return [
        Image.fromarray((rs.rand(50, 80, 3) * 255).astype("uint8")),
        Image.fromarray((rs.rand(90, 60, 3) * 255).astype("uint8")),
    ]


@pytest.fixture(scope="module", params=["tiny_llava", "tiny_llava_gqa_pad"])
def checkpoint(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def attender(checkpoint):
    return attendseg.load(checkpoint)


@pytest.fixture(scope="module")
def eager(checkpoint):
    return LlavaForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager").eval()


def test_generation_matches_eager_output_attentions(attender, eager):
    traces = attender.attend(images(), PROMPTS, max_new_tokens=8, per_layer=True, per_head=True)
    prepared = attender.adapter.prepare(images(), PROMPTS)
    sequences, reference = generation_maps(eager, prepared, max_new_tokens=8,
                                           pad_token_id=attender.adapter.tokenizer.pad_token_id,
                                           **attender.adapter.generation_defaults())
    assert prepared.inputs["attention_mask"][0].sum() != prepared.inputs["attention_mask"][1].sum()
    for b, trace in enumerate(traces):
        T = len(trace)
        assert T >= 1
        assert trace.maps.shape == (T, attender.n_layers, attender.n_heads, trace.n_image_tokens)
        assert torch.allclose(trace.maps, reference[b][:T], atol=1e-5, rtol=0)
        generated = sequences[b, prepared.inputs["input_ids"].shape[1]:][:T]
        assert torch.equal(trace.token_ids, generated)


def test_generated_tokens_identical_to_plain_sdpa(attender, checkpoint):
    plain = LlavaForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="sdpa").eval()
    prepared = attender.adapter.prepare(images(), PROMPTS)
    with torch.no_grad():
        expected = plain.generate(**prepared.inputs, max_new_tokens=12, do_sample=False,
                                  pad_token_id=attender.adapter.tokenizer.pad_token_id,
                                  **attender.adapter.generation_defaults())
    traces = attender.attend(images(), PROMPTS, max_new_tokens=12)
    start = prepared.inputs["input_ids"].shape[1]
    for b, trace in enumerate(traces):
        assert torch.equal(trace.token_ids, expected[b, start:start + len(trace)])


@pytest.mark.parametrize("rows", ["predicting", "own"])
def test_teacher_forcing_matches_eager(attender, eager, rows):
    assert_teacher_forcing_matches_eager(attender, eager, images(), PROMPTS, TEXTS, rows)


def test_layer_and_head_selection_reduce_like_the_reference(attender):
    full = attender.attend_text(images()[0], PROMPTS[0], TEXTS[1], per_layer=True, per_head=True)
    heads = [0, 2]
    picked = attender.attend_text(images()[0], PROMPTS[0], TEXTS[1], layers=[-1], heads=heads)
    expected = full.maps[:, [attender.n_layers - 1]][:, :, heads].mean(dim=(1, 2))
    assert picked.maps.shape == (len(full), 1, 1, full.n_image_tokens)
    assert torch.allclose(picked.token_maps(), expected, atol=1e-6)
    assert torch.allclose(full.token_maps(layers=[0]), full.maps[:, 0].mean(1), atol=1e-7)
    mean_all = attender.attend_text(images()[0], PROMPTS[0], TEXTS[1])
    assert torch.allclose(mean_all.token_maps(), full.token_maps(), atol=1e-6)


def test_the_image_placeholder_is_never_generated(attender):
    image_token = attender.model.config.image_token_id
    traces = attender.attend(images(), PROMPTS, max_new_tokens=16)
    assert all(image_token not in t.token_ids.tolist() for t in traces)


def test_maps_are_probabilities_over_all_keys(attender):
    trace = attender.attend(images()[0], PROMPTS[0], max_new_tokens=5)
    sums = trace.maps.sum(-1)
    assert (trace.maps >= 0).all() and (sums > 0).all() and (sums < 1 + 1e-5).all()


def test_bfloat16_model_records_float32_maps_close_to_fp32(checkpoint):
    fp32 = attendseg.load(checkpoint)
    bf16 = attendseg.load(checkpoint, dtype="bf16")
    text = TEXTS[1]
    a = fp32.attend_text(images()[1], PROMPTS[1], text)
    b = bf16.attend_text(images()[1], PROMPTS[1], text)
    assert b.maps.dtype == torch.float32 and torch.isfinite(b.maps).all()
    assert torch.allclose(a.maps, b.maps, atol=2e-2)


def test_trace_round_trip_is_lossless(attender, tmp_path):
    trace = attender.attend(images()[1], PROMPTS[1], max_new_tokens=6, per_layer=True)
    loaded = attendseg.Trace.load(trace.save(tmp_path / "t.safetensors"))
    assert torch.equal(loaded.maps, trace.maps) and torch.equal(loaded.token_ids, trace.token_ids)
    assert torch.equal(loaded.offsets, trace.offsets)
    for field in ("text", "views", "image_size", "layers", "heads", "per_layer", "rows", "prompt", "model_id"):
        assert getattr(loaded, field) == getattr(trace, field), field


def test_offsets_point_at_the_decoded_words(attender):
    trace = attender.attend(images()[0], PROMPTS[0], max_new_tokens=10)
    decoded = attender.adapter.tokenizer.convert_ids_to_tokens(trace.token_ids.tolist())
    specials = set(attender.adapter.tokenizer.all_special_tokens)
    for token, piece in zip(decoded, trace.tokens):
        assert piece == ("" if token in specials else token)


def test_sliding_window_layers_match_eager(tmp_path):
    """Qwen2 layers with a 24-token window: the cache drops the image keys during decoding."""
    import json

    from attendseg.tiny import build_llava

    folder = build_llava(tmp_path / "sw", "user assistant describe the image a red circle".split(),
                         text_model="qwen2", kv_heads=2, text_layers=4)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"].update(use_sliding_window=True, sliding_window=24, max_window_layers=2,
                                 layer_types=["full_attention"] * 2 + ["sliding_attention"] * 2)
    (folder / "config.json").write_text(json.dumps(config))
    attender = attendseg.load(folder)
    image = images()[:1]
    trace = attender.attend(image, PROMPTS[:1], max_new_tokens=24, min_new_tokens=24, per_layer=True,
                            per_head=True)[0]
    eager = LlavaForConditionalGeneration.from_pretrained(folder, attn_implementation="eager").eval()
    prepared = attender.adapter.prepare(image, PROMPTS[:1])
    sequences, reference = generation_maps(eager, prepared, max_new_tokens=24, min_new_tokens=24,
                                           **attender.adapter.generation_defaults())
    assert torch.allclose(trace.maps, reference[0], atol=1e-5)
    assert (reference[0][:, 2:] == 0).any()  # the window (layers 2, 3) really dropped image keys


@pytest.mark.parametrize("options", [{"use_cache": False}, {"cache_implementation": "static"}])
def test_uncached_and_static_cache_generation_match_eager(request, options):
    """No cache re-runs the whole sequence each step; a static cache has empty slots."""
    attender = attendseg.load(request.getfixturevalue("tiny_llava_gqa_pad"))
    eager = LlavaForConditionalGeneration.from_pretrained(attender.model_id, attn_implementation="eager").eval()
    traces = attender.attend(images(), PROMPTS, max_new_tokens=6, per_layer=True, **options)
    prepared = attender.adapter.prepare(images(), PROMPTS)
    _, reference = generation_maps(eager, prepared, max_new_tokens=6, **attender.adapter.generation_defaults())
    for b, trace in enumerate(traces):
        assert torch.allclose(trace.maps[:, :, 0], reference[b][:len(trace)].mean(2), atol=1e-5, rtol=0)


def test_generate_options_capture_cannot_follow_are_refused(attender):
    with pytest.raises(attendseg.AttendsegError, match="prompt_lookup_num_tokens"):
        attender.attend(images()[0], PROMPTS[0], prompt_lookup_num_tokens=3)
    with pytest.raises(attendseg.AttendsegError, match="return_dict_in_generate"):
        attender.attend(images()[0], PROMPTS[0], return_dict_in_generate=True)


def test_decode_steps_use_the_recorded_probabilities_and_keep_plain_sdpa_logits(checkpoint, monkeypatch):
    """Each decode step computes attention once (the record's fp32 probabilities give the output);
    logits stay as close to plain sdpa as eager attention is, and the tokens are the same."""
    from attendseg import capture

    captured = attendseg.load(checkpoint)
    prepared = captured.adapter.prepare(images(), PROMPTS)
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, output_logits=True,
                  return_dict_in_generate=True, pad_token_id=captured.adapter.tokenizer.pad_token_id)
    calls, real = [], capture.attention_output

    def spy(probs, value):
        calls.append(probs.shape)
        output = real(probs, value)
        assert torch.allclose(output, _eager_output(probs, value), atol=1e-6)
        return output

    monkeypatch.setattr(capture, "attention_output", spy)
    recorder = capture.Recorder(prepared.key_index, range(captured.n_layers))
    with torch.no_grad(), capture.recording(recorder):
        out = captured.model.generate(**prepared.inputs, **kwargs)
    assert len(calls) == 7 * captured.n_layers and all(shape[2] == 1 for shape in calls)  # decode steps only
    outputs = {}
    for implementation in ("sdpa", "eager"):
        model = LlavaForConditionalGeneration.from_pretrained(checkpoint, attn_implementation=implementation).eval()
        with torch.no_grad():
            outputs[implementation] = model.generate(**prepared.inputs, **kwargs)
    assert torch.equal(out.sequences, outputs["sdpa"].sequences)
    for ours, sdpa, eager in zip(out.logits, outputs["sdpa"].logits, outputs["eager"].logits):
        assert (ours - sdpa).abs().max() <= max(2 * (eager - sdpa).abs().max(), 1e-5)


def _eager_output(probs, value):
    """Eager attention's output, written out: probabilities in value's dtype × repeated values."""
    from transformers.integrations.sdpa_attention import repeat_kv

    values = repeat_kv(value, probs.shape[1] // value.shape[1])
    return torch.matmul(probs.to(value.dtype), values).transpose(1, 2).contiguous()


def test_rows_with_different_image_token_counts_record_what_each_row_alone_records():
    """Ragged key positions (a padded index + validity) give each row exactly its own columns."""
    from types import SimpleNamespace

    from attendseg import capture

    torch.manual_seed(0)
    query, key = torch.randn(2, 4, 20, 8), torch.randn(2, 2, 20, 8)  # GQA: 4 heads on 2 kv heads
    keys = [torch.tensor([2, 3, 4, 5, 6, 7]), torch.tensor([9, 10, 11])]
    layer = SimpleNamespace(layer_idx=0)
    ragged = capture.Recorder(keys, layers=[0], per_head=True, n_rows=3)
    ragged.record(layer, query, key, None, None)
    assert ragged.n_keys == [6, 3]
    maps = ragged.maps()
    assert maps.shape == (2, 3, 1, 4, 6) and (maps[1, ..., 3:] == 0).all()
    for b in range(2):
        alone = capture.Recorder([keys[b]], layers=[0], per_head=True, n_rows=3)
        alone.record(layer, query[b:b + 1], key[b:b + 1], None, None)
        assert torch.equal(alone.maps()[0], maps[b, ..., : len(keys[b])])
        probs = capture.row_probabilities(query[b:b + 1], key[b:b + 1], None, None, slice(17, 20))
        assert torch.allclose(alone.maps()[0, :, 0], probs[0][:, :, keys[b]].transpose(0, 1))
