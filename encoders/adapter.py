"""The attendseg adapter for DiffLMM: LLaVA's adapter with DiffLMM's loader.

DiffLMM keeps LLaVA-1.5's sequence layout (one ``<image>`` → a 24 × 24 grid, row-major) and its
processor pads to a square like the original LLaVA code, so everything but loading is
:class:`attendseg.adapters.llava.LlavaAdapter`'s.

Registered, like every built-in family, when ``attendseg.adapters`` looks up its first adapter:
under ``model_type`` ``"difflmm"`` (folders saved by :class:`DiffLMMForConditionalGeneration`)
and ``"llava_llama"`` (the authors' released layout, which ``AutoConfig`` cannot read).
"""

from __future__ import annotations

from attendseg.adapters import register_adapter
from attendseg.adapters.llava import LlavaAdapter
from attendseg.errors import AttendsegError

from .checkpoint import is_difflmm_checkpoint, load_difflmm

__all__ = ["DiffLMMAdapter"]


@register_adapter
class DiffLMMAdapter(LlavaAdapter):
    family = "difflmm"
    model_types = ("difflmm", "llava_llama")
    model_class = "DiffLMMForConditionalGeneration"
    hub_ids = ("Shengcao1006/difflmm-llava-v1.5-7b-lora",)
    layout = ("one square grid (24 × 24 at 384 px, SD-1.5 UNet up-block features), pad-to-square; "
              "the released LoRA needs --base lmsys/vicuna-7b-v1.5")

    @classmethod
    def load(cls, path, dtype, device, **options):
        """``options``: :func:`attendseg.encoders.load_difflmm`'s ``base``, ``sd``, ``clip``, ...."""
        if not is_difflmm_checkpoint(path):
            raise AttendsegError(f"{path} is an original-format LLaVA checkpoint (model_type 'llava_llama') but "
                                 f"not DiffLMM; use its transformers (llava-hf) conversion")
        model, processor = load_difflmm(path, device=device, dtype=dtype, **options)
        return cls(model, processor)
