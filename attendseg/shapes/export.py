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

**gcg** (GLaMM's GranD-f layout, :mod:`attendseg.evaluation.gcg`)::

    DIR/GranDf/annotations/val_test/{val,test}_gcg_coco_caption_gt.json
    DIR/GranDf/annotations/val_test/{val,test}_gcg_coco_mask_gt.json
    DIR/GranDf_HA_images/val_test/sa_<n>.jpg

**png** (the Panoptic Narrative Grounding layout, :mod:`attendseg.evaluation.png`)::

    DIR/annotations/png_coco_val2017.json, DIR/annotations/panoptic_val2017.json
    DIR/annotations/panoptic_segmentation/val2017/<image id, 12 digits>.png
    DIR/images/val2017/<image id, 12 digits>.jpg

Both draw every scene in the left-to-right order (the caption answers "list the objects from
left to right."); their images are JPEG (quality 100, no chroma subsampling) because both
benchmarks' readers name ``.jpg`` files.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from .. import rle, shapes
from ..errors import AttendsegError
from ..files import atomic_save_image, atomic_write_bytes, atomic_write_text

#: Held-out seed set per split (:func:`attendseg.shapes.heldout_seeds`); set 0 is ``eval shapes``'.
SEED_SETS = {"val": 10, "testA": 11, "testB": 12, "gcg/val": 20, "gcg/test": 21, "png/val2017": 30}
#: The RefCOCO export's splits (the other seed sets belong to the gcg and png exports).
REFCOCO_SPLITS = ("val", "testA", "testB")
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
    for split in REFCOCO_SPLITS:
        set_id = SEED_SETS[split]
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


def export_gcg(folder, n: int = 20, size: int = shapes.DEFAULT_SIZE) -> dict:
    """Write held-out shapes-world scenes in GranD-f's GCG layout under ``folder`` (see the module
    docstring).

    ``val`` and ``test`` hold ``n`` scenes each (held-out sets :data:`SEED_SETS` ``gcg/…``); every
    scene is drawn in the "left to right" order, so its caption answers the prompt
    ``"list the objects from left to right."``. Image ids are ``sa_1 … sa_2n`` (string ids whose
    sorted order is not numeric order, as GranD-f's). Images are JPEG (quality 100, no chroma
    subsampling). Each object is one grounded phrase (``"a red circle"``) and one mask.

    Returns:
        counts: ``{"images": {split: n}, "phrases": {split: …}}``.
    """
    from PIL import Image

    from ..evaluation.gcg import SPLITS

    out = Path(folder).expanduser()
    ann_dir = out / "GranDf" / "annotations" / "val_test"
    img_dir = out / "GranDf_HA_images" / "val_test"
    ann_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    number = 0
    counts = {"images": {}, "phrases": {}}
    for split in SPLITS:
        images, mask_anns, cap_anns = [], [], []
        for s in shapes.heldout_seeds(n, SEED_SETS[f"gcg/{split}"]):
            scene = shapes.make_scene(s, order="left", size=size)
            number += 1
            image_id = f"sa_{number}"
            h, w = scene.image.shape[:2]
            Image.fromarray(scene.image).save(img_dir / f"{image_id}.jpg", quality=100, subsampling=0)
            images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": h, "width": w})
            for obj, mask in zip(scene.objects, scene.masks):
                segmentation = rle.encode(mask)
                mask_anns.append({"id": len(mask_anns) + 1, "image_id": image_id, "category_id": 1,
                                  "segmentation": segmentation, "area": int(mask.sum()), "bbox": rle.to_bbox(segmentation),
                                  "iscrowd": 0})
            cap_anns.append({"id": len(cap_anns) + 1, "image_id": image_id, "caption": scene.caption,
                             "labels": [scene.caption[slice(*o.phrase_span)] for o in scene.objects],
                             "tokens_positive": [list(o.phrase_span) for o in scene.objects]})
        categories = [{"id": 1, "name": "object"}]
        (ann_dir / f"{split}_gcg_coco_mask_gt.json").write_text(json.dumps(
            {"images": images, "annotations": mask_anns, "categories": categories}))
        (ann_dir / f"{split}_gcg_coco_caption_gt.json").write_text(json.dumps(
            {"images": images, "annotations": cap_anns}))
        counts["images"][split], counts["phrases"][split] = len(images), len(mask_anns)
    return counts


#: The stuff category of the PNG export (the scene background).
STUFF_NAME = "background"


def export_png(folder, n: int = 20, size: int = shapes.DEFAULT_SIZE) -> dict:
    """Write held-out shapes-world scenes in the PNG layout (``val2017``) under ``folder``.

    Each scene (held-out set :data:`SEED_SETS` ``png/val2017``, "left to right" order) is a COCO image
    (``{id:012d}.jpg``, JPEG quality 100) with a panoptic PNG: one *thing* segment per object
    (category: its shape) and one *stuff* segment for the background. Its narrative is the
    caption followed by ``" on a background."``; the grounded utterances are the object phrases
    (singular) and ``"a background"`` (stuff); when exactly two objects share a shape, a plural
    utterance grounded to both is added before the full stop (``" with two circles"``).

    Returns:
        counts: ``{"images": {"val2017": n}, "phrases": {"val2017": …}}``.
    """
    from PIL import Image

    out = Path(folder).expanduser()
    split = "val2017"
    ann = out / "annotations"
    img_dir, pan_dir = out / "images" / split, ann / "panoptic_segmentation" / split
    for d in (img_dir, pan_dir):
        d.mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "name": s, "isthing": 1, "supercategory": "shape"} for k, s in enumerate(shapes.SHAPES)]
    stuff_id = len(categories) + 1
    categories.append({"id": stuff_id, "name": STUFF_NAME, "isthing": 0, "supercategory": "background"})
    cat_of = {c["name"]: c["id"] for c in categories}
    images, annotations, narratives = [], [], []
    next_segment = 1
    for number, s in enumerate(shapes.heldout_seeds(n, SEED_SETS["png/val2017"]), start=1):
        scene = shapes.make_scene(s, order="left", size=size)
        h, w = scene.image.shape[:2]
        name = f"{number:012d}"
        Image.fromarray(scene.image).save(img_dir / f"{name}.jpg", quality=100, subsampling=0)
        ids = np.zeros((h, w), np.int64)
        infos, object_ids = [], []
        background = ~scene.masks.any(axis=0)
        for obj, mask in list(zip(scene.objects, scene.masks)) + [(None, background)]:
            sid = next_segment
            next_segment += 1
            ids[mask] = sid
            cat = cat_of[STUFF_NAME] if obj is None else cat_of[obj.shape]
            infos.append({"id": sid, "category_id": cat, "iscrowd": 0, "area": int(mask.sum()),
                          "bbox": rle.mask_to_bbox(mask)})
            if obj is not None:
                object_ids.append(sid)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(pan_dir / f"{name}.png")
        images.append({"id": number, "file_name": f"{name}.jpg", "height": h, "width": w})
        annotations.append({"image_id": number, "file_name": f"{name}.png", "segments_info": infos})
        pieces, last = [], 0  # (text as in the narrative, segment ids, plural)
        caption = scene.caption[:-1]  # without the final full stop
        for obj, sid in zip(scene.objects, object_ids):
            a, b = obj.phrase_span
            if a > last:
                pieces.append((caption[last:a], [], False))
            pieces.append((caption[a:b], [sid], False))
            last = b
        pieces += [(caption[last:] + " on ", [], False), ("a background", [infos[-1]["id"]], False)]
        shared: dict[str, list[int]] = {}
        for obj, sid in zip(scene.objects, object_ids):
            shared.setdefault(obj.shape, []).append(sid)
        pairs = [(shape, sids) for shape, sids in shared.items() if len(sids) == 2]
        for k, (shape, sids) in enumerate(pairs):
            pieces += [(" and " if k else " with ", [], False), (f"two {shape}s", sids, True)]
        pieces.append((".", [], False))
        text = "".join(piece for piece, _, _ in pieces)
        segments = [_utterance(piece, sids, plural) for piece, sids, plural in pieces if piece.strip()]
        narratives.append({"image_id": str(number), "caption": text, "segments": segments})
    (ann / f"png_coco_{split}.json").write_text(json.dumps(narratives))
    (ann / f"panoptic_{split}.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    n_phrases = sum(len(u["segment_ids"]) > 0 for narrative in narratives for u in narrative["segments"])
    return {"images": {split: n}, "phrases": {split: n_phrases}}


def _utterance(text: str, segment_ids=(), plural: bool = False) -> dict:
    return {"utterance": text.strip(), "segment_ids": [str(i) for i in segment_ids],
            "noun": bool(segment_ids), "plural": plural}


#: Format name → exporter ``(folder, n, **options) -> counts``.
EXPORTERS = {"refcoco": export_refcoco, "gcg": export_gcg, "png": export_png}


def export(kind: str, folder, n: int = 100, **options) -> dict:
    """Write the shapes world in format ``kind`` (one of :data:`EXPORTERS`) under ``folder``."""
    if kind not in EXPORTERS:
        raise AttendsegError(f"unknown export format {kind!r}; choose one of {', '.join(EXPORTERS)}")
    return EXPORTERS[kind](folder, n, **options)
