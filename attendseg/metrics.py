"""Mask metrics: IoU, referring segmentation (cIoU, gIoU), box Acc@0.5, GCG-style greedy matching
(GLaMM's protocol), recall, AP50, point accuracy.

One IoU: :func:`iou_matrix` (pycocotools' ``mask.iou`` value for value, crowd rule included);
:func:`mask_iou`, :func:`intersection_union` and :func:`attendseg.rle.iou` are views of it.

Referring segmentation (LISA / GLaMM / the refer protocol): per expression the intersection and
union pixel counts of the predicted and ground-truth masks; **cIoU** = Σ intersections / Σ unions
over the split, **gIoU** = mean per-expression IoU. REC **Acc@0.5**: share of expressions whose
predicted box has IoU ≥ 0.5 with the ground-truth box (boxes as COCO ``[x, y, w, h]``,
:func:`box_iou` equal to pycocotools' box IoU).

Masks are boolean (or 0/non-0) arrays ``[H, W]``; a set of masks is ``[N, H, W]`` or a list of
``[H, W]`` arrays (RLE dicts are decoded). Points are ``(x, y)`` in pixels, x right, y down;
pixel ``(row i, column j)`` covers ``[j, j+1) × [i, i+1)`` (see :mod:`attendseg.views`).

GCG protocol (GLaMM, "Grounded Conversation Generation"), reproduced exactly:

* **mIoU** — per image, build the IoU matrix ``[P, G]`` (predictions × ground truths) and pair
  greedily: take the highest IoU, remove its row and column, repeat while a positive IoU is left.
  The image's mIoU is the mean of the paired IoUs (0.0 when nothing pairs); unpaired masks do
  not count. The dataset mIoU is the mean over images.
* **Mask recall** — per image, over the matrix ``[G, P]`` (ground truths × predictions): take the
  highest IoU; if it is below ``iou_threshold`` (0.5) *or* its text similarity is below
  ``text_threshold`` (0.5), **stop** (GLaMM stops at the first inadmissible best pair rather than
  trying the next one; ``on_reject="skip"`` tries the next one instead); otherwise count a match
  and remove the row and column. Dataset recall = all matches / all ground-truth phrases.
  GLaMM's text similarity is the cosine of mean-pooled last hidden states of
  ``bert-base-uncased`` — weights we cannot download here — so the gate is any callable
  ``(gt_label, pred_phrase) -> float``; with ``text_similarity=None`` the gate is off (masks only).
* **AP50** — ``pycocotools`` ``COCOeval`` with ``iouType="segm"``, one category, every prediction
  scored 1.0; the figure is ``stats[1]`` (AP at IoU 0.5, all areas, 100 detections).

Ties between equal IoUs are broken like ``np.argmax`` on the matrix (row-major first), as in
GLaMM's code. A pair whose masks are both empty has IoU 0 (pycocotools' convention; GLaMM's
own ``compute_iou`` would give NaN there). GLaMM quirks documented, not copied: a prediction
file with more masks than phrases makes GLaMM's recall loop index past its similarity matrix,
and its ``try``/``except`` then counts the image's ground truths with no match; here a mask
without a phrase simply cannot pass the text gate (phrases beyond the masks are ignored, as in
GLaMM). GLaMM's text similarity is :class:`attendseg.evaluation.textsim.TextSimilarity`.

Panoptic Narrative Grounding: :func:`recall_curve` and :func:`average_recall` (the area under
the recall-vs-IoU-threshold curve on the PNG grid of 100,000 thresholds).
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from . import rle as _rle

__all__ = [
    "mask_iou",
    "iou_matrix",
    "intersection_union",
    "box_iou",
    "referring_scores",
    "greedy_match",
    "image_miou",
    "recall_matches",
    "ImageScores",
    "GCGScores",
    "GCGEvaluator",
    "evaluate_image",
    "evaluate",
    "point_in_mask",
    "point_accuracy",
    "ap50",
    "ap50_coco",
    "recall_curve",
    "average_recall",
]

TextSimilarity = Callable[[str, str], float]
Match = tuple[int, int, float]


# --------------------------------------------------------------------------- IoU


def as_mask_stack(masks, shape: tuple[int, int] | None = None) -> np.ndarray:
    """``[N, H, W]`` bool from an array, a list of ``[H, W]`` arrays or RLE dicts, or None/[].

    ``shape`` gives ``(H, W)`` for an empty set (else ``(0, 0)``).
    """
    if masks is None:
        return np.zeros((0, *(shape or (0, 0))), dtype=bool)
    if isinstance(masks, np.ndarray):
        if masks.ndim == 2:
            masks = masks[None]
        if masks.ndim != 3:
            raise ValueError(f"expected masks [N, H, W], got shape {masks.shape}")
        return masks if masks.dtype == bool else masks != 0
    items = [_rle.decode(m) if isinstance(m, Mapping) else np.asarray(m) != 0 for m in masks]
    if not items:
        return np.zeros((0, *(shape or (0, 0))), dtype=bool)
    shapes = {m.shape for m in items}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"masks must all be [H, W] of one size, got {sorted(shapes)}")
    return np.stack(items)


def intersection_union(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Pixel counts ``(|a ∩ b|, |a ∪ b|)`` of two ``[H, W]`` masks (RLE dicts are decoded)."""
    a, b = as_mask_stack(a)[0], as_mask_stack(b)[0]
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    return int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``[H, W]`` masks; 0.0 when the union is empty (pycocotools' convention)."""
    inter, union = intersection_union(a, b)
    return inter / union if inter else 0.0


def iou_matrix(preds, gts, iscrowd=None) -> np.ndarray:
    """IoU of every prediction with every ground truth: ``[P, G]`` float64, vectorised.

    ``preds`` ``[P, H, W]`` and ``gts`` ``[G, H, W]`` (or lists of ``[H, W]`` masks / RLEs).
    Equal, value for value, to ``pycocotools.mask.iou(encode(preds), encode(gts), iscrowd)``:
    for a crowd ground truth (``iscrowd[g]`` true) the denominator is the prediction's area; a
    pair with no intersection scores 0.
    """
    p = as_mask_stack(preds)
    g = as_mask_stack(gts)
    if len(p) == 0 or len(g) == 0:
        return np.zeros((len(p), len(g)), dtype=np.float64)
    if p.shape[1:] != g.shape[1:]:
        raise ValueError(f"prediction masks {p.shape[1:]} and ground truths {g.shape[1:]} differ in size")
    n = p.shape[1] * p.shape[2]
    # Sums of 0/1 products are exact in float32 up to 2**24 pixels, in float64 up to 2**53.
    dtype = np.float32 if n <= 2**24 else np.float64
    pf = p.reshape(len(p), n).astype(dtype)
    gf = g.reshape(len(g), n).astype(dtype)
    inter = (pf @ gf.T).astype(np.float64)
    ap = np.count_nonzero(p.reshape(len(p), n), axis=1).astype(np.float64)
    ag = np.count_nonzero(g.reshape(len(g), n), axis=1).astype(np.float64)
    union = ap[:, None] + ag[None, :] - inter
    if iscrowd is not None:
        crowd = np.asarray(iscrowd, dtype=bool).reshape(-1)
        union = np.where(crowd[None, :], ap[:, None], union)
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=inter > 0)
    return out


