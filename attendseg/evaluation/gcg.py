"""Grounded conversation generation (GCG) on GLaMM's GranD-f val / test, scored as GLaMM does.

Data, as GLaMM's ``eval/gcg/evaluate.py`` reads it (``docs/datasets.md`` of
mbzuai-oryx/groundingLMM; annotations from the ``MBZUAI/GranD-f`` data set)::

    GranDf/annotations/val_test/{split}_gcg_coco_caption_gt.json   # split: val | test
    GranDf/annotations/val_test/{split}_gcg_coco_mask_gt.json
    GranDf_HA_images/val_test/sa_10010541.jpg …

* ``*_caption_gt.json``: COCO-caption style. ``images`` (``id`` e.g. ``"sa_10010541"``, a string)
  in the order GLaMM evaluates them; ``annotations`` with ``image_id``, ``caption`` and
  ``labels`` (the grounded phrases, in the order of the image's masks).
* ``*_mask_gt.json``: COCO instances, one category (id 1): ``images``, ``annotations`` with
  ``image_id``, ``segmentation`` (RLE), ``area``, ``iscrowd``; an image's masks are its
  annotations in file order, paired with ``labels`` by position.
* images: ``{image id}.jpg``.

Predictions, in GLaMM's layout (what its ``infer.py`` writes and ``evaluate.py`` reads): one
``{image id}.json`` per image with ``caption``, ``phrases`` and ``pred_masks`` (COCO RLE, one
per phrase), either at the top level or under one key. ``attendseg eval gcg`` writes this layout
for its own answers (plus ``points``), so GLaMM's script can score them too, and with
``--predictions DIR`` it scores another method's folder instead of running a model.

Figures (see :mod:`attendseg.metrics`): mIoU, mask recall (greedy one-to-one by IoU; a match
needs IoU ≥ 0.5 *and* text similarity ≥ 0.5, :class:`~attendseg.evaluation.textsim.TextSimilarity`),
AP50 (COCOeval ``segm`` on the mask ground truth, category 1, every prediction scored 1.0, the
ground truth's own string image ids so images are visited in GLaMM's sorted-id order), and
METEOR / CIDEr of the captions (PTB-tokenised, pycocoevalcap's scorers, as GLaMM's
``COCOEvalCap``) when pycocoevalcap and Java are installed.

One JSONL record per image (resumable): the prediction (caption, phrases, masks, points) and
its per-image figures.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import rle as _rle
from ..errors import AttendsegError
from ..metrics import ap50_coco, evaluate_image

SPLITS = ("val", "test")
BENCHMARK = "gcg"
#: The prompt of the paper's GCG run (the authors' ``infer_attn.py`` default, greedy, 512 new tokens).
PAPER_PROMPT = "Describe the image in detail."
PAPER_MAX_NEW_TOKENS = 512


# ----------------------------------------------------------------------------------- data
@dataclass
class GCGImage:
    """One evaluation image.

    Attributes:
        id: the data set's image id (GranD-f: a string such as ``"sa_10010541"``).
        file_name: the image file's name in the images folder.
        caption: the ground-truth caption.
        labels: the grounded phrases, paired by position with ``masks``.
        masks: their COCO RLEs (``{"size": [H, W], "counts": str}``).
    """

    id: object
    file_name: str
    caption: str
    labels: list[str]
    masks: list[dict]


@dataclass
class GCGData:
    """A GCG split: images in GLaMM's order, and the raw mask ground truth for COCOeval."""

    split: str
    images: list[GCGImage]
    images_dir: Path | None
    mask_gt: dict = field(repr=False)
    caption_gt: dict = field(repr=False)

    def image_path(self, image: GCGImage) -> Path:
        if self.images_dir is None:
            raise AttendsegError("no images folder: pass --images DIR (GranDf_HA_images/val_test)")
        return self.images_dir / image.file_name


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except json.JSONDecodeError as error:
        raise AttendsegError(f"{path}: not valid JSON ({error})") from None


