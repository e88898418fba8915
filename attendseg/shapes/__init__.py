"""Shapes world: procedurally drawn scenes with captions and ground-truth instance masks.

This module is the scene world (drawing, masks, captions, seed ranges); the package around it
holds what is built on the world, apart from the library's core: :mod:`attendseg.shapes.evaluation`
(the one shapes evaluation), :mod:`attendseg.shapes.export` (scenes in benchmark layouts) and
:mod:`attendseg.shapes.demo` (``attendseg demo``). The models trained on it are bundled in
``attendseg/data/`` (:mod:`attendseg.bundled`; trained by ``scripts/train_shapes.py``).

A scene is 1–4 non-overlapping objects (:data:`SHAPES` × :data:`COLOURS`, colours unique within a
scene) of random size, position and rotation, shaded (a brightness gradient, pixel noise and a
darker rim) on a textured, muted background (stripes, checks,
smooth noise, dots or a gradient). The *prompt* asks for an object order; the caption lists the
objects in that order, so the caption is a deterministic function of image + prompt::

    prompt  "list the objects from left to right."
    caption "from left to right, a red circle, a blue star and a green square."

Orders (:data:`ORDERS`): left→right, right→left, top→bottom, bottom→top (by object centre) and
largest→smallest (by mask area). Scenes are drawn so the chosen order is unambiguous (centres at
least :data:`ORDER_MARGIN` × that axis's length apart; areas at least ×1.25 apart).

Conventions (as everywhere in attendseg, see :mod:`attendseg.views`):

* images: ``uint8 [H, W, 3]`` RGB. Square (``H == W == size``) by default, so a centre crop is the
  identity; with ``aspect`` (width / height, :data:`ASPECTS`) the shorter side stays ``size`` and
  the longer one is ``size × aspect`` (or ``size / aspect``): objects keep their pixel sizes;
* masks: ``bool [H, W]`` per object (``Scene.masks`` is ``bool [K, H, W]``, K objects in caption
  order); pixel ``(i, j)`` is row i, column j, covering ``[j, j+1) × [i, i+1)`` in ``(x, y)``;
  a mask is exactly the set of pixels painted with the object (objects never overlap);
* centres ``(x, y)`` in pixel coordinates; boxes ``(x0, y0, x1, y1)`` (exclusive ends);
* caption spans: ``(start, end)`` character offsets into ``Scene.caption``:
  ``caption[start:end]`` is the phrase ("a red circle"), its colour word or its shape word (the
  phrase's root, the word whose predicting row grounds it).

Aspect ratios: :func:`make_scene` draws the square world unless given ``aspect``; the *mixed*
world (:func:`scene_aspect`) gives each seed one of :data:`ASPECTS`, drawn from its own generator
``default_rng([seed, 2])``, so the scene of a seed at aspect 1:1 is the square world's scene.

Seeds (``numpy.random.default_rng(seed)``; a scene is a pure function of seed and options):

* training:  ``TRAIN_SEEDS  = range(0, 1_000_000_000)``
* held-out:  ``HELDOUT_SEEDS = range(1_000_000_000, 2_000_000_000)``; evaluation sets are
  :func:`heldout_seeds` ``(n, set_id)``; ``set_id=0`` is the standard test set, the demo uses
  :data:`DEMO_SEEDS` (inside the held-out range, disjoint from set 0).
* layer/normalisation choices are made on training-range seeds (``TUNE_SEEDS``), never on the
  held-out ones.

Articles: captions say "a orange star", as the bundled model was trained to write them (its
41-word vocabulary has no "an", and caption exact-match is scored against these captions).
Pictures for people go through :func:`readable`, which writes "an orange star".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "bar")

#: Colour name → nominal RGB (before shading).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (250, 145, 20),
    "yellow": (240, 225, 40),
    "green": (35, 175, 55),
    "blue": (40, 80, 230),
    "purple": (155, 50, 205),
    "white": (240, 240, 240),
}

#: Order name → (prompt, caption head). The caption is ``f"{head}, {list}."``.
ORDERS: dict[str, tuple[str, str]] = {
    "left": ("list the objects from left to right.", "from left to right"),
    "right": ("list the objects from right to left.", "from right to left"),
    "top": ("list the objects from top to bottom.", "from top to bottom"),
    "bottom": ("list the objects from bottom to top.", "from bottom to top"),
    "size": ("list the objects from largest to smallest.", "from largest to smallest"),
}

BACKGROUNDS: tuple[str, ...] = ("stripes", "checks", "noise", "dots", "gradient")

DEFAULT_SIZE = 64
ORDER_MARGIN = 0.07  # min centre gap along the order axis, as a fraction of that axis's length
SIZE_RATIO = 1.25  # min area ratio between consecutive objects for the "size" order
RADIUS_RANGE = (0.11, 0.2)  # object half-extent, as a fraction of the image's shorter side

#: Aspect ratios (width : height) of the mixed world, from tall (1:2) to wide (2:1).
ASPECTS: dict[str, float] = {"1:2": 1 / 2, "2:3": 2 / 3, "1:1": 1.0, "3:2": 3 / 2, "2:1": 2.0}
#: The worlds an evaluation can draw from: every scene square, or each seed's own aspect.
WORLDS: tuple[str, ...] = ("square", "mixed")

TRAIN_SEEDS = range(0, 1_000_000_000)
HELDOUT_SEEDS = range(1_000_000_000, 2_000_000_000)
TUNE_SEEDS = range(900_000_000, 900_010_000)  # training-range seeds kept for choosing settings
DEMO_SEEDS = tuple(range(1_999_999_000, 1_999_999_024))

#: Every word the prompts and captions use (for the tokenizer).
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        "user assistant list the objects from to left right top bottom largest smallest a and".split()
        + list(COLOURS)
        + list(SHAPES)
    )
)


def image_shape(size: int = DEFAULT_SIZE, aspect: float = 1.0) -> tuple[int, int]:
    """``(H, W)`` of a scene: the shorter side is ``size``, ``W / H ≈ aspect`` (rounded)."""
    if not 0.2 <= aspect <= 5:
        raise ValueError(f"aspect (width / height) must be in [0.2, 5], not {aspect}")
    if aspect >= 1:
        return size, int(round(size * aspect))
    return int(round(size / aspect)), size


def scene_aspect(seed: int, world: str = "mixed") -> str:
    """The aspect name (a key of :data:`ASPECTS`) of ``seed`` in ``world`` ("square": always
    "1:1"; "mixed": uniform over :data:`ASPECTS` from ``default_rng([seed, 2])``)."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; choose from {list(WORLDS)}")
    if world == "square":
        return "1:1"
    return list(ASPECTS)[np.random.default_rng([seed, 2]).integers(len(ASPECTS))]


