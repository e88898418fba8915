"""Up-block features of a diffusers ``UNet2DConditionModel``, stopping after the last block needed.

A full UNet pass runs the whole decoder (every up-block, then the output norm and conv) even when
only an early up-block's output is wanted; DiffLMM wants up-block 1 of SD-1.5, which skips the
two highest-resolution up-blocks (the most expensive ones at 384 px). :func:`unet_up_block_features`
walks the same path as ``UNet2DConditionModel.forward`` — time embedding → ``conv_in`` → down
blocks → mid block → up blocks — and returns as soon as the last requested up-block is done.

Supported: Stable-Diffusion-style UNets (SD 1.x / 2.x and scaled-down copies): text-style
cross-attention conditioning, optional ``center_input_sample``, optional time-embedding
activation, any block layout. UNets that need extra conditioning (class labels, added
text/time embeddings as in SDXL, an encoder projection, GLIGEN, ControlNet/T2I residuals) are
refused with :class:`attendseg.errors.AttendsegError` rather than silently mis-run.
"""

from __future__ import annotations

from typing import Sequence

import torch

from attendseg.errors import AttendsegError

__all__ = ["check_unet_supported", "unet_up_block_features", "up_block_channels", "up_block_scale"]


def check_unet_supported(unet) -> None:
    """Raise :class:`AttendsegError` when ``unet`` needs conditioning the early-stop pass lacks."""
    unsupported = []
    if getattr(unet, "class_embedding", None) is not None:
        unsupported.append("class embeddings (class_embed_type / num_class_embeds)")
    if getattr(unet, "add_embedding", None) is not None:
        unsupported.append(f"added embeddings (addition_embed_type={unet.config.addition_embed_type!r})")
    if getattr(unet, "encoder_hid_proj", None) is not None:
        unsupported.append(f"an encoder projection (encoder_hid_dim_type={unet.config.encoder_hid_dim_type!r})")
    if getattr(unet, "position_net", None) is not None:
        unsupported.append("GLIGEN position net")
    if getattr(unet.config, "time_cond_proj_dim", None) is not None:
        unsupported.append("timestep conditioning (time_cond_proj_dim)")
    if unsupported:
        raise AttendsegError(
            f"{type(unet).__name__} with {', '.join(unsupported)} is not supported by the DiffLMM "
            "encoder (only Stable-Diffusion-style text-conditioned UNets are)"
        )


def up_block_channels(unet_config) -> list[int]:
    """Output channels of each up-block (``block_out_channels`` reversed)."""
    channels = _get(unet_config, "block_out_channels")
    return list(reversed(list(channels)))


def up_block_scale(unet_config, index: int) -> int:
    """How many times smaller than the latent the output of up-block ``index`` is (a power of 2)."""
    n = len(_get(unet_config, "block_out_channels"))
    down_factor = 2 ** (n - 1)  # every down block but the last halves the resolution
    up_factor = 2 ** min(index + 1, n - 1)  # every up block but the last doubles it
    return down_factor // up_factor


def _get(config, key):
    return config[key] if isinstance(config, dict) else getattr(config, key)


def _normalise_blocks(blocks: int | Sequence[int], n: int) -> list[int]:
    if isinstance(blocks, int):
        blocks = [blocks]
    out = []
    for b in blocks:
        b = int(b)
        if b < 0:
            b += n
        if not 0 <= b < n:
            raise AttendsegError(f"up-block {b} does not exist: this UNet has {n} up-blocks (0..{n - 1})")
        out.append(b)
    if not out:
        raise AttendsegError("at least one up-block must be requested")
    return out


def unet_up_block_features(
    unet,
    sample: torch.Tensor,
    timestep: torch.Tensor | int | float,
    encoder_hidden_states: torch.Tensor,
    up_blocks: int | Sequence[int] = 1,
    *,
    encoder_attention_mask: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Outputs of the requested up-blocks of ``unet``; nothing past the last of them is run.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (see the module note for what is supported).
        sample: noisy latents, ``(B, C_latent, h, w)``.
        timestep: a scalar or a ``(B,)`` tensor of timesteps.
        encoder_hidden_states: cross-attention conditioning, ``(B, L, cross_attention_dim)``.
        up_blocks: index or indices of the up-blocks (0 = the lowest resolution, right after the
            mid block; negatives count from the end).
        encoder_attention_mask: optional ``(B, L)`` keep-mask (1 keep, 0 drop) for the
            conditioning tokens.

    Returns:
        One tensor per requested index, in the order asked, each ``(B, C_i, h_i, w_i)``: exactly
        what a forward hook on ``unet.up_blocks[i]`` sees during a full ``unet(...)`` call.
    """
    check_unet_supported(unet)
    wanted = _normalise_blocks(up_blocks, len(unet.up_blocks))
    last = max(wanted)
    cfg = unet.config

    # Sizes that are not a multiple of the total up-sampling factor need explicit upsample sizes.
    up_factor = 2**unet.num_upsamplers
    forward_upsample_size = any(d % up_factor != 0 for d in sample.shape[-2:])

    if encoder_attention_mask is not None:  # keep-mask → additive bias, broadcast over queries
        encoder_attention_mask = (1 - encoder_attention_mask.to(sample.dtype)) * -10000.0
        encoder_attention_mask = encoder_attention_mask.unsqueeze(1)

    if cfg.center_input_sample:
        sample = 2 * sample - 1.0

    # 1. time embedding
    if not torch.is_tensor(timestep):
        dtype = torch.int64
        if isinstance(timestep, float):
            dtype = torch.float32 if sample.device.type == "mps" else torch.float64
        timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
    elif timestep.ndim == 0:
        timestep = timestep[None]
    timestep = timestep.to(sample.device).expand(sample.shape[0])
    emb = unet.time_embedding(unet.time_proj(timestep).to(sample.dtype))
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)

    cross = dict(encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask)

    # 2. input conv, 3. down blocks (keeping their skip connections)
    sample = unet.conv_in(sample)
    skips: tuple[torch.Tensor, ...] = (sample,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            sample, res = block(hidden_states=sample, temb=emb, **cross)
        else:
            sample, res = block(hidden_states=sample, temb=emb)
        skips += res

    # 4. mid block
    if unet.mid_block is not None:
        if getattr(unet.mid_block, "has_cross_attention", False):
            sample = unet.mid_block(sample, emb, **cross)
        else:
            sample = unet.mid_block(sample, emb)

    # 5. up blocks, up to the last one asked for
    outputs: dict[int, torch.Tensor] = {}
    n_up = len(unet.up_blocks)
    for i, block in enumerate(unet.up_blocks[: last + 1]):
        n_res = len(block.resnets)
        res, skips = skips[-n_res:], skips[:-n_res]
        upsample_size = skips[-1].shape[2:] if forward_upsample_size and i < n_up - 1 else None
        if getattr(block, "has_cross_attention", False):
            sample = block(
                hidden_states=sample,
                temb=emb,
                res_hidden_states_tuple=res,
                upsample_size=upsample_size,
                **cross,
            )
        else:
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)
        if i in wanted:
            outputs[i] = sample
    return [outputs[i] for i in wanted]
