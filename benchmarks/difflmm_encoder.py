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
    python benchmarks/difflmm_encoder.py --flops-only      # FLOP counts at the real size only

Every run also counts the FLOPs of both variants at the real size on the meta device (exact,
no timing noise), which is the figure to trust on a busy CPU.

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
    """Interleaved timing of two callables; returns ``((best_a, median_a), (best_b, median_b))``
    in milliseconds. The best (minimum) is the figure least disturbed by other jobs."""
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
    return (min(times_a), statistics.median(times_a)), (min(times_b), statistics.median(times_b))


def run(args) -> list[dict]:
    from attendseg.encoders import DiffusionVisionTower, unet_up_block_features

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
        for part, (full_ms, full_med), (early_ms, early_med) in parts:
            rows.append(dict(batch=batch, part=part, full=full_ms, early=early_ms, ratio=early_ms / full_ms,
                             full_median=full_med, early_median=early_med))
            print(f"batch {batch:>2}  {part:<34} best: full {full_ms:9.1f} ms, early stop {early_ms:9.1f} ms, "
                  f"ratio {early_ms / full_ms:.3f} (saves {100 * (1 - early_ms / full_ms):.0f}%); "
                  f"medians {full_med:.1f} / {early_med:.1f} ms")
    return rows


def count_flops(image_size: int, block: int = 1) -> dict:
    """FLOPs of each part at SD-1.5 / CLIP-L size, counted on the meta device (no weights, no
    compute, no timing noise): ``{"unet_full", "unet_early", "vae_encoder", "clip"}``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from attendseg.encoders import unet_up_block_features

    config = vision_config(1, image_size)
    meta = torch.device("meta")
    with meta:
        unet = UNet2DConditionModel.from_config(config.unet_config).eval()
        vae = AutoencoderKL.from_config(config.vae_config).eval()
        clip_config = CLIPVisionConfig(**{k: v for k, v in config.clip_config.items() if k != "model_type"})
        clip_config._attn_implementation = "sdpa"
        clip = CLIPVisionModel(clip_config).eval()
    latent = image_size // config.vae_scale
    x = torch.zeros(1, 4, latent, latent, device=meta)
    cond = torch.zeros(1, config.clip_grid**2, config.caption_dim, device=meta)
    t = torch.full((1,), config.timestep, device=meta, dtype=torch.long)
    pixels = torch.zeros(1, 3, image_size, image_size, device=meta)
    clip_pixels = torch.zeros(1, 3, clip_config.image_size, clip_config.image_size, device=meta)
    jobs = {
        "unet_full": lambda: full_pass_features(unet, x, t, cond, block),
        "unet_early": lambda: unet_up_block_features(unet, x, t, cond, block),
        "vae_encoder": lambda: vae.encode(pixels),
        "clip": lambda: clip(pixel_values=clip_pixels, output_hidden_states=True),
    }
    flops = {}
    for name, job in jobs.items():
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            job()
        flops[name] = counter.get_total_flops()
    return flops


def flops_markdown(image_size: int, flops: dict) -> tuple[str, str]:
    key = f"flops-{image_size}px"
    rest = flops["vae_encoder"] + flops["clip"]
    full, early = flops["unet_full"], flops["unet_early"]
    lines = [
        f"<!-- run: {key} -->",
        f"### FLOPs at the real size (SD-1.5 UNet and VAE, CLIP ViT-L/14-336), {image_size} px, batch 1",
        "",
        "Counted with `torch.utils.flop_counter` on the meta device (matmuls, convolutions, attention), "
        "so free of timing noise; the CLIP and VAE-encoder cost is the same in both columns.",
        "",
        "| counted | full UNet pass (GFLOP) | early stop (GFLOP) | early / full |",
        "|---|---:|---:|---:|",
        f"| UNet only | {full / 1e9:.1f} | {early / 1e9:.1f} | {early / full:.3f} |",
        f"| whole encoder (CLIP {flops['clip'] / 1e9:.1f} + VAE encoder {flops['vae_encoder'] / 1e9:.1f} + UNet) "
        f"| {(full + rest) / 1e9:.1f} | {(early + rest) / 1e9:.1f} | {(early + rest) / (full + rest):.3f} |",
        f"<!-- end: {key} -->",
    ]
    return key, "\n".join(lines)


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    n = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}, {n} thread{'s' if n != 1 else ''})"


def markdown(args, rows) -> tuple[str, str]:
    key = f"{args.device}-{args.dtype}-scale{args.scale}-{args.image_size}px" + ("-unet" if args.unet_only else "")
    widths = "SD-1.5 widths" if args.scale == 1 else f"SD-1.5 / CLIP-L widths ÷ {args.scale}"
    lines = [
        f"<!-- run: {key} -->",
        f"### {device_name(args.device)}, {args.dtype}, {args.image_size} px, {widths}",
        "",
        f"SD-1.5 block structure (4 levels, cross-attention, 2/3 resnets per down/up block), CLIP-L depth; "
        f"features of up-block 1 (the paper's), t = 100, ensemble 1; random weights; best (median) of "
        f"{args.repeats} interleaved runs after 2 warm-ups. torch {torch.__version__}."
        + (" Run on a 2-core CPU shared with other jobs: timings are noisy (compare best and median); the FLOP table is exact." if args.device == "cpu" else ""),
        "",
        "| batch | timed | full UNet pass (ms) | early stop (ms) | early / full (best) |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['part']} | {r['full']:.1f} ({r['full_median']:.1f}) | "
                     f"{r['early']:.1f} ({r['early_median']:.1f}) | {r['ratio']:.3f} |")
    lines.append(f"<!-- end: {key} -->")
    return key, "\n".join(lines)


def write(path: Path, key: str, block: str) -> None:
    intro = (
        f"{SECTION}\n\n"
        "`attendseg.encoders.unet_up_block_features` stops the UNet after the last up-block it needs "
        "(up-block 1 for DiffLMM) instead of running the whole decoder; the features are bit-identical "
        "to a forward hook on a full pass (checked in each run). Timings are the best (median) of interleaved "
        "runs on random-weight models; FLOPs are counted at the real size on the meta device. Command: "
        "`python benchmarks/difflmm_encoder.py [--scale 1] [--unet-only] [--device cuda --dtype float16] "
        "--out benchmarks/results/difflmm_encoder.md`.\n"
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
    parser.add_argument("--flops-only", action="store_true", help="only count FLOPs at the real size (seconds)")
    parser.add_argument("--unet-only", action="store_true", help="time the UNet alone (skip the whole encoder)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write the section into")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    flops = count_flops(args.image_size)
    print(f"FLOPs (real size, {args.image_size} px): UNet full {flops['unet_full'] / 1e9:.1f} G, early stop "
          f"{flops['unet_early'] / 1e9:.1f} G (ratio {flops['unet_early'] / flops['unet_full']:.3f}); "
          f"VAE encoder {flops['vae_encoder'] / 1e9:.1f} G, CLIP {flops['clip'] / 1e9:.1f} G")
    if args.flops_only:
        rows = []
    else:
        rows = run(args)
    if args.out:
        write(args.out, *flops_markdown(args.image_size, flops))
        if rows:
            write(args.out, *markdown(args, rows))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
