"""``attendseg eval refcoco``: referring expression segmentation (RES) and comprehension (REC).

Grounding one expression (teacher forcing): the model reads ``template.format(expression=…)``
as its answer to ``prompt``; the expression's map is that of its head noun (``"root"``: the
first noun phrase inside the expression, its root word's tokens, as for phrases) or of all its
tokens (``"all"``); the map's peak (and box, when the settings ask for one) prompts the refiner:
one mask, whose tight box is the REC answer. An expression without a noun phrase falls back to
all its tokens.

Per image, the image and prompt are encoded once and all the image's expressions are
teacher-forced from that prefix (``Attender.attend_texts``), and the refiner embeds the image
once (``set_image``) for all of them.

Figures per run (one dataset split or one manifest): cIoU, gIoU and Acc@0.5
(:func:`attendseg.metrics.referring_scores`). Records: one JSONL line per expression
(:class:`~attendseg.evaluation.records.SampleLog`): id, image, expression, tokens used, point,
predicted box and target box (COCO xywh), intersection, union, IoU, box IoU, mask (COCO RLE).
Baselines: ``untrained`` (the same architecture with random weights, for small models) and
``random point`` (a uniformly random point into the same refiner, no heatmap).
"""

from __future__ import annotations

import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np

from .. import rle
from ..errors import AttendsegError
from ..images import load_image
from ..maps import trace_image_map
from ..metrics import box_iou, intersection_union, referring_scores
from ..phrases import tokens_overlapping
from ..refiners.base import Prompt, map_prompt
from .loop import RunStats, SkipGroup, run_groups
from .records import SampleLog
from .refer import Expression, group_by_image

BENCHMARK = "refcoco"
DEFAULT_PROMPT = "Name one object in the image."
DEFAULT_TEMPLATE = "{expression}"
EXPRESSION_MAPS = ("root", "all")
#: The default ``--expression-map``, chosen on the shapes-world export's val split (300
#: expressions, bundled model): root gIoU 0.753 / 0.764 vs all 0.686 / 0.728 with the template
#: ``{expression}`` / ``from left to right, {expression}.`` (RESULTS.md, "Referring expressions").
DEFAULT_EXPRESSION_MAP = "root"


def expression_span(template: str, expression: str) -> tuple[str, tuple[int, int]]:
    """The teacher-forced text and the expression's character span in it."""
    if template.count("{expression}") != 1:
        raise AttendsegError("the template must contain {expression} exactly once")
    head = template.split("{expression}")[0]
    return template.replace("{expression}", expression), (len(head), len(head) + len(expression))


def expression_tokens(trace, span: tuple[int, int], mode: str, phrases) -> tuple[int, ...]:
    """Token indices of the trace whose map stands for the expression at ``span`` (module doc).

    ``"root"``: the root word of the first noun phrase ``phrases`` finds in the expression read
    on its own (so the template around it cannot change its parse), mapped to the tokens that
    overlap that word in the trace's text; all the expression's tokens when there is none.
    """
    inside = tokens_overlapping(trace.offsets, span)
    if mode == "all":
        return inside
    for phrase in phrases.extract(trace.text[span[0]:span[1]], None):
        root = (span[0] + phrase.root_span[0], span[0] + phrase.root_span[1])
        tokens = tokens_overlapping(trace.offsets, root)
        if tokens:
            return tokens
    return inside