def world_scene(seed: int, world: str = "square", *, size: int = DEFAULT_SIZE, **options) -> "Scene":
    """The scene of ``seed`` in ``world`` (:data:`WORLDS`): :func:`make_scene` at the seed's
    aspect; ``options`` go to :func:`make_scene` (``n_objects``, ``order``)."""
    return make_scene(seed, size=size, aspect=ASPECTS[scene_aspect(seed, world)], **options)


def heldout_seeds(n: int, set_id: int = 0) -> list[int]:
    """``n`` held-out seeds of evaluation set ``set_id`` (sets are disjoint, ≤ 1,000,000 each)."""
    if not 0 <= n <= 1_000_000:
        raise ValueError("n must be in [0, 1_000_000]")
    start = HELDOUT_SEEDS.start + set_id * 1_000_000
    if start + n > DEMO_SEEDS[0] or set_id < 0:
        raise ValueError(f"set_id {set_id} is outside the held-out range")
    return list(range(start, start + n))


@dataclass
class SceneObject:
    """One drawn object. Spans index ``Scene.caption``."""

    shape: str
    colour: str
    centre: tuple[float, float]  # (x, y) pixels
    radius: float  # half-extent in pixels
    angle: float  # rotation in degrees
    area: int  # mask pixels
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1), exclusive ends
    phrase_span: tuple[int, int] = (0, 0)  # "a red circle"
    colour_span: tuple[int, int] = (0, 0)  # "red"
    shape_span: tuple[int, int] = (0, 0)  # "circle" (the phrase root)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    """A drawn scene. ``objects[k]`` owns ``masks[k]``; both are in caption order."""

    seed: int
    image: np.ndarray  # uint8 [H, W, 3]
    background: np.ndarray  # uint8 [H, W, 3], the image before objects were painted
    masks: np.ndarray  # bool [K, H, W]
    objects: list[SceneObject]
    order: str
    prompt: str
    caption: str
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        """The shorter image side (the square world's ``size``)."""
        return min(self.image.shape[:2])

    @property
    def aspect(self) -> str:
        """``"W:H"`` reduced (``"2:1"`` is twice as wide as high; ``"1:1"`` square)."""
        from math import gcd

        h, w = self.image.shape[:2]
        g = gcd(h, w)
        return f"{w // g}:{h // g}"

    def object_at_span(self, start: int, end: int) -> int | None:
        """Index of the object whose phrase span overlaps ``[start, end)``, else ``None``."""
        for k, obj in enumerate(self.objects):
            s, e = obj.phrase_span
            if start < e and s < end:
                return k
        return None


