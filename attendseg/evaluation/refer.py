"""Referring-expression data as people have it on disk: the ``refer`` layout and JSONL manifests.

**The refer layout** (RefCOCO / RefCOCO+ / RefCOCOg, as used by the ``refer`` API, LISA and
GLaMM)::

    ROOT/refcoco/refs(unc).p          a pickle: a list of refs (below)
    ROOT/refcoco/instances.json       COCO: images, annotations (polygons, bbox xywh), categories
    ROOT/refcoco+/refs(unc).p, instances.json
    ROOT/refcocog/refs(umd).p (or refs(google).p), instances.json
    ROOT/images/mscoco/images/train2014/COCO_train2014_000000xxxxxx.jpg

A ref is ``{"ref_id", "ann_id", "image_id", "category_id", "split", "sentences": [{"sent",
"raw", "tokens", "sent_id"}, …], "sent_ids", "file_name"}``; its mask and box are those of
annotation ``ann_id``. Splits: ``train``, ``val``, ``testA``, ``testB`` (RefCOCO, RefCOCO+),
``train``, ``val``, ``test`` (RefCOCOg umd); ``test`` on RefCOCO/+ means testA and testB, as in
the refer API. Every sentence of a ref is one expression (sample id ``"<ref_id>/<sent_id>"``).

The pickle is untrusted input: :func:`load_refs_pickle` admits only what the format needs
(lists, dicts, strings, numbers, ``None``, tuples, sets); a pickle that names any class or
function is refused with an :class:`~attendseg.errors.AttendsegError`, before anything in it runs.

**A JSONL manifest** for one's own data, one expression per line::

    {"image": "photos/cat.jpg", "expression": "the cat on the left",
     "mask": {"size": [H, W], "counts": "..."},      # COCO RLE, or polygons [[x0, y0, x1, y1, ...], ...]
     "box": [x, y, w, h],                            # optional (default: the mask's tight box)
     "id": "cat-1"}                                  # optional (default: the line number)

Relative image paths are read from the manifest's folder.

Masks: ``[H, W]`` bool; boxes COCO ``[x, y, w, h]`` in pixels. Polygons are rasterised by
pycocotools (as the refer API does), so polygon masks need it (``pip install 'attendseg[coco]'``).
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import AttendsegError

DATASETS = {"refcoco": ("unc",), "refcoco+": ("unc",), "refcocog": ("umd", "google")}
SPLITS = {"refcoco": ("val", "testA", "testB", "test", "train"), "refcoco+": ("val", "testA", "testB", "test", "train"),
          "refcocog": ("val", "test", "train")}
IMAGE_FOLDER = Path("images/mscoco/images/train2014")

#: The only globals a refs pickle may name (plain containers written by old protocols).
_ALLOWED_GLOBALS = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"),
                    ("__builtin__", "frozenset")}


@dataclass
class Expression:
    """One referring expression and its target.

    Attributes:
        id: the sample id (refer: ``"<ref_id>/<sent_id>"``; manifest: the given id or line number).
        image: the image file.
        image_id: the image's id (refer: COCO's; manifest: the image path), groups expressions.
        text: the expression.
        segmentation: the target as COCO polygons ``[[x, y, …], …]`` or an RLE dict.
        box: the target box, COCO ``[x, y, w, h]``, or None (then the mask's tight box).
        meta: extra fields kept in the records (ref id, category, …).
    """

    id: str
    image: Path
    image_id: object
    text: str
    segmentation: object
    box: list[float] | None = None
    meta: dict = field(default_factory=dict)

    def mask(self, height: int, width: int) -> np.ndarray:
        """The target mask ``[height, width]`` bool (the image's size)."""
        return decode_segmentation(self.segmentation, height, width, where=f"expression {self.id}")

    def target_box(self, mask: np.ndarray) -> list[float]:
        from ..rle import mask_to_bbox

        return [float(v) for v in self.box] if self.box is not None else mask_to_bbox(mask)


def decode_segmentation(segmentation, height: int, width: int, where: str = "") -> np.ndarray:
    """COCO polygons (a list of ``[x0, y0, x1, y1, …]``) or an RLE dict → ``[H, W]`` bool."""
    from .. import rle

    prefix = f"{where}: " if where else ""
    if isinstance(segmentation, dict):
        try:
            mask = rle.decode(segmentation)
        except (ValueError, TypeError) as error:
            raise AttendsegError(f"{prefix}bad RLE mask ({error})") from None
        if mask.shape != (height, width):
            raise AttendsegError(f"{prefix}the mask is {mask.shape[1]}×{mask.shape[0]}, the image {width}×{height}")
        return mask
    if (isinstance(segmentation, list) and segmentation
            and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation)):
        try:
            from pycocotools import mask as mask_utils
        except ImportError:
            raise AttendsegError("polygon masks need pycocotools: pip install 'attendseg[coco]'") from None
        rles = mask_utils.frPyObjects([[float(v) for v in p] for p in segmentation], height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    raise AttendsegError(f"{prefix}the mask must be an RLE dict or a list of polygons [x0, y0, x1, y1, …]")


# ----------------------------------------------------------------------------- the pickle
class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return set if name == "set" else frozenset
        raise pickle.UnpicklingError(f"it asks for {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it asks for a persistent object")


def safe_load_pickle_bytes(data: bytes, where: str = "the pickle"):
    """Unpickle ``data`` admitting only plain containers, strings and numbers (module doc);
    anything else raises :class:`AttendsegError` before it is built."""
    path = where
    try:
        return _PlainUnpickler(io.BytesIO(data), encoding="utf-8", errors="strict").load()
    except pickle.UnpicklingError as error:
        raise AttendsegError(f"{path}: refused: {error}; a refs pickle holds only lists, dicts, "
                             f"strings and numbers") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, UnicodeDecodeError,
            MemoryError, OverflowError) as error:
        raise AttendsegError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from None


def safe_load_pickle(path: Path):
    """:func:`safe_load_pickle_bytes` of a file."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise AttendsegError(f"cannot read {path}: {error.strerror}") from None
    return safe_load_pickle_bytes(data, str(path))


REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


def load_refs_pickle(path: Path) -> list[dict]:
    """The refs of a ``refs(*).p`` file, checked to be a list of ref dicts (module docstring)."""
    refs = safe_load_pickle(path)
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise AttendsegError(f"{path}: expected a list of refs (dicts), got {type(refs).__name__}")
    for ref in refs:
        missing = [k for k in REF_KEYS if k not in ref]
        if missing:
            raise AttendsegError(f"{path}: a ref lacks {', '.join(missing)}")
        if not isinstance(ref["sentences"], list) or not all(isinstance(s, dict) and "sent" in s
                                                             for s in ref["sentences"]):
            raise AttendsegError(f"{path}: ref {ref['ref_id']}: 'sentences' must be a list of {{'sent': ...}}")
    return refs


def _read_json(path: Path):
    if not path.is_file():
        raise AttendsegError(f"file not found: {path}")
    try:
        return json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AttendsegError(f"{path}: not JSON ({error})") from None


def dataset_folder(root: Path, dataset: str) -> Path:
    """``ROOT/<dataset>``, or ``ROOT`` itself when it already is the dataset's folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise AttendsegError(f"data folder not found: {root}")
    for candidate in (root / dataset, root):
        if (candidate / "instances.json").is_file():
            return candidate
    raise AttendsegError(f"no {dataset}/instances.json under {root} (expected the refer layout: "
                         f"ROOT/{dataset}/instances.json and ROOT/{dataset}/refs(…).p)")


def load_refer(root, dataset: str = "refcoco", split: str = "val", split_by: str | None = None,
               images=None) -> list[Expression]:
    """The expressions of one split of a refer-layout dataset (module docstring).

    Args:
        root: the folder holding ``<dataset>/`` (the refer API's ``data_root``), or the dataset
            folder itself.
        dataset: ``refcoco`` | ``refcoco+`` | ``refcocog``.
        split: ``val`` | ``testA`` | ``testB`` | ``test`` | ``train`` (as the dataset has them).
        split_by: the refs file's ``splitBy`` (default: ``unc``; ``umd`` for RefCOCOg).
        images: the COCO train2014 folder (default: ``ROOT/images/mscoco/images/train2014``).

    Returns:
        expressions in refs-file order (sentences in ref order).
    """
    if dataset not in DATASETS:
        raise AttendsegError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS[dataset]:
        raise AttendsegError(f"{dataset} has no split {split!r}; choose one of {', '.join(SPLITS[dataset])}")
    split_by = split_by or DATASETS[dataset][0]
    folder = dataset_folder(Path(root), dataset)
    refs_path = folder / f"refs({split_by}).p"
    if not refs_path.is_file():
        raise AttendsegError(f"file not found: {refs_path}")
    image_dir = Path(images).expanduser() if images else _default_images(Path(root).expanduser(), folder)
    if not image_dir.is_dir():
        raise AttendsegError(f"image folder not found: {image_dir} (pass --images: the COCO train2014 folder)")
    refs = load_refs_pickle(refs_path)
    instances = _read_json(folder / "instances.json")
    try:
        anns = {a["id"]: a for a in instances["annotations"]}
        imgs = {i["id"]: i for i in instances["images"]}
        cats = {c["id"]: c.get("name", str(c["id"])) for c in instances.get("categories", [])}
    except (KeyError, TypeError):
        raise AttendsegError(f"{folder / 'instances.json'}: not COCO instances (images, annotations)") from None

    def wanted(ref_split: str) -> bool:
        return ref_split == split or (split == "test" and "test" in ref_split and dataset != "refcocog")

    out = []
    for ref in refs:
        if not wanted(str(ref["split"])):
            continue
        ann, img = anns.get(ref["ann_id"]), imgs.get(ref["image_id"])
        if ann is None or img is None:
            what = f"annotation {ref['ann_id']}" if ann is None else f"image {ref['image_id']}"
            raise AttendsegError(f"{refs_path}: ref {ref['ref_id']} names {what}, which instances.json lacks")
        for k, sentence in enumerate(ref["sentences"]):
            sent_id = sentence.get("sent_id", k)
            out.append(Expression(
                id=f"{ref['ref_id']}/{sent_id}", image=image_dir / img["file_name"], image_id=ref["image_id"],
                text=str(sentence["sent"]), segmentation=ann["segmentation"], box=ann.get("bbox"),
                meta={"ref_id": ref["ref_id"], "ann_id": ref["ann_id"], "sent_id": sent_id,
                      "category": cats.get(ref.get("category_id", ann.get("category_id")))}))
    if not out:
        present = sorted({str(r["split"]) for r in refs})
        raise AttendsegError(f"{refs_path}: no refs in split {split!r} (the file has {', '.join(present)})")
    return out


def _default_images(root: Path, folder: Path) -> Path:
    for base in (root, folder.parent):
        if (base / IMAGE_FOLDER).is_dir():
            return base / IMAGE_FOLDER
    return root / IMAGE_FOLDER


def load_manifest(path) -> list[Expression]:
    """The expressions of a JSONL manifest (module docstring)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AttendsegError(f"file not found: {path}")
    out, seen = [], set()
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise AttendsegError(f"{where}: not JSON") from None
        if not isinstance(item, dict):
            raise AttendsegError(f"{where}: expected an object")
        missing = [k for k in ("image", "expression", "mask") if k not in item]
        if missing:
            raise AttendsegError(f"{where}: missing {', '.join(missing)}")
        if not isinstance(item["expression"], str) or not item["expression"].strip():
            raise AttendsegError(f"{where}: the expression must be a non-empty string")
        box = item.get("box")
        if box is not None and (not isinstance(box, list) or len(box) != 4):
            raise AttendsegError(f"{where}: box must be [x, y, w, h]")
        sample_id = str(item.get("id", number))
        if sample_id in seen:
            raise AttendsegError(f"{where}: id {sample_id!r} is used twice")
        seen.add(sample_id)
        image = Path(item["image"]).expanduser()
        image = image if image.is_absolute() else path.parent / image
        out.append(Expression(id=sample_id, image=image, image_id=str(image), text=item["expression"],
                              segmentation=item["mask"], box=box,
                              meta={k: v for k, v in item.items() if k not in ("image", "expression", "mask", "box", "id")}))
    if not out:
        raise AttendsegError(f"{path}: no expressions")
    return out


def group_by_image(expressions: list[Expression]) -> list[list[Expression]]:
    """Expressions grouped by image, groups in order of first appearance."""
    groups: dict[object, list[Expression]] = {}
    for e in expressions:
        groups.setdefault(e.image_id, []).append(e)
    return list(groups.values())
