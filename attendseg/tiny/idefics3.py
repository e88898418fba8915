"""Tiny random-weight Idefics3 / SmolVLM checkpoints (``Idefics3ForConditionalGeneration``,
``SmolVLMForConditionalGeneration``), saved like hub checkpoints.

Both families share one layout: the image is resized (longest edge to ``size``), then to a
multiple of the tile side, split into a ``rows × cols`` grid of tiles plus a global image (the
whole image squashed to one tile); every tile goes through a SigLIP tower and a pixel shuffle
(``scale_factor``), giving ``(tile / patch / scale_factor)²`` tokens per tile. The text holds
``<fake_token_around_image><row_r_col_c>`` before each tile, a newline after each row of tiles,
``<global-img>`` before the global image.

Defaults (tests): 32 px tiles, 4 px patches, scale factor 2 → 4 × 4 = 16 tokens per tile, at
most 3 × 3 tiles (longest edge 96 px).

Real token counts for a benchmark (the tile and patch sizes, pixel shuffle and longest edge of
released checkpoints; a 1024 × 768 photo becomes 4 × 3 tiles + the global image):

* SmolVLM-256M/500M: ``tile=512, patch_size=16, scale_factor=4, longest_edge=2048`` → 13 × 64 =
  832 image tokens;
* SmolVLM-Instruct (2B): ``tile=384, patch_size=14, scale_factor=3, longest_edge=1536`` →
  13 × 81 = 1053;
* Idefics3-8B: ``tile=364, patch_size=14, scale_factor=2, longest_edge=1456`` → 13 × 169 = 2197.

A wider text model: ``text_hidden``, ``text_layers``, ``text_heads``, ``kv_heads``,
``intermediate``, and ``text_config={...}`` for any other Llama config field; any other image
processor setting: ``image_processor={...}`` (e.g. ``{"do_image_splitting": False}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import text_config as small_text_config
from . import vision_fields, word_tokenizer

#: The marker tokens both families write around image tiles (besides ``<image>``).
FAKE_TOKEN = "<fake_token_around_image>"
GLOBAL_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
ROW_COL_TOKENS = tuple(f"<row_{r + 1}_col_{c + 1}>" for r in range(6) for c in range(6))

#: The released checkpoints' chat template (SmolVLM starts with ``<|im_start|>``, Idefics3 with
#: its BOS token): ``User:<image>{prompt}<end_of_utterance>\nAssistant:``.
CHAT_TEMPLATE = (
    "{start}{{% for message in messages %}}{{{{message['role'] | capitalize}}}}"
    "{{% if message['content'][0]['type'] == 'image' %}}{{{{':'}}}}{{% else %}}{{{{': '}}}}{{% endif %}}"
    "{{% for line in message['content'] %}}{{% if line['type'] == 'text' %}}{{{{line['text']}}}}"
    "{{% elif line['type'] == 'image' %}}{{{{ '<image>' }}}}{{% endif %}}{{% endfor %}}"
    "<end_of_utterance>\n{{% endfor %}}{{% if add_generation_prompt %}}{{{{ 'Assistant:' }}}}{{% endif %}}"
)


def build_idefics3(
    folder: str | Path,
    words: Sequence[str],
    *,
    model_type: str = "idefics3",
    seed: int = 0,
    tile: int = 32,
    patch_size: int = 4,
    scale_factor: int = 2,
    longest_edge: int = 96,
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
    """Write a random-weight Idefics3 (``model_type="idefics3"``) or SmolVLM (``"smolvlm"``)
    checkpoint folder with the family's real processor and image processor (splitting on).

    Args:
        folder: where to write (created): config, weights, tokenizer, image processor, processor
            with its chat template.
        words: the text vocabulary (besides specials, punctuation and the image markers).
        tile: the tile side in pixels (the image processor's ``max_image_size`` and the vision
            tower's ``image_size``); ``patch_size``: the SigLIP patch; ``scale_factor``: the
            pixel shuffle's. Tokens per tile: ``(tile // patch_size // scale_factor) ** 2``.
        longest_edge: the image processor's first resize (``size={"longest_edge": …}``); at most
            ``ceil(longest_edge / tile)`` tiles per side.
        text_hidden, text_layers, text_heads, kv_heads, intermediate: the Llama text model
            (grouped-query attention when ``kv_heads < text_heads``); ``text_config``: any other
            Llama config fields.
        image_processor: any other image processor settings (they override the above).

    Returns:
        The folder path.
    """
    import transformers
    from tokenizers import AddedToken

    if model_type not in ("idefics3", "smolvlm"):
        raise ValueError(f"model_type must be 'idefics3' or 'smolvlm', not {model_type!r}")
    prefix = "Idefics3" if model_type == "idefics3" else "SmolVLM"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    tokenizer = word_tokenizer(words)
    start = "<s>" if model_type == "idefics3" else "<|im_start|>"
    specials = [FAKE_TOKEN, GLOBAL_TOKEN, END_OF_UTTERANCE, *ROW_COL_TOKENS]
    if model_type == "smolvlm":
        specials.append("<|im_start|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens([AddedToken("\n", normalized=False, special=False)])  # row breaks, as in the real vocab
    chat_template = CHAT_TEMPLATE.format(start=start)
    tokenizer.chat_template = chat_template
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    eou_id = tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)

    grid = tile // patch_size
    tokens_per_tile = (grid // scale_factor) ** 2
    vision = getattr(transformers, f"{prefix}VisionConfig")(
        **vision_fields(vision_hidden, vision_layers, vision_heads, tile, patch_size))
    max_tiles = -(-longest_edge // tile) ** 2 + 1
    text = small_text_config(tokenizer, "llama", text_hidden, text_layers, text_heads, kv_heads, intermediate,
                             positions=max(512, max_tiles * (tokens_per_tile + 3) + 256))
    for key, value in {"rms_norm_eps": 1e-5, **(text_config or {})}.items():
        setattr(text, key, value)
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=image_token_id,
        scale_factor=scale_factor,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = [eou_id, tokenizer.eos_token_id]
    model.save_pretrained(folder)

    settings = {
        "do_image_splitting": True,
        "size": {"longest_edge": longest_edge},
        "max_image_size": {"longest_edge": tile},
        **(image_processor or {}),
    }
    image_proc = getattr(transformers, f"{prefix}ImageProcessorPil")(**settings)
    if model_type == "idefics3":
        processor = transformers.Idefics3Processor(
            image_processor=image_proc, tokenizer=tokenizer, image_seq_len=tokens_per_tile,
            chat_template=chat_template)
    else:  # the video processor needs torchvision: save without it (images never use it)
        from ..adapters import without_video

        processor = without_video(transformers.SmolVLMProcessor)(
            image_processor=image_proc, tokenizer=tokenizer, image_seq_len=tokens_per_tile,
            chat_template=chat_template)
    processor.save_pretrained(folder)
    return folder


def build_smolvlm(folder: str | Path, words: Sequence[str], **overrides) -> Path:
    """:func:`build_idefics3` with ``model_type="smolvlm"`` (same keywords)."""
    return build_idefics3(folder, words, model_type="smolvlm", **overrides)
