"""Tiny random-weight LLaVA-NeXT and LLaVA-OneVision checkpoints, saved like hub checkpoints.

Both families tile the image on the best-fit resolution of ``image_grid_pinpoints`` (a list of
``(height, width)``, multiples of the tile side) and put a base view of the whole image first.
The builders keep the real checkpoints' structure with small numbers:

* LLaVA-NeXT (llava-v1.6-mistral style): CLIP tower with a CLS token, ``"default"`` feature
  strategy (CLS dropped), Mistral text model with grouped-query attention, the real pinpoint
  *shapes* (1×2, 2×1, 2×2, 3×1, 1×3 tiles) scaled to the tile side.
* LLaVA-OneVision (llava-onevision-qwen2 style): SigLIP tower (no CLS), ``"full"`` strategy,
  Qwen2 text model with GQA, pinpoints of every 1…6 × 1…6 tile arrangement and
  ``vision_aspect_ratio="anyres_max_9"`` (the stitched grid is interpolated down when it holds
  more than ~9 tiles' worth of cells).

Overrides (keyword names) for a benchmark model with the real image-token count:

* ``tile`` (vision input side = tile side, px), ``patch`` (vision patch, px),
  ``pinpoints`` (``[[h, w], …]`` in px; default: the real layout scaled to ``tile``);
* ``vision_hidden``, ``vision_layers``, ``vision_heads``;
* ``text_model`` (``"mistral"``/``"llama"``/``"qwen2"``), ``text_hidden``, ``text_layers``,
  ``text_heads``, ``kv_heads``, ``intermediate``;
* LLaVA-NeXT only: ``strategy`` (``"default"`` with a CLIP tower, ``"full"`` with a SigLIP
  tower, which has no CLS token).

E.g. LLaVA-NeXT's real token count for a 1024 × 768 photo (2 340 image tokens: 576 base +
36 × 48 unpadded + 36 newlines): ``build_llava_next(folder, words, tile=336, patch=14,
pinpoints=REAL_NEXT_PINPOINTS, text_hidden=1024, text_layers=8, text_heads=16, kv_heads=4)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import word_tokenizer

#: llava-hf/llava-v1.6-*: (height, width) in px of the tile arrangements, 336-px tiles.
REAL_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

#: llava-hf/llava-onevision-*: every 1…6 × 1…6 arrangement of 384-px tiles.
REAL_ONEVISION_PINPOINTS = [[384 * r, 384 * c] for r in range(1, 7) for c in range(1, 7)]

#: ``[INST] <image>\n{prompt} [/INST]`` (llava-v1.6-mistral's layout).
NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} [/INST]"
    "{% else %} {% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
)

#: ``<|im_start|>user <image>\n{prompt}<|im_end|> <|im_start|>assistant`` (Qwen2 chat, OneVision's).
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _scaled(pinpoints, real_tile: int, tile: int) -> list[list[int]]:
    return [[h // real_tile * tile, w // real_tile * tile] for h, w in pinpoints]


def _tokenizer(words, specials, template):
    tokenizer = word_tokenizer(words)
    tokenizer.add_tokens(list(specials), special_tokens=True)
    tokenizer.chat_template = template
    return tokenizer


def _text_config(tokenizer, text_model, text_hidden, text_layers, text_heads, kv_heads, intermediate, positions):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        text_model,
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=intermediate or text_hidden * 4,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=kv_heads or text_heads,
        max_position_embeddings=max(1024, positions),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def _vision_config(kind, tile, patch, hidden, layers, heads):
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    common = dict(hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=tile, patch_size=patch)
    if kind == "clip":
        return CLIPVisionConfig(projection_dim=hidden, **common)
    return SiglipVisionConfig(vision_use_head=False, **common)


def _save(model_class, config, tokenizer, seed, folder):
    torch.manual_seed(seed)
    model = model_class(config).eval()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    model.save_pretrained(folder)


def build_llava_next(
    folder: str | Path,
    words: Sequence[str],
    seed: int = 0,
    *,
    tile: int = 48,
    patch: int = 8,
    pinpoints: Sequence[Sequence[int]] | None = None,
    strategy: str = "default",
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    text_model: str = "mistral",
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    kv_heads: int | None = 2,
    intermediate: int | None = None,
) -> Path:
    """Write a random-weight ``LlavaNextForConditionalGeneration`` checkpoint folder.

    Args:
        folder: where to write (created): config, weights, tokenizer, image processor
            (``LlavaNextImageProcessorPil``: tiles of ``tile`` px on the best-fit pinpoint, base
            image squashed to ``tile × tile``) and ``LlavaNextProcessor`` with its chat template.
        words: the text vocabulary (besides specials and punctuation).
        tile, patch: the vision input side (= tile side) and patch: ``(tile // patch)²`` tokens
            per tile and for the base image.
        pinpoints: ``[[h, w], …]`` px arrangements; default the real ones scaled to ``tile``.
        strategy: ``"default"`` (CLIP tower, CLS dropped) or ``"full"`` (SigLIP tower, no CLS).
        others: see the module docstring.

    Returns:
        The folder path.
    """
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    if strategy not in ("default", "full"):
        raise ValueError(f"strategy must be 'default' or 'full', not {strategy!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pinpoints = [list(p) for p in pinpoints] if pinpoints else _scaled(REAL_NEXT_PINPOINTS, 336, tile)
    tokenizer = _tokenizer(words, ("[INST]", "[/INST]"), NEXT_CHAT_TEMPLATE)
    grid = tile // patch
    most = max(h * w for h, w in pinpoints) // patch ** 2
    config = LlavaNextConfig(
        vision_config=_vision_config("clip" if strategy == "default" else "siglip", tile, patch,
                                     vision_hidden, vision_layers, vision_heads),
        text_config=_text_config(tokenizer, text_model, text_hidden, text_layers, text_heads, kv_heads,
                                 intermediate, grid * grid + 2 * most + 256),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=grid * grid,
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2,
        vision_feature_select_strategy=strategy,
        pad_token_id=tokenizer.pad_token_id,
    )
    _save(LlavaNextForConditionalGeneration, config, tokenizer, seed, folder)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=pinpoints,
    )
    LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy=strategy,
        chat_template=NEXT_CHAT_TEMPLATE,
        num_additional_image_tokens=1 if strategy == "default" else 0,
    ).save_pretrained(folder)
    return folder


def build_llava_onevision(
    folder: str | Path,
    words: Sequence[str],
    seed: int = 0,
    *,
    tile: int = 24,
    patch: int = 8,
    pinpoints: Sequence[Sequence[int]] | None = None,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    text_model: str = "qwen2",
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    kv_heads: int | None = 2,
    intermediate: int | None = None,
) -> Path:
    """Write a random-weight ``LlavaOnevisionForConditionalGeneration`` checkpoint folder.

    SigLIP tower (``"full"`` strategy), ``anyres_max_9``, ``LlavaOnevisionImageProcessorPil``
    (base image squashed to ``tile × tile``, tiles of ``tile`` px), and ``LlavaOnevisionProcessor``
    saved without its video processor (it needs torchvision; images never use it). Default
    pinpoints: every 1…6 × 1…6 tile arrangement, like the real checkpoints. Keyword names as
    :func:`build_llava_next` (no ``strategy``). E.g. the real 384-px layout:
    ``tile=384, patch=14, pinpoints=REAL_ONEVISION_PINPOINTS``.
    """
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from ..adapters import without_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pinpoints = [list(p) for p in pinpoints] if pinpoints else _scaled(REAL_ONEVISION_PINPOINTS, 384, tile)
    tokenizer = _tokenizer(words, ("<|im_start|>", "<|im_end|>", "<video>"), ONEVISION_CHAT_TEMPLATE)
    grid = tile // patch
    config = LlavaOnevisionConfig(
        vision_config=_vision_config("siglip", tile, patch, vision_hidden, vision_layers, vision_heads),
        text_config=_text_config(tokenizer, text_model, text_hidden, text_layers, text_heads, kv_heads,
                                 intermediate, 2 * 10 * grid * grid + 256),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        pad_token_id=tokenizer.pad_token_id,
    )
    _save(LlavaOnevisionForConditionalGeneration, config, tokenizer, seed, folder)
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": tile, "width": tile},
        image_grid_pinpoints=pinpoints,
    )
    without_video(LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=grid * grid,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=ONEVISION_CHAT_TEMPLATE,
    ).save_pretrained(folder)
    return folder
