"""Token ↔ character spans of decoded answers."""

import torch

from attendseg.tiny import word_tokenizer
from attendseg.tokens import _prefix_offsets, _round_trip_offsets, decode_with_offsets


def test_spans_cover_each_word_and_specials_are_empty():
    tokenizer = word_tokenizer("a red circle and blue square".split())
    ids = tokenizer("a red circle, and a blue square.", add_special_tokens=False)["input_ids"]
    text, offsets = decode_with_offsets(tokenizer, torch.tensor(ids + [tokenizer.eos_token_id]))
    assert text == "a red circle, and a blue square."
    pieces = [text[s:e] for s, e in offsets.tolist()]
    assert pieces == ["a", "red", "circle", ",", "and", "a", "blue", "square", ".", ""]
    assert offsets[-1].tolist() == [len(text), len(text)]


def test_prefix_fallback_agrees_with_the_round_trip():
    tokenizer = word_tokenizer("a red circle and blue square".split())
    ids = tokenizer("a red circle, and a blue square.", add_special_tokens=False)["input_ids"]
    text = tokenizer.decode(ids)
    assert _prefix_offsets(tokenizer, ids) == _round_trip_offsets(tokenizer, text, ids)
