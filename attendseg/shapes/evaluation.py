"""The one shapes-world evaluation: ``attendseg eval shapes``, ``attendseg demo``, the training
scripts' ``--eval-only`` and their settings choice all run this code, so every shapes figure in
RESULTS.md comes from one code path.

For each scene the model answers the scene's prompt; the answer's shape words are grounded
(vocabulary phrases: the shape names, so spaCy plays no part) and each phrase is paired with the
object its words name (``"a red circle"`` → the red circle). Figures:

* ``caption_exact``: answer == the scene's caption.
* ``point_acc``: per ground-truth object, the prompt point of the phrase naming it lies inside
  the object's mask (an object no phrase names counts as a miss).
* ``point_acc_tf``: the same with the true caption teacher-forced (grounding without caption
  errors).
* ``point_on_object_tf``: per ground-truth object, the teacher-forced point lies inside *some*
  object, the named one or another: attention drawn to objects, whichever the phrase names
  (point_acc_tf ≤ point_on_object_tf; an untrained model's maps can be drawn to objects without
  telling them apart).
* ``by_order``, ``by_objects``, ``by_aspect``: the three figures above per prompt order, per
  number of objects and per aspect ratio (``"W:H"``) of the scenes.
* per refiner: ``miou`` and ``recall`` (IoU ≥ 0.5, GCG one-to-one greedy matching, the text gate
  being "the phrase names this object").
* baselines: the same architecture with random weights (``untrained``), and a uniformly random
  point (``random_point``; ``random_point_on_object``: it lies inside some object); for the
  captions, every object named right in a random order (``shuffled_order``, per order too).
* with ``per_layer``: ``point_acc_tf`` of each layer alone and of the mean of all layers, raw
  and mean-normalised (what :func:`choose_settings` picks from).

Scenes: ``seeds="heldout"`` (set ``set_id`` of :func:`attendseg.shapes.heldout_seeds`, never
trained on) or ``"tune"`` (``shapes.TUNE_SEEDS``, training range, for choosing settings), drawn in
``world`` ``"square"`` or ``"mixed"`` (:func:`attendseg.shapes.world_scene`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import shapes
from ..attender import Attender, load
from ..bundled import resolve_model
from ..grounder import Grounder, Settings, checkpoint_settings, settings_file
from ..maps import peaks, trace_image_map
from ..metrics import GCGEvaluator, point_in_mask
from ..phrases import VocabularyPhrases
from ..refiners import make_refiner

MAX_NEW_TOKENS = 48
#: Shapes-world phrases: the shape names (the phrase roots); no spaCy involved.
SHAPE_PHRASES = VocabularyPhrases(shapes.SHAPES)
#: Scene groupings reported separately: name → the scene's key.
GROUPS = {
    "order": lambda scene: scene.order,
    "objects": lambda scene: str(len(scene.objects)),
    "aspect": lambda scene: scene.aspect,
}
#: How each grouping's keys are listed: orders as ``shapes.ORDERS``, aspects tall to wide.
GROUP_ORDER = {"order": list(shapes.ORDERS), "objects": ["1", "2", "3", "4"], "aspect": list(shapes.ASPECTS)}
SEED_KINDS = ("heldout", "tune")


def evaluation_scenes(n: int, *, seeds: str = "heldout", set_id: int = 0, world: str = "square") -> list[shapes.Scene]:
    """``n`` scenes: held-out set ``set_id`` or the first ``n`` tune seeds, drawn in ``world``."""
    if seeds not in SEED_KINDS:
        raise ValueError(f"seeds must be one of {SEED_KINDS}, not {seeds!r}")
    if seeds == "tune":
        if not 0 <= n <= len(shapes.TUNE_SEEDS):
            raise ValueError(f"n must be in [0, {len(shapes.TUNE_SEEDS)}] for tune seeds")
        numbers = list(shapes.TUNE_SEEDS[:n])
    else:
        numbers = shapes.heldout_seeds(n, set_id)
    return [shapes.world_scene(seed, world) for seed in numbers]


def trained_world(model) -> str:
    """The world a shapes model was trained in (``"world"`` in its ``attendseg.json``; default
    ``"square"``): the demo's default world."""
    return settings_file(model).get("world", "square")


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
    from transformers import AutoConfig, AutoModelForImageTextToText

    from ..adapters import load_processor

    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(seed)
    AutoModelForImageTextToText.from_config(config).save_pretrained(folder)
    load_processor(str(model_dir)).save_pretrained(folder)
    return folder


