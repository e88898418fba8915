"""``attendseg eval shapes``: grounding quality on held-out shapes-world scenes.

For each scene the model answers the scene's prompt; the answer's shape words are grounded
(vocabulary phrases: the shape names, so spaCy plays no part) and each phrase is paired with the
object its words name (``"a red circle"`` → the red circle). Figures:

* ``caption_exact``: answer == the scene's caption; ``caption_exact_by_order`` and
  ``caption_exact_by_objects`` split it by the prompt's order and by the number of objects.
* ``point_acc``: per ground-truth object, the prompt point of the phrase naming it lies inside
  the object's mask (an object no phrase names counts as a miss).
* ``point_acc_tf``: the same with the true caption teacher-forced (grounding without caption
  errors).
* per refiner: ``miou`` and ``recall`` (IoU ≥ 0.5, GCG one-to-one greedy matching, the text gate
  being "the phrase names this object").
* baselines: the same architecture with random weights (``untrained``), and a uniformly random
  point (``random_point``).
* with ``per_layer``: ``point_acc_tf`` of each layer alone (and of each layer mean-normalised).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import shapes
from .bundled import resolve_model
from .attender import Attender, load
from .grounder import Grounder, Settings, checkpoint_settings
from .maps import peaks, trace_image_map
from .metrics import GCGEvaluator, point_in_mask
from .phrases import VocabularyPhrases
from .refiners import make_refiner

MAX_NEW_TOKENS = 48
#: Shapes-world phrases: the shape names (the phrase roots); no spaCy involved.
SHAPE_PHRASES = VocabularyPhrases(shapes.SHAPES)


def named_object(answer: str, phrase, scene: shapes.Scene) -> int | None:
    """The object a phrase names: its root is the shape, the word before it the colour.

    ``phrase`` is a :class:`~attendseg.phrases.Phrase` or a grounded phrase (text, span, root).
    """
    root_start = phrase.span[0] + phrase.text.lower().rfind(phrase.root.lower())
    before = answer[:root_start].split()
    colour = before[-1].lower() if before else ""
    for k, obj in enumerate(scene.objects):
        if obj.shape == phrase.root.lower() and obj.colour == colour:
            return k
    return None


def untrained_copy(model_dir: str | Path, folder: Path, seed: int = 0) -> Path:
    """The same architecture and processor with freshly initialised (random) weights, written to
    ``folder`` (full size in float32: meant for small models such as the shapes-world ones)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(seed)
    AutoModelForImageTextToText.from_config(config).save_pretrained(folder)
    AutoProcessor.from_pretrained(model_dir).save_pretrained(folder)
    return folder


class ShapesEvaluation:
    """Accumulates one model's figures over scenes."""

    def __init__(self, attender: Attender, settings: Settings, refiners: dict, per_layer: bool):
        self.attender = attender
        self.settings = settings
        self.grounders = {name: Grounder(attender, r, SHAPE_PHRASES, settings) for name, r in refiners.items()}
        self.gcg = {name: GCGEvaluator(text_similarity=_same_name) for name in refiners}
        self.per_layer = per_layer
        self.n_scenes = self.exact = self.n_objects = 0
        self.hits = {"point_acc": 0, "point_acc_tf": 0}
        self.layer_hits: dict[str, int] = {}
        self.exact_by: dict[str, dict[str, list[int]]] = {"order": {}, "objects": {}}  # [exact, scenes]

    def add_batch(self, scenes: list[shapes.Scene]):
        images = [s.image for s in scenes]
        capture = dict(layers="all" if self.per_layer else self.settings.layers, per_layer=self.per_layer,
                       heads=self.settings.heads)
        answers = self.attender.attend(images, [s.prompt for s in scenes], max_new_tokens=MAX_NEW_TOKENS, **capture)
        forced = self.attender.attend_text(images, [s.prompt for s in scenes], [s.caption for s in scenes], **capture)
        for scene, answer, tf in zip(scenes, answers, forced):
            self.n_scenes += 1
            self.n_objects += len(scene.objects)
            ok = answer.text.strip() == scene.caption
            self.exact += ok
            for kind, key in (("order", scene.order), ("objects", str(len(scene.objects)))):
                tally = self.exact_by[kind].setdefault(key, [0, 0])
                tally[0] += ok
                tally[1] += 1
            self.hits["point_acc"] += self._hits(answer, scene)
            self.hits["point_acc_tf"] += self._hits(tf, scene)
            labels = [f"{o.colour} {o.shape}" for o in scene.objects]
            for name, grounder in self.grounders.items():
                grounding = grounder.ground_trace(answer, scene.image)
                owners = [named_object(answer.text, p, scene) for p in grounding.phrases]
                names = [labels[k] if k is not None else "?" for k in owners]
                self.gcg[name].add([p.mask for p in grounding.phrases], scene.masks, names, labels)
            if self.per_layer:
                for layer in tf.layers:
                    for normalisation in ("none", "mean"):
                        key = f"layer {layer}" + (" (mean-normalised)" if normalisation == "mean" else "")
                        hit = self._hits(tf, scene, layers=[layer], normalisation=normalisation)
                        self.layer_hits[key] = self.layer_hits.get(key, 0) + hit

    def _hits(self, trace, scene, layers=None, normalisation=None) -> int:
        return point_hits(trace, scene, self.settings, layers=layers, normalisation=normalisation)

    def figures(self) -> dict:
        n = max(self.n_objects, 1)
        out = {"scenes": self.n_scenes, "objects": self.n_objects,
               "caption_exact": self.exact / max(self.n_scenes, 1),
               **{f"caption_exact_by_{kind}": {k: ok / total for k, (ok, total) in sorted(tallies.items())}
                  for kind, tallies in self.exact_by.items()},
               **{k: v / n for k, v in self.hits.items()}}
        for name, evaluator in self.gcg.items():
            summary = evaluator.summary()
            out[name] = {"miou": summary.miou, "recall": summary.recall}
        if self.layer_hits:
            out["per_layer_point_acc_tf"] = {k: v / n for k, v in self.layer_hits.items()}
        return out