# ------------------------------------------------------------------------------ shapes
def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership in the unit shape; ``(u, v)`` are rotated coordinates / radius (v down)."""
    if shape == "circle":
        return u * u + v * v <= 0.9
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape == "bar":  # a horizontal bar, 2.1 x 0.8 (before rotation)
        return (np.abs(u) <= 1.05) & (np.abs(v) <= 0.4)
    if shape == "triangle":  # apex up, equilateral, circumradius ~1.1
        out = np.ones_like(u, dtype=bool)
        for ang in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            out &= u * np.cos(ang) + v * np.sin(ang) <= 0.55
        return out
    if shape == "star":
        r = np.hypot(u, v)
        phi = np.arctan2(v, u) + np.pi / 2
        lim = 0.45 + 0.65 * ((np.cos(5 * phi) + 1) / 2) ** 1.5
        return r <= lim
    if shape == "cross":
        a, b = np.abs(u), np.abs(v)
        return ((a <= 0.34) & (b <= 1.0)) | ((b <= 0.34) & (a <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")


def _hw(size) -> tuple[int, int]:
    """``(H, W)`` from a side (square) or an ``(H, W)`` pair."""
    return (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))


def shape_mask(shape: str, size, centre, radius: float, angle: float = 0.0) -> np.ndarray:
    """``bool [H, W]``: pixels whose centre lies inside the shape; ``size`` is the side of a
    square image or its ``(H, W)``."""
    h, w = _hw(size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    dx, dy = xx - centre[0], yy - centre[1]
    t = np.deg2rad(angle)
    u = (np.cos(t) * dx + np.sin(t) * dy) / radius
    v = (-np.sin(t) * dx + np.cos(t) * dy) / radius
    return _inside(shape, u, v)


# ------------------------------------------------------------------------------ drawing
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise in [0, 1], ``[h, w]``; ``cells`` along the shorter
    side (square cells)."""
    ch, cw = (cells * h) // min(h, w), (cells * w) // min(h, w)
    g = rng.random((ch + 1, cw + 1))

    def axis(n, c):
        t = np.linspace(0, c, n, endpoint=False) + c / n / 2
        i = np.minimum(t.astype(int), c - 1)
        return i, t - i

    i, f = axis(h, ch)
    j, e = axis(w, cw)
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]
    return rows[:, j] * (1 - e)[None, :] + rows[:, j + 1] * e[None, :]


