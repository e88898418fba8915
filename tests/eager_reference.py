"""The reference every capture test compares with: transformers' own eager ``output_attentions``.

Helpers that cut the image-key columns of the recorded rows out of eager attention, per batch row
(rows may have different image-token counts). Shapes: ``attn`` is one layer's ``[B, H, q, kv]``;
``key_index`` a list of ``[N_b]`` positions per row (``Prepared.key_index``).
"""

import torch


def columns(attn_row: torch.Tensor, keys: torch.Tensor, total: int) -> torch.Tensor:
    """``[H, q, kv]`` → ``[H, q, N_b]`` at the image keys. ``total`` is the number of tokens in the
    sequence so far: when a sliding-window cache holds only the last ``kv`` of them, keys that
    fell out of the window read 0 (as capture records them)."""
    index = keys - (total - attn_row.shape[-1])
    gathered = attn_row.gather(-1, index.clamp(min=0).expand(*attn_row.shape[:-1], -1))
    return torch.where(index >= 0, gathered, torch.zeros((), dtype=attn_row.dtype))


def generation_maps(eager_model, prepared, **generate_kwargs):
    """Greedy generation with eager attention. Returns ``(sequences [B, S + T], maps)`` with
    ``maps[b]`` the ``[T, L, H, N_b]`` attention of each step's last query row (the row that
    predicts that step's token) at row b's image keys."""
    with torch.no_grad():
        out = eager_model.generate(**prepared.inputs, do_sample=False, output_attentions=True,
                                   return_dict_in_generate=True, **generate_kwargs)
    start = prepared.inputs["input_ids"].shape[1]
    maps = []
    for b, keys in enumerate(prepared.key_index):
        steps = [torch.stack([columns(layer[b][:, -1:], keys, start + t)[:, 0] for layer in step])
                 for t, step in enumerate(out.attentions)]
        maps.append(torch.stack(steps))
    return out.sequences, maps


def teacher_maps(eager_model, prepared, shift: int):
    """One eager forward over the teacher-forced inputs. Returns per row the ``[r_b, L, H, N_b]``
    attention of the text's rows (``shift=1``: the rows predicting the text tokens; ``0``: their
    own rows) at row b's image keys."""
    with torch.no_grad():
        out = eager_model(**prepared.inputs, output_attentions=True)
    seq = prepared.inputs["input_ids"].shape[1]
    maps = []
    for b, (keys, r) in enumerate(zip(prepared.key_index, prepared.text_lengths)):
        rows = torch.arange(seq - r - shift, seq - shift)
        layers = [columns(layer[b][:, rows], keys, seq) for layer in out.attentions]  # [H, r, N_b]
        maps.append(torch.stack(layers).permute(2, 0, 1, 3))
    return maps


def assert_teacher_forcing_matches_eager(attender, eager_model, images, prompts, texts, rows: str):
    """Teacher-force ``texts`` (one per image) with capture and with eager attention: every
    row's maps ``[r, L, H, N_b]`` equal eager's within 1e-5 and its tokens are the text's words.
    Returns the :class:`~attendseg.adapters.Prepared` inputs for further checks."""
    traces = attender.attend_text(images, prompts, texts, rows=rows, per_layer=True, per_head=True)
    prepared = attender.adapter.prepare(images, prompts, texts)
    reference = teacher_maps(eager_model, prepared, shift=int(rows == "predicting"))
    for b, trace in enumerate(traces):
        assert trace.tokens == texts[b].split()
        assert torch.allclose(trace.maps, reference[b], atol=1e-5, rtol=0)
    return prepared


def assert_batch_equals_each_alone(attender, images, prompts, texts, new_tokens: int = 4):
    """A batch of images of different sizes gives, row by row, what each image gives alone:
    the same Views and teacher-forced maps, and the same generated tokens and maps (≤ 1e-5)."""
    forced = attender.attend_text(images, prompts, texts, per_layer=True)
    generated = attender.attend(images, prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, per_layer=True)
    for b, image in enumerate(images):
        alone = attender.attend_text(image, prompts[b], texts[b], per_layer=True)
        assert alone.views == forced[b].views
        assert torch.allclose(alone.maps, forced[b].maps, atol=1e-5, rtol=0)
        alone = attender.attend(image, prompts[b], max_new_tokens=new_tokens, min_new_tokens=new_tokens, per_layer=True)
        assert torch.equal(alone.token_ids, generated[b].token_ids)
        assert torch.allclose(alone.maps, generated[b].maps, atol=1e-5, rtol=0)


def assert_generation_matches_eager(attender, eager_model, images, prompts, new_tokens: int):
    """Generate exactly ``new_tokens`` per image with capture and with eager attention: every
    row's maps ``[T, L, H, N_b]`` equal eager's within 1e-5 and its tokens are eager's.
    Returns ``(traces, prepared, reference)`` for family-specific checks."""
    length = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    traces = attender.attend(images, prompts, per_layer=True, per_head=True, **length)
    prepared = attender.adapter.prepare(images, prompts)
    sequences, reference = generation_maps(eager_model, prepared, pad_token_id=attender.adapter.tokenizer.pad_token_id,
                                           **length, **attender.adapter.generation_defaults())
    start = prepared.inputs["input_ids"].shape[1]
    for b, trace in enumerate(traces):
        assert trace.maps.shape == (new_tokens, attender.n_layers, attender.n_heads, len(prepared.key_index[b]))
        assert torch.allclose(trace.maps, reference[b], atol=1e-5, rtol=0)
        assert torch.equal(trace.token_ids, sequences[b, start:])
    return traces, prepared, reference
