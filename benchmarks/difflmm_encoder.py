"""DiffLMM encoder time: early-stopping UNet vs the full UNet pass, side by side in one run.

The paper's encoder needs only up-block 1 of SD-1.5 (1280 × 24 × 24 at 384 px), but a plain
``unet(...)`` call runs the whole decoder: up-blocks 2 and 3 (the 48 × 48 ones, with
self-attention over 2304 positions) and the output conv. ``unet_up_block_features`` stops after
up-block 1. This script times both on the same random-weight models and inputs, interleaved
(full, early, full, early, ...), and reports medians and their ratio for

- the UNet alone (noised latent → up-block-1 features), and
- the whole DiffLMM encoder (CLIP → implicit caption, VAE latent, noise, UNet → features).

The models have SD-1.5's real block structure (4 levels, 2 resnets per down block, 3 per up block,
cross-attention transformers, 8 heads) and CLIP ViT-L/14-336's depth, with every width divided
by ``--scale`` (default 4 on CPU so the run takes about a minute; ``--scale 1`` is the real size,
for a GPU). Weights are random: timing does not depend on them.

    python benchmarks/difflmm_encoder.py                      # CPU, widths ÷ 4, 384 px
    python benchmarks/difflmm_encoder.py --scale 1 --device cuda --dtype float16 --batch 1 8
    python benchmarks/difflmm_encoder.py --out benchmarks/results/difflmm_encoder.md

With ``--out``, the run's table is written into that markdown file's section
"DiffLMM encoder: early stop", replacing an earlier run with the same settings.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

SECTION = "## DiffLMM encoder: early stop"


def vision_config(scale: int, image_size: int):
    from attendseg.encoders import DiffLMMVisionConfig
    from attendseg.encoders.configuration_difflmm import CLIP_L14_336, SD15_UNET, SD15_VAE

    def div(x):
        return max(1, x // scale)

    unet = dict(SD15_UNET, block_out_channels=[div(c) for c in SD15_UNET["block_out_channels"]],
                norm_num_groups=div(32), cross_attention_dim=div(768))
    vae = dict(SD15_VAE, block_out_channels=[div(c) for c in SD15_VAE["block_out_channels"]],
               norm_num_groups=div(32))
    clip = dict(CLIP_L14_336, hidden_size=div(1024), intermediate_size=div(4096), projection_dim=div(768),
                num_attention_heads=16 if scale == 1 else max(1, 16 // scale))
    return DiffLMMVisionConfig(unet_config=unet, vae_config=vae, clip_config=clip, image_size=image_size,
                               caption_dim=div(768), up_block=1, timestep=100, ensemble_size=1)


def full_pass_features(unet, sample, t, cond, block: int):
    """The reference: a whole ``unet(...)`` call, the up-block output taken by a forward hook."""
    seen = {}
    hook = unet.up_blocks[block].register_forward_hook(lambda m, a, out: seen.__setitem__("x", out))
    try:
        unet(sample, t, encoder_hidden_states=cond)
    finally:
        hook.remove()
    return seen["x"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(fn_a, fn_b, device, repeats: int, warmup: int = 2):
    """Interleaved timing of two callables; returns (median_a, median_b) in milliseconds."""
    for _ in range(warmup):
        fn_a(), fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times_a), statistics.median(times_b)


def run(args) -> list[dict]:
    from attendseg.encoders import DiffusionVisionTower, unet_up_block_features
    from attendseg.encoders.modeling_difflmm import SDCLIPBlock  # noqa: F401  (projector not timed)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = vision_config(args.scale, args.image_size)
    tower = DiffusionVisionTower(config).to(device, dtype).eval()
    captioner = torch.nn.Sequential(
        torch.nn.Linear(config.clip_hidden_size, config.caption_dim), torch.nn.GELU(),
        torch.nn.Linear(config.caption_dim, config.caption_dim),
    ).to(device, dtype)
    block = config.up_blocks[0]
    rows = []
    for batch in args.batch:
        pixels = (torch.rand(batch, 3, args.image_size, args.image_size, device=device) * 2 - 1).to(dtype)
        with torch.no_grad():
            z = tower.latents(pixels)
            t = torch.full((batch,), config.timestep, device=device, dtype=torch.long)
            noisy = tower.scheduler.add_noise(z, torch.randn_like(z), t)
            cond = captioner(tower.clip_features(pixels))
            early = unet_up_block_features(tower.unet, noisy, t, cond, block)[0]
            full = full_pass_features(tower.unet, noisy, t, cond, block)
            assert torch.equal(early, full), "early stop and full pass disagree"

            def encoder(features_fn):
                def go():
                    clip_tokens = tower.clip_features(pixels)
                    condition = captioner(clip_tokens)
                    latents = tower.latents(pixels)
                    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)
                    return features_fn(tower.scheduler.add_noise(latents, noise, t), condition)
                return go

            unet_full, unet_early = bench(
                lambda: full_pass_features(tower.unet, noisy, t, cond, block),
                lambda: unet_up_block_features(tower.unet, noisy, t, cond, block),
                device, args.repeats,
            )
            parts = [("UNet only", unet_full, unet_early)]
            if not args.unet_only:
                enc_full, enc_early = bench(
                    encoder(lambda x, c: full_pass_features(tower.unet, x, t, c, block)),
                    encoder(lambda x, c: unet_up_block_features(tower.unet, x, t, c, block)[0]),
                    device, args.repeats,
                )
                parts.append(("whole encoder (CLIP + VAE + UNet)", enc_full, enc_early))
        for part, full_ms, early_ms in parts:
            rows.append(dict(batch=batch, part=part, full=full_ms, early=early_ms, ratio=early_ms / full_ms))
            print(f"batch {batch:>2}  {part:<34} full {full_ms:9.1f} ms   early stop {early_ms:9.1f} ms   "
                  f"ratio {early_ms / full_ms:.3f}  (saves {100 * (1 - early_ms / full_ms):.0f}%)")
    return rows


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def markdown(args, rows) -> tuple[str, str]:
    key = f"{args.device}-{args.dtype}-scale{args.scale}-{args.image_size}px" + ("-unet" if args.unet_only else "")
    widths = "SD-1.5 widths" if args.scale == 1 else f"SD-1.5 / CLIP-L widths ÷ {args.scale}"
    lines = [
        f"<!-- run: {key} -->",
        f"### {device_name(args.device)}, {args.dtype}, {args.image_size} px, {widths}",
        "",
        f"SD-1.5 block structure (4 levels, cross-attention, 2/3 resnets per down/up block), CLIP-L depth; "
        f"features of up-block 1 (the paper's), t = 100, ensemble 1; random weights; median of "
        f"{args.repeats} interleaved runs after 2 warm-ups. torch {torch.__version__}."
        + (" Run on a CPU shared with other jobs: expect noise of ±10–20 % on single figures." if args.device == "cpu" else ""),
        "",
        "| batch | timed | full UNet pass (ms) | early stop (ms) | early / full |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['part']} | {r['full']:.1f} | {r['early']:.1f} | {r['ratio']:.3f} |")
    lines.append(f"<!-- end: {key} -->")
    return key, "\n".join(lines)


def write(path: Path, key: str, block: str) -> None:
    intro = (
        f"{SECTION}\n\n"
        "`attendseg.encoders.unet_up_block_features` stops the UNet after the last up-block it needs "
        "(up-block 1 for DiffLMM) instead of running the whole decoder; the features are bit-identical "
        "to a forward hook on a full pass (checked in each run). Command: "
        "`python benchmarks/difflmm_encoder.py [--scale 1 --device cuda --dtype float16] --out "
        "benchmarks/results/difflmm_encoder.md`.\n"
    )
    text = path.read_text() if path.exists() else intro
    if SECTION not in text:
        text = intro + "\n" + text
    start, end = f"<!-- run: {key} -->", f"<!-- end: {key} -->"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=4, help="divide every width by this (1 = real size)")
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--unet-only", action="store_true", help="time the UNet alone (skip the whole encoder)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write the section into")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    key, block = markdown(args, rows)
    if args.out:
        write(args.out, key, block)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
