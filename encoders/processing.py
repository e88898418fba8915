"""The DiffLMM processor: a standard ``LlavaProcessor`` with DiffLMM's image preprocessing.

Images are padded to a square with grey, resized to ``image_size`` (384 px for the paper) and
scaled to [-1, 1] (mean = std = 0.5); ``patch_size`` is ``image_size // grid`` so one ``<image>``
expands to ``grid²`` tokens (24 × 24 = 576 for the paper). The model itself resizes to CLIP's
input size and re-normalises to CLIP statistics for the CLIP branch.
"""

from __future__ import annotations

from .configuration_difflmm import DiffLMMVisionConfig

__all__ = ["VICUNA_V1_SYSTEM", "VICUNA_V1_TEMPLATE", "make_image_processor", "make_processor"]

#: LLaVA-1.5's ``vicuna_v1`` system prompt.
VICUNA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

#: LLaVA-1.5's ``vicuna_v1`` conversation format (what DiffLMM was trained with):
#: ``{system} USER: <image>\n{prompt} ASSISTANT: {answer}</s>USER: ... ASSISTANT:``.
#: A leading ``system`` message replaces the default system prompt.
VICUNA_V1_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] %}"
    "{% if first is string %}{% set system = first %}"
    "{% else %}{% set system = first | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') %}"
    "{% endif %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = '" + VICUNA_V1_SYSTEM.replace("'", "\\'") + "' %}"
    "{% set loop_messages = messages %}{% endif %}"
    "{{ system }} "
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% else %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def make_image_processor(vision_config: DiffLMMVisionConfig):
    """``LlavaImageProcessorPil``: grey pad to square → resize to ``image_size`` → [-1, 1]."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    size = int(vision_config.image_size)
    return LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def make_processor(tokenizer, vision_config: DiffLMMVisionConfig, chat_template: str | None = None):
    """A ``LlavaProcessor`` whose ``<image>`` expands to the DiffLMM token grid.

    Args:
        tokenizer: the language model's tokenizer; must know ``<image>``.
        vision_config: the model's :class:`DiffLMMVisionConfig` (image size and grid).
        chat_template: defaults to the tokenizer's own template, else :data:`VICUNA_V1_TEMPLATE`.
    """
    from transformers import LlavaProcessor

    from attendseg.errors import AttendsegError

    size, grid = int(vision_config.image_size), int(vision_config.feature_grid)
    if size % grid:
        raise AttendsegError(f"image size {size} is not a multiple of the feature grid {grid}")
    if chat_template is None:
        chat_template = getattr(tokenizer, "chat_template", None) or VICUNA_V1_TEMPLATE
    return LlavaProcessor(
        image_processor=make_image_processor(vision_config),
        tokenizer=tokenizer,
        patch_size=size // grid,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=chat_template,
    )
