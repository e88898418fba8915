"""Tiny random-weight PaliGemma checkpoints (``PaliGemmaForConditionalGeneration``), saved like
hub checkpoints: a SigLIP tower on one square resize of the whole image, a Gemma text model with
prefix-LM attention (image + prompt bidirectional, the answer causal), the real
``PaliGemmaProcessor`` (``<image>``×n, BOS, prompt, newline) and ``SiglipImageProcessorPil``.

Defaults (tests): 32 px input, 4 px patches → 8 × 8 = 64 image tokens.

Real token counts for a benchmark: PaliGemma(2)-224 ``image_size=224, patch_size=14`` → 256
image tokens (any photo: one square resize); -448 → 1024; -896 → 4096. A wider text model:
``text_hidden``, ``text_layers``, ``text_heads``, ``kv_heads`` (PaliGemma 1 uses 1), ``intermediate``,
``text_model="gemma2"`` (PaliGemma 2) and ``text_config={...}`` for any other text config field;
other image processor settings: ``image_processor={...}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import text_config as small_text_config
from . import vision_fields, word_tokenizer


def build_paligemma(
    folder: str | Path,
    words: Sequence[str],
    *,
    seed: int = 0,
    text_model: str = "gemma",
    image_size: int = 32,
    patch_size: int = 4,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    kv_heads: int | None = 1,
    intermediate: int | None = None,
    text_config: dict | None = None,
    image_processor: dict | None = None,
) -> Path:
    """Write a random-weight PaliGemma checkpoint folder (config, weights, tokenizer, processor).

    Args:
        folder: where to write (created).
        words: the text vocabulary (besides specials, punctuation and PaliGemma's ``<locXXXX>`` /
            ``<segXXX>`` tokens, which the processor adds).
        text_model: ``"gemma"`` (PaliGemma 1) or ``"gemma2"`` (PaliGemma 2).
        image_size, patch_size: the SigLIP input side and patch: ``(image_size // patch_size)²``
            image tokens.
        kv_heads: key/value heads (multi-query attention with 1, as PaliGemma 1).
        text_config: any other text config fields; image_processor: any other image processor
            settings.

    Returns:
        The folder path.
    """
    import transformers
    from tokenizers import AddedToken
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = (image_size // patch_size) ** 2
    tokenizer = word_tokenizer(words)
    tokenizer.add_tokens([AddedToken("\n", normalized=False, special=False)])  # ends the prompt, as in Gemma's vocab
    image_proc = SiglipImageProcessorPil(**{"size": {"height": image_size, "width": image_size},
                                            **(image_processor or {})})
    image_proc.image_seq_length = tokens
    processor = transformers.PaliGemmaProcessor(image_processor=image_proc, tokenizer=tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")

    vision = transformers.SiglipVisionConfig(
        vision_use_head=False, **vision_fields(vision_hidden, vision_layers, vision_heads, image_size, patch_size))
    text = small_text_config(tokenizer, text_model, text_hidden, text_layers, text_heads, kv_heads, intermediate,
                             positions=max(512, tokens + 256))
    for key, value in {"head_dim": text_hidden // text_heads, **(text_config or {})}.items():
        setattr(text, key, value)
    config = transformers.PaliGemmaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=image_token_id,
        vocab_size=len(tokenizer),
        projection_dim=text_hidden,
        hidden_size=text_hidden,
    )
    torch.manual_seed(seed)
    model = transformers.PaliGemmaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