class ReferringGrounding:
    """Grounds the expressions of one image at a time with a :class:`~attendseg.grounder.Grounder`.

    Args:
        grounder: model, refiner, phrase extractor and map settings.
        prompt, template: the teacher-forcing prompt and answer template.
        expression_map: ``"root"`` | ``"all"``.
        batch_size: expressions per forward pass over the shared prefix (None: ``attend_texts``'
            default, :data:`attendseg.attender.TEXT_BATCH`).
    """

    def __init__(self, grounder, prompt: str = DEFAULT_PROMPT, template: str = DEFAULT_TEMPLATE,
                 expression_map: str = DEFAULT_EXPRESSION_MAP, batch_size: int | None = None):
        if expression_map not in EXPRESSION_MAPS:
            raise AttendsegError(f"expression_map must be one of {EXPRESSION_MAPS}, got {expression_map!r}")
        expression_span(template, "x")  # validates the template
        self.grounder = grounder
        self.prompt = prompt
        self.template = template
        self.expression_map = expression_map
        self.batch_size = batch_size

    def maps(self, image, expressions: list[str]) -> list[tuple[np.ndarray, tuple[int, ...], object]]:
        """Per expression: its ``[H, W]`` image-frame map, the token indices used, and the trace."""
        s = self.grounder.settings
        texts, spans = zip(*(expression_span(self.template, e) for e in expressions))
        traces = self.grounder.attender.attend_texts(image, self.prompt, list(texts), layers=s.layers,
                                                     heads=s.heads, batch_size=self.batch_size)
        layers = s.layers if traces[0].per_layer and s.layers != "all" else None
        out = []
        for trace, span in zip(traces, spans):
            tokens = expression_tokens(trace, span, self.expression_map, self.grounder.phrases)
            image_map = trace_image_map(trace, tokens, aggregate=s.aggregate, normalisation=s.normalisation,
                                        sinks=s.sinks, layers=layers)
            out.append((image_map, tokens, trace))
        return out

    @property
    def refiner(self):
        return self.grounder.refiner

    def prompts(self, image, expressions: list[Expression]) -> tuple[list[Prompt], list[list[str]]]:
        """One refiner prompt per expression, and the tokens its map came from."""
        s = self.grounder.settings
        prompts, words = [], []
        for image_map, tokens, trace in self.maps(image, [e.text for e in expressions]):
            prompts.append(map_prompt(image_map, k=s.points, box=s.box))
            words.append([trace.tokens[i] for i in tokens])
        return prompts, words


class RandomPoint:
    """The random-point baseline: one uniformly random point per expression (seeded by its id)
    into the same refiner, with :func:`~attendseg.evaluation.baselines.random_point_map`'s
    Gaussian bump around it as the heatmap: what a model whose attention peaked at a random place
    would give. (Without a heatmap the superpixel refiner grows over the whole image.)"""

    def __init__(self, refiner):
        self.refiner = refiner

    def prompts(self, image, expressions: list[Expression]) -> tuple[list[Prompt], list[list[str]]]:
        from .baselines import random_point_map

        width, height = image.size
        out = []
        for e in expressions:
            point, bump = random_point_map(height, width, np.random.default_rng(zlib.crc32(str(e.id).encode())))
            out.append(Prompt(points=point[None], labels=np.ones(1, dtype=np.int64), heatmap=bump))
        return out, [[] for _ in expressions]


def process_image(method, expressions: list[Expression]) -> list[dict]:
    """Records of one image's expressions (:class:`SkipGroup` when the image cannot be read).

    ``method`` is a :class:`ReferringGrounding` or :class:`RandomPoint`: its ``prompts(image,
    expressions)`` give one prompt per expression, and its ``refiner`` embeds the image once and
    answers them all in one call."""
    try:
        image = load_image(expressions[0].image)
    except AttendsegError as error:
        raise SkipGroup("image missing" if "no such file" in str(error) else "unreadable image") from error
    width, height = image.size
    prompts, words = method.prompts(image, expressions)
    refiner = method.refiner
    refiner.set_image(np.asarray(image))
    results = refiner.refine(prompts)
    records = []
    for e, prompt, result, used in zip(expressions, prompts, results, words):
        target = e.mask(height, width)
        inter, union = intersection_union(result.mask, target)
        pred_box = rle.mask_to_bbox(result.mask)
        gt_box = e.target_box(target)
        records.append({
            "id": e.id, "image": str(e.image), "expression": e.text, "tokens": used,
            "point": [float(v) for v in prompt.points[0]] if len(prompt.points) else None,
            "box": pred_box, "target_box": gt_box, "intersection": inter, "union": union,
            "iou": inter / union if inter else 0.0, "box_iou": float(box_iou(pred_box, gt_box)[0, 0]),
            "mask": rle.encode(result.mask), **({"meta": e.meta} if e.meta else {}),
        })
    return records


def figures(records) -> dict:
    """cIoU, gIoU, Acc@0.5 and the count of a run's records."""
    records = list(records)
    return referring_scores([r["intersection"] for r in records], [r["union"] for r in records],
                            [r["box_iou"] for r in records])


def run(method, expressions: list[Expression], log: SampleLog, limit: int | None = None,
        progress: bool = True, desc: str = "refcoco") -> RunStats:
    """Evaluate ``expressions`` (grouped by image) into ``log``."""
    return run_groups(group_by_image(expressions), lambda group: process_image(method, group), log,
                      sample_id=lambda e: e.id, limit=limit, progress=progress, desc=desc, unit="expr",
                      total=len(expressions))


