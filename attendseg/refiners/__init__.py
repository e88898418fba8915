"""Refiners: prompts on an image → one mask per prompt.

One protocol (:class:`Refiner`: ``set_image`` once, ``refine`` all prompts in one batch), one
module per refiner, and a string-keyed registry::

    from attendseg.refiners import make_refiner, map_prompt
    refiner = make_refiner("sam", model="facebook/sam-vit-base", choice="last")
    refiner.set_image(image)                       # [H, W, 3] uint8 RGB
    results = refiner.refine([map_prompt(heatmap)])  # list[MaskResult]

Built in:

* ``"sam"`` — :class:`~attendseg.refiners.sam.SamRefiner`: transformers ``SamModel`` with any
  SAM checkpoint (``facebook/sam-vit-huge`` for paper parity, ``facebook/sam-vit-base`` on CPU).
* ``"superpixel"`` — :class:`~attendseg.refiners.superpixel.SuperpixelRefiner`: weight-free,
  scikit-image superpixels grown from the peak, weighted by the heatmap.
* ``"threshold"`` — :class:`~attendseg.refiners.threshold.ThresholdRefiner`: the heatmap itself,
  thresholded.

Modules are imported on first use (``sam`` pulls in transformers). Register more with
:func:`register_refiner`.
"""

from __future__ import annotations

import importlib
from typing import Callable

from ..errors import AttendsegError
from .base import MaskResult, Prompt, Refiner, instance_prompts, map_prompt

__all__ = [
    "MaskResult",
    "Prompt",
    "Refiner",
    "available_refiners",
    "instance_prompts",
    "make_refiner",
    "map_prompt",
    "register_refiner",
]

#: name → a factory, or "module:attribute" of a built-in imported lazily.
_REGISTRY: dict[str, Callable[..., Refiner] | str] = {
    "sam": "attendseg.refiners.sam:SamRefiner",
    "superpixel": "attendseg.refiners.superpixel:SuperpixelRefiner",
    "threshold": "attendseg.refiners.threshold:ThresholdRefiner",
}


def register_refiner(name: str, factory: Callable[..., Refiner] | None = None):
    """Register ``factory`` (a class or function taking options, returning a :class:`Refiner`)
    under ``name``. Usable as a decorator: ``@register_refiner("mine")``."""

    def deco(f):
        _REGISTRY[name] = f
        return f

    return deco(factory) if factory is not None else deco


def available_refiners() -> list[str]:
    """Registered refiner names."""
    return sorted(_REGISTRY)


def make_refiner(name: str, **options) -> Refiner:
    """Build the refiner registered as ``name`` with its ``options`` (see each refiner's class).

    Raises:
        AttendsegError: unknown name.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise AttendsegError(
            f"unknown refiner {name!r}; available: {', '.join(available_refiners())}"
        ) from None
    if isinstance(factory, str):
        module, attr = factory.split(":")
        factory = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = factory
    return factory(**options)
