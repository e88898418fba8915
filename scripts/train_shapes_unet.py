"""Train the shapes-world diffusion parts of a tiny DiffLMM: a VAE, then a UNet denoiser.

Images only — no captions, no masks. Stage 1 trains a tiny ``AutoencoderKL`` (64 px → 4 × 16 × 16
latents, reconstruction MSE + a small KL); its ``scaling_factor`` is set to 1 / std of the latents
(Stable Diffusion's convention). Stage 2 trains a tiny SD-style ``UNet2DConditionModel``
(epsilon prediction, SD-1.5's DDPM noise schedule, timesteps uniform in [0, 1000)) on those
latents. The UNet has cross-attention, as SD's does, but there is no text: its conditioning is a
learned constant "null caption" of 64 tokens (``null_context.pt``), the analogue of SD's
empty-prompt embedding. ``scripts/train_shapes_difflmm.py`` initialises the DiffLMM's implicit
captioner so that it outputs exactly this null caption at the start of caption training.

Images come from a fixed pool of training seeds (``--pool`` scenes from seed ``--seed-offset``,
inside ``attendseg.shapes.TRAIN_SEEDS``).

Usage::

    python scripts/train_shapes_unet.py --out /work/runs/shapes_unet --vae-minutes 3.5 --unet-minutes 8

``--out`` receives ``vae/``, ``unet/``, ``scheduler/`` (diffusers folders), ``null_context.pt``
and ``log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attendseg import shapes  # noqa: E402

SD15_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear"}


def vae_config(image_size: int = 64) -> dict:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [16, 32, 64],  # 3 levels: 4x downsampling, 64 px -> 16 x 16 latents
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": image_size,
        "scaling_factor": 1.0,
    }


def unet_config(latent_size: int = 16, caption_dim: int = 64) -> dict:
    return {
        "sample_size": latent_size,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": [32, 64, 96, 96],  # up-block 1 (96 ch) comes out at 8 x 8
        "layers_per_block": 1,
        "attention_head_dim": 4,
        "cross_attention_dim": caption_dim,
        "norm_num_groups": 8,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/shapes_unet")
    p.add_argument("--pool", type=int, default=4000, help="training scenes (images) in the pool")
    p.add_argument("--seed-offset", type=int, default=500_000_000)
    p.add_argument("--vae-minutes", type=float, default=3.5)
    p.add_argument("--unet-minutes", type=float, default=8.0)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--unet-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--kl", type=float, default=1e-5)
    p.add_argument("--null-tokens", type=int, default=64)
    p.add_argument("--caption-dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def image_pool(n: int, offset: int) -> torch.Tensor:
    """``(n, 3, 64, 64)`` in [-1, 1]."""
    imgs = np.stack([shapes.make_scene(offset + i).image for i in range(n)])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def cosine(step_frac: float, warm: float = 0.03) -> float:
    if step_frac < warm:
        return max(step_frac / warm, 0.01)
    f = (step_frac - warm) / (1 - warm)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(f, 1.0)))


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_f = open(out / "log.jsonl", "a")

    def log(rec):
        print(time.strftime("%H:%M:%S"), json.dumps(rec), flush=True)
        log_f.write(json.dumps(rec) + "\n")
        log_f.flush()

    log({"args": vars(args)})
    t0 = time.time()
    pool_path = out / f"pool_{args.pool}_{args.seed_offset}.pt"
    if pool_path.exists():
        pool = torch.load(pool_path)
    else:
        pool = image_pool(args.pool, args.seed_offset)
        torch.save(pool, pool_path)
    log({"pool": args.pool, "seconds": round(time.time() - t0, 1)})
    gen = torch.Generator().manual_seed(args.seed)

    # ------------------------------------------------------------------ stage 1: VAE
    vae_dir = out / "vae"
    if (vae_dir / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(vae_dir)
        log({"vae": "loaded", "scaling_factor": vae.config.scaling_factor})
    else:
        vae = AutoencoderKL.from_config(vae_config())
        log({"vae_params_M": round(sum(p.numel() for p in vae.parameters()) / 1e6, 3)})
        opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
        budget = args.vae_minutes * 60
        t_start = time.time()
        step, run, run_n = 0, 0.0, 0
        vae.train()
        while (el := time.time() - t_start) < budget:
            for g in opt.param_groups:
                g["lr"] = args.vae_lr * cosine(el / budget)
            idx = torch.randint(0, len(pool), (args.vae_batch,), generator=gen)
            x = pool[idx]
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rec = vae.decode(z).sample
            mse = F.mse_loss(rec, x)
            kl = post.kl().mean() / x[0].numel()
            loss = mse + args.kl * kl
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            run += mse.item()
            run_n += 1
            if step % 50 == 0:
                log({"stage": "vae", "step": step, "mse": round(run / run_n, 5), "kl": round(kl.item(), 3),
                     "min": round((time.time() - t_start) / 60, 2)})
                run, run_n = 0.0, 0
        vae.eval()
        with torch.no_grad():
            zs = torch.cat([vae.encode(pool[i : i + 64]).latent_dist.mode() for i in range(0, min(1024, len(pool)), 64)])
            n_rec = min(256, len(zs))
            rec = torch.cat([vae.decode(zs[i : i + 64]).sample for i in range(0, n_rec, 64)])
            mse = F.mse_loss(rec, pool[:n_rec]).item()
        scale = float(1.0 / zs.std())
        vae.register_to_config(scaling_factor=scale)
        vae.save_pretrained(vae_dir)
        log({"stage": "vae", "done_steps": step, "minutes": round((time.time() - t_start) / 60, 2),
             "recon_mse_mode": round(mse, 5), "psnr_db": round(10 * math.log10(4 / mse), 2),
             "latent_std": round(float(zs.std()), 4), "scaling_factor": round(scale, 5)})
    vae.eval().requires_grad_(False)

    # ------------------------------------------------------------------ stage 2: UNet denoiser
    with torch.no_grad():
        latents = torch.cat([vae.encode(pool[i : i + 128]).latent_dist.mode() for i in range(0, len(pool), 128)])
        latents = latents * vae.config.scaling_factor
    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)
    scheduler.save_pretrained(out / "scheduler")
    unet = UNet2DConditionModel.from_config(unet_config(latents.shape[-1], args.caption_dim))
    null = torch.nn.Parameter(torch.randn(args.null_tokens, args.caption_dim, generator=gen) * 0.02)
    log({"unet_params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 3),
         "latents": list(latents.shape)})
    opt = torch.optim.AdamW([*unet.parameters(), null], lr=args.unet_lr, weight_decay=0.01)
    budget = args.unet_minutes * 60
    t_start = time.time()
    step, run, run_n = 0, 0.0, 0
    run_t = {}
    unet.train()
    while (el := time.time() - t_start) < budget:
        for g in opt.param_groups:
            g["lr"] = args.unet_lr * cosine(el / budget)
        idx = torch.randint(0, len(latents), (args.unet_batch,), generator=gen)
        z = latents[idx]
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, 1000, (z.shape[0],), generator=gen)
        noisy = scheduler.add_noise(z, noise, t)
        cond = null.unsqueeze(0).expand(z.shape[0], -1, -1)
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        per = ((pred - noise) ** 2).mean((1, 2, 3))
        loss = per.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*unet.parameters(), null], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        run += loss.item()
        run_n += 1
        for tt, l in zip(t.tolist(), per.tolist()):
            b = "t<200" if tt < 200 else "t>=200"
            run_t.setdefault(b, []).append(l)
        if step % 50 == 0:
            log({"stage": "unet", "step": step, "loss": round(run / run_n, 5),
                 **{k: round(float(np.mean(v)), 4) for k, v in sorted(run_t.items())},
                 "min": round((time.time() - t_start) / 60, 2)})
            run, run_n, run_t = 0.0, 0, {}
    unet.eval()
    # held-out denoising loss at t = 100 (the DiffLMM timestep), fixed noise
    with torch.no_grad():
        ho = image_pool(128, shapes.TUNE_SEEDS.start)
        z = vae.encode(ho).latent_dist.mode() * vae.config.scaling_factor
        g2 = torch.Generator().manual_seed(1)
        noise = torch.randn(z.shape, generator=g2)
        res = {}
        for tt in (100, 500):
            t = torch.full((z.shape[0],), tt)
            pred = unet(scheduler.add_noise(z, noise, t), t,
                        encoder_hidden_states=null.unsqueeze(0).expand(z.shape[0], -1, -1)).sample
            res[f"tune_eps_mse_t{tt}"] = round(F.mse_loss(pred, noise).item(), 4)
    unet.save_pretrained(out / "unet")
    torch.save(null.detach().clone(), out / "null_context.pt")
    log({"stage": "unet", "done_steps": step, "minutes": round((time.time() - t_start) / 60, 2), **res})


if __name__ == "__main__":
    main()
