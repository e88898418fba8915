"""Visual encoders that are not in transformers: DiffLMM (Stable Diffusion UNet features + CLIP).

Importing this package registers DiffLMM with the transformers Auto classes (``AutoConfig``
``"difflmm"`` / ``"difflmm_vision"``, ``AutoModel``, ``AutoModelForImageTextToText``,
``AutoProcessor``), so a folder saved by :class:`DiffLMMForConditionalGeneration` loads with
``AutoModelForImageTextToText.from_pretrained`` once ``attendseg.encoders`` is imported.

```python
from attendseg.encoders import load_difflmm

model, processor = load_difflmm("Shengcao1006/difflmm-llava-v1.5-7b-lora", base="lmsys/vicuna-7b-v1.5")
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
inputs = processor(images=image, text=processor.apply_chat_template(messages, add_generation_prompt=True),
                   return_tensors="pt").to(model.device)
answer = model.generate(**inputs, max_new_tokens=64)       # exactly LLaVA's generate
```

Public API:

- :func:`load_difflmm` ``(path, base=None, sd=None, clip=None, ...) -> (model, processor)``: the
  authors' released layout (LoRA + ``non_lora_trainables.bin`` on Vicuna, SD-1.5, CLIP) or a
  saved DiffLMM folder; :func:`is_difflmm_checkpoint` tells whether a path/config is one.
- :class:`DiffLMMForConditionalGeneration` / :class:`DiffLMMConfig` / :class:`DiffLMMVisionConfig`:
  the transformers model (a ``LlavaForConditionalGeneration`` with the diffusion tower).
- :class:`DiffusionVisionTower`, :class:`SDCLIPBlock`, :func:`unet_up_block_features`: the
  encoder pieces (early-stopping UNet features at any up-block(s), timestep, ensemble size).
- :func:`make_processor`: the ``LlavaProcessor`` (grey pad, 384 px, [-1, 1], 24 × 24 tokens).
- :class:`DiffLMMAdapter`: the attendseg adapter (LLaVA's, with :func:`load_difflmm`), registered
  under ``model_type`` ``difflmm`` and ``llava_llama`` like every built-in family.
- :mod:`attendseg.encoders.tiny`: tiny random models and release-layout writers for tests.
"""

from .checkpoint import is_difflmm_checkpoint, load_difflmm, map_non_lora_trainables, merge_lora
from .configuration_difflmm import DiffLMMConfig, DiffLMMVisionConfig
from .modeling_difflmm import (
    DiffLMMForConditionalGeneration,
    DiffLMMModel,
    DiffusionVisionTower,
    SDCLIPBlock,
)
from .processing import VICUNA_V1_TEMPLATE, make_processor
from .unet_features import unet_up_block_features


def _register() -> None:
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForImageTextToText,
        AutoProcessor,
        LlavaProcessor,
    )

    AutoConfig.register(DiffLMMVisionConfig.model_type, DiffLMMVisionConfig, exist_ok=True)
    AutoConfig.register(DiffLMMConfig.model_type, DiffLMMConfig, exist_ok=True)
    AutoModel.register(DiffLMMConfig, DiffLMMModel, exist_ok=True)
    AutoModelForImageTextToText.register(DiffLMMConfig, DiffLMMForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(DiffLMMConfig, LlavaProcessor, exist_ok=True)


_register()

from .adapter import DiffLMMAdapter  # noqa: E402  (registers itself with attendseg.adapters)

__all__ = [
    "DiffLMMAdapter",
    "DiffLMMConfig",
    "DiffLMMForConditionalGeneration",
    "DiffLMMModel",
    "DiffLMMVisionConfig",
    "DiffusionVisionTower",
    "SDCLIPBlock",
    "VICUNA_V1_TEMPLATE",
    "is_difflmm_checkpoint",
    "load_difflmm",
    "make_processor",
    "map_non_lora_trainables",
    "merge_lora",
    "unet_up_block_features",
]
