"""The bundled shapes-world demo model and the ``attendseg demo`` run.

The demo grounds a fixed set of held-out scenes (:data:`attendseg.shapes.DEMO_SEEDS`, drawn in
the square or the mixed-aspect world) with a bundled model through the one shapes evaluation
(:mod:`attendseg.shapes.evaluation`), and writes per-scene overlays, a contact sheet and its figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..bundled import resolve_model
#: Overlays of the 64 px scenes are drawn at this magnification.
ZOOM = 4


def run_demo(out: Path, model=None, refiner: str = "superpixel", world: str | None = None,
             progress: bool = True) -> dict:
    """Ground the demo scenes of ``world`` ("square" or "mixed"; default: the world the model
    was trained in, :func:`attendseg.shapes.evaluation.trained_world`); write ``scene_*.png`` overlays,
    ``contact_sheet.png`` and ``metrics.json`` (with each scene's JSON result) under ``out``.

    Returns:
        :meth:`attendseg.shapes.evaluation.ShapesEvaluation.figures` (caption exact-match, point
        accuracy on the model's answers and with the true captions teacher-forced, the
        refiner's GCG mIoU and recall, splits by order, object count and aspect) plus ``model``,
        ``refiner`` and ``world``.
    """
    from .. import shapes, viz
    from ..attender import load
    from ..files import atomic_save_image, atomic_write_text
    from ..grounder import Settings, checkpoint_settings
    from ..refiners import make_refiner
    from .evaluation import ShapesEvaluation, run_evaluation, trained_world

    model = resolve_model(model)
    world = world or trained_world(model)
    if world not in shapes.WORLDS:
        from ..errors import AttendsegError

        raise AttendsegError(f"unknown world {world!r}; choose from {', '.join(shapes.WORLDS)}")
    evaluation = ShapesEvaluation(load(model), Settings(**checkpoint_settings(model)), {refiner: make_refiner(refiner)})
    scenes = [shapes.world_scene(seed, world) for seed in shapes.DEMO_SEEDS]
    out.mkdir(parents=True, exist_ok=True)
    sheet = []

    def draw(result) -> None:
        grounding = result.groundings[refiner]
        grounding.meta["seed"] = result.scene.seed
        grounding.save_json(out / f"scene_{result.scene.seed}.json")
        picture = viz.overlay(*viz.zoom(result.scene.image, shapes.readable(grounding), ZOOM))
        atomic_save_image(picture, out / f"scene_{result.scene.seed}.png")
        sheet.append(picture)

    figures = run_evaluation(evaluation, scenes, progress=progress, label="demo", on_result=draw)
    metrics = {"model": str(model), "refiner": refiner, "world": world, **figures}
    atomic_save_image(viz.contact_sheet(sheet, ncols=6), out / "contact_sheet.png")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    return metrics
