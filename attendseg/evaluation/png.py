"""Panoptic Narrative Grounding (PNG; González et al., ICCV 2021): every annotated noun phrase of
a narrative gets a mask; the figure is the average recall (the area under the recall-vs-IoU
curve), overall and split into things / stuff and singular / plural.

Data, as the PNG authors lay it out (BCV-Uniandes/PNG; COCO's layout for the panoptic files is
read too, as F-LMM and the paper's scripts use it)::

    annotations/png_coco_val2017.json          # the PNG annotation (narratives)
    annotations/panoptic_val2017.json          # COCO panoptic: images, segments_info, categories
    annotations/panoptic_segmentation/val2017/000000000139.png   # or annotations/panoptic_val2017/
    images/val2017/000000000139.jpg            # or val2017/ beside annotations/

* ``png_coco_{split}.json``: a list of narratives, each with ``image_id`` (a string of the COCO
  id), ``caption`` and ``segments``: the narrative cut into utterances, each with
  ``utterance``, ``segment_ids`` (panoptic segment ids; empty for words not grounded),
  ``noun`` and ``plural``.
* the panoptic PNGs encode segment ids as ``R + 256·G + 256²·B``.

Protocol (the PNG evaluation, F-LMM's and the paper's ``png.py``): each narrative is
teacher-forced as the answer to the prompt; every utterance with segment ids is a phrase (the
annotation's phrases, no parser); its ground truth is the union of its segments; its phrase map
aggregates the tokens of the utterance; the map's peak prompts the refiner. Per phrase the IoU of
prediction and ground truth; the average recall is :func:`attendseg.metrics.average_recall` on
the PNG grid of 100,000 thresholds. Splits: *plural* is the annotation's ``plural`` flag (as
F-LMM; the PNG baseline counts segments instead); a phrase with one segment is a *thing* when
that segment's category ``isthing``, a phrase with several segments counts as a thing (the
paper's ``png.py``; F-LMM calls every plural phrase a thing).

One JSONL record per phrase (resumable per narrative).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import rle as _rle
from ..errors import AttendsegError
from ..metrics import average_recall, mask_iou, recall_curve

BENCHMARK = "png"
PAPER_PROMPT = "Describe the image in detail."


# ----------------------------------------------------------------------------------- data
@dataclass
class PNGPhrase:
    """One grounded utterance: its span in the narrative's text and its panoptic segments."""

    index: int  # position among the narrative's segments
    text: str
    span: tuple[int, int]
    segment_ids: list[int]
    plural: bool
    isthing: bool


@dataclass
class Narrative:
    """One localized narrative: the text teacher-forced, and its grounded phrases."""

    index: int  # position in the annotation file (the record ids use it)
    image_id: int
    file_name: str  # the image file
    segm_file: str  # the panoptic PNG
    text: str
    phrases: list[PNGPhrase]


@dataclass
class PNGData:
    split: str
    narratives: list[Narrative]
    images_dir: Path
    panoptic_dir: Path
    sizes: dict = field(default_factory=dict, repr=False)  # image id → (height, width)

    def image_path(self, n: Narrative) -> Path:
        return self.images_dir / n.file_name

    def gt_masks(self, n: Narrative) -> list[np.ndarray]:
        """``[H, W]`` bool per phrase: the union of its panoptic segments."""
        ids = read_panoptic(self.panoptic_dir / n.segm_file)
        return [np.isin(ids, p.segment_ids) for p in n.phrases]


