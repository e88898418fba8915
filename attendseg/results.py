"""Typed grounding results and their files: JSON (masks as COCO RLE), PNG masks, COCO results.

Conventions (the same as :mod:`attendseg.views`):

* Pixel coordinates are ``(x, y)`` in the **original** image, x to the right, y down; pixel
  ``(row i, column j)`` covers ``[j, j+1) × [i, i+1)``, so its centre is ``(j + 0.5, i + 0.5)``.
* ``image_size`` is ``(W, H)``; masks and heatmaps are arrays ``[H, W]``.
* ``box`` is ``(x0, y0, x1, y1)`` in pixel edges: the tight box of a mask whose first set column
  is 3 and last is 7 has ``x0 = 3, x1 = 8``. COCO's ``bbox`` is ``[x, y, width, height]`` of the
  same box (``width = x1 - x0``).
* ``span`` is a character span ``(start, end)`` (end exclusive) into ``answer``.

JSON layout (``schema_version`` 1)::

    {
      "schema": "attendseg.grounding",
      "schema_version": 1,
      "image": {"path": "photos/cat.jpg", "width": 451, "height": 300},
      "model": "llava-hf/llava-1.5-7b-hf", "refiner": "sam", "prompt": "Describe the image.",
      "answer": "A cat sits on a red blanket.",
      "phrases": [
        {"index": 0, "text": "A cat", "span": [0, 5], "root": "cat", "tokens": [7],
         "points": [[212.5, 140.5]], "score": 0.93,
         "box_xyxy": [120.0, 40.0, 330.0, 290.0],       # x0, y0, x1, y1 (pixel edges)
         "bbox_xywh": [120.0, 40.0, 210.0, 250.0],      # COCO x, y, width, height
         "area": 31234,
         "segmentation": {"size": [300, 451], "counts": "Pl`0..."}},   # COCO RLE, or null
        ...
      ],
      "meta": {...}
    }

``segmentation`` decodes with ``pycocotools.mask.decode`` as is (counts as ``str`` are accepted)
or with :func:`attendseg.rle.decode`. Heatmaps are left out unless asked for
(``include_heatmaps=True``: ``{"shape": [H, W], "dtype": "float32", "base64": ...}``, exact).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import rle as _rle
from .errors import AttendsegError
from .files import atomic_save_image, atomic_write_text

__all__ = ["GroundedPhrase", "Grounding", "SCHEMA", "SCHEMA_VERSION"]

SCHEMA = "attendseg.grounding"
SCHEMA_VERSION = 1


@dataclass(eq=False)
class GroundedPhrase:
    """One phrase of the answer and its mask.

    Attributes:
        text: the phrase as it appears in the answer (``answer[span[0]:span[1]]``).
        span: character span ``(start, end)`` into the answer, end exclusive.
        root: the phrase's root word (its maps come from the tokens overlapping it).
        tokens: indices of the generated tokens whose maps were aggregated.
        points: ``[P, 2]`` float ``(x, y)`` prompt points in original-image pixels.
        mask: ``[H, W]`` bool, or None when no mask was made.
        box: ``(x0, y0, x1, y1)`` of the mask in original-image pixels (pixel edges); filled from
            ``mask`` when not given; None for no / an empty mask.
        score: the refiner's confidence (NaN when it has none).
        heatmap: optional ``[H, W]`` float32 map in the image frame (not in JSON by default).
    """

    text: str
    span: tuple[int, int]
    root: str
    tokens: tuple[int, ...]
    points: np.ndarray
    mask: np.ndarray | None
    box: tuple[float, float, float, float] | None
    score: float
    heatmap: np.ndarray | None = None

    def __post_init__(self):
        self.span = (int(self.span[0]), int(self.span[1]))
        self.tokens = tuple(int(t) for t in self.tokens)
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.size == 0:
            pts = np.zeros((0, 2), dtype=np.float64)
        if pts.ndim == 1 and pts.shape[0] == 2:
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points must be [P, 2] (x, y), got shape {pts.shape}")
        self.points = pts
        if self.mask is not None:
            m = np.asarray(self.mask)
            if m.ndim != 2:
                raise ValueError(f"mask must be [H, W], got shape {m.shape}")
            self.mask = m if m.dtype == bool else m != 0
        if self.box is None and self.mask is not None:
            self.box = _rle.mask_to_xyxy(self.mask)
        elif self.box is not None:
            self.box = tuple(float(v) for v in self.box)
            if len(self.box) != 4:
                raise ValueError(f"box must be (x0, y0, x1, y1), got {self.box}")
        self.score = float(self.score) if self.score is not None else float("nan")
        if self.heatmap is not None:
            self.heatmap = np.asarray(self.heatmap, dtype=np.float32)

    @property
    def bbox_xywh(self) -> list[float] | None:
        """The box as COCO ``[x, y, width, height]``, or None."""
        if self.box is None:
            return None
        x0, y0, x1, y1 = self.box
        return [x0, y0, x1 - x0, y1 - y0]

    @property
    def area(self) -> int | None:
        """Set pixels of the mask, or None without a mask."""
        return None if self.mask is None else int(np.count_nonzero(self.mask))

    def to_json(self, index: int = 0, include_heatmap: bool = False) -> dict:
        d = {
            "index": int(index),
            "text": self.text,
            "span": list(self.span),
            "root": self.root,
            "tokens": list(self.tokens),
            "points": self.points.tolist(),
            "score": _float_or_none(self.score),
            "box_xyxy": None if self.box is None else list(self.box),
            "bbox_xywh": self.bbox_xywh,
            "area": self.area,
            "segmentation": None if self.mask is None else _rle.encode(self.mask),
        }
        if include_heatmap and self.heatmap is not None:
            d["heatmap"] = _array_to_json(self.heatmap)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "GroundedPhrase":
        seg = d.get("segmentation")
        mask = None if seg is None else _rle.decode(seg)
        box = d.get("box_xyxy")
        if box is None and d.get("bbox_xywh") is not None:
            box = _rle.to_xyxy(d["bbox_xywh"])
        score = d.get("score")
        return cls(
            text=d["text"],
            span=tuple(d["span"]),
            root=d.get("root", ""),
            tokens=tuple(d.get("tokens", ())),
            points=np.asarray(d.get("points", []), dtype=np.float64).reshape(-1, 2),
            mask=mask,
            box=None if box is None else tuple(box),
            score=float("nan") if score is None else float(score),
            heatmap=None if d.get("heatmap") is None else _array_from_json(d["heatmap"]),
        )


@dataclass(eq=False)
class Grounding:
    """The grounding of one image: the answer and one :class:`GroundedPhrase` per phrase.

    Attributes:
        image_size: ``(W, H)`` of the original image; every mask is ``[H, W]``.
        answer: the text that was grounded (generated, or given by the user).
        prompt: the prompt the model answered ("" when the text was given).
        model: the model's name or path.
        refiner: the refiner's name (``sam``, ``superpixel``, ``threshold``, …).
        phrases: in answer order.
        image_path: where the image came from, if a file.
        meta: anything JSON-serialisable (settings, timings); numpy values are converted.
    """

    image_size: tuple[int, int]
    answer: str
    prompt: str
    model: str
    refiner: str
    phrases: list[GroundedPhrase]
    image_path: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.phrases = list(self.phrases)
        if self.image_path is not None:
            self.image_path = str(self.image_path)
        w, h = self.image_size
        for i, p in enumerate(self.phrases):
            for name in ("mask", "heatmap"):
                a = getattr(p, name)
                if a is not None and a.shape != (h, w):
                    raise ValueError(
                        f"phrase {i} ({p.text!r}): {name} shape {a.shape} != image (H, W) {(h, w)}"
                    )

    @property
    def width(self) -> int:
        return self.image_size[0]

    @property
    def height(self) -> int:
        return self.image_size[1]

    def __len__(self) -> int:
        return len(self.phrases)

    def mask_stack(self) -> np.ndarray:
        """``[N, H, W]`` bool masks of all phrases (all-False for a phrase without a mask)."""
        w, h = self.image_size
        out = np.zeros((len(self.phrases), h, w), dtype=bool)
        for i, p in enumerate(self.phrases):
            if p.mask is not None:
                out[i] = p.mask
        return out

    # ------------------------------------------------------------------ JSON

    def to_json(self, include_heatmaps: bool = False) -> dict:
        """A JSON-ready dict (see the module docstring for the layout)."""
        w, h = self.image_size
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "image": {"path": self.image_path, "width": w, "height": h},
            "model": self.model,
            "refiner": self.refiner,
            "prompt": self.prompt,
            "answer": self.answer,
            "phrases": [p.to_json(i, include_heatmaps) for i, p in enumerate(self.phrases)],
            "meta": _jsonable(self.meta),
        }

    @classmethod
    def from_json(cls, d: dict) -> "Grounding":
        """Inverse of :meth:`to_json`; raises :class:`AttendsegError` for a foreign or newer file."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise AttendsegError(f"not an attendseg grounding (schema {d.get('schema') if isinstance(d, dict) else None!r})")
        version = d.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise AttendsegError(
                f"grounding schema_version {version!r} is not supported (this attendseg reads "
                f"up to {SCHEMA_VERSION}); upgrade attendseg"
            )
        img = d["image"]
        return cls(
            image_size=(img["width"], img["height"]),
            answer=d.get("answer", ""),
            prompt=d.get("prompt", ""),
            model=d.get("model", ""),
            refiner=d.get("refiner", ""),
            phrases=[GroundedPhrase.from_json(p) for p in d.get("phrases", [])],
            image_path=img.get("path"),
            meta=d.get("meta") or {},
        )

    def save_json(self, path: str | os.PathLike, include_heatmaps: bool = False, indent: int | None = 1) -> Path:
        """Write the JSON atomically, with the normal file mode (:mod:`attendseg.files`)."""
        text = json.dumps(self.to_json(include_heatmaps), indent=indent, allow_nan=False)
        return atomic_write_text(path, text + "\n")

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> "Grounding":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AttendsegError(f"{path}: no such file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AttendsegError(f"{path}: not valid JSON ({e})") from None
        return cls.from_json(d)

    # ------------------------------------------------------------------ other outputs

    def save_masks_png(self, folder: str | os.PathLike) -> list[Path]:
        """One 8-bit PNG per phrase with a mask (0 = out, 255 = in), named ``{index:02d}_{slug}.png``.

        Phrases without a mask are skipped. Each file is written atomically. Returns the paths.
        """
        from PIL import Image

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for i, p in enumerate(self.phrases):
            if p.mask is None:
                continue
            path = folder / f"{i:02d}_{slugify(p.text)}.png"
            img = Image.fromarray(p.mask.astype(np.uint8) * 255)  # mode "L"
            atomic_save_image(img, path)
            written.append(path)
        return written

    def to_coco_results(self, image_id: int, category_id: int = 1, score: float | None = None) -> list[dict]:
        """Detections in the list format ``COCO.loadRes`` reads (``iouType="segm"``).

        One dict per phrase with a mask: ``image_id``, ``category_id``, ``segmentation`` (RLE,
        counts as str), ``score`` (``score`` if given — GCG's AP50 uses 1.0 for all — else the
        phrase's score, NaN becoming 1.0), and ``phrase``. No ``bbox`` key on purpose: with one,
        ``loadRes`` would take the box branch and set ``area`` to the box's area; without it,
        ``area`` and ``bbox`` are computed from the mask.
        """
        out = []
        for p in self.phrases:
            if p.mask is None:
                continue
            s = score if score is not None else p.score
            s = 1.0 if s is None or not math.isfinite(s) else float(s)
            out.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "segmentation": _rle.encode(p.mask),
                    "score": s,
                    "phrase": p.text,
                }
            )
        return out


# ---------------------------------------------------------------------- helpers


def slugify(text: str, max_len: int = 40) -> str:
    """A file-name-safe lowercase slug: ``"A red Cat!"`` → ``"a-red-cat"`` (``"phrase"`` if empty)."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len].strip("-")
    return s or "phrase"


def _float_or_none(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _array_to_json(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "dtype": "float32", "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def _array_from_json(d: dict) -> np.ndarray:
    buf = base64.b64decode(d["base64"])
    return np.frombuffer(buf, dtype="<f4").reshape(d["shape"]).astype(np.float32)


def _jsonable(obj: Any) -> Any:
    """Convert numpy values, tuples, paths and non-finite floats into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)
