"""Tiny random-weight Aya Vision checkpoints (``AyaVisionForConditionalGeneration``), saved like
hub checkpoints, with the real ``AyaVisionProcessor`` and ``GotOcr2ImageProcessorPil`` (tiling on).

The image is resized whole to the ``cols × rows`` tile canvas whose aspect ratio is closest to
its own (at most ``max_patches`` tiles), cut into tiles, and followed by a thumbnail (the whole
image squashed to one tile) when there is more than one tile; each tile is a SigLIP grid,
pixel-shuffled by ``downsample_factor``. The text holds ``<|START_OF_IMG|>``, ``TILE_i`` before
each tile, ``TILE_GLOBAL`` before the thumbnail, ``<|END_OF_IMG|>``.

Defaults (tests): 32 px tiles, 4 px patches, downsample 2 → 4 × 4 tokens per tile, ≤ 6 tiles.

Real token counts for a benchmark: Aya Vision 8B / 32B ``tile=364, patch_size=14,
downsample_factor=2, max_patches=12``: a 1024 × 768 photo → 4 × 3 tiles + thumbnail = 13 × 169 =
2197 image tokens. A wider text model (Cohere 2): ``text_hidden``, ``text_layers``, ``text_heads``,
``kv_heads``, ``intermediate`` and ``text_config={...}``; other image processor settings:
``image_processor={...}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import text_config as small_text_config
from . import vision_fields, word_tokenizer

IMAGE_TOKENS = ("<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>")
TURN_TOKENS = ("<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>")

#: Aya's turn format around one image and a prompt.
CHAT_TEMPLATE = (
    "<s>{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{% if message['role'] == 'user' %}<|USER_TOKEN|>{% else %}<|CHATBOT_TOKEN|>{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)


def build_aya_vision(
    folder: str | Path,
    words: Sequence[str],
    *,
    seed: int = 0,
    tile: int = 32,
    patch_size: int = 4,
    downsample_factor: int = 2,
    max_patches: int = 6,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    kv_heads: int | None = 2,
    intermediate: int | None = None,
    text_config: dict | None = None,
    image_processor: dict | None = None,
) -> Path:
    """Write a random-weight Aya Vision checkpoint folder (config, weights, tokenizer, processor).

    Args:
        folder: where to write (created).
        words: the text vocabulary (besides specials, punctuation, the image and turn tokens and
            the tile words ``tile``, ``global``, ``_`` and the tile numbers).
        tile: the tile side (the image processor's size and the tower's image size);
            ``patch_size``: SigLIP's; ``downsample_factor``: the pixel shuffle's. Tokens per tile:
            ``(tile // patch_size // downsample_factor) ** 2``.
        max_patches: the most tiles per image (besides the thumbnail).
        kv_heads: key/value heads of the Cohere 2 text model.
        text_config: any other text config fields; image_processor: any other image processor
            settings.

    Returns:
        The folder path.
    """
    import transformers
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer([*words, "tile", "global", "_", *map(str, range(1, max_patches + 1))])
    tokenizer.add_special_tokens({"additional_special_tokens": [*IMAGE_TOKENS, *TURN_TOKENS]})
    tokenizer.chat_template = CHAT_TEMPLATE
    image_token_id = tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>")
    per_tile = (tile // patch_size // downsample_factor) ** 2

    vision = transformers.SiglipVisionConfig(
        vision_use_head=False, **vision_fields(vision_hidden, vision_layers, vision_heads, tile, patch_size))
    text = small_text_config(tokenizer, "cohere2", text_hidden, text_layers, text_heads, kv_heads, intermediate,
                             positions=max(512, (max_patches + 1) * (per_tile + 2) + 256))
    for key, value in (text_config or {}).items():
        setattr(text, key, value)
    config = transformers.AyaVisionConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=image_token_id,
        downsample_factor=downsample_factor,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = transformers.AyaVisionForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)

    image_proc = GotOcr2ImageProcessorPil(**{"size": {"height": tile, "width": tile}, "crop_to_patches": True,
                                             "min_patches": 1, "max_patches": max_patches,
                                             **(image_processor or {})})
    processor = transformers.AyaVisionProcessor(image_processor=image_proc, tokenizer=tokenizer, patch_size=patch_size,
                                                img_size=tile, downsample_factor=downsample_factor,
                                                chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    return folder