def _background(rng: np.random.Generator, h: int, width: int) -> tuple[np.ndarray, str]:
    size = min(h, width)
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    base = rng.uniform(50, 150)
    tint = rng.normal(0, 12, 3)
    c1 = np.clip(base + tint, 0, 255)
    c2 = np.clip(c1 + rng.choice([-1, 1]) * rng.uniform(12, 30) + rng.normal(0, 4, 3), 0, 255)
    yy, xx = np.mgrid[0:h, 0:width].astype(np.float64) + 0.5
    if kind == "stripes":
        t = np.deg2rad(rng.uniform(0, 180))
        period = rng.uniform(0.08, 0.25) * size
        w = ((np.cos(t) * xx + np.sin(t) * yy) / period) % 1.0 < 0.5
    elif kind == "checks":
        period = rng.uniform(0.08, 0.2) * size
        w = ((xx // period + yy // period) % 2).astype(bool)
    elif kind == "noise":
        w = _smooth_noise(rng, h, width, int(rng.integers(3, 9)))
    elif kind == "dots":
        period = rng.uniform(0.1, 0.2) * size
        r = rng.uniform(0.15, 0.3) * period
        w = np.hypot((xx % period) - period / 2, (yy % period) - period / 2) < r
    else:  # gradient
        t = np.deg2rad(rng.uniform(0, 360))
        w = (np.cos(t) * xx + np.sin(t) * yy) / size
        w = (w - w.min()) / (np.ptp(w) + 1e-9)
    w = np.asarray(w, dtype=np.float64)[..., None]
    img = c1 * (1 - w) + c2 * w + rng.normal(0, 4, (h, width, 1))
    return img, kind


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, rgb, centre, radius):
    """Paint a shaded, textured object into ``img`` (float [H, W, 3]) on ``mask`` only."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    t = rng.uniform(0, 2 * np.pi)
    g = ((xx - centre[0]) * np.cos(t) + (yy - centre[1]) * np.sin(t)) / radius  # ~[-1, 1]
    shade = 0.95 + rng.uniform(0.06, 0.14) * g  # brightness gradient
    colour = np.asarray(rgb, dtype=np.float64) * shade[..., None]
    colour += rng.normal(0, 5, (h, w, 3))
    rim = mask & ~(
        np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    )
    colour[rim] *= 0.8
    img[mask] = colour[mask]


def _order_key(order: str, centre, area):
    x, y = centre
    return {"left": x, "right": -x, "top": y, "bottom": -y, "size": -area}[order]


def _unambiguous(order: str, objs: list[dict], h: int, w: int) -> bool:
    if order == "size":
        areas = sorted(o["area"] for o in objs)
        return all(b >= SIZE_RATIO * a for a, b in zip(areas, areas[1:]))
    axis = 0 if order in ("left", "right") else 1
    vals = sorted(o["centre"][axis] for o in objs)
    return all(b - a >= ORDER_MARGIN * (w, h)[axis] for a, b in zip(vals, vals[1:]))


def make_scene(
    seed: int,
    *,
    size: int = DEFAULT_SIZE,
    aspect: float = 1.0,
    n_objects: int | None = None,
    order: str | None = None,
) -> Scene:
    """Draw the scene of ``seed`` (a pure function of its arguments).

    Args:
        seed: ``numpy.random.default_rng`` seed; see the module docstring for the training /
            held-out ranges.
        size: the image's shorter side in pixels (the side of a square scene).
        aspect: width / height (1: square; 2: ``H = size, W = 2 size``; 0.5: ``H = 2 size, W = size``).
        n_objects: 1–4; drawn uniformly when ``None``.
        order: one of :data:`ORDERS`; drawn uniformly when ``None``.

    Returns:
        A :class:`Scene` whose objects and masks are in caption order.
    """
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5)) if n_objects is None else int(n_objects)
    if not 1 <= n <= 4:
        raise ValueError("n_objects must be in 1..4")
    order = list(ORDERS)[rng.integers(len(ORDERS))] if order is None else order
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose from {list(ORDERS)}")
    h, w = image_shape(size, aspect)
    img, bg_kind = _background(rng, h, w)
    background = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    img = background.astype(np.float64)

    colours = rng.permutation(list(COLOURS))[:n]
    for _attempt in range(200):
        objs: list[dict] = []
        occupied = np.zeros((h, w), bool)
        for k in range(n):
            for _ in range(100):
                radius = rng.uniform(*RADIUS_RANGE) * size
                cx, cy = rng.uniform(radius + 1, np.array([w, h]) - radius - 1)
                shape = SHAPES[rng.integers(len(SHAPES))]
                angle = rng.uniform(-20, 20)
                m = shape_mask(shape, (h, w), (cx, cy), radius, angle)
                grown = m | np.roll(m, 1, 0) | np.roll(m, -1, 0) | np.roll(m, 1, 1) | np.roll(m, -1, 1)
                if m.sum() >= 12 and not (grown & occupied).any():
                    break
            else:
                break
            occupied |= m
            objs.append(dict(shape=shape, colour=str(colours[k]), centre=(cx, cy),
                             radius=radius, angle=angle, mask=m, area=int(m.sum())))
        if len(objs) == n and _unambiguous(order, objs, h, w):
            break
    else:  # pragma: no cover - vanishingly rare
        raise RuntimeError(f"could not place {n} objects for seed {seed}")

    objs.sort(key=lambda o: _order_key(order, o["centre"], o["area"]))
    for o in objs:
        _paint(rng, img, o["mask"], COLOURS[o["colour"]], o["centre"], o["radius"])
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    prompt, head = ORDERS[order]
    caption = head + ", "
    objects = []
    for k, o in enumerate(objs):
        if k:
            caption += " and " if k == n - 1 else ", "
        start = len(caption)
        caption += f"a {o['colour']} {o['shape']}"
        cs = start + 2
        ss = cs + len(o["colour"]) + 1
        ys, xs = np.nonzero(o["mask"])
        objects.append(
            SceneObject(
                shape=o["shape"], colour=o["colour"], centre=o["centre"], radius=o["radius"],
                angle=o["angle"], area=o["area"],
                box=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                phrase_span=(start, len(caption)), colour_span=(cs, cs + len(o["colour"])),
                shape_span=(ss, ss + len(o["shape"])),
            )
        )
    caption += "."
    masks = np.stack([o["mask"] for o in objs]) if objs else np.zeros((0, h, w), bool)
    return Scene(seed=int(seed), image=image, background=background, masks=masks,
                 objects=objects, order=order, prompt=prompt, caption=caption,
                 meta={"background": bg_kind})


_A_BEFORE_VOWEL = re.compile(r"\b([Aa])(?= [aeiouAEIOU])")


def readable(grounding):
    """A copy of a shapes-world :class:`~attendseg.results.Grounding` for display: "a orange" →
    "an orange" in its answer, each phrase's character span moved to match. Masks, points and
    scores are shared, not copied. Results on disk keep the model's own words."""
    inserts = [m.end() for m in _A_BEFORE_VOWEL.finditer(grounding.answer)]  # where an "n" goes
    if not inserts:
        return grounding
    answer = _A_BEFORE_VOWEL.sub(r"\1n", grounding.answer)

    def moved(i: int) -> int:
        return i + sum(q < i for q in inserts)

    phrases = [replace(p, span=(moved(p.span[0]), moved(p.span[1])), text=answer[moved(p.span[0]):moved(p.span[1])])
               for p in grounding.phrases]
    return replace(grounding, answer=answer, phrases=phrases)
