"""DiffLMM: LLaVA whose visual tokens come from a Stable Diffusion UNet (plus CLIP).

The model is ``LlavaForConditionalGeneration`` with only the image path replaced: the vision
tower (:class:`DiffusionVisionTower`: CLIP, VAE, UNet, noise schedule, all frozen) and the
projector (:class:`SDCLIPBlock`, which also holds the implicit captioner). Everything else —
``config.image_token_id``, ``<image>`` expansion, the language model under
``model.model.language_model`` (a standard transformers Llama), ``generate`` — is LLaVA's own code,
so attention capture and the LLaVA adapter's Views work unchanged.

Image path, per image (``pixel_values``: ``(B, 3, S, S)`` in [-1, 1], S = 384 for the paper):

1. CLIP: resize to CLIP's input size (bilinear), re-normalise to CLIP statistics,
   hidden state ``clip_feature_layer`` (penultimate) without CLS → ``(B, N, 1024)``.
2. Implicit caption: ``clip_projector`` MLP + ``clip_pe`` → ``(B, N, 768)``, the UNet's
   cross-attention conditioning in place of a text prompt.
3. VAE latent (``mode()`` when deterministic, else one posterior sample per draw) × scaling factor; noised to
   ``timestep`` with the scheduler's ``add_noise`` (E = ``ensemble_size`` noise draws, batched);
   the UNet runs up to the last up-block needed (:func:`unet_up_block_features`); features are
   averaged over the E draws → ``(B, 1280, 24, 24)``.
4. Projector: LayerNorm over channels → 1×1 conv → GELU → tokens (row-major) → concat CLIP
   tokens → MLP → + ``vt_pe`` → ``(B, N, text_hidden)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, CLIPVisionConfig, CLIPVisionModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import (
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaPreTrainedModel,
)

from attendseg.errors import AttendsegError

from .configuration_difflmm import DiffLMMConfig, DiffLMMVisionConfig
from .unet_features import check_unet_supported, unet_up_block_features

__all__ = [
    "DiffLMMForConditionalGeneration",
    "DiffLMMModel",
    "DiffLMMPreTrainedModel",
    "DiffusionVisionTower",
    "SDCLIPBlock",
]

#: The attention the CLIP inside the tower always runs with, whatever the language model uses.
VISION_ATTENTION = "sdpa"


class DiffusionVisionTower(nn.Module):
    """Frozen CLIP + VAE + UNet (+ noise schedule) producing UNet up-block features.

    Submodules: ``clip`` (``CLIPVisionModel``), ``vae`` (``AutoencoderKL``), ``unet``
    (``UNet2DConditionModel``); ``scheduler`` (a diffusers ``DDPMScheduler``) is not a module.
    Settings are read from ``config`` (a :class:`DiffLMMVisionConfig`) at call time, so changing
    e.g. ``model.config.vision_config.timestep`` takes effect on the next image.
    """

    def __init__(self, config: DiffLMMVisionConfig):
        super().__init__()
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        if not config.implicit_caption:
            raise AttendsegError(
                "DiffLMM without the implicit captioner (implicit_caption=False) is not supported: "
                "the UNet would need a text encoder for its conditioning"
            )
        self.config = config
        clip_config = CLIPVisionConfig(**{k: v for k, v in config.clip_config.items() if k != "model_type"})
        clip_config._attn_implementation = VISION_ATTENTION
        self.clip = CLIPVisionModel(clip_config)
        self.vae = AutoencoderKL.from_config(config.vae_config)
        self.unet = UNet2DConditionModel.from_config(config.unet_config)
        self.scheduler = DDPMScheduler.from_config(config.scheduler_config)
        check_unet_supported(self.unet)
        if self.unet.config.cross_attention_dim != config.caption_dim:
            raise AttendsegError(
                f"the UNet's cross_attention_dim ({self.unet.config.cross_attention_dim}) must equal the "
                f"implicit caption width caption_dim ({config.caption_dim})"
            )
        if config.concat_clip and config.clip_grid != config.feature_grid:
            raise AttendsegError(
                f"CLIP's patch grid ({config.clip_grid}²) and the UNet feature grid ({config.feature_grid}² "
                f"from up-block {config.up_blocks[0]} at {config.image_size} px) must match to concatenate them"
            )

    # -- pieces -------------------------------------------------------------------------------
    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[-2:]) != (size, size):
            raise AttendsegError(
                f"DiffLMM expects pixel_values of shape (B, 3, {size}, {size}) in [-1, 1], "
                f"got {tuple(pixel_values.shape)}"
            )

    def clip_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP patch tokens ``(B, N, clip_hidden)`` of ``[-1, 1]`` images (CLS dropped)."""
        cfg = self.config
        clip = self.clip
        if clip.config._attn_implementation != VISION_ATTENTION:  # keep the tower off capture
            clip.config._attn_implementation_internal = VISION_ATTENTION
        size = clip.config.image_size
        x = pixel_values.float()
        if tuple(x.shape[-2:]) != (size, size):  # bilinear, as the authors' code (384 → 336)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = x * 0.5 + 0.5
        mean = torch.tensor(cfg.clip_image_mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(cfg.clip_image_std, device=x.device).view(1, -1, 1, 1)
        x = ((x - mean) / std).to(clip.dtype)
        out = clip(pixel_values=x, output_hidden_states=True, return_dict=True)
        return out.hidden_states[cfg.clip_feature_layer][:, 1:]

    def latents(self, pixel_values: torch.Tensor, *, generator: torch.Generator | None = None,
                deterministic: bool | None = None) -> torch.Tensor:
        """Scaled VAE latents ``(B, 4, S/8, S/8)`` (``mode()`` when deterministic)."""
        return self._latents(pixel_values, 1, generator, deterministic)

    def _latents(self, pixel_values, draws: int, generator, deterministic) -> torch.Tensor:
        """``(draws·B, ...)`` scaled latents, draw-major: the mode repeated, or one sample per draw."""
        deterministic = self.config.deterministic if deterministic is None else deterministic
        vae = self.vae
        dist = vae.encode(pixel_values.to(vae.dtype)).latent_dist
        if deterministic:
            z = dist.mode().repeat(draws, 1, 1, 1)
        else:  # each draw samples the posterior, like encoding the image once per draw
            mean, std = dist.mean.repeat(draws, 1, 1, 1), dist.std.repeat(draws, 1, 1, 1)
            if generator is not None:
                eps = torch.randn(mean.shape, generator=generator, device=generator.device, dtype=torch.float32)
                eps = eps.to(mean.device, mean.dtype)
            else:
                eps = torch.randn_like(mean)
            z = mean + std * eps
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            z = z - shift
        return z * vae.config.scaling_factor

    def diffusion_features(
        self,
        pixel_values: torch.Tensor,
        condition: torch.Tensor,
        *,
        up_blocks: int | list[int] | None = None,
        timestep: int | None = None,
        ensemble_size: int | None = None,
        deterministic: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> list[torch.Tensor]:
        """UNet up-block features of noised latents, averaged over the noise ensemble.

        Args:
            pixel_values: ``(B, 3, S, S)`` in [-1, 1].
            condition: cross-attention conditioning ``(B, L, caption_dim)`` (the implicit caption).
            up_blocks, timestep, ensemble_size, deterministic: override the config's values.
            generator: noise generator for the whole ``(E·B, ...)`` noise tensor (and the latent
                sample when not deterministic). When ``None`` and deterministic, each image's E
                draws come from a fresh CPU generator seeded with ``config.seed``: the same image
                gets the same noise on every call, in any batch, on any device.

        Returns:
            One ``(B, C_i, h_i, w_i)`` tensor per requested up-block.
        """
        cfg = self.config
        up_blocks = cfg.up_blocks if up_blocks is None else up_blocks
        timestep = cfg.timestep if timestep is None else int(timestep)
        e = cfg.ensemble_size if ensemble_size is None else int(ensemble_size)
        deterministic = cfg.deterministic if deterministic is None else deterministic
        if e < 1:
            raise AttendsegError(f"ensemble_size must be ≥ 1, got {e}")
        n_steps = int(self.scheduler.config.num_train_timesteps)
        if not 0 <= timestep < n_steps:
            raise AttendsegError(f"timestep must be in [0, {n_steps}), got {timestep}")
        z = self._latents(pixel_values, e, generator, deterministic)  # (E·B, ...), draw-major
        b = z.shape[0] // e
        if generator is None and deterministic:
            # every image gets the noise of a fresh generator seeded with `seed`: results do not
            # depend on the batch an image is in, nor on the device
            seeded = torch.Generator("cpu").manual_seed(int(cfg.seed))
            noise = torch.randn((e, 1, *z.shape[1:]), generator=seeded, dtype=torch.float32)
            noise = noise.expand(e, b, *z.shape[1:]).reshape(z.shape).to(z.device, z.dtype)
        elif generator is not None:
            noise = torch.randn(z.shape, generator=generator, device=generator.device, dtype=torch.float32)
            noise = noise.to(z.device, z.dtype)
        else:
            noise = torch.randn_like(z)
        t = torch.full((z.shape[0],), timestep, dtype=torch.long, device=z.device)
        noisy = self.scheduler.add_noise(z, noise, t)
        cond = condition.to(self.unet.dtype).repeat(e, 1, 1)
        feats = unet_up_block_features(self.unet, noisy.to(self.unet.dtype), t, cond, up_blocks)
        return [f.view(e, b, *f.shape[1:]).mean(0) for f in feats]


class SDCLIPBlock(nn.Module):
    """The DiffLMM projector and implicit captioner (parameter names as in the released weights).

    - ``clip_projector`` (Linear → GELU → Linear) and ``clip_pe``: CLIP tokens → caption tokens.
    - ``sd_norm_layer`` (LayerNorm over channels), ``sd_proj_layer`` (1×1 conv → GELU),
      ``linear`` (Linear → GELU → Linear) and ``vt_pe``: UNet features (+ CLIP tokens) → LLM tokens.
    """

    def __init__(self, config: DiffLMMConfig):
        super().__init__()
        v = config.vision_config
        clip_dim, cap = v.clip_hidden_size, v.caption_dim
        text = config.text_config.hidden_size
        self.clip_projector = nn.Sequential(nn.Linear(clip_dim, cap), nn.GELU(), nn.Linear(cap, cap))
        self.clip_pe = nn.Parameter(torch.zeros(v.clip_grid**2, cap))
        self.sd_norm_layer = nn.LayerNorm(v.feature_channels)
        proj_dim = v.sd_proj_dim or text // 4  # the authors' width: a quarter of the LLM's
        self.sd_proj_layer = nn.Sequential(nn.Conv2d(v.feature_channels, proj_dim, kernel_size=1), nn.GELU())
        self.concat_clip = bool(v.concat_clip)
        in_dim = proj_dim + (clip_dim if self.concat_clip else 0)
        self.linear = nn.Sequential(nn.Linear(in_dim, text), nn.GELU(), nn.Linear(text, text))
        self.vt_pe = nn.Parameter(torch.zeros(v.num_image_tokens, text))

    def caption(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        """Implicit caption ``(B, N, caption_dim)`` from CLIP tokens ``(B, N, clip_hidden)``."""
        x = self.clip_projector(clip_tokens.to(self.clip_pe.dtype))
        return x + self.clip_pe

    def forward(self, features: list[torch.Tensor] | torch.Tensor, clip_tokens: torch.Tensor | None) -> torch.Tensor:
        """LLM tokens ``(B, h·w, text_hidden)`` (row-major) from UNet features ``(B, C, h, w)``.

        Several feature maps are resized (bilinear) to the first one's grid and concatenated
        over channels.
        """
        if isinstance(features, torch.Tensor):
            features = [features]
        h, w = features[0].shape[-2:]
        maps = [f if f.shape[-2:] == (h, w) else F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
                for f in features]
        x = torch.cat(maps, dim=1).to(self.vt_pe.dtype)
        x = self.sd_norm_layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.sd_proj_layer(x).flatten(2).transpose(1, 2)  # (B, h·w, sd_proj_dim)
        if self.concat_clip:
            if clip_tokens is None:
                raise AttendsegError("this projector concatenates CLIP features: clip_tokens are required")
            x = torch.cat([x, clip_tokens.to(x.dtype)], dim=-1)
        return self.linear(x) + self.vt_pe


class DiffLMMPreTrainedModel(LlavaPreTrainedModel):
    config_class = DiffLMMConfig
    config: DiffLMMConfig
    _can_compile_fullgraph = False
    _supports_flash_attn = True
    _supports_flex_attn = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, SDCLIPBlock):
            std = getattr(self.config.get_text_config(), "initializer_range", 0.02)
            init.normal_(module.clip_pe, mean=0.0, std=std)
            init.normal_(module.vt_pe, mean=0.0, std=std)


class DiffLMMModel(DiffLMMPreTrainedModel, LlavaModel):
    """``LlavaModel`` with the diffusion vision tower and the SDCLIP projector."""

    def __init__(self, config: DiffLMMConfig):
        LlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = DiffusionVisionTower(config.vision_config)
        self.multi_modal_projector = SDCLIPBlock(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """Visual tokens of ``pixel_values`` ``(B, 3, S, S)`` in [-1, 1].

        Returns:
            ``last_hidden_state``: ``(B, N, text_hidden)``; ``pooler_output``: the same as a list of
            ``(N, text_hidden)`` per image (what ``LlavaModel.forward`` scatters into ``<image>``
            positions); ``hidden_states``: ``(unet_features, clip_tokens)``.

        LLaVA's ``vision_feature_layer`` / ``vision_feature_select_strategy`` / ``image_sizes``
        arguments are accepted and ignored.
        """
        tower = self.vision_tower
        tower._check_pixels(pixel_values)
        clip_tokens = tower.clip_features(pixel_values)
        condition = self.multi_modal_projector.caption(clip_tokens)
        features = tower.diffusion_features(pixel_values, condition)
        tokens = self.multi_modal_projector(features, clip_tokens)
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens,
            pooler_output=list(tokens),
            hidden_states=(tuple(features), clip_tokens),
        )


class DiffLMMForConditionalGeneration(DiffLMMPreTrainedModel, LlavaForConditionalGeneration):
    """``LlavaForConditionalGeneration`` with a :class:`DiffLMMModel` inside."""

    def __init__(self, config: DiffLMMConfig):
        LlavaPreTrainedModel.__init__(self, config)
        self.model = DiffLMMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