@dataclass
class SceneResult:
    """One scene's evaluation: the answer's and the true caption's traces, and the answer's
    grounding by each refiner."""

    scene: shapes.Scene
    answer: object  # attendseg.trace.Trace of the generated answer
    forced: object  # attendseg.trace.Trace of the teacher-forced true caption
    groundings: dict = field(default_factory=dict)  # refiner name -> Grounding
    hits: int = 0  # objects found on the answer's maps
    hits_tf: int = 0  # objects found on the true caption's maps
    on_object_tf: int = 0  # objects whose phrase's point lies on some object (the true caption's maps)

    @property
    def exact(self) -> bool:
        return self.answer is not None and self.answer.text.strip() == self.scene.caption


class ShapesEvaluation:
    """Accumulates one model's figures over scenes.

    Args:
        attender: the model.
        settings: the map settings (layers, normalisation, …) every figure uses.
        refiners: name → refiner; each answer is grounded by each (masks scored GCG-style).
        per_layer: also score each layer alone and the mean of all, raw and mean-normalised.
        generate: generate answers (``False``: teacher-forced figures only, as settings choice needs).
    """

    def __init__(self, attender: Attender, settings: Settings, refiners: dict, per_layer: bool = False,
                 generate: bool = True):
        self.attender = attender
        self.settings = settings
        self.grounders = {name: Grounder(attender, r, SHAPE_PHRASES, settings) for name, r in refiners.items()}
        self.gcg = {name: GCGEvaluator(text_similarity=_same_name) for name in refiners}
        self.per_layer = per_layer
        self.generate = generate
        self.layer_hits: dict[str, int] = {}
        # group -> key -> [scenes, exact, objects, hits, hits_tf, on_object_tf]; group "all" has key "all"
        self.tallies: dict[str, dict[str, list[int]]] = {g: {} for g in ("all", *GROUPS)}

    def add_batch(self, scenes: list[shapes.Scene]) -> list[SceneResult]:
        """Evaluate ``scenes`` (one model batch); returns each scene's result."""
        images, prompts = [s.image for s in scenes], [s.prompt for s in scenes]
        capture = dict(layers="all" if self.per_layer else self.settings.layers, per_layer=self.per_layer,
                       heads=self.settings.heads)
        answers = (self.attender.attend(images, prompts, max_new_tokens=MAX_NEW_TOKENS, **capture)
                   if self.generate else [None] * len(scenes))
        forced = self.attender.attend_text(images, prompts, [s.caption for s in scenes], **capture)
        results = []
        for scene, answer, tf in zip(scenes, answers, forced):
            forced_points = phrase_points(tf, scene, self.settings)
            result = SceneResult(scene, answer, tf, hits_tf=count_hits(forced_points, scene),
                                 on_object_tf=count_hits(forced_points, scene, any_object=True))
            if answer is not None:
                result.hits = point_hits(answer, scene, self.settings)
                labels = [o.name for o in scene.objects]
                for name, grounder in self.grounders.items():
                    grounding = grounder.ground_trace(answer, scene.image)
                    owners = [named_object(answer.text, p, scene) for p in grounding.phrases]
                    names = [labels[k] if k is not None else "?" for k in owners]
                    self.gcg[name].add([p.mask for p in grounding.phrases], scene.masks, names, labels)
                    result.groundings[name] = grounding
            row = (1, int(result.exact), len(scene.objects), result.hits, result.hits_tf, result.on_object_tf)
            for group, key in [("all", "all"), *((g, f(scene)) for g, f in GROUPS.items())]:
                tally = self.tallies[group].setdefault(key, [0] * len(row))
                for i, value in enumerate(row):
                    tally[i] += value
            if self.per_layer:
                self._add_layer_hits(tf, scene)
            results.append(result)
        return results

    def _add_layer_hits(self, tf, scene) -> None:
        for layer in [*tf.layers, "all"]:
            layers = list(tf.layers) if layer == "all" else [layer]
            for normalisation in ("none", "mean"):
                key = f"layer {layer}" + (" (mean-normalised)" if normalisation == "mean" else "")
                hit = point_hits(tf, scene, self.settings, layers=layers, normalisation=normalisation)
                self.layer_hits[key] = self.layer_hits.get(key, 0) + hit

    def figures(self) -> dict:
        def summary(tally) -> dict:
            scenes, exact, objects, hits, hits_tf, on_object_tf = tally
            out = {"scenes": scenes, "objects": objects}
            if self.generate:
                out["caption_exact"] = exact / max(scenes, 1)
                out["point_acc"] = hits / max(objects, 1)
            out["point_acc_tf"] = hits_tf / max(objects, 1)
            out["point_on_object_tf"] = on_object_tf / max(objects, 1)
            return out

        out = summary(self.tallies["all"].get("all", [0] * 6))
        for group in GROUPS:
            known = GROUP_ORDER[group]
            keys = sorted(self.tallies[group], key=lambda k: (known.index(k) if k in known else len(known), k))
            out[f"by_{group}"] = {key: summary(self.tallies[group][key]) for key in keys}
        for name, evaluator in self.gcg.items():
            result = evaluator.summary()
            out[name] = {"miou": result.miou, "recall": result.recall}
        if self.layer_hits:
            out["per_layer_point_acc_tf"] = {k: v / max(out["objects"], 1) for k, v in self.layer_hits.items()}
        return out


