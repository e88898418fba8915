"""The attendseg adapter for DiffLMM: LLaVA's adapter with DiffLMM's loader.

DiffLMM keeps LLaVA-1.5's sequence layout (one ``<image>`` → a 24 × 24 grid, row-major) and its
processor pads to a square like the original LLaVA code, so everything but loading is
:class:`attendseg.adapters.llava.LlavaAdapter`'s.

Not registered on import (that would change the adapter list as a side effect of importing
``attendseg.encoders``): ``attendseg.adapters`` registers it with
``register_adapter(DiffLMMAdapter)``. Released-layout folders (``model_type: "llava_llama"``)
are not readable by ``AutoConfig``, so ``attendseg.load`` must ask
:func:`~attendseg.encoders.is_difflmm_checkpoint` before ``AutoConfig`` and route to
``DiffLMMAdapter.load(path, dtype, device, **options)``.
"""

from __future__ import annotations

from attendseg.adapters.llava import LlavaAdapter

from .checkpoint import is_difflmm_checkpoint, load_difflmm

__all__ = ["DiffLMMAdapter"]


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
