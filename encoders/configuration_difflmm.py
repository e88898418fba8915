"""Configurations of the DiffLMM model: the diffusion vision tower and the whole LLaVA-style model.

``DiffLMMVisionConfig()`` with no arguments describes the paper's encoder: SD-1.5 (UNet, VAE,
DDPM noise schedule), CLIP ViT-L/14-336 as the implicit captioner, up-block 1 at t = 100, one
noise draw, 384 px input. The UNet, VAE, scheduler and CLIP configurations are stored as plain
dicts (diffusers / transformers config fields) so a saved DiffLMM folder holds one
``config.json`` and one set of weights.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, LlavaConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

__all__ = ["DiffLMMConfig", "DiffLMMVisionConfig", "SD15_UNET", "SD15_VAE", "SD15_SCHEDULER", "CLIP_L14_336"]

#: Stable Diffusion 1.5's UNet (``UNet2DConditionModel`` fields that differ from its defaults).
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "norm_num_groups": 32,
}
#: Stable Diffusion 1.5's VAE (``AutoencoderKL``).
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
#: Stable Diffusion 1.5's training noise schedule (only ``add_noise`` is used).
SD15_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
#: ``openai/clip-vit-large-patch14-336`` vision tower.
CLIP_L14_336 = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _plain(value):
    """JSON-friendly copy: tuples → lists, diffusers FrozenDicts → dicts, private keys dropped."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@strict
class DiffLMMVisionConfig(PreTrainedConfig):
    r"""The diffusion vision tower of DiffLMM.

    Args:
        unet_config, vae_config, scheduler_config: diffusers config dicts of the
            ``UNet2DConditionModel``, ``AutoencoderKL`` and noise scheduler (DDPM ``add_noise``).
        clip_config: a ``CLIPVisionConfig`` dict (the implicit captioner and the concatenated
            CLIP features).
        up_block: the UNet up-block whose output is the feature map (an index, or a list whose
            outputs are resized to the first one's grid and concatenated over channels).
        timestep: the diffusion timestep the latent is noised to.
        ensemble_size: number of noise draws whose features are averaged.
        image_size: side of the (square, [-1, 1]) input image.
        clip_feature_layer: CLIP hidden-state index used (``-2``: penultimate), CLS dropped.
        clip_image_mean, clip_image_std: CLIP normalisation applied after resizing to CLIP's size.
        implicit_caption: condition the UNet on projected CLIP patch tokens (the paper's setting;
            ``False`` is not supported).
        concat_clip: concatenate CLIP patch features to the projected UNet features.
        caption_dim: width of the implicit caption tokens (the UNet's ``cross_attention_dim``).
        sd_proj_dim: output channels of the projector's 1×1 conv (default: a quarter of the
            language model's hidden size, as the authors: 1024 for Vicuna-7B).
        deterministic: latent ``mode()`` instead of a sample and noise from a generator seeded
            with ``seed`` on every call; ``False`` draws fresh noise (the paper's behaviour).
        seed: seed of the noise when ``deterministic``.
    """

    model_type = "difflmm_vision"
    base_config_key = "vision_config"

    unet_config: dict | None = None
    vae_config: dict | None = None
    scheduler_config: dict | None = None
    clip_config: dict | None = None
    up_block: int | list[int] = 1
    timestep: int = 100
    ensemble_size: int = 1
    image_size: int = 384
    clip_feature_layer: int = -2
    clip_image_mean: list[float] | None = None
    clip_image_std: list[float] | None = None
    implicit_caption: bool = True
    concat_clip: bool = True
    caption_dim: int = 768
    sd_proj_dim: int | None = None
    deterministic: bool = True
    seed: int = 0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.unet_config = _plain(self.unet_config if self.unet_config is not None else SD15_UNET)
        self.vae_config = _plain(self.vae_config if self.vae_config is not None else SD15_VAE)
        self.scheduler_config = _plain(self.scheduler_config if self.scheduler_config is not None else SD15_SCHEDULER)
        clip = self.clip_config if self.clip_config is not None else CLIP_L14_336
        if isinstance(clip, PreTrainedConfig):
            clip = clip.to_dict()
        self.clip_config = _plain(clip)
        self.clip_config["model_type"] = "clip_vision_model"
        if self.clip_image_mean is None:
            self.clip_image_mean = list(OPENAI_CLIP_MEAN)
        if self.clip_image_std is None:
            self.clip_image_std = list(OPENAI_CLIP_STD)
        super().__post_init__(**kwargs)

    @property
    def up_blocks(self) -> list[int]:
        """``up_block`` as a list."""
        return [self.up_block] if isinstance(self.up_block, int) else list(self.up_block)

    @property
    def clip_hidden_size(self) -> int:
        return int(self.clip_config.get("hidden_size", 768))

    @property
    def clip_grid(self) -> int:
        """Side of CLIP's patch grid."""
        return int(self.clip_config.get("image_size", 224)) // int(self.clip_config.get("patch_size", 32))

    @property
    def vae_scale(self) -> int:
        """Downsampling factor of the VAE (8 for SD)."""
        return 2 ** (len(self.vae_config.get("block_out_channels", [64])) - 1)

    @property
    def feature_grid(self) -> int:
        """Side of the UNet feature grid of ``up_blocks[0]`` at ``image_size``."""
        from .unet_features import up_block_scale

        latent = self.image_size // self.vae_scale
        n_up = len(self.unet_config["block_out_channels"])
        first = self.up_blocks[0] % n_up
        return latent // up_block_scale(self.unet_config, first)

    @property
    def num_image_tokens(self) -> int:
        return self.feature_grid**2

    @property
    def feature_channels(self) -> int:
        """Channels of the (concatenated) UNet features."""
        from .unet_features import up_block_channels

        channels = up_block_channels(self.unet_config)
        return sum(channels[b] for b in self.up_blocks)


@strict
class DiffLMMConfig(LlavaConfig):
    r"""A LLaVA configuration whose vision tower is :class:`DiffLMMVisionConfig`.

    Everything LLaVA-specific (``image_token_id``, ``image_seq_length``, ``text_config``) means
    what it means for ``LlavaConfig``; ``vision_feature_layer`` and
    ``vision_feature_select_strategy`` are unused (the vision config says which up-block is used).
    """

    model_type = "difflmm"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=DiffLMMVisionConfig),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_feature_select_strategy: str = "full"
