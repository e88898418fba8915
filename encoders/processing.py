"""The DiffLMM processor: ``LlavaProcessor`` with DiffLMM's image preprocessing and the original
LLaVA code's prompt tokenization.

Images are padded to a square with grey, resized to ``image_size`` (384 px for the paper) and
scaled to [-1, 1] (mean = std = 0.5); ``patch_size`` is ``image_size // grid`` so one ``<image>``
expands to ``grid²`` tokens (24 × 24 = 576 for the paper). The model itself resizes to CLIP's
input size and re-normalises to CLIP statistics for the CLIP branch.

Prompt ids follow the rule DiffLMM was trained with (LLaVA's ``tokenizer_image_token``): the text
is split at ``<image>``, each chunk is tokenized on its own (the tokenizer adds its BOS to each),
the first chunk keeps its BOS, later chunks lose it, and the image tokens go between the chunks.
Tokenizing the whole string with ``<image>`` as an added token differs for a SentencePiece Llama
tokenizer: the chunk after an image starts a new text, so its dummy-prefix piece ``▁`` (id 29871
in Vicuna, before the ``\n`` the chat format puts after ``<image>``) is kept, as in training.
Known remaining differences from the original's slow SentencePiece tokenizer, in text the DiffLMM
chat format never makes: a chunk that starts with a space gets one ``▁`` where SentencePiece gives
two; and with ``legacy`` absent from the tokenizer config (transformers 5 reads it as false, the
slow tokenizer read it as true), text right after a special token written inside a chunk (a
literal ``</s>``) loses its ``▁``.
"""

from __future__ import annotations

from .configuration_difflmm import DiffLMMVisionConfig

import numpy as np
from transformers import LlavaProcessor

__all__ = [
    "DiffLMMProcessor",
    "VICUNA_V1_SYSTEM",
    "VICUNA_V1_TEMPLATE",
    "llava_prompt_ids",
    "make_image_processor",
    "make_processor",
]

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


def llava_prompt_ids(tokenizer, text: str, image_token: str = "<image>", image_ids: list[int] | None = None) -> list[int]:
    """Token ids of ``text`` by LLaVA's rule (``tokenizer_image_token``): chunks around
    ``image_token`` tokenized separately, BOS kept only at the start.

    Args:
        tokenizer: the base LLM's tokenizer (called as ``tokenizer(chunk)``, so it adds its
            special tokens the way the original code's call did).
        text: the prompt, with ``image_token`` where each image goes.
        image_ids: the ids that replace each ``image_token`` (default: the token's own id once;
            the original inserts -200, expanded to the image's features in the model).

    Returns:
        ``[S]`` ids, a plain list.
    """
    if image_ids is None:
        image_ids = [tokenizer.convert_tokens_to_ids(image_token)]
    chunks = [tokenizer(chunk)["input_ids"] for chunk in text.split(image_token)]
    bos = tokenizer.bos_token_id
    keep_bos = bool(chunks[0]) and bos is not None and chunks[0][0] == bos
    ids = [bos] if keep_bos else []
    for i, chunk in enumerate(chunks):
        if i:
            ids.extend(image_ids)
        ids.extend(chunk[1:] if keep_bos else chunk)
    return ids


class DiffLMMProcessor(LlavaProcessor):
    """``LlavaProcessor`` whose ``input_ids`` follow :func:`llava_prompt_ids` (the original
    LLaVA rule DiffLMM was trained with) instead of one pass over the expanded string.

    Pixel values and everything else are ``LlavaProcessor``'s; rows are padded by the tokenizer
    (``padding`` / ``padding_side`` / ``pad_to_multiple_of`` as given, ``return_tensors`` as
    asked). Truncation is refused: it would cut image tokens.
    """

    def __call__(self, images=None, text=None, **kwargs):
        if kwargs.get("truncation"):
            raise ValueError("DiffLMMProcessor does not truncate (it would cut image tokens)")
        texts = None if text is None else ([text] if isinstance(text, str) else list(text))
        batch = super().__call__(images=images, text=None if texts is None else list(texts), **kwargs)
        if texts is None:
            return batch
        crop = self.image_processor.crop_size
        n_image = (crop["height"] // self.patch_size) * (crop["width"] // self.patch_size)
        n_image += self.num_additional_image_tokens
        if self.vision_feature_select_strategy == "default":
            n_image -= 1
        rows = [llava_prompt_ids(self.tokenizer, t, self.image_token, [self.image_token_id] * n_image) for t in texts]
        expanded = [int(np.sum(np.asarray(row) == self.image_token_id)) for row in batch["input_ids"]]
        if expanded != [row.count(self.image_token_id) for row in rows]:  # a bug, not a user error
            raise RuntimeError("LLaVA-rule prompt ids disagree with LlavaProcessor on the image token count")
        padded = self.tokenizer.pad(
            {"input_ids": rows},
            padding=kwargs.get("padding", False),
            pad_to_multiple_of=kwargs.get("pad_to_multiple_of"),
            padding_side=kwargs.get("padding_side"),
            return_tensors=kwargs.get("return_tensors"),
        )
        batch["input_ids"] = padded["input_ids"]
        if "attention_mask" in batch:
            batch["attention_mask"] = padded["attention_mask"]
        return batch


def make_processor(tokenizer, vision_config: DiffLMMVisionConfig, chat_template: str | None = None):
    """A :class:`DiffLMMProcessor` whose ``<image>`` expands to the DiffLMM token grid.

    Args:
        tokenizer: the language model's tokenizer; must know ``<image>``.
        vision_config: the model's :class:`DiffLMMVisionConfig` (image size and grid).
        chat_template: defaults to the tokenizer's own template, else :data:`VICUNA_V1_TEMPLATE`.
    """
    from attendseg.errors import AttendsegError

    size, grid = int(vision_config.image_size), int(vision_config.feature_grid)
    if size % grid:
        raise AttendsegError(f"image size {size} is not a multiple of the feature grid {grid}")
    if chat_template is None:
        chat_template = getattr(tokenizer, "chat_template", None) or VICUNA_V1_TEMPLATE
    return DiffLMMProcessor(
        image_processor=make_image_processor(vision_config),
        tokenizer=tokenizer,
        patch_size=size // grid,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=chat_template,
    )
