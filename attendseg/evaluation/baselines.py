"""Baselines for the benchmark commands: the untrained model and the random point.

:class:`RandomPointGrounder` is a :class:`~attendseg.grounder.Grounder` whose prompt point is a
uniformly random pixel instead of the attention map's peak, with a Gaussian bump around it as the
map (as ``eval refcoco``'s random point): same model, answer, phrases and refiner, so the gap to
the real grounder is what the attention adds. :func:`method_grounders` yields the model's
grounder and the requested baselines.
"""

from __future__ import annotations

import numpy as np

from ..grounder import Grounder


#: Width of the random-point heatmap: σ as a fraction of the image's long side.
RANDOM_SIGMA = 0.1


def random_point_map(height: int, width: int, rng: np.random.Generator, sigma: float = RANDOM_SIGMA):
    """A uniformly random point ``(x, y)`` and a Gaussian bump ``[H, W]`` float32 around it
    (σ = ``sigma`` × the long side): the map of a model whose attention peaked at a random place.
    Its argmax is the point's pixel; weight-free refiners (superpixel) get a sensible heatmap."""
    point = rng.uniform(0, 1, 2) * (width, height)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    s = sigma * max(width, height)
    bump = np.exp(-((xx - point[0]) ** 2 + (yy - point[1]) ** 2) / (2 * s**2)).astype(np.float32)
    return point, bump


class RandomPointGrounder(Grounder):
    """A grounder prompting the refiner at uniformly random pixels (seeded, reproducible): each
    phrase map is replaced by :func:`random_point_map`, so the prompt point is uniformly random and
    every other prompt option (points, instances, box) applies to that map."""

    def __init__(self, grounder: Grounder, seed: int = 0):
        super().__init__(grounder.attender, grounder.refiner, grounder.phrases, grounder.settings,
                         grounder.keep_heatmaps)
        self.rng = np.random.default_rng(seed)

    def _prompts(self, image_map: np.ndarray):
        return super()._prompts(random_point_map(*np.shape(image_map), self.rng)[1])


def method_grounders(model, *, untrained: bool = False, random_point: bool = False, device=None, dtype=None,
                     model_options: dict | None = None, seed: int = 0, **grounder_options):
    """Yield ``(name, grounder)``: ``"model"``, then the requested baselines.

    * ``"untrained"``: the same architecture and processor with random weights (written to a
      temporary folder, removed when the generator finishes; meant for small models such as
      the shapes-world ones), same refiner, phrases and settings.
    * ``"random_point"``: the model's grounder prompting at random pixels
      (:class:`RandomPointGrounder`).

    ``grounder_options`` go to :meth:`Grounder.from_pretrained <attendseg.grounder.Grounder.from_pretrained>`.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from ..attender import load
    from ..shapes.evaluation import untrained_copy

    grounder = Grounder.from_pretrained(model, device=device, dtype=dtype, model_options=model_options,
                                        **grounder_options)
    yield "model", grounder
    if untrained:
        tmp = Path(tempfile.mkdtemp(prefix="attendseg-untrained-"))
        try:
            attender = load(untrained_copy(model, tmp, seed=seed), device=device, dtype=dtype)
            yield "untrained", Grounder(attender, grounder.refiner, grounder.phrases, grounder.settings)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if random_point:
        yield "random_point", RandomPointGrounder(grounder, seed=seed)