# --------------------------------------------------------------------------- matching


def greedy_match(
    scores: np.ndarray,
    min_score: float = 0.0,
    *,
    inclusive: bool = False,
    allowed: np.ndarray | None = None,
    on_reject: str = "stop",
) -> list[Match]:
    """Greedy one-to-one matching on a score matrix ``[R, C]``, highest score first.

    Repeatedly takes the highest remaining entry (ties: row-major first, like ``np.argmax``) and
    removes its row and column, while the entry is ``> min_score`` (``>= min_score`` with
    ``inclusive``). When ``allowed[r, c]`` is False for the best entry, ``on_reject="stop"`` ends
    the matching (GLaMM's recall) and ``"skip"`` passes over that pair and goes on.

    Returns ``[(row, col, score), …]`` in the order taken. This is not the optimal (Hungarian)
    assignment: one high pair can block two slightly lower ones.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D, got shape {s.shape}")
    if on_reject not in ("stop", "skip"):
        raise ValueError("on_reject must be 'stop' or 'skip'")
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != s.shape:
            raise ValueError(f"allowed {allowed.shape} != scores {s.shape}")
    if s.size == 0:
        return []
    flat = s.ravel()
    order = np.argsort(-flat, kind="stable")
    used_r = np.zeros(s.shape[0], dtype=bool)
    used_c = np.zeros(s.shape[1], dtype=bool)
    out: list[Match] = []
    for k in order:
        v = flat[k]
        if not (v >= min_score if inclusive else v > min_score):
            break  # sorted: nothing later qualifies
        r, c = divmod(int(k), s.shape[1])
        if used_r[r] or used_c[c]:
            continue
        if allowed is not None and not allowed[r, c]:
            if on_reject == "stop":
                break
            continue
        used_r[r] = used_c[c] = True
        out.append((r, c, float(v)))
        if used_r.all() or used_c.all():
            break
    return out


def image_miou(preds, gts, iou: np.ndarray | None = None) -> float:
    """GCG mIoU of one image: mean IoU of the greedy pairs (``> 0``), 0.0 when none pair."""
    m = iou_matrix(preds, gts) if iou is None else iou
    pairs = greedy_match(m, 0.0)
    return float(np.mean([v for _, _, v in pairs])) if pairs else 0.0


def text_similarity_matrix(gt_labels: Sequence[str], pred_phrases: Sequence[str], fn: TextSimilarity) -> np.ndarray:
    """``[G, P]`` matrix of ``fn(gt_label, pred_phrase)``."""
    out = np.zeros((len(gt_labels), len(pred_phrases)), dtype=np.float64)
    for i, g in enumerate(gt_labels):
        for j, p in enumerate(pred_phrases):
            out[i, j] = float(fn(g, p))
    return out


def recall_matches(
    iou_gt_pred: np.ndarray,
    text_sims: np.ndarray | None = None,
    iou_threshold: float = 0.5,
    text_threshold: float = 0.5,
    on_reject: str = "stop",
) -> list[Match]:
    """GLaMM's recall matching on ``[G, P]`` IoUs: ``[(gt, pred, iou), …]``, IoU ≥ threshold and,
    when ``text_sims`` ``[G, P]`` is given, similarity ≥ ``text_threshold`` (see module doc)."""
    allowed = None if text_sims is None else np.asarray(text_sims) >= text_threshold
    return greedy_match(iou_gt_pred, iou_threshold, inclusive=True, allowed=allowed, on_reject=on_reject)


# --------------------------------------------------------------------------- per image / dataset


@dataclass
class ImageScores:
    """GCG figures of one image.

    Attributes:
        miou: mean IoU of the greedy pairs (0.0 when none).
        pairs: ``[(pred, gt, iou), …]`` from the mIoU pairing.
        matches: ``[(gt, pred, iou), …]`` counted for recall.
        n_pred, n_gt: mask counts.
    """

    miou: float
    pairs: list[Match]
    matches: list[Match]
    n_pred: int
    n_gt: int

    @property
    def n_matched(self) -> int:
        return len(self.matches)

    @property
    def recall(self) -> float:
        """Matches / ground truths for this image (NaN with no ground truth)."""
        return len(self.matches) / self.n_gt if self.n_gt else float("nan")


def evaluate_image(
    pred_masks,
    gt_masks,
    pred_phrases: Sequence[str] | None = None,
    gt_labels: Sequence[str] | None = None,
    *,
    text_similarity: TextSimilarity | None = None,
    iou_threshold: float = 0.5,
    text_threshold: float = 0.5,
    on_reject: str = "stop",
) -> ImageScores:
    """mIoU and recall matches of one image (the masks may be ``[N, H, W]``, lists or RLEs)."""
    p = as_mask_stack(pred_masks)
    g = as_mask_stack(gt_masks)
    m = iou_matrix(p, g)  # [P, G]
    pairs = greedy_match(m, 0.0)
    miou = float(np.mean([v for _, _, v in pairs])) if pairs else 0.0
    sims = None
    if text_similarity is not None:
        if pred_phrases is None or gt_labels is None:
            raise ValueError("the text-similarity gate needs pred_phrases and gt_labels")
        if len(gt_labels) != len(g):
            raise ValueError(f"{len(gt_labels)} labels for {len(g)} ground truths")
        # A prediction without a phrase (a method that wrote more masks than phrases) cannot
        # pass the text gate; phrases beyond the masks are ignored. (GLaMM's loop raises on the
        # first case and counts the image as matching nothing; see the module docstring.)
        sims = np.zeros((len(g), len(p)), dtype=np.float64)
        k = min(len(p), len(pred_phrases))
        sims[:, :k] = text_similarity_matrix(gt_labels, list(pred_phrases)[:k], text_similarity)
    matches = recall_matches(m.T, sims, iou_threshold, text_threshold, on_reject)
    return ImageScores(miou=miou, pairs=pairs, matches=matches, n_pred=len(p), n_gt=len(g))


@dataclass
class GCGScores:
    """Dataset figures.

    Attributes:
        miou: mean over images of the per-image mIoU (GLaMM).
        recall: all recall matches / all ground truths (GLaMM's micro average).
        recall_image_mean: mean over images that have ground truths of their recall.
        ap50: COCO segm AP at IoU 0.5 (None when not computed; NaN without ground truths).
        n_images, n_pred, n_gt, n_matched: counts.
        per_image: the :class:`ImageScores`.
    """

    miou: float
    recall: float
    recall_image_mean: float
    ap50: float | None
    n_images: int
    n_pred: int
    n_gt: int
    n_matched: int
    per_image: list[ImageScores] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        """The figures without the per-image lists (JSON-ready)."""
        d = {k: getattr(self, k) for k in ("miou", "recall", "recall_image_mean", "ap50", "n_images", "n_pred", "n_gt", "n_matched")}
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


class GCGEvaluator:
    """Accumulates images one at a time; :meth:`summary` gives :class:`GCGScores`.

    >>> ev = GCGEvaluator(compute_ap=True)
    >>> for preds, gts in data:            # [P, H, W], [G, H, W]
    ...     ev.add(preds, gts)
    >>> ev.summary().miou

    With ``compute_ap`` the masks are kept as RLE for AP50 (needs pycocotools at summary time).
    """

    def __init__(
        self,
        *,
        text_similarity: TextSimilarity | None = None,
        iou_threshold: float = 0.5,
        text_threshold: float = 0.5,
        on_reject: str = "stop",
        compute_ap: bool = False,
    ):
        self.text_similarity = text_similarity
        self.iou_threshold = iou_threshold
        self.text_threshold = text_threshold
        self.on_reject = on_reject
        self.compute_ap = compute_ap
        self.images: list[ImageScores] = []
        self._ap_preds: list[list[dict]] = []
        self._ap_gts: list[list[dict]] = []
        self._ap_sizes: list[tuple[int, int]] = []
        self._ap_ids: list = []

    def add(self, pred_masks, gt_masks, pred_phrases=None, gt_labels=None, image_id=None) -> ImageScores:
        """Score one image. ``image_id`` (str or int; default: the running count 1, 2, …) is the
        id AP50 gives COCOeval, which orders images by sorted id (see :func:`ap50`)."""
        p = as_mask_stack(pred_masks)
        g = as_mask_stack(gt_masks)
        s = evaluate_image(
            p,
            g,
            pred_phrases,
            gt_labels,
            text_similarity=self.text_similarity,
            iou_threshold=self.iou_threshold,
            text_threshold=self.text_threshold,
            on_reject=self.on_reject,
        )
        self.images.append(s)
        if self.compute_ap:
            shape = g.shape[1:] if len(g) else p.shape[1:]
            self._ap_preds.append([_rle.encode(m) for m in p])
            self._ap_gts.append([_rle.encode(m) for m in g])
            self._ap_sizes.append(tuple(int(v) for v in shape))
            self._ap_ids.append(len(self._ap_ids) + 1 if image_id is None else image_id)
        return s

    def summary(self) -> GCGScores:
        imgs = self.images
        n_gt = sum(s.n_gt for s in imgs)
        n_matched = sum(s.n_matched for s in imgs)
        with_gt = [s.recall for s in imgs if s.n_gt]
        ap = None
        if self.compute_ap:
            ap = _ap50_rles(self._ap_preds, self._ap_gts, self._ap_sizes, image_ids=self._ap_ids)
        return GCGScores(
            miou=float(np.mean([s.miou for s in imgs])) if imgs else 0.0,
            recall=n_matched / n_gt if n_gt else 0.0,
            recall_image_mean=float(np.mean(with_gt)) if with_gt else float("nan"),
            ap50=ap,
            n_images=len(imgs),
            n_pred=sum(s.n_pred for s in imgs),
            n_gt=n_gt,
            n_matched=n_matched,
            per_image=list(imgs),
        )


def evaluate(
    preds_per_image: Iterable,
    gts_per_image: Iterable,
    pred_phrases: Iterable[Sequence[str]] | None = None,
    gt_labels: Iterable[Sequence[str]] | None = None,
    *,
    text_similarity: TextSimilarity | None = None,
    iou_threshold: float = 0.5,
    text_threshold: float = 0.5,
    on_reject: str = "stop",
    compute_ap: bool = False,
) -> GCGScores:
    """GCG mIoU, recall (and AP50 with ``compute_ap``) over a dataset of images."""
    ev = GCGEvaluator(
        text_similarity=text_similarity,
        iou_threshold=iou_threshold,
        text_threshold=text_threshold,
        on_reject=on_reject,
        compute_ap=compute_ap,
    )
    preds_per_image, gts_per_image = list(preds_per_image), list(gts_per_image)
    if len(preds_per_image) != len(gts_per_image):
        raise ValueError(f"{len(preds_per_image)} prediction sets for {len(gts_per_image)} images")
    pp = list(pred_phrases) if pred_phrases is not None else [None] * len(preds_per_image)
    gl = list(gt_labels) if gt_labels is not None else [None] * len(gts_per_image)
    for p, g, ph, lb in zip(preds_per_image, gts_per_image, pp, gl):
        ev.add(p, g, ph, lb)
    return ev.summary()


# --------------------------------------------------------------------------- referring expressions


def box_iou(a, b) -> np.ndarray:
    """IoU of COCO boxes ``[x, y, w, h]``: ``a`` ``[P, 4]`` × ``b`` ``[G, 4]`` → ``[P, G]`` float64.

    Equal to ``pycocotools.mask.iou(a, b, [0] * G)`` on boxes (no +1 pixel convention: a box
    covers ``[x, x + w) × [y, y + h)``); a box with no area scores 0 against everything.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    iy = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=inter > 0)
    return out


