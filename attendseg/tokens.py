"""Token ↔ character spans of generated text.

The decoded answer is re-encoded once with the tokenizer's offsets; when that round trip gives
back the same ids (the usual case) those offsets are the spans. Otherwise spans come from
decoding growing prefixes (exact for any tokenizer, slower: only as a fallback).
"""

from __future__ import annotations

import torch


def decode_with_offsets(tokenizer, ids: torch.Tensor) -> tuple[str, torch.Tensor]:
    """Decode ``ids`` ``[T]`` and give each token its ``(start, end)`` span ``[T, 2]`` in the text.

    Special tokens (EOS, pad) are not part of the text; they get the empty span at the end of
    the text written so far.
    """
    ids = [int(i) for i in ids]
    special = set(tokenizer.all_special_ids)
    words = [i for i in ids if i not in special]
    text = tokenizer.decode(words, skip_special_tokens=True)
    offsets = _round_trip_offsets(tokenizer, text, words)
    if offsets is None:
        offsets = _prefix_offsets(tokenizer, words)
    spans, k, end = [], 0, 0
    for i in ids:
        if i in special:
            spans.append((end, end))
        else:
            spans.append(offsets[k])
            end = offsets[k][1]
            k += 1
    return text, torch.tensor(spans, dtype=torch.long).view(-1, 2)


def _round_trip_offsets(tokenizer, text: str, ids: list[int]):
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return None
    if list(encoded["input_ids"]) != ids:
        return None
    return [tuple(o) for o in encoded["offset_mapping"]]


def _prefix_offsets(tokenizer, ids: list[int]):
    spans, previous = [], 0
    for k in range(len(ids)):
        prefix = tokenizer.decode(ids[: k + 1], skip_special_tokens=True)
        piece = prefix[previous:]
        start = previous + len(piece) - len(piece.lstrip())  # a leading space belongs to no word
        spans.append((start, max(start, len(prefix))))
        previous = len(prefix)
    return spans
