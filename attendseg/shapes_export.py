"""Shapes-world scenes written in the field's data layouts, so every benchmark command runs end to
end on data whose answers are known.

One exporter per format in :data:`EXPORTERS` (``attendseg shapes export FORMAT DIR``); each
writes held-out scenes (:func:`attendseg.shapes.heldout_seeds`, sets :data:`SEED_SETS`) in the
real layout, byte-compatible with the readers people use.

**refcoco** (the ``refer`` layout, :mod:`attendseg.evaluation.refer`)::

    DIR/refcoco/refs(unc).p            pickle (protocol 2) of a list of ref dicts
    DIR/refcoco/instances.json         COCO images / annotations / categories
    DIR/images/mscoco/images/train2014/COCO_train2014_<image id, 12 digits>.png

Splits (each from its own held-out seed set, ``n`` scenes each):

* ``val`` and ``testA``: every object, two sentences per ref: ``"a red circle"`` and
  ``"the red circle"``.
* ``testB`` (harder): the colour word left out: ``"a circle"`` / ``"the circle"``, for objects
  whose shape is unique in their scene (shapes repeat within a scene, colours never do; the
  expression still singles out one object, but the head noun's row no longer follows the colour
  word the model learnt to read first).

Annotations are the scenes' exact masks as COCO compressed RLE (``iscrowd`` 0): polygons traced
around 64-pixel shapes would not give back the same pixels. Category = the shape. Images are PNG
(lossless; COCO's are JPEG) under COCO-style names.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from . import rle, shapes
from .errors import AttendsegError
from .files import atomic_save_image, atomic_write_bytes, atomic_write_text

#: Held-out seed set per split (:func:`attendseg.shapes.heldout_seeds`); set 0 is ``eval shapes``'.
SEED_SETS = {"val": 10, "testA": 11, "testB": 12}
IMAGE_FOLDER = Path("images/mscoco/images/train2014")


def _sentences(obj: shapes.SceneObject, hard: bool) -> list[str]:
    name = obj.shape if hard else f"{obj.colour} {obj.shape}"
    return [f"a {name}", f"the {name}"]


def export_refcoco(folder, n: int = 100, dataset: str = "refcoco", size: int = shapes.DEFAULT_SIZE) -> dict:
    """Write ``n`` held-out scenes per split in the refer layout (module docstring).

    Returns:
        counts: ``{"images": {split: n}, "refs": {split: …}, "expressions": {split: …}}``.
    """
    from PIL import Image

    if n < 1:
        raise AttendsegError("the export needs at least one scene per split")
    folder = Path(folder).expanduser()
    data_dir, image_dir = folder / dataset, folder / IMAGE_FOLDER
    data_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(shapes.SHAPES)]
    category = {c["name"]: c["id"] for c in categories}
    images, annotations, refs = [], [], []
    counts = {"images": {}, "refs": {}, "expressions": {}}
    sent_id = 0
    for split, set_id in SEED_SETS.items():
        hard = split == "testB"
        n_refs = n_sent = 0
        for seed in shapes.heldout_seeds(n, set_id):
            scene = shapes.make_scene(seed, size=size)
            image_id = len(images) + 1
            file_name = f"COCO_train2014_{image_id:012d}.png"
            atomic_save_image(Image.fromarray(scene.image), image_dir / file_name)
            images.append({"id": image_id, "file_name": file_name, "height": size, "width": size, "seed": seed})
            shape_counts = {}
            for obj in scene.objects:
                shape_counts[obj.shape] = shape_counts.get(obj.shape, 0) + 1
            for obj, mask in zip(scene.objects, scene.masks):
                ann_id = len(annotations) + 1
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": category[obj.shape],
                                    "segmentation": rle.encode(mask), "area": int(mask.sum()),
                                    "bbox": rle.mask_to_bbox(mask), "iscrowd": 0})
                if hard and shape_counts[obj.shape] > 1:
                    continue
                sentences = []
                for text in _sentences(obj, hard):
                    sentences.append({"tokens": text.split(), "raw": text, "sent": text, "sent_id": sent_id})
                    sent_id += 1
                refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": image_id, "split": split,
                             "category_id": category[obj.shape], "sentences": sentences,
                             "sent_ids": [s["sent_id"] for s in sentences],
                             "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.png"})
                n_refs += 1
                n_sent += len(sentences)
        counts["images"][split], counts["refs"][split], counts["expressions"][split] = n, n_refs, n_sent
    atomic_write_text(data_dir / "instances.json", json.dumps(
        {"info": {"description": "attendseg shapes world, refer layout"}, "images": images,
         "annotations": annotations, "categories": categories}))
    atomic_write_bytes(data_dir / "refs(unc).p", pickle.dumps(refs, protocol=2))
    return counts


#: Format name → exporter ``(folder, n, **options) -> counts``.
EXPORTERS = {"refcoco": export_refcoco}


def export(kind: str, folder, n: int = 100, **options) -> dict:
    """Write the shapes world in format ``kind`` (one of :data:`EXPORTERS`) under ``folder``."""
    if kind not in EXPORTERS:
        raise AttendsegError(f"unknown export format {kind!r}; choose one of {', '.join(EXPORTERS)}")
    return EXPORTERS[kind](folder, n, **options)