def phrase_points(trace, scene: shapes.Scene, settings: Settings, layers=None, normalisation=None) -> list:
    """``[(object index, (x, y))]``: each object named in the trace's text, with the peak of the
    map of the first phrase naming it.

    The peak is the argmax of the phrase's image-frame map: the point prompt every refiner
    gets. ``layers`` needs a per-layer trace (default: the settings' layers, or all kept).
    """
    if layers is None and trace.per_layer and settings.layers != "all":
        layers = settings.layers
    points, seen = [], set()
    for phrase in SHAPE_PHRASES.extract(trace.text, trace.offsets):
        k = named_object(trace.text, phrase, scene)
        if k is None or k in seen:
            continue
        seen.add(k)
        image_map = trace_image_map(trace, phrase.tokens, layers=layers, aggregate=settings.aggregate,
                                    normalisation=normalisation or settings.normalisation, sinks=settings.sinks)
        points.append((k, peaks(image_map, k=1)[0]))
    return points


def count_hits(points: list, scene: shapes.Scene, any_object: bool = False) -> int:
    """How many of :func:`phrase_points`' points lie inside their object's mask (``any_object``:
    inside any object's mask)."""
    anywhere = scene.masks.any(0)
    return sum(bool(point_in_mask(point, anywhere if any_object else scene.masks[k])) for k, point in points)


def point_hits(trace, scene: shapes.Scene, settings: Settings, layers=None, normalisation=None,
               any_object: bool = False) -> int:
    """Objects whose naming phrase (the first that names it) peaks inside the object's mask
    (``any_object``: inside any object's mask); see :func:`phrase_points`."""
    return count_hits(phrase_points(trace, scene, settings, layers, normalisation), scene, any_object)


def _same_name(gt_label: str, phrase_label: str) -> float:
    return float(gt_label == phrase_label)