def read_panoptic(path: Path) -> np.ndarray:
    """Segment id map ``[H, W]`` int64 of a COCO panoptic PNG (``R + 256·G + 256²·B``)."""
    from PIL import Image

    if not Path(path).is_file():
        raise AttendsegError(f"{path}: no such panoptic PNG")
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def narrative_text(caption: str, utterances: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The text to teacher-force and each utterance's character span in it.

    The caption itself when the utterances can be found in it one after another (spans from
    there); otherwise the utterances joined by single spaces.
    """
    spans, pos = [], 0
    for u in utterances:
        u = u.strip()
        at = caption.find(u, pos) if u else pos
        if at < 0:
            break
        spans.append((at, at + len(u)))
        pos = at + len(u)
    else:
        return caption, spans
    text, spans = "", []
    for u in utterances:
        u = u.strip()
        if text and u:
            text += " "
        spans.append((len(text), len(text) + len(u)))
        text += u
    return text, spans


def _find(base: Path, candidates: Sequence[str], what: str, hint: str) -> Path:
    for c in candidates:
        if (base / c).exists():
            return base / c
    raise AttendsegError(f"no {what} in {base} (looked for {', '.join(candidates)}); {hint}")


def load_png(data, split: str = "val2017", images=None) -> PNGData:
    """Read the PNG annotation and the COCO panoptic ground truth of ``split`` under ``data``.

    Args:
        data: the PNG data folder (with ``annotations/``), or the annotations folder itself.
        split: ``"val2017"`` (the benchmark) or ``"train2017"``.
        images: the COCO images folder (default: ``images/{split}`` or ``{split}`` found near
            the annotations).
    """
    data = Path(data).expanduser()
    if not data.is_dir():
        raise AttendsegError(f"{data}: no such folder")
    ann = data / "annotations" if (data / "annotations").is_dir() else data
    png_path = _find(ann, [f"png_coco_{split}.json"], "PNG annotation", "download it from the PNG project page")
    pan_path = _find(ann, [f"panoptic_{split}.json"], "COCO panoptic annotation",
                     "it comes with COCO's panoptic annotations (panoptic_annotations_trainval2017)")
    pan_dir = _find(ann, [f"panoptic_segmentation/{split}", f"panoptic_{split}"], "panoptic PNG folder",
                    "unzip COCO's panoptic PNGs there")
    if images is not None:
        images_dir = Path(images).expanduser()
        if not images_dir.is_dir():
            raise AttendsegError(f"--images {images}: no such folder")
    else:
        images_dir = _find(data, [f"images/{split}", split, f"../{split}", f"../images/{split}"], "images folder",
                           "pass --images DIR")
    try:
        narratives_raw = json.loads(png_path.read_text("utf-8"))
        panoptic = json.loads(pan_path.read_text("utf-8"))
    except json.JSONDecodeError as error:
        raise AttendsegError(f"an annotation file is not valid JSON ({error})") from None
    images_by_id = {im["id"]: im for im in panoptic["images"]}
    pan_by_image = {a["image_id"]: a for a in panoptic["annotations"]}
    isthing = {c["id"]: bool(c.get("isthing")) for c in panoptic["categories"]}
    segment_category = {s["id"]: s["category_id"] for a in panoptic["annotations"] for s in a["segments_info"]}
    narratives = []
    for index, raw in enumerate(narratives_raw):
        image_id = int(raw["image_id"])
        if image_id not in images_by_id or image_id not in pan_by_image:
            raise AttendsegError(f"narrative {index}: image {image_id} is not in {pan_path.name}")
        segments = raw["segments"]
        text, spans = narrative_text(raw.get("caption", ""), [s["utterance"] for s in segments])
        phrases = []
        for k, (seg, span) in enumerate(zip(segments, spans)):
            ids = [int(i) for i in seg.get("segment_ids", [])]
            if not ids:
                continue
            unknown = [i for i in ids if i not in segment_category]
            if unknown:
                raise AttendsegError(f"narrative {index}: segment {unknown[0]} is not in {pan_path.name}")
            thing = isthing[segment_category[ids[0]]] if len(ids) == 1 else True
            phrases.append(PNGPhrase(k, text[span[0]:span[1]], span, ids, bool(seg.get("plural", len(ids) > 1)),
                                     thing))
        info = images_by_id[image_id]
        narratives.append(Narrative(index, image_id, info["file_name"], pan_by_image[image_id]["file_name"],
                                    text, phrases))
    sizes = {i: (im["height"], im["width"]) for i, im in images_by_id.items()}
    return PNGData(split, narratives, images_dir, pan_dir, sizes)


# ------------------------------------------------------------------------------ grounding
def phrase_id(n: Narrative, p: PNGPhrase) -> str:
    return f"{n.index}:{p.index}"


class NarrativeGrounder:
    """Teacher-forces a narrative and grounds its annotated phrases with a
    :class:`~attendseg.grounder.Grounder` (its model, refiner and settings; the phrases are
    replaced by the annotation's spans)."""

    def __init__(self, grounder, prompt: str = PAPER_PROMPT, proposals: Path | None = None):
        self.grounder = grounder
        self.prompt = prompt
        self.proposals = None if proposals is None else Path(proposals).expanduser()
        if self.proposals is not None and not self.proposals.is_dir():
            raise AttendsegError(f"--proposals {proposals}: no such folder")

    def __call__(self, n: Narrative, phrases: Sequence[PNGPhrase], data: PNGData) -> list[tuple]:
        """``[(mask [H, W] bool | None, point (x, y) | None), …]`` per phrase."""
        import copy

        from ..phrases import SpanPhrases

        grounder = copy.copy(self.grounder)
        grounder.phrases = SpanPhrases([p.span for p in phrases])
        grounding = grounder.ground_text(str(data.image_path(n)), n.text, prompt=self.prompt)
        by_span = {}
        for g in grounding.phrases:
            by_span.setdefault(g.span, g)
        out = []
        ids = None if self.proposals is None else read_panoptic(self.proposals / n.segm_file)
        for p in phrases:
            g = by_span.get(tuple(p.span))
            if g is None:  # the span covers no token of this tokenizer: nothing to ground
                out.append((None, None))
                continue
            point = g.points[0].tolist() if len(g.points) else None
            mask = g.mask
            if ids is not None and point is not None:  # the paper's protocol: the proposal under the point
                x, y = int(min(point[0], ids.shape[1] - 1)), int(min(point[1], ids.shape[0] - 1))
                mask = ids == ids[y, x]
            out.append((mask, point))
        return out


def phrase_records(n: Narrative, phrases: Sequence[PNGPhrase], predictions, gt_masks) -> list[dict]:
    out = []
    for p, (mask, point), gt in zip(phrases, predictions, gt_masks):
        iou = 0.0 if mask is None else mask_iou(mask, gt)
        out.append({"id": phrase_id(n, p), "narrative": n.index, "image_id": n.image_id, "phrase": p.text,
                    "span": list(p.span), "segment_ids": p.segment_ids, "plural": p.plural, "isthing": p.isthing,
                    "iou": iou, "point": point, "pred_mask": None if mask is None else _rle.encode(mask)})
    return out


def evaluate_png(data: PNGData, grounder: NarrativeGrounder, log, *, limit: int | None = None,
                 progress: bool = True):
    """Ground and score every annotated phrase (the first ``limit`` not yet in ``log``); one
    record per phrase goes to ``log``. Returns the run's stats."""
    from .loop import SkipGroup, run_groups

    groups = [[(n, p) for p in n.phrases] for n in data.narratives if n.phrases]

    def process(pending):
        n = pending[0][0]
        phrases = [p for _, p in pending]
        path = data.image_path(n)
        if not path.is_file():
            raise SkipGroup(f"image missing from {data.images_dir}")
        all_gt = dict(zip((p.index for p in n.phrases), data.gt_masks(n)))
        predictions = grounder(n, phrases, data)
        return phrase_records(n, phrases, predictions, [all_gt[p.index] for p in phrases])

    total = sum(len(g) for g in groups)
    return run_groups(groups, process, log, sample_id=lambda item: phrase_id(*item), limit=limit,
                      progress=progress, desc=f"png {data.split}", unit="phrase", total=total)


# -------------------------------------------------------------------------------- figures
SPLIT_NAMES = ("all", "things", "stuff", "singular", "plural")
CURVE_POINTS = 101  # the curve in the summary: recall at t = 0, 0.01, …, 1.0


def summarize(records: Sequence[dict]) -> dict:
    """Average recall overall and per split (things / stuff, singular / plural), the share of
    phrases with IoU > 0.5 (the PNG baseline's accuracy), mean IoU, and the recall curve."""
    records = list(records)
    ious = np.array([r["iou"] for r in records], dtype=np.float64)
    thing = np.array([bool(r["isthing"]) for r in records], dtype=bool)
    plural = np.array([bool(r["plural"]) for r in records], dtype=bool)
    masks = {"all": np.ones(len(records), bool), "things": thing, "stuff": ~thing,
             "singular": ~plural, "plural": plural}
    out = {"phrases": len(records), "narratives": len({r["narrative"] for r in records})}
    for name in SPLIT_NAMES:
        sel = ious[masks[name]]
        out[f"ar_{name}"] = average_recall(sel)
        out[f"n_{name}"] = int(sel.size)
    out["acc@0.5"] = float((ious > 0.5).mean()) if ious.size else float("nan")
    out["miou"] = float(ious.mean()) if ious.size else float("nan")
    t, r = recall_curve(ious, np.linspace(0, 1, CURVE_POINTS))
    out["curve"] = {"iou_threshold": t.round(4).tolist(), "recall": r.tolist()}
    return out


TABLE_COLUMNS = [("run", ""), ("phrases", "phrases"), ("ar_all", "AR"), ("ar_things", "things"),
                 ("ar_stuff", "stuff"), ("ar_singular", "singular"), ("ar_plural", "plural"),
                 ("acc@0.5", "acc@0.5")]


def evaluate(data: PNGData, out, *, model=None, prompt: str = PAPER_PROMPT, proposals=None,
             limit: int | None = None, untrained: bool = False, random_point: bool = False,
             overwrite: bool = False, progress: bool = True, device=None,
             grounder_options: dict | None = None) -> dict:
    """Ground and score every annotated phrase; one record file per run (``{out}/{run}.jsonl``,
    run: ``model``, ``untrained``, ``random_point``).

    Returns:
        ``{"rows": [figures per run], "stats": {run: lines}, "records": {run: path}}``.
    """
    from .baselines import method_grounders
    from .records import SampleLog

    out = Path(out).expanduser()
    result = {"rows": [], "stats": {}, "records": {}}
    for name, grounder in method_grounders(model, untrained=untrained, random_point=random_point, device=device,
                                           **(grounder_options or {})):
        settings = {"split": data.split, "model": str(model), "prompt": prompt, "run": name,
                    "refiner": getattr(grounder.refiner, "name", "?"), "settings": vars(grounder.settings),
                    "proposals": None if proposals is None else str(Path(proposals).expanduser().resolve())}
        path = out / f"{name}.jsonl"
        log = SampleLog(path, BENCHMARK, settings, overwrite=overwrite)
        stats = evaluate_png(data, NarrativeGrounder(grounder, prompt, proposals), log, limit=limit, progress=progress)
        result["rows"].append({"run": name, **summarize(log.records())})
        result["stats"][name] = stats.lines("phrase")
        result["records"][name] = str(path)
    return result