def find_annotations(data: Path, split: str) -> tuple[Path, Path]:
    """``(mask_gt, caption_gt)`` paths of ``split`` under ``data`` (the annotation folder itself,
    the ``GranDf`` folder, or the folder holding ``GranDf``)."""
    if split not in SPLITS:
        raise AttendsegError(f"--split must be one of {SPLITS}, got {split!r}")
    data = Path(data).expanduser()
    for folder in (data, data / "annotations" / "val_test", data / "GranDf" / "annotations" / "val_test"):
        mask, caption = folder / f"{split}_gcg_coco_mask_gt.json", folder / f"{split}_gcg_coco_caption_gt.json"
        if mask.is_file() and caption.is_file():
            return mask, caption
    raise AttendsegError(
        f"no GranD-f GCG annotations for split {split!r} in {data}: expected {split}_gcg_coco_mask_gt.json "
        f"and {split}_gcg_coco_caption_gt.json there or in annotations/val_test or GranDf/annotations/val_test"
    )


def find_images(data: Path, annotation_dir: Path) -> Path | None:
    """The GranD-f images folder, looked for where GLaMM's layout puts it (or None)."""
    data = Path(data).expanduser()
    candidates = [data / "GranDf_HA_images" / "val_test", data.parent / "GranDf_HA_images" / "val_test"]
    for up in list(annotation_dir.parents)[:4]:
        candidates.append(up / "GranDf_HA_images" / "val_test")
    return next((c for c in candidates if c.is_dir()), None)


def load_gcg(data, split: str = "val", images=None) -> GCGData:
    """Read a GranD-f GCG split (see the module docstring for the layout).

    Args:
        data: the folder with the annotation files (or a folder above it, in GLaMM's layout).
        split: ``"val"`` or ``"test"``.
        images: the images folder (default: found in GLaMM's layout next to the annotations).
    """
    mask_path, caption_path = find_annotations(Path(data), split)
    mask_gt, caption_gt = _read_json(mask_path), _read_json(caption_path)
    for name, content in ((mask_path, mask_gt), (caption_path, caption_gt)):
        if not isinstance(content, dict) or "images" not in content or "annotations" not in content:
            raise AttendsegError(f"{name}: not a COCO-style file (needs 'images' and 'annotations')")
    masks: dict = {}
    for ann in mask_gt["annotations"]:
        if "segmentation" in ann:
            masks.setdefault(ann["image_id"], []).append(ann["segmentation"])
    captions: dict = {}
    for ann in caption_gt["annotations"]:
        captions.setdefault(ann["image_id"], ann)  # GLaMM takes an image's first caption annotation
    out = []
    for info in caption_gt["images"]:
        image_id = info["id"]
        ann = captions.get(image_id)
        if ann is None:
            raise AttendsegError(f"{caption_path}: image {image_id!r} has no caption annotation")
        labels = list(ann.get("labels", []))
        rles = [_compressed(m, info) for m in masks.get(image_id, [])]
        if len(labels) != len(rles):
            raise AttendsegError(f"image {image_id!r}: {len(labels)} labels in {caption_path.name} but "
                                 f"{len(rles)} masks in {mask_path.name}")
        out.append(GCGImage(id=image_id, file_name=info.get("file_name") or f"{image_id}.jpg",
                            caption=ann.get("caption", ""), labels=labels, masks=rles))
    if images is not None:
        images_dir = Path(images).expanduser()
        if not images_dir.is_dir():
            raise AttendsegError(f"--images {images}: no such folder")
    else:
        images_dir = find_images(Path(data), mask_path.parent)
    return GCGData(split=split, images=out, images_dir=images_dir, mask_gt=mask_gt, caption_gt=caption_gt)


