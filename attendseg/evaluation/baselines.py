"""Chance baselines for the benchmark commands.

:class:`RandomPointGrounder` is a :class:`~attendseg.grounder.Grounder` whose prompt point is a
uniformly random pixel instead of the attention map's peak: same model, answer, phrases and
refiner, so the gap to the real grounder is what the attention adds.
"""

from __future__ import annotations

import numpy as np

from ..grounder import Grounder


class RandomPointGrounder(Grounder):
    """A grounder prompting the refiner at uniformly random pixels (seeded, reproducible).

    The random "map" is uniform noise of the image's size; its peak (the prompt) is then a
    uniformly random pixel, and every other prompt option (points, instances, box) applies to it.
    """

    def __init__(self, grounder: Grounder, seed: int = 0):
        super().__init__(grounder.attender, grounder.refiner, grounder.phrases, grounder.settings,
                         grounder.keep_heatmaps)
        self.rng = np.random.default_rng(seed)

    def _prompts(self, image_map: np.ndarray):
        return super()._prompts(self.rng.random(np.shape(image_map)).astype(np.float32))


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
    from ..shapes_eval import untrained_copy

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