def random_point_accuracy(scenes: list[shapes.Scene], seed: int = 0, any_object: bool = False) -> float:
    """Point accuracy of a uniformly random ``(x, y)`` in each scene's image, per object
    (``any_object``: the point lies inside some object)."""
    rng = np.random.default_rng(seed)
    hits = total = 0
    for scene in scenes:
        height, width = scene.image.shape[:2]
        for mask in scene.masks:
            point = rng.uniform(0, 1, 2) * (width, height)
            hits += bool(point_in_mask(point, scene.masks.any(0) if any_object else mask))
            total += 1
    return hits / max(total, 1)


def shuffled_order_baseline(scenes: list[shapes.Scene]) -> dict:
    """What a model that names every object right but lists them in a uniformly random order
    would score (computed exactly, no sampling): the reference for ``caption_exact`` per order.

    Objects are drawn one by one without replacement: at the caption's ``k``-th object, the
    chance of naming it is (unnamed objects with its phrase) / (unnamed objects); the caption is
    exact with the product of those chances. ``colour_words`` is the teacher-forced version of
    the training logs' ``colour_acc`` (the earlier objects given, the next colour word right with
    (unnamed objects of that colour) / (unnamed objects)).

    Returns:
        ``{"caption_exact", "colour_words", "by_order": {order: caption_exact}}``.
    """
    exact, colour_right = [], 0.0
    for scene in scenes:
        objects, p_exact = scene.objects, 1.0
        for k, obj in enumerate(objects):
            unnamed = objects[k:]
            p_exact *= sum(o.name == obj.name for o in unnamed) / len(unnamed)
            colour_right += sum(o.colour == obj.colour for o in unnamed) / len(unnamed)
        exact.append(p_exact)
    orders = [scene.order for scene in scenes]
    return {"caption_exact": float(np.mean(exact)) if exact else 0.0,
            "colour_words": colour_right / max(sum(len(scene.objects) for scene in scenes), 1),
            "by_order": {o: float(np.mean([e for e, order in zip(exact, orders) if order == o]))
                         for o in shapes.ORDERS if o in orders}}


def run_evaluation(evaluation: ShapesEvaluation, scenes: list[shapes.Scene], batch_size: int = 25,
                   progress: bool = True, label: str = "eval", on_result=None) -> dict:
    """Feed ``scenes`` to ``evaluation`` in batches (a progress bar with ``progress``; each
    :class:`SceneResult` to ``on_result``); returns its figures."""
    batches = range(0, len(scenes), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=label, unit="batch")
    for start in batches:
        for result in evaluation.add_batch(scenes[start:start + batch_size]):
            if on_result is not None:
                on_result(result)
    return evaluation.figures()