def _compressed(segmentation, info: dict) -> dict:
    """A ground-truth segmentation as compressed RLE with str counts (uncompressed RLE and
    polygons, COCO's other forms, are converted)."""
    if isinstance(segmentation, dict):
        counts = segmentation["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        elif isinstance(counts, list):
            counts = _rle.counts_to_string(counts)
        return {"size": list(segmentation["size"]), "counts": counts}
    from pycocotools import mask as mask_utils

    h, w = info["height"], info["width"]
    merged = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    return {"size": [h, w], "counts": merged["counts"].decode("ascii")}


# ---------------------------------------------------------------------------- predictions
def read_prediction(path: Path) -> dict:
    """``{"caption", "phrases", "pred_masks"}`` of one prediction file in GLaMM's layout.

    The fields sit at the top level (GLaMM's ``infer.py``, the paper's ``gcg.py``) or under a
    single key (``{image_id: {...}}``); both are read, as GLaMM's ``evaluate.py`` does.
    """
    content = _read_json(path)
    if isinstance(content, dict) and "pred_masks" not in content and len(content) >= 1:
        inner = next(iter(content.values()))
        if isinstance(inner, dict):
            content = inner
    if not isinstance(content, dict) or not {"caption", "phrases", "pred_masks"} <= set(content):
        raise AttendsegError(f"{path}: not a GCG prediction (needs 'caption', 'phrases' and 'pred_masks')")
    return {"caption": content["caption"], "phrases": list(content["phrases"]),
            "pred_masks": list(content["pred_masks"]), "points": content.get("points")}


def write_prediction(path: Path, image_id, caption: str, phrases: Sequence[str], masks: Sequence[dict],
                     points=None) -> Path:
    """Write one prediction in GLaMM's layout (atomically); ``points`` is kept as the paper's
    scripts keep it."""
    from ..files import atomic_write_bytes

    content = {"image_id": image_id, "caption": caption, "phrases": list(phrases), "pred_masks": list(masks)}
    if points is not None:
        content["points"] = points
    atomic_write_bytes(path, json.dumps(content).encode("utf-8"))
    return Path(path)


class PredictionFolder:
    """Reads another method's predictions: ``{folder}/{image id}.json`` (GLaMM's layout)."""

    def __init__(self, folder):
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise AttendsegError(f"--predictions {folder}: no such folder")

    def check(self, images: Sequence[GCGImage], data: GCGData) -> None:
        missing = [im.id for im in images if not (self.folder / f"{im.id}.json").is_file()]
        if missing:
            raise AttendsegError(f"{len(missing)} of {len(images)} images have no prediction in {self.folder} "
                                 f"(first: {missing[0]}.json)")

    def __call__(self, images: Sequence[GCGImage], data: GCGData) -> list[dict]:
        return [read_prediction(self.folder / f"{im.id}.json") for im in images]


class ModelPredictor:
    """Runs a :class:`~attendseg.grounder.Grounder` on each image: answer → phrases → masks; also
    writes each prediction in GLaMM's layout to ``save_dir`` (when given)."""

    def __init__(self, grounder, prompt: str = PAPER_PROMPT, max_new_tokens: int = PAPER_MAX_NEW_TOKENS,
                 save_dir: Path | None = None):
        self.grounder = grounder
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.save_dir = save_dir

    def check(self, images: Sequence[GCGImage], data: GCGData) -> None:
        missing = [im.file_name for im in images if not data.image_path(im).is_file()]
        if missing:
            raise AttendsegError(f"{len(missing)} of {len(images)} images are missing from {data.images_dir} "
                                 f"(first: {missing[0]})")

    def __call__(self, images: Sequence[GCGImage], data: GCGData) -> list[dict]:
        groundings = self.grounder.ground([str(data.image_path(im)) for im in images], prompt=self.prompt,
                                          max_new_tokens=self.max_new_tokens)
        out = []
        for im, g in zip(images, groundings):
            kept = [p for p in g.phrases if p.mask is not None]
            pred = {"caption": g.answer, "phrases": [p.text for p in kept],
                    "pred_masks": [_rle.encode(p.mask) for p in kept],
                    "points": [p.points.tolist() for p in kept]}
            if self.save_dir is not None:
                write_prediction(self.save_dir / f"{im.id}.json", im.id, pred["caption"], pred["phrases"],
                                 pred["pred_masks"], pred["points"])
            out.append(pred)
        return out


# -------------------------------------------------------------------------------- scoring
def image_record(image: GCGImage, prediction: dict, text_similarity: Callable | None) -> dict:
    """The JSONL record of one image: its prediction and GLaMM's per-image figures."""
    scores = evaluate_image(prediction["pred_masks"], image.masks, prediction["phrases"], image.labels,
                            text_similarity=text_similarity)
    return {"id": image.id, "caption": prediction["caption"], "phrases": prediction["phrases"],
            "pred_masks": prediction["pred_masks"], "points": prediction.get("points"),
            "n_gt": len(image.labels), "n_pred": len(prediction["pred_masks"]),
            "phrase_mask_mismatch": len(prediction["phrases"]) != len(prediction["pred_masks"]),
            "miou": scores.miou, "matched": scores.n_matched,
            "pairs": [list(p) for p in scores.pairs], "matches": [list(m) for m in scores.matches]}


def ap50_glamm(data: GCGData, records: Sequence[dict]) -> float:
    """AP50 as GLaMM computes it: COCOeval ``segm`` on the whole mask ground truth file (on a
    partial run, ``--limit``, restricted to the evaluated images), category 1, every predicted
    mask scored 1.0, the file's own (string) image ids."""
    from pycocotools.coco import COCO
    import contextlib
    import io

    ids = {r["id"] for r in records}
    gt = dict(data.mask_gt)
    if ids != {str(im.id) for im in data.images}:  # a partial run: only the evaluated images count
        gt["images"] = [im for im in data.mask_gt["images"] if str(im["id"]) in ids]
        gt["annotations"] = [a for a in data.mask_gt["annotations"] if str(a["image_id"]) in ids]
    gt.setdefault("categories", [{"id": 1, "name": "object"}])
    by_id = {str(im.id): im.id for im in data.images}
    results = [{"image_id": by_id[r["id"]], "category_id": 1, "segmentation": m, "score": 1.0}
               for r in records for m in r["pred_masks"]]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
    return ap50_coco(coco, results, cat_ids=[1])


def caption_metrics(references: dict, candidates: dict) -> tuple[dict | None, str | None]:
    """METEOR and CIDEr of ``candidates`` ``{id: caption}`` against ``references`` ``{id: [captions]}``,
    computed like GLaMM's ``COCOEvalCap`` (PTB tokenizer, then pycocoevalcap's scorers over the
    predicted images). Returns ``(figures, None)``, or ``(None, why not)`` when pycocoevalcap or
    Java is missing."""
    try:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        return None, "pycocoevalcap not installed (pip install pycocoevalcap)"
    if shutil.which("java") is None:
        return None, "Java not found (pycocoevalcap's tokenizer and METEOR run on Java)"
    if not candidates:
        return None, "no captions"
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the tokenizer prints its speed
        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({k: [{"caption": c} for c in references[k]] for k in candidates})
        res = tokenizer.tokenize({k: [{"caption": candidates[k]}] for k in candidates})
        meteor, _ = Meteor().compute_score(gts, res)
        cider, _ = Cider().compute_score(gts, res)
    return {"meteor": float(meteor), "cider": float(cider)}, None


def summarize(data: GCGData, records: Sequence[dict], captions: bool = True) -> dict:
    """Dataset figures from the per-image records (in GLaMM's definitions, see the module doc)."""
    records = list(records)
    n_gt = sum(r["n_gt"] for r in records)
    out = {"split": data.split, "images": len(records), "gt_phrases": n_gt,
           "pred_phrases": sum(r["n_pred"] for r in records),
           "miou": float(np.mean([r["miou"] for r in records])) if records else float("nan"),
           "recall": sum(r["matched"] for r in records) / n_gt if n_gt else float("nan"),
           "ap50": ap50_glamm(data, records) if records else float("nan"),
           "phrase_mask_mismatch_images": sum(bool(r["phrase_mask_mismatch"]) for r in records)}
    out["meteor"] = out["cider"] = None
    out["caption_metrics"] = "not computed (--no-captions)"
    if captions:
        refs: dict = {}
        for ann in data.caption_gt["annotations"]:  # every caption of an image, as COCOEvalCap
            refs.setdefault(str(ann["image_id"]), []).append(ann.get("caption", ""))
        refs = {r["id"]: refs.get(r["id"], [""]) for r in records}
        cands = {r["id"]: r["caption"] for r in records}
        figures, why = caption_metrics(refs, cands)
        if figures is None:
            out["caption_metrics"] = f"not computed: {why}"
        else:
            out.update(figures)
            out["caption_metrics"] = "computed"
    return out


TABLE_COLUMNS = [("run", ""), ("images", "images"), ("meteor", "METEOR"), ("cider", "CIDEr"),
                 ("ap50", "AP50"), ("miou", "mIoU"), ("recall", "mask recall")]


# ------------------------------------------------------------------------------- the run
def evaluate_gcg(data: GCGData, predictor, log, *, text_similarity=None, limit: int | None = None,
                 batch_size: int = 1, progress: bool = True):
    """Score every image of ``data`` (the first ``limit`` not yet in ``log``): ``predictor``
    makes (or reads) the predictions, one record per image goes to ``log`` (a
    :class:`~attendseg.evaluation.records.SampleLog`). Returns the run's stats.

    The images are checked before the run (all present, or one error line).
    """
    from .loop import run_groups

    todo = [im for im in data.images if str(im.id) not in log]
    if limit is not None:
        todo = todo[:limit]
    predictor.check(todo, data)

    def process(images):
        predictions = predictor(images, data)
        return [image_record(im, p, text_similarity) for im, p in zip(images, predictions)]

    groups = [data.images[i:i + batch_size] for i in range(0, len(data.images), batch_size)]
    return run_groups(groups, process, log, sample_id=lambda im: str(im.id), limit=limit, progress=progress,
                      desc=f"gcg {data.split}", unit="image", total=len(data.images))


def evaluate(data: GCGData, out, *, model=None, predictions=None, prompt: str = PAPER_PROMPT,
             max_new_tokens: int = PAPER_MAX_NEW_TOKENS, text_encoder: str | None = "bert-base-uncased",
             captions: bool = True, limit: int | None = None, batch_size: int = 1, untrained: bool = False,
             random_point: bool = False, overwrite: bool = False, progress: bool = True, device=None,
             grounder_options: dict | None = None) -> dict:
    """Run (or read) and score GCG predictions; one record file per run under ``out``.

    Args:
        data: :func:`load_gcg`'s split.
        out: the run folder: ``{run}.jsonl`` records and, for model runs, ``{run}/`` with the
            predictions in GLaMM's layout (``run``: ``model``, ``untrained``, ``random_point``;
            ``predictions`` when scoring ``predictions``).
        model: hub id or folder of the model to run (ignored with ``predictions``).
        predictions: a folder of another method's prediction files to score instead.
        text_encoder: the text-similarity encoder (``None`` / ``"none"``: no text gate).
        grounder_options: :meth:`Grounder.from_pretrained` options (refiner, phrases, settings…).

    Returns:
        ``{"rows": [figures per run], "stats": {run: lines}, "records": {run: path}}``.
    """
    from .textsim import make_text_similarity
    from .baselines import method_grounders
    from .records import SampleLog

    out = Path(out).expanduser()
    similarity = make_text_similarity(text_encoder, device=device)  # fails before a model loads
    common = {"split": data.split, "text_encoder": None if similarity is None else similarity.name}
    if predictions is not None:
        source = PredictionFolder(predictions)
        runs = [("predictions", source, {**common, "predictions": str(source.folder.resolve())})]
    else:
        options = dict(grounder_options or {})

        def model_runs():
            for name, grounder in method_grounders(model, untrained=untrained, random_point=random_point,
                                                   device=device, **options):
                settings = {**common, "model": str(model), "prompt": prompt, "max_new_tokens": max_new_tokens,
                            "refiner": getattr(grounder.refiner, "name", "?"), "phrases": repr(grounder.phrases),
                            "settings": vars(grounder.settings), "run": name}
                yield name, ModelPredictor(grounder, prompt, max_new_tokens, out / name), settings

        runs = model_runs()
    result = {"rows": [], "stats": {}, "records": {}}
    for name, predictor, settings in runs:
        path = out / f"{name}.jsonl"
        log = SampleLog(path, BENCHMARK, settings, overwrite=overwrite)
        stats = evaluate_gcg(data, predictor, log, text_similarity=similarity, limit=limit,
                             batch_size=batch_size, progress=progress)
        order = {str(im.id): k for k, im in enumerate(data.images)}
        records = sorted(log.records(), key=lambda r: order.get(r["id"], len(order)))
        result["rows"].append({"run": name, **summarize(data, records, captions=captions)})
        result["stats"][name] = stats.lines("image")
        result["records"][name] = str(path)
    return result