def referring_scores(intersections, unions, box_ious=None, threshold: float = 0.5) -> dict:
    """cIoU, gIoU and (with ``box_ious``) REC Acc@``threshold`` over a set of expressions.

    Args:
        intersections, unions: per-expression pixel counts (:func:`intersection_union`).
        box_ious: per-expression IoU of the predicted box with the ground-truth box.

    Returns:
        ``{"ciou", "giou", "acc@0.5", "n"}``: cIoU = Σ inter / Σ union, gIoU = mean of
        inter / union (0 for an empty union), Acc = share of box IoUs ≥ ``threshold``
        (NaN figures for no expressions).
    """
    inter = np.asarray(intersections, dtype=np.float64).reshape(-1)
    union = np.asarray(unions, dtype=np.float64).reshape(-1)
    if inter.shape != union.shape:
        raise ValueError(f"{inter.size} intersections for {union.size} unions")
    n = int(inter.size)
    per = np.zeros(n)
    np.divide(inter, union, out=per, where=inter > 0)
    out = {"ciou": float(inter.sum() / union.sum()) if union.sum() > 0 else float("nan"),
           "giou": float(per.mean()) if n else float("nan"), "n": n}
    if box_ious is not None:
        boxes = np.asarray(box_ious, dtype=np.float64).reshape(-1)
        if boxes.size != n:
            raise ValueError(f"{boxes.size} box IoUs for {n} expressions")
        out[f"acc@{threshold:g}"] = float((boxes >= threshold).mean()) if n else float("nan")
    return out


