"""The attendseg adapter for DiffLMM: LLaVA's adapter with DiffLMM's loader.

DiffLMM keeps LLaVA-1.5's sequence layout (one ``<image>`` → a 24 × 24 grid, row-major) and its
processor pads to a square like the original LLaVA code, so everything but loading is
:class:`attendseg.adapters.llava.LlavaAdapter`'s. Registered on ``import attendseg.encoders``.
"""

from __future__ import annotations

from attendseg.adapters import register_adapter
from attendseg.adapters.llava import LlavaAdapter

from .checkpoint import is_difflmm_checkpoint, load_difflmm

__all__ = ["DiffLMMAdapter"]


@register_adapter
class DiffLMMAdapter(LlavaAdapter):
    family = "difflmm"

    @classmethod
    def matches(cls, config) -> bool:
        return is_difflmm_checkpoint(config)

    @classmethod
    def load(cls, path, dtype, device, **options):
        """``options``: :func:`attendseg.encoders.load_difflmm`'s ``base``, ``sd``, ``clip``, ...."""
        model, processor = load_difflmm(path, device=device, dtype=dtype, **options)
        return cls(model, processor)