def evaluate_shapes(model: str, refiners=("superpixel", "threshold"), n: int = 500, seed: int = 0,
                    batch_size: int = 25, per_layer: bool = False, sam_model: str | None = None,
                    baselines: bool = True, device=None, progress: bool = True, world: str = "square",
                    seeds: str = "heldout", **settings) -> dict:
    """Evaluate ``model`` on ``n`` scenes (see the module docstring).

    Args:
        model: bundled short name, folder or hub id.
        refiners: refiners whose masks are scored.
        n, seed: the number of scenes and the held-out set (``seed`` is ignored for tune seeds).
        world: ``"square"`` or ``"mixed"`` aspect ratios.
        seeds: ``"heldout"`` (the default: evaluation) or ``"tune"`` (choosing settings).
        settings: map settings overriding the model's own (``attendseg.json``).

    Returns:
        ``{"model": {...}, "untrained": {...}, "random_point": float, "settings": {...}, …}``.
    """
    model = resolve_model(model)
    config = Settings(**{**checkpoint_settings(model), **settings})
    refiner_objs = {name: make_refiner(name, **({"model": sam_model} if name == "sam" and sam_model else {}))
                    for name in refiners}
    scenes = evaluation_scenes(n, seeds=seeds, set_id=seed, world=world)
    results = {"scenes": n, "seeds": seeds, "seed_set": seed, "world": world,
               "settings": {k: v for k, v in vars(config).items()}}
    trained = load(model, device=device)  # clear errors for a wrong model before anything else
    tmp = Path(tempfile.mkdtemp(prefix="attendseg-untrained-")) if baselines else None
    try:
        runs = [("model", trained)]
        if baselines:
            runs.append(("untrained", load(untrained_copy(model, tmp), device=device)))
        for label, attender in runs:
            evaluation = ShapesEvaluation(attender, config, refiner_objs, per_layer and label == "model")
            results[label] = run_evaluation(evaluation, scenes, batch_size, progress, f"eval {label}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if baselines:
        results["random_point"] = random_point_accuracy(scenes)
        results["random_point_on_object"] = random_point_accuracy(scenes, any_object=True)
        results["shuffled_order"] = shuffled_order_baseline(scenes)
    return results


def choose_settings(folder: str | Path, n: int = 300, world: str = "square", batch_size: int = 25,
                    write: bool = True, progress: bool = True) -> dict:
    """Pick a model folder's map settings on training-range tune scenes, never held-out ones.

    The candidate (one layer, or the mean of all; raw or mean-normalised) with the best
    teacher-forced point accuracy on ``shapes.TUNE_SEEDS[:n]`` drawn in ``world`` (ties: the
    mean of all layers, then raw, then the earlier layer). With ``write``, the choice is stored
    in the folder's ``attendseg.json`` (other keys kept), where ``Settings`` defaults come from.

    Returns:
        ``{"settings": {"layers", "normalisation"}, "chosen_on": str, "candidates": {name: acc}}``.
    """
    from ..files import atomic_write_text

    folder = Path(folder)
    evaluation = ShapesEvaluation(load(str(folder)), Settings(layers="all"), {}, per_layer=True, generate=False)
    figures = run_evaluation(evaluation, evaluation_scenes(n, seeds="tune", world=world), batch_size, progress,
                             "choose settings")
    candidates = {k: round(v, 4) for k, v in figures["per_layer_point_acc_tf"].items()}

    def rank(name):
        return (candidates[name], name.startswith("layer all"), "mean-normalised" not in name)

    best = max(candidates, key=rank)
    layer = best.split()[1]
    settings = {"layers": "all" if layer == "all" else [int(layer)],
                "normalisation": "mean" if "mean-normalised" in best else "none"}
    data = {"settings": settings,
            "chosen_on": f"shapes.TUNE_SEEDS[:{n}] (training range, {world} world), teacher-forced point "
                         "accuracy (attendseg.shapes.evaluation.choose_settings)",
            "candidates": candidates}
    if write:
        path = folder / "attendseg.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        atomic_write_text(path, json.dumps({**old, **data}, indent=1) + "\n")
    return data


def format_table(results: dict) -> str:
    """The figures as markdown tables: totals, then by order, object count and aspect ratio."""
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
    shuffled = results.get("shuffled_order")
    if shuffled:
        rows.append(f"| objects in random order | {shuffled['caption_exact']:.3f} | – | – |" + " – |" * (2 * len(refiners)))
    for group in GROUPS:
        split = results["model"].get(f"by_{group}", {})
        chance = shuffled["by_order"] if shuffled and group == "order" else {}  # an extra column
        head = f"| {group} | scenes | caption exact | point acc | point acc (teacher-forced) |"
        rows += ["", head + (" caption exact, random order |" if chance else ""), "|" + "---|" * (5 + bool(chance))]
        rows += [f"| {key} | {f['scenes']} | {f['caption_exact']:.3f} | {f['point_acc']:.3f} | {f['point_acc_tf']:.3f} |"
                 + (f" {chance[key]:.3f} |" if chance else "") for key, f in split.items()]
    layers = results["model"].get("per_layer_point_acc_tf")
    if layers:
        rows += ["", "| layer (teacher-forced point acc) | value |", "|---|---|"]
        rows += [f"| {k} | {v:.3f} |" for k, v in layers.items()]
    return "\n".join(rows)
