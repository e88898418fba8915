"""Tiny random-weight Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints, saved like hub checkpoints.

The folder holds the family's real classes: ``Qwen2VLForConditionalGeneration`` (or the 2.5 / 3
model), its ``Qwen2VLImageProcessorPil`` (dynamic resolution: ``smart_resize`` between
``min_pixels`` and ``max_pixels``, 2 × 2 merge) and the family's processor class, saved without
its video processor (which needs torchvision; :func:`attendseg.adapters.load_processor` loads
it back the same way). The tokenizer is :func:`attendseg.tiny.word_tokenizer` plus Qwen's
special tokens, with a ChatML template that puts ``<|vision_start|><|image_pad|><|vision_end|>``
where the image goes, like the released checkpoints.

Benchmark-sized models: the defaults are test-sized (GQA text model 64 wide, 2 layers; vision
tower 32 wide, 2 blocks; at most 48 merged tokens per image). Override with

* ``text=dict(...)``: text-config fields, e.g. ``hidden_size``, ``intermediate_size``,
  ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` (Qwen3),
  ``rope_theta`` (default 1e6, the released checkpoints'), or all of ``rope_parameters`` (its
  ``mrope_section`` must sum to head_dim / 2; the default is derived);
* ``vision=dict(...)``: vision-config fields (``depth``, ``hidden_size``, ``patch_size``, …);
* ``image_processor=dict(...)``: image-processor fields, ``min_pixels`` / ``max_pixels`` above all.

The released processors' limits give a 1024 × 768 photo its real token count:
``image_processor=dict(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)`` with Qwen2-VL's 14 px
patches → 756 × 1036 px → 27 × 37 = 999 image tokens (:data:`RELEASED_PIXELS`). For example::

    build_qwen_vl(folder, words, model_type="qwen2_vl", image_processor=RELEASED_PIXELS,
                  text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                            num_attention_heads=16, num_key_value_heads=2))
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import word_tokenizer

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
#: Qwen's special tokens, in the order they are added after the word vocabulary.
QWEN_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
#: The released Qwen2-VL / 2.5-VL image processors' limits (Qwen3-VL's released processor uses
#: 16 px patches, so the same limits give it fewer tokens).
RELEASED_PIXELS = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280}

#: ChatML as the released checkpoints write it (system turn, one image then the text).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CLASSES = {  # model_type -> (model, config, text config, vision config, processor)
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLConfig", "Qwen2VLTextConfig",
                 "Qwen2VLVisionConfig", "Qwen2VLProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig", "Qwen2_5_VLTextConfig",
                   "Qwen2_5_VLVisionConfig", "Qwen2_5_VLProcessor"),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLConfig", "Qwen3VLTextConfig",
                 "Qwen3VLVisionConfig", "Qwen3VLProcessor"),
}


def qwen_tokenizer(words: Sequence[str]):
    """:func:`word_tokenizer` over ``words`` (plus the default system prompt's words) with
    Qwen's special tokens added, ``<|endoftext|>`` as padding and ``<|im_end|>`` as EOS."""
    tokenizer = word_tokenizer([*"system you are a helpful assistant user".split(), *words])
    tokenizer.add_special_tokens({"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>"})
    tokenizer.add_tokens(list(QWEN_TOKENS), special_tokens=True)
    tokenizer.image_token, tokenizer.video_token = "<|image_pad|>", "<|video_pad|>"  # the processors read these
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _vision_config(model_type: str, out_hidden: int, overrides: dict) -> dict:
    if model_type == "qwen2_vl":
        base = dict(depth=2, embed_dim=32, hidden_size=out_hidden, num_heads=2, mlp_ratio=2, patch_size=14)
    elif model_type == "qwen2_5_vl":
        base = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=out_hidden,
                    patch_size=14, window_size=56, fullatt_block_indexes=[1])
    else:
        base = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=out_hidden,
                    patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0])
    return {**base, **overrides}


def build_qwen_vl(
    folder: str | Path,
    words: Sequence[str],
    *,
    model_type: str = "qwen2_vl",
    seed: int = 0,
    text: dict | None = None,
    vision: dict | None = None,
    image_processor: dict | None = None,
) -> Path:
    """Write a random-weight Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint folder.

    Args:
        folder: where to write (created): ``config.json``, ``model.safetensors``, tokenizer,
            ``preprocessor_config.json`` and ``processor_config.json`` with the chat template.
        words: the text vocabulary (besides specials and punctuation).
        model_type: ``"qwen2_vl"``, ``"qwen2_5_vl"`` or ``"qwen3_vl"``.
        text, vision, image_processor: overrides of the text config, the vision config and the
            image processor (module docstring).

    Returns:
        The folder path.
    """
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if model_type not in _CLASSES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, not {model_type!r}")
    model_name, config_name, text_name, vision_name, processor_name = _CLASSES[model_type]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen_tokenizer(words)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS}

    text_fields = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=4096)
    text_fields.update(text or {})
    head_dim = text_fields.get("head_dim") or text_fields["hidden_size"] // text_fields["num_attention_heads"]
    if model_type == "qwen3_vl":
        text_fields["head_dim"] = head_dim
    half = head_dim // 2  # M-RoPE sections (temporal, height, width) of the rotary half, like 16:24:24 / 24:20:20
    sections = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    theta = text_fields.pop("rope_theta", 1e6)
    text_fields.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": theta, "mrope_section": sections,
                                               **({"mrope_interleaved": True} if model_type == "qwen3_vl" else {})})
    text_config = getattr(transformers, text_name)(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        **({} if model_type == "qwen3_vl" else {"bos_token_id": None}), **text_fields)
    vision_config = getattr(transformers, vision_name)(
        **_vision_config(model_type, text_fields["hidden_size"], vision or {}))
    config = getattr(transformers, config_name)(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)

    patch = vision_config.patch_size
    factor = patch * vision_config.spatial_merge_size
    pixels = dict(min_pixels=factor * factor * 4, max_pixels=factor * factor * 48)
    pixels.update(image_processor or {})
    images = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=vision_config.spatial_merge_size,
                                      temporal_patch_size=vision_config.temporal_patch_size, **pixels)
    from ..adapters import without_video

    processor = without_video(getattr(transformers, processor_name))(
        image_processor=images, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    _add_video_processor(folder, model_type, images)
    return folder


def _add_video_processor(folder: Path, model_type: str, images) -> None:
    """Record the video processor's settings in ``processor_config.json`` as released checkpoints
    carry them, so that ``AutoProcessor`` (which builds the video processor where torchvision is
    installed) loads the folder too; it cannot be built here without torchvision."""
    import json

    path = folder / "processor_config.json"
    config = json.loads(path.read_text())
    config["video_processor"] = {
        "video_processor_type": "Qwen3VLVideoProcessor" if model_type == "qwen3_vl" else "Qwen2VLVideoProcessor",
        "patch_size": images.patch_size, "temporal_patch_size": images.temporal_patch_size,
        "merge_size": images.merge_size, "image_mean": list(images.image_mean), "image_std": list(images.image_std),
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
