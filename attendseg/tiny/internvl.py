"""Tiny random-weight InternVL checkpoints (transformers' ``InternVLForConditionalGeneration``).

InternViT-style vision tower → pixel shuffle (``downsample_ratio`` 0.5: 2 × 2 patches per
token) → MLP projector → Qwen2 text model (grouped-query attention). The processor is the real
``InternVLProcessor`` (saved without its video processor where torchvision is missing, see
:func:`attendseg.adapters.without_video`) with the PIL ``GotOcr2ImageProcessorPil``: dynamic tiles
(``crop_to_patches``) plus a thumbnail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import vision_fields, word_tokenizer

#: InternVL3-hf's chat template (ChatML; an image is ``<IMG_CONTEXT>`` on its own line).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

NAMED = {"image_token": "<IMG_CONTEXT>", "context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>",
         "end_image_token": "</img>", "video_token": "<video>"}
MARKERS = ("<|im_start|>", "<|im_end|>")


def build_internvl(
    folder: str | Path,
    words: Sequence[str],
    seed: int = 0,
    *,
    image_size: int = 32,
    patch_size: int = 4,
    vision_hidden: int = 32,
    vision_layers: int = 1,
    vision_heads: int = 2,
    text: dict | None = None,
    image_processor: dict | None = None,
) -> Path:
    """Write a random-weight ``InternVLForConditionalGeneration`` checkpoint folder.

    Args:
        folder: where to write (created): config, weights, tokenizer, image processor, processor
            with its chat template.
        words: the text vocabulary (besides specials and punctuation).
        image_size, patch_size: the tile side and the vision patch: each tile (and the
            thumbnail) is ``((image_size / patch_size) / 2)²`` tokens after the 2 × 2 pixel
            shuffle (the real models: 448, 14 → 16 × 16 = 256 tokens per tile).
        vision_hidden, vision_layers, vision_heads: the vision tower's size.
        text: overrides for the ``Qwen2Config`` text model (defaults: hidden 64, 2 layers, 4
            heads, 2 kv heads), e.g. ``{"hidden_size": 1024, "num_hidden_layers": 8,
            "intermediate_size": 4096, "num_attention_heads": 8, "num_key_value_heads": 4}``.
        image_processor: overrides for ``GotOcr2ImageProcessorPil`` (``size`` follows
            ``image_size``; defaults ``crop_to_patches=True, min_patches=1, max_patches=6``).

    A benchmark with the real token count for a 1024 × 768 photo (InternVL3: 448-px tiles, up to
    12 → a 4 × 3 grid + thumbnail = 13 × 256 = 3,328 tokens): ``build_internvl(folder, words,
    image_size=448, patch_size=14, image_processor={"max_patches": 12}, text={...wider...})``
    (checked: 3,328 image tokens).

    Returns:
        The folder path.
    """
    from transformers import (
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from ..adapters import without_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(words, named=NAMED, markers=MARKERS)
    tokens_per_tile = (image_size // patch_size // 2) ** 2
    vision = InternVLVisionConfig(**vision_fields(vision_hidden, vision_layers, vision_heads,
                                                  [image_size, image_size], [patch_size, patch_size]))
    text_settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    text_settings.update(text or {})
    config = InternVLConfig(
        vision_config=vision.to_dict(),
        text_config=Qwen2Config(**text_settings).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids(NAMED["context_image_token"]),
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config).eval()
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    model.save_pretrained(folder)

    settings = dict(size={"height": image_size, "width": image_size}, crop_to_patches=True, min_patches=1,
                    max_patches=6)
    settings.update(image_processor or {})
    processor = without_video(InternVLProcessor)(
        image_processor=GotOcr2ImageProcessorPil(**settings),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=tokens_per_tile,
    )
    processor.save_pretrained(folder)
    return folder