# --------------------------------------------------------------------------- points


def point_in_mask(points, mask: np.ndarray) -> np.ndarray | bool:
    """Whether each ``(x, y)`` point falls on a set pixel of ``mask`` ``[H, W]``.

    ``points`` is one ``(x, y)`` (returns a bool) or ``[N, 2]`` (returns ``[N]`` bool). The point
    lies in pixel ``(floor(y), floor(x))``; points outside the image (or NaN) are False.
    """
    mask = np.asarray(mask) != 0
    pts = np.asarray(points, dtype=np.float64)
    single = pts.ndim == 1
    pts = pts.reshape(-1, 2)
    h, w = mask.shape
    ok = np.isfinite(pts).all(axis=1)
    x = np.where(ok, pts[:, 0], -1.0)
    y = np.where(ok, pts[:, 1], -1.0)
    inside = ok & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    j = np.clip(np.floor(x), 0, max(w - 1, 0)).astype(np.int64)
    i = np.clip(np.floor(y), 0, max(h - 1, 0)).astype(np.int64)
    hit = np.zeros(len(pts), dtype=bool)
    if mask.size:
        hit = inside & mask[i, j]
    return bool(hit[0]) if single else hit


def point_accuracy(points, masks) -> float:
    """Fraction of points that fall inside their own mask: ``points[k]`` vs ``masks[k]``.

    ``points`` ``[N, 2]`` (x, y); ``masks`` ``[N, H, W]`` or a list (masks may differ in size).
    A NaN point (no prediction) counts as a miss. NaN for N = 0.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    masks = list(masks)
    if len(pts) != len(masks):
        raise ValueError(f"{len(pts)} points for {len(masks)} masks")
    if not len(pts):
        return float("nan")
    hits = [bool(point_in_mask(p, m)) for p, m in zip(pts, masks)]
    return float(np.mean(hits))


# --------------------------------------------------------------------------- AP50


def _require_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "AP50 needs pycocotools: pip install 'attendseg[coco]' (or pip install pycocotools)"
        ) from e
    return COCO, COCOeval


def ap50(preds_per_image: Iterable, gts_per_image: Iterable, scores_per_image: Iterable | None = None,
         image_ids: Sequence | None = None) -> float:
    """COCO segm AP at IoU 0.5 over images, one category, every prediction scored 1.0.

    ``preds_per_image[i]`` and ``gts_per_image[i]`` are the masks of image i (``[N, H, W]``,
    lists of ``[H, W]``, or RLEs). ``scores_per_image`` overrides the 1.0 scores. Returns NaN
    when there is no ground truth at all, 0.0 when there is no prediction. Needs pycocotools.

    With equal scores COCOeval's precision-recall curve follows image order, and COCOeval
    visits images in *sorted id* order. ``image_ids`` (default 1..N) sets the ids: pass the
    data set's own (GLaMM's GranD-f ids are strings, so ``"sa_10"`` comes before ``"sa_9"``)
    to get the figure GLaMM's evaluation prints.
    """
    preds_per_image, gts_per_image = list(preds_per_image), list(gts_per_image)
    if len(preds_per_image) != len(gts_per_image):
        raise ValueError(f"{len(preds_per_image)} prediction sets for {len(gts_per_image)} images")
    pr, gr, sizes = [], [], []
    for p, g in zip(preds_per_image, gts_per_image):
        p, g = as_mask_stack(p), as_mask_stack(g)
        if len(p) and len(g) and p.shape[1:] != g.shape[1:]:
            raise ValueError(f"prediction masks {p.shape[1:]} and ground truths {g.shape[1:]} differ in size")
        pr.append([_rle.encode(m) for m in p])
        gr.append([_rle.encode(m) for m in g])
        sizes.append(tuple(int(v) for v in (g.shape[1:] if len(g) else p.shape[1:])))
    scores = None if scores_per_image is None else [list(s) for s in scores_per_image]
    return _ap50_rles(pr, gr, sizes, scores, image_ids=image_ids)


def _ap50_rles(preds, gts, sizes, scores=None, image_ids=None) -> float:
    COCO, _ = _require_pycocotools()
    ids = list(range(1, len(preds) + 1)) if image_ids is None else list(image_ids)
    if len(ids) != len(preds) or len(set(ids)) != len(ids):
        raise ValueError(f"need {len(preds)} distinct image ids, got {len(ids)} ({len(set(ids))} distinct)")
    images, anns, results = [], [], []
    for i, (p, g, (h, w)) in enumerate(zip(preds, gts, sizes)):
        image_id = ids[i]
        images.append({"id": image_id, "width": w, "height": h})
        for m in g:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": m,
                    "area": float(_rle.area(m)),
                    "bbox": _rle.to_bbox(m),
                    "iscrowd": 0,
                }
            )
        for k, m in enumerate(p):
            s = 1.0 if scores is None else float(scores[i][k])
            results.append({"image_id": image_id, "category_id": 1, "segmentation": m, "score": s})
    if not anns:
        return float("nan")
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
        gt.createIndex()
    return ap50_coco(gt, results)


def ap50_coco(coco_gt, results: list[dict], cat_ids: Sequence[int] | None = None) -> float:
    """AP at IoU 0.5 (``COCOeval(..., "segm").stats[1]``) of ``results`` against a COCO ground truth.

    ``coco_gt`` is a ``pycocotools.coco.COCO`` or the path of a COCO annotation JSON; ``results``
    is the list ``COCO.loadRes`` reads (e.g. from :meth:`Grounding.to_coco_results
    <attendseg.results.Grounding.to_coco_results>`). Scores are used as given. Evaluated on the
    ground truth's images (in sorted id order, COCOeval's default); ``cat_ids`` restricts the
    categories (GLaMM's GCG evaluation sets ``[1]``). 0.0 when ``results`` is empty. Needs
    pycocotools.
    """
    COCO, COCOeval = _require_pycocotools()
    with contextlib.redirect_stdout(io.StringIO()):
        if not isinstance(coco_gt, COCO):
            coco_gt = COCO(str(coco_gt))
        if not results:
            return 0.0 if coco_gt.getAnnIds() else float("nan")
        dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, dt, "segm")
        ev.params.imgIds = sorted(coco_gt.getImgIds())
        if cat_ids is not None:
            ev.params.catIds = list(cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    v = float(ev.stats[1])
    return float("nan") if v < 0 else v


# --------------------------------------------------------------------------- PNG average recall

#: The Panoptic Narrative Grounding threshold grid: ``np.arange(0, 1, 1e-5)`` (100,000 IoU
#: thresholds, the PNG authors' evaluation and those that copied it: F-LMM, the paper's scripts).
PNG_STEP = 1e-5


def recall_curve(ious, thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Share of phrases whose IoU is ``>= t``, for every threshold ``t``.

    Args:
        ious: per-phrase IoUs ``[N]``.
        thresholds: ascending ``[T]``; default the PNG grid ``np.arange(0, 1, 1e-5)``.

    Returns:
        ``(thresholds [T], recall [T])``; recall is NaN for N = 0.
    """
    t = np.arange(0, 1, PNG_STEP) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    v = np.sort(np.asarray(ious, dtype=np.float64).reshape(-1))
    if v.size == 0:
        return t, np.full(t.shape, np.nan)
    return t, (v.size - np.searchsorted(v, t, side="left")) / v.size


def average_recall(ious, thresholds: np.ndarray | None = None) -> float:
    """Area under :func:`recall_curve`, as Panoptic Narrative Grounding defines it.

    The PNG evaluation sums ``(t[i+1] - t[i]) · recall(t[i])`` over consecutive thresholds of
    ``np.arange(0, 1, 1e-5)``: a left Riemann sum over ``[0, 0.99999]``, which comes to the mean
    IoU give or take 1e-5 per phrase. NaN for no phrases.
    """
    t, r = recall_curve(ious, thresholds)
    if not len(r) or np.isnan(r).all():
        return float("nan")
    return float(np.sum(np.diff(t) * r[:-1]))
