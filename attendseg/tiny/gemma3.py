"""Tiny random-weight Gemma 3 checkpoints (``Gemma3ForConditionalGeneration``), saved like hub ones.

SigLIP vision tower → average pooling of its ``p × p`` patch grid to ``t × t`` image tokens →
Gemma 3 text model with interleaved sliding-window and global layers. The processor is the real
``Gemma3Processor`` with the PIL ``Gemma3ImageProcessorPil`` (square resize; pan-and-scan crops
off by default, turned on per call with ``do_pan_and_scan=True``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import vision_fields, word_tokenizer

#: Gemma 3's chat template (the released one, without system-prompt and tool handling).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

NAMED = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
MARKERS = ("<start_of_turn>", "<end_of_turn>")


def build_gemma3(
    folder: str | Path,
    words: Sequence[str],
    seed: int = 0,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    tokens_per_image: int = 16,
    vision_hidden: int = 32,
    vision_layers: int = 1,
    vision_heads: int = 2,
    text: dict | None = None,
    image_processor: dict | None = None,
) -> Path:
    """Write a random-weight ``Gemma3ForConditionalGeneration`` checkpoint folder.

    Args:
        folder: where to write (created): config, weights, tokenizer, image processor, processor
            with its chat template.
        words: the text vocabulary (besides specials and punctuation).
        image_size, patch_size: the SigLIP input side and patch: a ``(image_size / patch_size)²``
            patch grid, average-pooled to ``tokens_per_image`` tokens (a square number whose side
            divides the patch grid's). The real models: 896, 14, 256 (64 × 64 patches → 16 × 16).
        vision_hidden, vision_layers, vision_heads: the SigLIP tower's size.
        text: overrides for ``Gemma3TextConfig`` (defaults: hidden 64, 2 layers, 4 heads, 2 kv
            heads, head_dim 16, layers ``["sliding_attention", "full_attention"]`` with a 512-token
            window); e.g. ``{"hidden_size": 1024, "num_hidden_layers": 8, "intermediate_size":
            4096, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 128}`` for a
            wider model, ``{"sliding_window": 24}`` to make decoding drop image keys,
            ``{"attn_logit_softcapping": 50.0}``.
        image_processor: overrides for ``Gemma3ImageProcessorPil`` (``size`` follows
            ``image_size``; pan-and-scan settings default to crops of ≥ 32 px, ≤ 4 crops, ratio
            ≥ 1.2, off unless a call passes ``do_pan_and_scan=True``).

    A benchmark with the real token count for a 1024 × 768 photo (256 tokens, no pan-and-scan;
    the released 64 × 64 patch grid pooled 4 × 4): ``build_gemma3(folder, words, image_size=896,
    patch_size=14, tokens_per_image=256, text={...wider...})`` (checked: 256 image tokens).

    Returns:
        The folder path.
    """
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer([*words, "model"], named=NAMED, markers=MARKERS)  # "model" is the chat role
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in NAMED.items()}
    vision = SiglipVisionConfig(
        vision_use_head=False, **vision_fields(vision_hidden, vision_layers, vision_heads, image_size, patch_size))
    text_settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    text_settings.update(text or {})
    layers = text_settings["num_hidden_layers"]
    if len(text_settings["layer_types"]) != layers:  # Gemma 3's pattern: 5 sliding, then 1 global
        text_settings["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 or i == layers - 1
                                        else "sliding_attention" for i in range(layers)]
    config = Gemma3Config(
        vision_config=vision.to_dict(),
        text_config=Gemma3TextConfig(**text_settings).to_dict(),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=ids["boi_token"],
        eoi_token_index=ids["eoi_token"],
        image_token_index=ids["image_token"],
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # the released projector is trained; a zero one would blank the image
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, vision_hidden**-0.5)
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, name, getattr(tokenizer, name))
    model.save_pretrained(folder)

    settings = dict(size={"height": image_size, "width": image_size}, do_pan_and_scan=False,
                    pan_and_scan_min_crop_size=32, pan_and_scan_max_num_crops=4,
                    pan_and_scan_min_ratio_to_activate=1.2)
    settings.update(image_processor or {})
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(**settings),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=tokens_per_image,
    )
    processor.save_pretrained(folder)
    return folder
