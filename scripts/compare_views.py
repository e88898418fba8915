"""How the base-view and tile-view maps of the same token relate, for a multi-view model.

For each generated token of each photo: the token's map through the base view(s) alone and
through the tile view(s) alone, both in the original image frame (:func:`attendseg.maps.to_image`,
no normalisation), then

* Pearson r between the two image maps (pixels), against a null: base of token t vs tiles of
  another token t' of the same trace;
* the distance between their argmax points, in % of the image diagonal;
* the attention mass on base vs tile cells, and per cell (density ratio).

Usage::

    python scripts/compare_views.py --model FOLDER_OR_HUB_ID [--tokens 24]

Prints one line per photo and the means. It does not say which view grounds better: that needs
a trained model and labelled data (``attendseg eval``).
"""

from __future__ import annotations

import argparse

import numpy as np


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float((a @ b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main() -> None:
    from PIL import Image
    from skimage import data

    import attendseg
    from attendseg.maps import select_views, to_image, view_cells

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    attender = attendseg.load(args.model)
    rows = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(data, name)())
        trace = attender.attend(image, "describe the image", max_new_tokens=args.tokens,
                                min_new_tokens=args.tokens)
        base, tiles = select_views(trace.views, "base"), select_views(trace.views, "tiles")
        maps = trace.token_maps()
        diagonal = float(np.hypot(*trace.image_size))
        same, null, dist = [], [], []
        for t, m in enumerate(maps):
            b, s = to_image(m, base, trace.image_size), to_image(m, tiles, trace.image_size)
            same.append(pearson(b, s))
            other = to_image(maps[(t + 1) % len(maps)], tiles, trace.image_size)
            null.append(pearson(b, other))
            pb, ps = np.unravel_index(b.argmax(), b.shape), np.unravel_index(s.argmax(), s.shape)
            dist.append(100 * float(np.hypot(pb[0] - ps[0], pb[1] - ps[1])) / diagonal)
        cb, ct = view_cells(base), view_cells(tiles)
        mass_b, mass_t = float(maps[:, cb].sum(1).mean()), float(maps[:, ct].sum(1).mean())
        rows.append((np.mean(same), np.mean(null), np.mean(dist), mass_b, mass_t,
                     (mass_b / len(cb)) / (mass_t / len(ct))))
        print(f"{name:10s} tokens {len(maps):3d}  r(base, tiles) same token {rows[-1][0]:+.3f}  other token "
              f"{rows[-1][1]:+.3f}  argmax distance {rows[-1][2]:5.1f}% of diagonal  mass base {mass_b:.4f} "
              f"tiles {mass_t:.4f}  per-cell base/tiles {rows[-1][5]:.2f}")
    mean = np.mean(rows, 0)
    print(f"{'mean':10s}             r(base, tiles) same token {mean[0]:+.3f}  other token {mean[1]:+.3f}  "
          f"argmax distance {mean[2]:5.1f}% of diagonal  mass base {mean[3]:.4f} tiles {mean[4]:.4f}  "
          f"per-cell base/tiles {mean[5]:.2f}")


if __name__ == "__main__":
    main()
