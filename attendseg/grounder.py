"""The :class:`Grounder` facade: image(s) + prompt → one mask per noun phrase of the answer.

```python
from attendseg import Grounder
grounder = Grounder.from_pretrained("llava-hf/llava-1.5-7b-hf", refiner="sam",
                                    sam_model="facebook/sam-vit-huge")
grounding = grounder.ground("dog.jpg")                 # generate an answer, ground its phrases
grounding = grounder.ground_text("dog.jpg", "a dog on a sofa")   # ground a given text
grounding.save_json("dog.json")
```

Pipeline per image (REFERENCE.md's steps): capture a :class:`~attendseg.trace.Trace` → phrases
(:mod:`attendseg.phrases`) → per-phrase map, normalised, sinks suppressed, upsampled into the
original image frame (:mod:`attendseg.maps`) → peak point prompt(s) → refiner
(:mod:`attendseg.refiners`) → :class:`~attendseg.results.Grounding`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .attender import Attender, load
from .bundled import BUNDLED_MODELS, resolve_model
from .errors import AttendsegError
from .images import load_image
from .maps import VIEW_CHOICES, trace_image_map
from .phrases import make_phrase_extractor
from .refiners import make_refiner
from .refiners.base import instance_prompts, map_prompt
from .results import GroundedPhrase, Grounding
from .trace import Trace

DEFAULT_PROMPT = "Describe the image in detail."

#: Checkpoint folders may carry this file: ``"settings"`` (measured defaults for :class:`Settings`
#: fields) and ``"defaults"`` (``"prompt"``, ``"phrases"``: what a model trained on one kind of
#: prompt and vocabulary should be asked, and which words to ground).
SETTINGS_FILE = "attendseg.json"
#: Keys of ``"defaults"`` that are read.
DEFAULT_KEYS = ("prompt", "phrases")


@dataclass(frozen=True)
class Settings:
    """How maps become prompts (defaults: the paper's, unless the checkpoint says otherwise).

    Attributes:
        layers: layers whose attention is averaged (``"all"`` or indices).
        heads: heads averaged (``"all"`` or indices).
        aggregate: how a phrase's tokens combine: ``"mean"`` | ``"max"`` | ``"first"``.
        normalisation: ``"mean"`` subtracts the mean map over all answer tokens; ``"none"``.
        sinks: attention-sink suppression, per view: ``"none"`` | ``"corners"`` | ``"outliers"``.
        views: the views of a multi-view model that make the map: ``"fused"`` (all, fused in the
            original image frame) | ``"base"`` (the whole-image view) | ``"tiles"``.
        points: positive points per phrase prompt (the top separated peaks).
        instances: masks per phrase (one single-point prompt per separated peak).
        box: also prompt with the box of the thresholded map.
    """

    layers: object = "all"
    heads: object = "all"
    aggregate: str = "mean"
    normalisation: str = "mean"
    sinks: str = "none"
    views: str = "fused"
    points: int = 1
    instances: int = 1
    box: bool = False

    def __post_init__(self):
        checks = {"aggregate": ("mean", "max", "first"), "normalisation": ("mean", "none"),
                  "sinks": ("none", "corners", "outliers"), "views": VIEW_CHOICES}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise AttendsegError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.points < 1 or self.instances < 1:
            raise AttendsegError("points and instances must be ≥ 1")


def settings_file(model) -> dict:
    """A local checkpoint folder's ``attendseg.json`` (or {}: a hub id, or no file)."""
    path = Path(str(model)).expanduser() / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def checkpoint_settings(model) -> dict:
    """Measured defaults shipped in a local checkpoint folder's ``attendseg.json`` (or {})."""
    data = settings_file(model).get("settings", {})
    return {k: v for k, v in data.items() if k in Settings.__dataclass_fields__}


def checkpoint_defaults(model) -> dict:
    """The prompt and phrase spec a local checkpoint folder's ``attendseg.json`` asks for (or {}).

    The bundled shapes-world model carries its own: it was trained only on "list the objects
    from … to …." prompts and a 41-word vocabulary, and asked anything else it can loop until
    the token limit."""
    data = settings_file(model).get("defaults", {})
    return {k: v for k, v in data.items() if k in DEFAULT_KEYS}


def hit_token_limit(attender: Attender, trace: Trace, max_new_tokens: int) -> bool:
    """Whether a generated answer was cut at ``max_new_tokens`` instead of ending by itself."""
    if trace.mode != "generate" or len(trace) < max_new_tokens:
        return False
    eos = attender.model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    return int(trace.token_ids[-1]) not in eos


class Grounder:
    """Attend-and-segment with one model, one phrase extractor and one refiner.

    Args:
        attender: a loaded model (:func:`attendseg.load`).
        refiner: a refiner object (:func:`attendseg.refiners.make_refiner`).
        phrases: a phrase extractor (:func:`attendseg.phrases.make_phrase_extractor`).
        settings: map/prompt settings.
        keep_heatmaps: keep each phrase's ``[H, W]`` map in the result.
        prompt: what :meth:`ground` asks when no prompt is given (default :data:`DEFAULT_PROMPT`).
    """

    def __init__(self, attender: Attender, refiner, phrases, settings: Settings | None = None,
                 keep_heatmaps: bool = False, prompt: str = DEFAULT_PROMPT):
        self.attender = attender
        self.refiner = refiner
        self.phrases = phrases
        self.settings = settings or Settings()
        self.keep_heatmaps = keep_heatmaps
        self.prompt = prompt

    @classmethod
    def from_pretrained(cls, model, refiner: str = "superpixel", sam_model: str | None = None,
                        phrases=None, device=None, dtype=None, keep_heatmaps: bool = False,
                        refiner_options: dict | None = None, model_options: dict | None = None,
                        **settings) -> "Grounder":
        """Load a model and build the pipeline.

        Args:
            model: hub id or folder of a supported LMM, a bundled model's short name
                (``"shapes-llava"``), or an already loaded
                :class:`~attendseg.attender.Attender` (not loaded again).
            refiner: ``"superpixel"`` (default; weight-free), ``"sam"`` or ``"threshold"``.
            sam_model: SAM hub id or folder (``refiner="sam"``; default ``facebook/sam-vit-huge``).
            phrases: ``"auto"`` | ``"simple"`` | ``"spacy:NAME_OR_PATH"`` | ``"vocab:a,b"`` | a list
                (default: the checkpoint's ``attendseg.json`` ``defaults``, else ``"auto"``).
            model_options: passed to :func:`attendseg.load` (e.g. DiffLMM's ``base=``).
            settings: :class:`Settings` fields; unset fields come from the checkpoint's
                ``attendseg.json`` when it has one, else the paper's defaults.
        """
        # the folder that may hold the checkpoint's attendseg.json
        source = model.model_id if isinstance(model, Attender) else model
        folder = resolve_model(source) if source in BUNDLED_MODELS or not isinstance(model, Attender) else source
        merged = {**checkpoint_settings(folder), **settings}
        defaults = checkpoint_defaults(folder)
        config = Settings(**merged)  # validate before the (slow) model load
        options = dict(refiner_options or {})
        if refiner == "sam":
            if sam_model:
                options["model"] = sam_model
            options.setdefault("device", device)
        elif sam_model:
            raise AttendsegError("--sam-model is only used with the sam refiner")
        refiner_obj = make_refiner(refiner, **options)
        extractor = make_phrase_extractor(defaults.get("phrases", "auto") if phrases is None else phrases)
        attender = model if isinstance(model, Attender) else load(model, device=device, dtype=dtype,
                                                                     **(model_options or {}))
        return cls(attender, refiner_obj, extractor, config, keep_heatmaps,
                   prompt=defaults.get("prompt", DEFAULT_PROMPT))

    # ----------------------------------------------------------------------------- public
    def ground(self, images, prompt: str | None = None, max_new_tokens: int = 256,
               batch_size: int | None = None, progress: bool = False):
        """Generate an answer for each image and ground its phrases.

        ``prompt`` defaults to :attr:`prompt` (the checkpoint's, else :data:`DEFAULT_PROMPT`).

        Returns:
            a :class:`Grounding` for one image, a list of them for a list. An answer that stopped
            at ``max_new_tokens`` instead of ending has ``meta["hit_token_limit"] = True``.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        started = time.perf_counter()
        traces = self.attender.attend(items, prompt or self.prompt, max_new_tokens=max_new_tokens,
                                      layers=self.settings.layers, heads=self.settings.heads,
                                      batch_size=batch_size, progress=progress)
        seconds = (time.perf_counter() - started) / len(items)
        out = [self.ground_trace(t, image, attend_seconds=seconds,
                                 hit_token_limit=hit_token_limit(self.attender, t, max_new_tokens))
               for t, image in zip(traces, items)]
        return out[0] if single else out

    def ground_text(self, images, text, prompt: str | None = None,
                    batch_size: int | None = None):
        """Ground a given text (a caption, a referring expression) by teacher forcing.

        ``text`` is one string for all images or one per image.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        traces = self.attender.attend_text(items, prompt or self.prompt, text, layers=self.settings.layers,
                                           heads=self.settings.heads, batch_size=batch_size)
        out = [self.ground_trace(t, image) for t, image in zip(traces, items)]
        return out[0] if single else out

    def ground_trace(self, trace: Trace, image, **meta) -> Grounding:
        """Masks from a captured (or saved and reloaded) trace and its image."""
        pil = load_image(image)
        if pil.size != tuple(trace.image_size):
            raise AttendsegError(f"the image is {pil.size[0]}×{pil.size[1]}, the trace was "
                                 f"recorded on {trace.image_size[0]}×{trace.image_size[1]}")
        phrases = self.phrases.extract(trace.text, trace.offsets)
        # a per-layer trace grounds with the chosen layers; an averaged one with what it kept
        layers = self.settings.layers if trace.per_layer and self.settings.layers != "all" else None
        entries, prompts = [], []
        for phrase in phrases:
            image_map = trace_image_map(trace, phrase.tokens, aggregate=self.settings.aggregate,
                                        normalisation=self.settings.normalisation,
                                        sinks=self.settings.sinks, layers=layers,
                                        views=self.settings.views)
            for prompt in self._prompts(image_map):
                entries.append((phrase, image_map))
                prompts.append(prompt)
        masks = []
        if prompts:
            self.refiner.set_image(np.asarray(pil))
            masks = self.refiner.refine(prompts)
        grounded = [
            GroundedPhrase(text=phrase.text, span=phrase.span, root=phrase.root,
                           tokens=phrase.tokens, points=prompt.points, mask=result.mask, box=None,
                           score=result.score, heatmap=image_map if self.keep_heatmaps else None)
            for (phrase, image_map), prompt, result in zip(entries, prompts, masks)
        ]
        settings = {k: (list(v) if isinstance(v, (tuple, range)) else v)
                    for k, v in asdict(self.settings).items()}
        return Grounding(image_size=pil.size, answer=trace.text, prompt=trace.prompt,
                         model=trace.model_id, refiner=getattr(self.refiner, "name", "?"),
                         phrases=grounded,
                         image_path=str(image) if isinstance(image, (str, Path)) else None,
                         meta={"settings": settings, "mode": trace.mode, "rows": trace.rows, **meta})

    def _prompts(self, image_map: np.ndarray):
        s = self.settings
        if s.instances > 1:
            return instance_prompts(image_map, s.instances, box=s.box)
        return [map_prompt(image_map, k=s.points, box=s.box)]

    def with_settings(self, **changes) -> "Grounder":
        """A grounder sharing this one's model and refiner, with some settings changed."""
        return Grounder(self.attender, self.refiner, self.phrases, replace(self.settings, **changes),
                        self.keep_heatmaps, self.prompt)
