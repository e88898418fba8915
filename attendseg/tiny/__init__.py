"""Tiny random-weight checkpoints built from configs, saved like hub checkpoints.

This package holds the LLaVA-1.5 builder and the shared pieces (word-level tokenizer, SAM); each
other model family's builder lives in its own module here (``attendseg.tiny.<family>``).

Used by the tests, the benchmarks, README's fallback run and the shapes-world model: the folder
written by :func:`build_llava` loads through exactly the code path a hub id takes
(``attendseg.load(folder)`` → ``from_pretrained``).

The tokenizer is word-level (``tokenizers`` ``WordLevel`` + whitespace/punctuation
pre-tokenizer) wrapped in ``PreTrainedTokenizerFast``: its offsets are exact and decoding joins
words with single spaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
PUNCTUATION = (".", ",", ":", ";", "!", "?", "'", "-")

#: Chat template: ``USER: <image>\n{prompt} ASSISTANT:`` (LLaVA-1.5 style, one image first).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> \n{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% else %}ASSISTANT: {% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %} </s> "
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def word_tokenizer(words: Iterable[str], named: dict[str, str] | None = None, markers: Sequence[str] = ()):
    """A word-level fast tokenizer over ``SPECIAL_TOKENS + PUNCTUATION + words`` (lower-cased).

    Ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<image>`` 4, then punctuation, then
    the words in first-seen order. Unknown words map to ``<unk>``.

    A family's special tokens come after the words: ``named`` maps tokenizer attribute names to
    tokens (``{"boi_token": "<start_of_image>"}`` gives ``tokenizer.boi_token`` and
    ``tokenizer.boi_token_id``; ``"image_token"`` replaces ``<image>`` as the named image token),
    ``markers`` are chat-template tokens (``<start_of_turn>``); both are never split.
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    named = {"image_token": "<image>", **(named or {})}
    family = [*named.values(), *markers]
    for token in (*SPECIAL_TOKENS, *PUNCTUATION, *(w.lower() for w in words), *family):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=named,
    )
    if markers:
        tokenizer.add_tokens(list(markers), special_tokens=True)
    tokenizer.padding_side = "left"
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def sincos_positions(grid: int, dim: int, norm: float = 1.5) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table for a CLIP tower, ``float32 [1 + grid², dim]``.

    Row 0 (the CLS token) is zero; row ``1 + r * grid + c`` is patch ``(row r, column c)``. The
    first half of the channels encodes the column, the second half the row, each as sines then
    cosines of ``position * 10000 ** (-k / (dim / 4))``, ``k = 0 … dim/4 - 1`` (MAE's table).
    Every patch row has L2 norm ``norm``, comparable to a freshly initialised patch embedding.
    ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    freqs = 10000.0 ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")

    def encode(pos):  # [grid²] -> [grid², dim / 2]
        angle = pos.reshape(-1, 1) * freqs
        return torch.cat([angle.sin(), angle.cos()], 1)

    table = torch.cat([encode(cols), encode(rows)], 1) * (norm / (dim / 2) ** 0.5)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


def vision_fields(hidden: int, layers: int, heads: int, image_size, patch_size) -> dict:
    """The fields every tiny vision tower shares (CLIP, SigLIP, InternViT, …): width ``hidden``,
    MLP ``4 × hidden``, ``layers`` blocks of ``heads`` heads, input side and patch (as the config
    class takes them: an int, or InternVL's ``[h, w]``)."""
    return dict(hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                num_attention_heads=heads, image_size=image_size, patch_size=patch_size)


def text_config(tokenizer, model_type: str, hidden: int, layers: int, heads: int, kv_heads: int | None = None,
                intermediate: int | None = None, positions: int = 512):
    """A small random text-model config (``AutoConfig.for_model(model_type)``) sized to
    ``tokenizer``'s vocabulary and special ids: ``kv_heads`` key/value heads (grouped-query
    attention when < ``heads``; default ``heads``), MLP width ``intermediate`` (default
    ``4 × hidden``), untied embeddings."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def build_llava(
    folder: str | Path,
    words: Sequence[str],
    *,
    text_model: str = "llama",
    image_size: int = 64,
    patch_size: int = 8,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    pad_to_square: bool = False,
    seed: int = 0,
    vision_feature_layer: int = -2,
    vision_positions: str = "learned",
) -> Path:
    """Write a random-weight ``LlavaForConditionalGeneration`` checkpoint folder.

    Args:
        folder: where to write (created). Holds ``config.json``, ``model.safetensors``, the
            tokenizer, the image processor and the processor with its chat template.
        words: the text vocabulary (besides specials and punctuation).
        text_model: ``"llama"`` or ``"qwen2"``.
        image_size, patch_size: the CLIP input side and patch; the image grid is
            ``(image_size // patch_size)²`` tokens (CLS dropped, LLaVA's "default" strategy).
        kv_heads: key/value heads (grouped-query attention when < ``text_heads``).
        pad_to_square: whether the image processor pads to a square (mean colour) before
            resizing, like the original LLaVA code; otherwise it resizes the short side and
            centre-crops, like llava-hf.
        vision_feature_layer: which CLIP hidden state feeds the projector (LLaVA's -2 by
            default; -1 uses the last layer, so no vision layer is computed in vain).
        vision_positions: ``"learned"`` (CLIP's random init) or ``"sincos"``: the CLIP position
            table starts as :func:`sincos_positions` (the weights stay an ordinary CLIP
            checkpoint; whether training may change them is the trainer's choice).

    Returns:
        The folder path.
    """
    from transformers import (
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(words)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    grid = image_size // patch_size
    vision = CLIPVisionConfig(projection_dim=vision_hidden,
                              **vision_fields(vision_hidden, vision_layers, vision_heads, image_size, patch_size))
    text = text_config(tokenizer, text_model, text_hidden, text_layers, text_heads, kv_heads, intermediate,
                       positions=max(512, grid * grid + 256))
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=grid * grid,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    if vision_positions == "sincos":
        table = model.model.vision_tower.embeddings.position_embedding.weight
        with torch.no_grad():
            table.copy_(sincos_positions(grid, vision_hidden))
    elif vision_positions != "learned":
        raise ValueError(f"vision_positions must be 'learned' or 'sincos', not {vision_positions!r}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(folder)

    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_pad=pad_to_square,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(folder)
    return folder


def build_sam(folder: str | Path, image_size: int = 64, seed: int = 0) -> Path:
    """Write a random-weight ``SamModel`` + ``SamProcessor`` folder (PIL image processor).

    ``image_size`` px input, 16 px patches, 16 × 16 low-resolution masks; loads by path exactly
    like a hub SAM checkpoint. Its masks are meaningless: it exercises the plumbing.
    """
    from transformers import (
        SamConfig,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    folder = Path(folder)
    vision = SamVisionConfig(
        hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=16, mlp_dim=64, global_attn_indexes=[1], window_size=2,
        num_pos_feats=8,
    )
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=image_size, patch_size=16, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                                   iou_head_hidden_dim=16)
    config = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                       mask_decoder_config=decoder.to_dict())
    torch.manual_seed(seed)
    SamModel(config).save_pretrained(folder)
    low_res = image_size // 4
    SamProcessor(
        image_processor=SamImageProcessorPil(
            size={"longest_edge": image_size},
            pad_size={"height": image_size, "width": image_size},
            mask_size={"longest_edge": low_res},
            mask_pad_size={"height": low_res, "width": low_res},
        )
    ).save_pretrained(folder)
    return folder