def evaluate(expressions: list[Expression], model, records: str | Path, *, source: dict,
             prompt: str = DEFAULT_PROMPT, template: str = DEFAULT_TEMPLATE,
             expression_map: str = DEFAULT_EXPRESSION_MAP, refiner: str = "superpixel",
             sam_model: str | None = None, sam_choice: str = "last", phrases="auto",
             batch_size: int | None = None, limit: int | None = None, untrained: bool = False,
             random_point: bool = False, overwrite: bool = False, progress: bool = True,
             device=None, dtype=None, model_options: dict | None = None, model_name: str | None = None,
             **settings) -> dict:
    """Evaluate ``model`` on ``expressions``; records in ``records`` (JSONL), baselines beside it.

    The record files are opened (and a resume with other settings refused) before the model loads.

    Args:
        source: what the expressions are (``{"dataset": …, "split": …}`` or ``{"manifest": …}``),
            stored in the records' header.
        untrained: also score the same architecture with random weights (``<records>.untrained.jsonl``).
        random_point: also score a random point (``<records>.random_point.jsonl``).
        model_name: how the header names the model (default ``str(model)``).
        settings: :class:`~attendseg.grounder.Settings` fields (layers, normalisation, …).

    Returns:
        ``{"rows": [{"name", "ciou", "giou", "acc@0.5", "n"}, …], "records": {name: path},
        "stats": {name: RunStats lines}, "settings": {...}}``.
    """
    from ..grounder import Grounder, Settings, checkpoint_settings
    from ..phrases import make_phrase_extractor

    records = Path(records)
    if expression_map not in EXPRESSION_MAPS:  # user mistakes fail before the model loads
        raise AttendsegError(f"expression_map must be one of {EXPRESSION_MAPS}, got {expression_map!r}")
    expression_span(template, "x")
    config = Settings(**{**checkpoint_settings(model), **settings})
    extractor = make_phrase_extractor(phrases)
    common = {**source, "prompt": prompt, "template": template, "expression_map": expression_map,
              "refiner": refiner, "sam_model": sam_model, "sam_choice": sam_choice if refiner == "sam" else None,
              "phrases": repr(extractor), "settings": vars(config)}
    header = {**common, "model": model_name or str(model)}
    logs = {"model": (records, SampleLog(records, BENCHMARK, header, overwrite=overwrite))}
    if untrained:
        path = records.with_suffix(".untrained.jsonl")
        logs["untrained"] = (path, SampleLog(path, BENCHMARK, {**header, "baseline": "untrained"}, overwrite=overwrite))
    if random_point:
        path = records.with_suffix(".random_point.jsonl")
        logs["random point"] = (path, SampleLog(path, BENCHMARK, {**source, "baseline": "random point",
                                                                  "refiner": refiner, "sam_model": sam_model},
                                                overwrite=overwrite))
    options = {"choice": sam_choice} if refiner == "sam" else {}
    grounder = Grounder.from_pretrained(model, refiner=refiner, sam_model=sam_model, phrases=extractor,
                                        device=device, dtype=dtype, refiner_options=options,
                                        model_options=model_options, **settings)
    out = {"rows": [], "records": {}, "stats": {}, "settings": common}
    tmp = None
    try:
        for name, (path, log) in logs.items():
            if name == "model":
                runner = ReferringGrounding(grounder, prompt, template, expression_map, batch_size)
            elif name == "untrained":
                tmp = Path(tempfile.mkdtemp(prefix="attendseg-untrained-"))
                random_weights = Grounder(_load_untrained(model, tmp, device, dtype), grounder.refiner,
                                          grounder.phrases, grounder.settings)
                runner = ReferringGrounding(random_weights, prompt, template, expression_map, batch_size)
            else:
                runner = RandomPoint(grounder.refiner)
            stats = run(runner, expressions, log, limit, progress, desc=name)
            out["rows"].append({"name": name, **figures(log.records())})
            out["records"][name] = str(path)
            out["stats"][name] = stats.lines("expression")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _load_untrained(model, tmp: Path, device, dtype):
    from ..attender import load
    from ..shapes.evaluation import untrained_copy

    return load(untrained_copy(model, tmp), device=device, dtype=dtype)


COLUMNS = [("name", ""), ("ciou", "cIoU"), ("giou", "gIoU"), ("acc@0.5", "REC Acc@0.5"), ("n", "expressions")]