def point_hits(trace, scene: shapes.Scene, settings: Settings, layers=None, normalisation=None) -> int:
    """Objects whose naming phrase (the first that names it) peaks inside the object's mask.

    The peak is the argmax of the phrase's image-frame map: the point prompt every refiner
    gets. ``layers`` needs a per-layer trace (default: the settings' layers, or all kept).
    """
    if layers is None and trace.per_layer and settings.layers != "all":
        layers = settings.layers
    hits, seen = 0, set()
    for phrase in SHAPE_PHRASES.extract(trace.text, trace.offsets):
        k = named_object(trace.text, phrase, scene)
        if k is None or k in seen:
            continue
        seen.add(k)
        image_map = trace_image_map(trace, phrase.tokens, layers=layers, aggregate=settings.aggregate,
                                    normalisation=normalisation or settings.normalisation, sinks=settings.sinks)
        hits += bool(point_in_mask(peaks(image_map, k=1)[0], scene.masks[k]))
    return hits


def _same_name(gt_label: str, phrase_label: str) -> float:
    return float(gt_label == phrase_label)


def random_point_accuracy(scenes: list[shapes.Scene], seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    hits = total = 0
    for scene in scenes:
        for mask in scene.masks:
            x, y = rng.uniform(0, scene.size, 2)
            hits += bool(point_in_mask(np.array([x, y]), mask))
            total += 1
    return hits / max(total, 1)


def evaluate_shapes(model: str, refiners=("superpixel", "threshold"), n: int = 500, seed: int = 0,
                    batch_size: int = 25, per_layer: bool = False, sam_model: str | None = None,
                    baselines: bool = True, device=None, progress: bool = True, **settings) -> dict:
    """Evaluate ``model`` on ``n`` held-out scenes of set ``seed`` (see module docstring).

    Returns:
        ``{"model": {...}, "untrained": {...}, "random_point": float, "settings": {...}}``.
    """
    model = resolve_model(model)
    config = Settings(**{**checkpoint_settings(model), **settings})
    refiner_objs = {name: make_refiner(name, **({"model": sam_model} if name == "sam" and sam_model else {}))
                    for name in refiners}
    scenes = [shapes.make_scene(s) for s in shapes.heldout_seeds(n, seed)]
    results = {"scenes": n, "seed_set": seed, "settings": {k: v for k, v in vars(config).items()}}
    trained = load(model, device=device)  # clear errors for a wrong model before anything else
    tmp = Path(tempfile.mkdtemp(prefix="attendseg-untrained-")) if baselines else None
    try:
        runs = [("model", trained)]
        if baselines:
            runs.append(("untrained", load(untrained_copy(model, tmp), device=device)))
        for label, attender in runs:
            evaluation = ShapesEvaluation(attender, config, refiner_objs, per_layer and label == "model")
            batches = range(0, len(scenes), batch_size)
            if progress:
                from tqdm.auto import tqdm

                batches = tqdm(batches, desc=f"eval {label}", unit="batch")
            for start in batches:
                evaluation.add_batch(scenes[start:start + batch_size])
            results[label] = evaluation.figures()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if baselines:
        results["random_point"] = random_point_accuracy(scenes)
    return results


def format_table(results: dict) -> str:
    """The figures as a markdown table."""
    refiners = [k for k, v in results["model"].items() if isinstance(v, dict) and "miou" in v]
    head = ["", "caption exact", "point acc", "point acc (teacher-forced)"]
    head += [f"{r} mIoU" for r in refiners] + [f"{r} recall@0.5" for r in refiners]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in ("model", "untrained"):
        if label not in results:
            continue
        f = results[label]
        cells = [label, f"{f['caption_exact']:.3f}", f"{f['point_acc']:.3f}", f"{f['point_acc_tf']:.3f}"]
        cells += [f"{f[r]['miou']:.3f}" for r in refiners] + [f"{f[r]['recall']:.3f}" for r in refiners]
        rows.append("| " + " | ".join(cells) + " |")
    if "random_point" in results:
        rows.append("| random point | – | " + f"{results['random_point']:.3f} | – |" + " – |" * (2 * len(refiners)))
    layers = results["model"].get("per_layer_point_acc_tf")
    if layers:
        rows += ["", "| layer (teacher-forced point acc) | value |", "|---|---|"]
        rows += [f"| {k} | {v:.3f} |" for k, v in layers.items()]
    return "\n".join(rows)

