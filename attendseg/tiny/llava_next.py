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

Defaults: ``patch=8``, ``vision_hidden=32``, ``vision_layers=2``, ``vision_heads=2``,
``text_hidden=64``, ``text_layers=2``, ``text_heads=4``, ``kv_heads=2``, MLP ``4 × text_hidden``;
``tile=48`` and ``text_model="mistral"`` (NeXT), ``tile=24`` and ``"qwen2"`` (OneVision).

E.g. LLaVA-NeXT's real token count for a 1024 × 768 photo (2 340 image tokens: 576 base +
36 × 48 unpadded + 36 newlines; the pinpoints default to the real ones at ``tile=336``):
``build_llava_next(folder, words, tile=336, patch=14, text_hidden=1024, text_layers=8,
text_heads=16, kv_heads=4)``. LLaVA-OneVision's (4 725 tokens for 1024 × 768):
``build_llava_onevision(folder, words, tile=384, patch=14, text_hidden=…)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import text_config, vision_fields, word_tokenizer

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


def build_llava_next(folder: str | Path, words: Sequence[str], seed: int = 0, **overrides) -> Path:
    """Write a random-weight ``LlavaNextForConditionalGeneration`` checkpoint folder.

    Config, weights, tokenizer (with ``[INST]``/``[/INST]``), ``LlavaNextImageProcessorPil``
    (tiles of ``tile`` px on the best-fit pinpoint, base image squashed to ``tile × tile``) and
    ``LlavaNextProcessor`` with its chat template. Defaults: 48-px tiles, 8-px patches (6 × 6
    tokens per tile and for the base), the real pinpoint shapes, CLIP tower with ``"default"``
    strategy, Mistral text model (64 wide, 2 layers, 4 heads, 2 kv heads). ``overrides``: the
    keyword names of the module docstring (``strategy="full"`` gives a SigLIP tower).

    Returns:
        The folder path.
    """
    return _build("llava_next", folder, words, seed, **{**dict(tile=48, text_model="mistral"), **overrides})


def build_llava_onevision(folder: str | Path, words: Sequence[str], seed: int = 0, **overrides) -> Path:
    """Write a random-weight ``LlavaOnevisionForConditionalGeneration`` checkpoint folder.

    SigLIP tower (``"full"`` strategy), ``anyres_max_9``, ``LlavaOnevisionImageProcessorPil``
    (base image squashed to ``tile × tile``, tiles of ``tile`` px), and ``LlavaOnevisionProcessor``
    saved without its video processor (it needs torchvision; images never use it). Defaults:
    24-px tiles, 8-px patches (3 × 3 per tile), every 1…6 × 1…6 tile arrangement like the real
    checkpoints, Qwen2 text model (64 wide, 2 layers, 4 heads, 2 kv heads). ``overrides``: the
    keyword names of the module docstring, but not ``strategy``; e.g. the real 384-px layout:
    ``tile=384, patch=14, pinpoints=REAL_ONEVISION_PINPOINTS``.
    """
    if "strategy" in overrides:
        raise TypeError("LLaVA-OneVision's SigLIP tower has no CLS token: its strategy is 'full'")
    return _build("llava_onevision", folder, words, seed,
                  **{**dict(tile=24, text_model="qwen2", strategy="full"), **overrides})


def _build(family, folder, words, seed, *, tile, text_model, patch=8, pinpoints=None, strategy="default",
           vision_hidden=32, vision_layers=2, vision_heads=2, text_hidden=64, text_layers=2, text_heads=4,
           kv_heads=2, intermediate=None) -> Path:
    import transformers
    from transformers import CLIPVisionConfig, SiglipVisionConfig
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from ..adapters import without_video

    if strategy not in ("default", "full"):
        raise ValueError(f"strategy must be 'default' or 'full', not {strategy!r}")
    next_ = family == "llava_next"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    real, real_tile = (REAL_NEXT_PINPOINTS, 336) if next_ else (REAL_ONEVISION_PINPOINTS, 384)
    pinpoints = [list(p) for p in pinpoints] if pinpoints else _scaled(real, real_tile, tile)
    template = NEXT_CHAT_TEMPLATE if next_ else ONEVISION_CHAT_TEMPLATE
    tokenizer = word_tokenizer(words)
    tokenizer.add_tokens(["[INST]", "[/INST]"] if next_ else ["<|im_start|>", "<|im_end|>", "<video>"],
                         special_tokens=True)
    tokenizer.chat_template = template
    grid = tile // patch
    most = max(h * w for h, w in pinpoints) // patch**2  # cells of the largest canvas
    vision = vision_fields(vision_hidden, vision_layers, vision_heads, tile, patch)
    text = text_config(tokenizer, text_model, text_hidden, text_layers, text_heads, kv_heads, intermediate,
                       positions=max(1024, grid * grid + 2 * most + 256))
    common = dict(
        vision_config=CLIPVisionConfig(projection_dim=vision_hidden, **vision) if strategy == "default"
        else SiglipVisionConfig(vision_use_head=False, **vision),
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy=strategy,
        pad_token_id=tokenizer.pad_token_id,
    )
    if next_:
        config = transformers.LlavaNextConfig(image_seq_length=grid * grid, vision_feature_layer=-2, **common)
    else:
        config = transformers.LlavaOnevisionConfig(video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
                                                   vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
                                                   **common)
    torch.manual_seed(seed)
    model_class = (transformers.LlavaNextForConditionalGeneration if next_
                   else transformers.LlavaOnevisionForConditionalGeneration)
    model = model_class(config).eval()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    model.save_pretrained(folder)
    if next_:
        transformers.LlavaNextProcessor(
            image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": tile},
                                                       crop_size={"height": tile, "width": tile},
                                                       image_grid_pinpoints=pinpoints),
            tokenizer=tokenizer, patch_size=patch, vision_feature_select_strategy=strategy, chat_template=template,
            num_additional_image_tokens=1 if strategy == "default" else 0,
        ).save_pretrained(folder)
    else:
        without_video(transformers.LlavaOnevisionProcessor)(
            image_processor=LlavaOnevisionImageProcessorPil(size={"height": tile, "width": tile},
                                                            image_grid_pinpoints=pinpoints),
            tokenizer=tokenizer, num_image_tokens=grid * grid, vision_feature_select_strategy=strategy,
            vision_aspect_ratio="anyres_max_9", chat_template=template,
        ).save_pretrained(folder)
    return folder
