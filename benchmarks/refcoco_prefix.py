"""Prefix reuse for referring expressions: image + prompt encoded once vs recomputed per text.

Teacher-forces ``--per-image`` expressions on each of ``--images`` held-out shapes scenes three
ways, maps only (the part that prefix reuse changes), the ways interleaved per image:

* ``one-by-one``: ``attend_text(image, prompt, text)`` per expression (recompute everything);
* ``batched``: one ``attend_text([image] * k, prompt, texts)`` call (recompute, batched);
* ``prefix``: ``attend_texts(image, prompt, texts)`` (image + prompt once, texts from its cache).

It checks that the three give the same maps (max |Δ|), then runs ``eval refcoco``'s per-image
step with a SAM refiner (a tiny random SAM built from a config: its image encoder is what is
counted) and counts SAM image embeddings against images and expressions. Usage::

    python benchmarks/refcoco_prefix.py                       # the bundled shapes model, CPU
    python benchmarks/refcoco_prefix.py --model DIR --device cuda
    python benchmarks/refcoco_prefix.py --random-llava   # a random LLaVA with 576 image tokens
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time

import torch


def expressions(scene, k: int) -> list[str]:
    names = [f"a {o.colour} {o.shape}" for o in scene.objects] + [f"the {o.colour} {o.shape}" for o in scene.objects]
    names += [f"a {o.shape}" for o in scene.objects] + [f"the {o.shape}" for o in scene.objects]
    return (names * k)[:k]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or hub id (default: the bundled shapes model)")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--per-image", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--random-llava", action="store_true",
                        help="a random LLaVA-1.5-shaped model (336 px, patch 14: 24 × 24 = 576 image tokens; "
                             "CLIP 4 × 128, Llama 8 × 512) instead of the bundled one")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import attendseg
    from attendseg import shapes
    from attendseg.bundled import bundled_model

    model = args.model or str(bundled_model())
    if args.random_llava:
        from attendseg.tiny import build_llava

        built = tempfile.mkdtemp(prefix="attendseg-bench-")
        model = str(build_llava(built, shapes.VOCABULARY, image_size=336,
                                patch_size=14, vision_hidden=128, vision_layers=4, vision_heads=4, text_hidden=512,
                                text_layers=8, text_heads=8, seed=0))
    attender = attendseg.load(model, device=args.device)
    scenes = [shapes.make_scene(s) for s in shapes.heldout_seeds(args.images, 13)]
    prompt = "list the objects from left to right."
    texts = [expressions(s, args.per_image) for s in scenes]
    attender.attend_texts(scenes[0].image, prompt, texts[0])  # warm-up
    attender.attend_text([scenes[0].image] * len(texts[0]), prompt, texts[0])

    ways = {
        "one-by-one": lambda s, t: [attender.attend_text(s.image, prompt, x) for x in t],
        "batched": lambda s, t: attender.attend_text([s.image] * len(t), prompt, t),
        "prefix": lambda s, t: attender.attend_texts(s.image, prompt, t),
    }
    seconds = {name: [] for name in ways}
    worst = 0.0
    for scene, t in zip(scenes, texts):
        maps = {}
        for name, way in ways.items():
            started = time.perf_counter()
            traces = way(scene, t)
            seconds[name].append(time.perf_counter() - started)
            maps[name] = [tr.maps for tr in traces]
        for name in ("batched", "prefix"):
            worst = max(worst, max(float((a - b).abs().max()) for a, b in zip(maps["one-by-one"], maps[name])))
    total = {name: sum(v) for name, v in seconds.items()}
    n_expr = args.images * args.per_image
    print(f"model {model} ({attender.adapter.family}), device {attender.model.device}, {platform.machine()} "
          f"{args.threads} thread(s); {args.images} images × {args.per_image} expressions; "
          f"image tokens {attender.attend_text(scenes[0].image, prompt, 'a').n_image_tokens}")
    print("| way | total s | ms / expression | median ms / image | speed-up vs one-by-one | vs batched |")
    print("|---|---|---|---|---|---|")
    for name in ways:
        print(f"| {name} | {total[name]:.2f} | {1000 * total[name] / n_expr:.1f} | "
              f"{1000 * statistics.median(seconds[name]):.1f} | {total['one-by-one'] / total[name]:.2f}× | "
              f"{total['batched'] / total[name]:.2f}× |")
    print(f"max |Δ map| vs one-by-one: {worst:.2e}")

    # SAM image embeddings: once per image, not per expression
    from attendseg.evaluation import refcoco
    from attendseg.evaluation.refer import Expression
    from attendseg.grounder import Grounder
    from attendseg.refiners.sam import SamRefiner
    from attendseg.tiny import build_sam

    with tempfile.TemporaryDirectory() as folder:
        import numpy as np
        from PIL import Image

        from attendseg import rle

        sam = SamRefiner(str(build_sam(folder + "/sam")))
        calls = {"n": 0}
        embed = sam.model.get_image_embeddings

        def counted(*a, **k):
            calls["n"] += 1
            return embed(*a, **k)

        sam.model.get_image_embeddings = counted
        grounder = Grounder.from_pretrained(attender, refiner="superpixel", phrases="vocab:" + ",".join(shapes.SHAPES))
        grounder.refiner = sam
        method = refcoco.ReferringGrounding(grounder, prompt)
        n = 0
        for i, (scene, t) in enumerate(zip(scenes, texts)):
            path = f"{folder}/{i}.png"
            Image.fromarray(scene.image).save(path)
            group = [Expression(id=f"{i}/{j}", image=path, image_id=i, text=x, segmentation=rle.encode(scene.masks[0]))
                     for j, x in enumerate(t)]
            n += len(refcoco.process_image(method, group))
        print(f"SAM image embeddings: {calls['n']} for {len(scenes)} images and {n} expressions")
    if args.random_llava:
        shutil.rmtree(built, ignore_errors=True)


if __name__ == "__main__":
    main()
