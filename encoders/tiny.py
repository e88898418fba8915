"""Tiny random DiffLMM models built from configs, and checkpoints in the released layout.

Every part is a scaled-down copy of the real one: an SD-style UNet (cross-attention down/up
blocks, 4 levels), an ``AutoencoderKL``, a CLIP vision tower, a Llama, and the SDCLIP projector.
At the defaults (32 px input, 2× VAE, up-block 1) the image grid is 8 × 8 = 64 tokens.

:func:`write_released_layout` writes what the authors released (a PEFT LoRA adapter, a
``non_lora_trainables.bin`` and a LLaVA-style ``config.json``) next to the base LLM, SD and CLIP
folders it refers to, so :func:`attendseg.encoders.load_difflmm` can be tested end to end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from .configuration_difflmm import DiffLMMConfig, DiffLMMVisionConfig

__all__ = [
    "LLAMA_LINEAR_MODULES",
    "build_tiny_difflmm",
    "save_tiny_difflmm",
    "tiny_difflmm_config",
    "tiny_vision_config",
    "write_released_layout",
]

#: Every linear layer of a Llama decoder layer (LLaVA's LoRA targets).
LLAMA_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

DEFAULT_WORDS = (
    "user assistant describe the image a an red green blue yellow white black circle square "
    "triangle star cat dog person on of in and with is there left right top bottom large small"
).split()


def tiny_vision_config(
    *,
    image_size: int = 32,
    unet_channels: Sequence[int] = (8, 16, 32, 32),
    vae_channels: Sequence[int] = (8, 16),
    caption_dim: int = 16,
    clip_hidden: int = 32,
    clip_layers: int = 2,
    up_block: int | list[int] = 1,
    timestep: int = 100,
    ensemble_size: int = 1,
    deterministic: bool = True,
    seed: int = 0,
) -> DiffLMMVisionConfig:
    """A :class:`DiffLMMVisionConfig` with SD-1.5's block structure at toy widths.

    The CLIP patch size is chosen so CLIP's grid equals the UNet feature grid.
    """
    n = len(unet_channels)
    unet = {
        "sample_size": image_size // 2 ** (len(vae_channels) - 1),
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1),
        "block_out_channels": list(unet_channels),
        "layers_per_block": 1,
        "attention_head_dim": 2,
        "cross_attention_dim": caption_dim,
        "norm_num_groups": 4,
    }
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * len(vae_channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(vae_channels),
        "block_out_channels": list(vae_channels),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": image_size,
        "scaling_factor": 0.18215,
    }
    probe = DiffLMMVisionConfig(unet_config=unet, vae_config=vae, image_size=image_size, up_block=up_block)
    grid = probe.feature_grid
    clip = {
        "hidden_size": clip_hidden,
        "intermediate_size": clip_hidden * 2,
        "num_hidden_layers": clip_layers,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": image_size // grid,
        "projection_dim": clip_hidden,
    }
    return DiffLMMVisionConfig(
        unet_config=unet,
        vae_config=vae,
        clip_config=clip,
        up_block=up_block,
        timestep=timestep,
        ensemble_size=ensemble_size,
        image_size=image_size,
        caption_dim=caption_dim,
        deterministic=deterministic,
        seed=seed,
    )


def tiny_difflmm_config(
    tokenizer,
    vision_config: DiffLMMVisionConfig | None = None,
    *,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    kv_heads: int | None = None,
    intermediate: int | None = None,
) -> DiffLMMConfig:
    """A :class:`DiffLMMConfig` around a tiny Llama sized to ``tokenizer`` (MLP width
    ``intermediate``, default ``2 * text_hidden``)."""
    from transformers import LlamaConfig

    vision_config = vision_config or tiny_vision_config()
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=intermediate or text_hidden * 2,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=kv_heads or text_heads,
        max_position_embeddings=max(512, vision_config.num_image_tokens + 256),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return DiffLMMConfig(
        vision_config=vision_config,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=vision_config.num_image_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_difflmm(words: Sequence[str] | None = None, *, seed: int = 0, vision_config=None, **text_kwargs):
    """A random tiny ``DiffLMMForConditionalGeneration`` (eval mode) and its processor.

    Args:
        words: the text vocabulary (:func:`attendseg.tiny.word_tokenizer`); a small default.
        seed: torch seed for the random weights.
        vision_config: a :class:`DiffLMMVisionConfig` (default :func:`tiny_vision_config`).
        text_kwargs: ``text_hidden``, ``text_layers``, ``text_heads``, ``kv_heads``.
    """
    from attendseg.tiny import CHAT_TEMPLATE, word_tokenizer

    from .modeling_difflmm import DiffLMMForConditionalGeneration
    from .processing import make_processor

    tokenizer = word_tokenizer(words if words is not None else DEFAULT_WORDS)
    config = tiny_difflmm_config(tokenizer, vision_config, **text_kwargs)
    torch.manual_seed(seed)
    model = DiffLMMForConditionalGeneration(config).eval()
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
    )
    processor = make_processor(tokenizer, config.vision_config, chat_template=CHAT_TEMPLATE)
    return model, processor


def save_tiny_difflmm(folder: str | Path, words: Sequence[str] | None = None, **kwargs) -> Path:
    """Write a tiny random DiffLMM folder (``save_pretrained`` of model and processor)."""
    folder = Path(folder)
    model, processor = build_tiny_difflmm(words, **kwargs)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _llava_style_config(model, sd_dir: Path, clip_dir: Path) -> dict:
    """The LLaVA-style ``config.json`` of a DiffLMM LoRA release (Llama fields + ``mm_*``)."""
    from .unet_features import up_block_channels

    v = model.config.vision_config
    text = model.config.text_config.to_dict()
    for key in ("architectures", "model_type", "transformers_version", "dtype", "torch_dtype"):
        text.pop(key, None)
    blocks = v.up_blocks
    return {
        **text,
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "_name_or_path": "",
        "torch_dtype": "float32",
        "image_aspect_ratio": "pad",
        "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False,
        "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False,
        "mm_projector_type": "SDCLIPBlock",
        "mm_projector_lr": 2e-5,
        "mm_hidden_size": up_block_channels(v.unet_config) + [v.clip_hidden_size],
        "mm_vision_tower": str(sd_dir),
        "mm_vision_select_layer": blocks[0] if len(blocks) == 1 else blocks,
        "mm_vision_select_feature": "patch",
        "mm_vision_sd_timestep": v.timestep,
        "mm_vision_sd_ensemble_size": v.ensemble_size,
        "mm_vision_sd_clip": str(clip_dir),
        "mm_vision_sd_concat_clip": v.concat_clip,
        "mm_vision_sd_implicit_caption": v.implicit_caption,
        "mm_vision_sd_pe": v.num_image_tokens,
        "mm_vision_resolution": v.image_size,
        "mm_vision_sd_clip_proj_in": v.clip_hidden_size,
        "mm_vision_sd_clip_proj_out": v.caption_dim,
        "use_cache": True,
    }


def write_released_layout(
    folder: str | Path,
    model,
    tokenizer,
    *,
    lora_rank: int = 4,
    lora_alpha: int = 8,
    target_modules: Sequence[str] = LLAMA_LINEAR_MODULES,
    lora_std: float = 0.05,
    seed: int = 0,
    adapter_format: str = "safetensors",
) -> dict[str, Path]:
    """Write a DiffLMM checkpoint as the authors released it, plus the folders it needs.

    Layout under ``folder``:

    - ``base/``: the language model as a plain ``LlamaForCausalLM`` folder + tokenizer (the
      "Vicuna" the LoRA was trained on; its weights are ``model``'s).
    - ``sd/``: ``unet/``, ``vae/``, ``scheduler/`` subfolders and ``model_index.json``.
    - ``clip/``: the CLIP vision tower (``CLIPVisionModel``).
    - ``difflmm/``: ``config.json`` (LLaVA-style, ``mm_*`` fields pointing at ``sd/`` and
      ``clip/``), ``adapter_config.json`` + ``adapter_model.safetensors`` (or ``.bin``) with random
      LoRA factors (B ≠ 0, so merging changes the weights), and ``non_lora_trainables.bin`` with
      ``model``'s projector under ``base_model.model.model.mm_projector.*``.

    Returns:
        ``{"base", "sd", "clip", "difflmm"}`` → folder paths.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    paths = {name: folder / name for name in ("base", "sd", "clip", "difflmm")}
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=True)
    inner = model.model

    # base LLM
    base = AutoModelForCausalLM.from_config(model.config.text_config)
    state = {f"model.{k}": v for k, v in inner.language_model.state_dict().items()}
    state["lm_head.weight"] = model.lm_head.weight.detach()
    base.load_state_dict(state, strict=True)
    base.generation_config.pad_token_id = tokenizer.pad_token_id
    base.save_pretrained(paths["base"])
    tokenizer.save_pretrained(paths["base"])

    # Stable Diffusion folder and CLIP
    tower = inner.vision_tower
    tower.unet.save_pretrained(paths["sd"] / "unet")
    tower.vae.save_pretrained(paths["sd"] / "vae")
    tower.scheduler.save_pretrained(paths["sd"] / "scheduler")
    (paths["sd"] / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "scheduler": ["diffusers", "DDPMScheduler"],
            },
            indent=2,
        )
    )
    tower.clip.save_pretrained(paths["clip"])

    # the release: LLaVA-style config, LoRA adapter, non-LoRA trainables
    out = paths["difflmm"]
    (out / "config.json").write_text(json.dumps(_llava_style_config(model, paths["sd"], paths["clip"]), indent=2))
    (out / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": str(paths["base"]),
                "r": lora_rank,
                "lora_alpha": lora_alpha,
                "lora_dropout": 0.05,
                "bias": "none",
                "fan_in_fan_out": False,
                "inference_mode": True,
                "init_lora_weights": True,
                "modules_to_save": None,
                "target_modules": list(target_modules),
                "use_rslora": False,
                "use_dora": False,
            },
            indent=2,
        )
    )
    gen = torch.Generator().manual_seed(seed)
    lora = {}
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in target_modules:
            a = torch.randn(lora_rank, module.in_features, generator=gen) * lora_std
            b = torch.randn(module.out_features, lora_rank, generator=gen) * lora_std
            lora[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
            lora[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    if adapter_format == "safetensors":
        save_file(lora, str(out / "adapter_model.safetensors"))
    elif adapter_format == "bin":
        torch.save(lora, out / "adapter_model.bin")
    else:
        raise ValueError(f"adapter_format must be 'safetensors' or 'bin', got {adapter_format!r}")
    projector = {
        f"base_model.model.model.mm_projector.{k}": v.detach().clone()
        for k, v in inner.multi_modal_projector.state_dict().items()
    }
    torch.save(projector, out / "non_lora_trainables.bin")
    return paths
