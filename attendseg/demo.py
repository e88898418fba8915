"""The bundled shapes-world demo model and the ``attendseg demo`` run.

The demo grounds a fixed set of held-out scenes (:data:`attendseg.shapes.DEMO_SEEDS`) with the
bundled model, and writes per-scene overlays, a contact sheet and a metrics summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import AttendsegError

BUNDLED_MODEL = Path(__file__).parent / "data" / "shapes-llava"
#: Overlays of the 64 px scenes are drawn at this magnification.
ZOOM = 4


def bundled_model() -> Path:
    """Folder of the bundled demo model (a LLaVA trained on shapes-world captions only)."""
    if not (BUNDLED_MODEL / "config.json").exists():
        raise AttendsegError(f"the bundled demo model is missing from {BUNDLED_MODEL}; pass --model")
    return BUNDLED_MODEL


def run_demo(out: Path, model=None, refiner: str = "superpixel", progress: bool = True) -> dict:
    """Ground the demo scenes; write ``scene_*.png`` overlays, ``contact_sheet.png`` and
    ``metrics.json`` (with each scene's JSON result) under ``out``. Returns the metrics: caption
    exact-match, point accuracy on the model's answers and with the true captions teacher-forced,
    and the mean IoU of the masks of named objects."""
    from . import shapes, viz
    from .batch import atomic_save_image
    from .grounder import Grounder
    from .metrics import mask_iou
    from .shapes_eval import SHAPE_PHRASES, named_object, point_hits

    model = model or bundled_model()
    grounder = Grounder.from_pretrained(model, refiner=refiner, phrases=SHAPE_PHRASES)
    settings = grounder.settings
    scenes = [shapes.make_scene(seed) for seed in shapes.DEMO_SEEDS]
    images, prompts = [s.image for s in scenes], [s.prompt for s in scenes]
    capture = dict(layers=settings.layers, heads=settings.heads)
    answers = grounder.attender.attend(images, prompts, max_new_tokens=48, progress=progress, **capture)
    forced = grounder.attender.attend_text(images, prompts, [s.caption for s in scenes], **capture)
    out.mkdir(parents=True, exist_ok=True)
    sheet, exact, hits, hits_tf, objects, ious = [], 0, 0, 0, 0, []
    for scene, trace, tf in zip(scenes, answers, forced):
        grounding = grounder.ground_trace(trace, scene.image)
        grounding.meta["seed"] = scene.seed
        grounding.save_json(out / f"scene_{scene.seed}.json")
        exact += trace.text.strip() == scene.caption
        objects += len(scene.objects)
        hits += point_hits(trace, scene, settings)
        hits_tf += point_hits(tf, scene, settings)
        for phrase in grounding.phrases:
            k = named_object(grounding.answer, phrase, scene)
            if k is not None:
                ious.append(mask_iou(phrase.mask, scene.masks[k]))
        picture = viz.overlay(*viz.zoom(scene.image, grounding, ZOOM))
        atomic_save_image(picture, out / f"scene_{scene.seed}.png")
        sheet.append(picture)
    metrics = {
        "model": str(model), "refiner": refiner, "scenes": len(scenes), "objects": objects,
        "caption_exact": exact / len(scenes), "point_accuracy": hits / max(objects, 1),
        "point_accuracy_true_caption": hits_tf / max(objects, 1),
        "mean_iou_of_named_objects": float(np.mean(ious)) if ious else 0.0,
    }
    atomic_save_image(viz.contact_sheet(sheet, ncols=6), out / "contact_sheet.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
