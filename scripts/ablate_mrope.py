"""Which M-RoPE axis carries a shapes-world Qwen2-VL's object orders: an ablation.

Qwen2-VL gives each image token a (temporal, height, width) position in the language model
(multimodal RoPE). This script flattens one axis for the image tokens (every image token gets
the first row's height position, or the first column's width position; text positions are
untouched) and measures, with the one shapes evaluation (:mod:`attendseg.shapes.evaluation`), the
caption exact-match and point accuracy per prompt order on training-range tune scenes:

    python scripts/ablate_mrope.py attendseg/data/shapes-qwen2vl --n 300 [--world mixed]

If the width positions carry left/right, flattening them takes the horizontal orders to chance
and leaves the vertical ones; flattening the height positions does the reverse.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attendseg import shapes  # noqa: E402
from attendseg.attender import load  # noqa: E402
from attendseg.bundled import resolve_model  # noqa: E402
from attendseg.grounder import Settings, checkpoint_settings  # noqa: E402
from attendseg.shapes.evaluation import ShapesEvaluation, evaluation_scenes, run_evaluation  # noqa: E402

AXES = {"none": None, "height": 1, "width": 2}


def flatten_axis(model, axis: int | None) -> None:
    """Make every image token's position along ``axis`` (1 height, 2 width) that of the grid's
    first row / column (``None``: restore the model's own positions)."""
    inner = model.model
    original = type(inner).get_vision_position_ids
    if axis is None:
        inner.__dict__.pop("get_vision_position_ids", None)
        return

    def flattened(*args, **kwargs):
        positions = original(inner, *args, **kwargs)
        positions[axis] = positions[axis].min()
        return positions

    inner.get_vision_position_ids = flattened


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a Qwen2-VL shapes model folder or bundled name")
    p.add_argument("--n", type=int, default=300, help="tune scenes")
    p.add_argument("--world", choices=shapes.WORLDS, default="mixed")
    args = p.parse_args(argv)
    attender = load(args.model)
    if not hasattr(attender.model.model, "get_vision_position_ids"):
        raise SystemExit(f"{args.model} has no M-RoPE vision positions (not a Qwen2-VL family model)")
    settings = Settings(**checkpoint_settings(resolve_model(args.model)))
    scenes = evaluation_scenes(args.n, seeds="tune", world=args.world)
    table = {}
    for name, axis in AXES.items():
        flatten_axis(attender.model, axis)
        figures = run_evaluation(ShapesEvaluation(attender, settings, {}), scenes, label=f"flatten {name}")
        table[name] = {"caption_exact": figures["caption_exact"], "point_acc": figures["point_acc"],
                       "by_order": {k: {m: round(v[m], 3) for m in ("caption_exact", "point_acc")}
                                    for k, v in figures["by_order"].items()}}
    flatten_axis(attender.model, None)
    print(json.dumps(table, indent=1))
    print("\n| image-token positions | " + " | ".join(f"{o} exact" for o in shapes.ORDERS) + " | point acc |")
    print("|---|" + "---|" * (len(shapes.ORDERS) + 1))
    for name, row in table.items():
        cells = [f"{row['by_order'].get(o, {}).get('caption_exact', float('nan')):.2f}" for o in shapes.ORDERS]
        label = "intact" if name == "none" else f"{name} flattened"
        print(f"| {label} | " + " | ".join(cells) + f" | {row['point_acc']:.3f} |")


if __name__ == "__main__":
    main()
