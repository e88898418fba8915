"""Train the shapes-world DiffLMM with caption loss only, exactly like the CLIP LLaVA.

The diffusion parts come from ``scripts/train_shapes_unet.py`` (a VAE and a UNet denoiser
trained on shapes-world images only) and stay frozen. Everything else is built at the sizes of
the shapes-world CLIP LLaVA (``scripts/train_shapes.py`` defaults: CLIP 64 px / patch 8 / 128
wide / 3 layers, last-layer features; Llama 128 wide / 4 layers / 4 heads / MLP 512; the same
word tokenizer and chat template) and trained from scratch with the same data stream, optimiser,
schedule and loss as ``scripts/train_shapes.py`` (whose ``Batcher``, training loop ``train`` and option
parser are imported): CLIP, the implicit captioner, the SDCLIP projector and the LLM train;
the VAE and the UNet do not.

The UNet was trained with a learned constant conditioning (the "null caption"); the implicit
captioner is initialised to output exactly it (``clip_pe`` = null caption, last captioner layer
zero), so caption training starts from the conditioning the UNet knows.

Usage::

    python scripts/train_shapes_difflmm.py --unet-dir /work/runs/shapes_unet --out /work/runs/shapes_difflmm \\
        --steps 12000 --batch 16 --warmup 150 --max-minutes 30 --threads 1 --n-weights 4,3,2,1 --uniform-after 0.75
    python scripts/train_shapes_difflmm.py --out /work/runs/shapes_difflmm --export attendseg/data/shapes-difflmm
    # map settings picked on tune seeds, written to FOLDER/attendseg.json (any model folder)
    python scripts/train_shapes_difflmm.py --choose-settings /work/runs/shapes_difflmm/model --n 300
    # branch probe: teacher-forced caption loss / word accuracy, intact and with either branch
    # taken from another scene (--probe-model FOLDER: another folder, a CLIP LLaVA gets "intact" only)
    python scripts/train_shapes_difflmm.py --out /work/runs/shapes_difflmm --eval-only --n 200
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from attendseg import shapes  # noqa: E402
from train_shapes import Batcher, export, make_accelerator, parse_args as base_parse_args, train  # noqa: E402


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    unet_dir, up_block, timestep, probe_model = "runs/shapes_unet", 1, 100, ""
    rest = []
    it = iter(argv)
    for a in it:  # our own options, the rest goes to train_shapes' parser
        if a == "--unet-dir":
            unet_dir = next(it)
        elif a == "--up-block":
            up_block = int(next(it))
        elif a == "--timestep":
            timestep = int(next(it))
        elif a == "--probe-model":
            probe_model = next(it)
        else:
            rest.append(a)
    args = base_parse_args(rest)
    args.unet_dir, args.up_block, args.timestep = unet_dir, up_block, timestep
    args.probe_model = probe_model
    return args


def pixel_values(images: list[np.ndarray]) -> torch.Tensor:
    """``[B, 3, S, S]`` in [-1, 1]: the DiffLMM processor's output for square images of its size."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


class DiffBatcher(Batcher):
    def __call__(self, scenes):
        out = super().__call__(scenes)
        out["pixel_values"] = pixel_values([sc.image for sc in scenes])
        return out


def build(args, folder: Path):
    """Write the initial DiffLMM folder (random CLIP / projector / LLM, trained VAE + UNet)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from attendseg.encoders import DiffLMMForConditionalGeneration, DiffLMMVisionConfig, make_processor
    from attendseg.encoders.tiny import tiny_difflmm_config
    from attendseg.tiny import CHAT_TEMPLATE, word_tokenizer

    unet_dir = Path(args.unet_dir)
    unet = UNet2DConditionModel.from_pretrained(unet_dir / "unet")
    vae = AutoencoderKL.from_pretrained(unet_dir / "vae")
    sched = json.loads((unet_dir / "scheduler" / "scheduler_config.json").read_text())
    null = torch.load(unet_dir / "null_context.pt")
    grid = args.image_size // args.patch
    vision = DiffLMMVisionConfig(
        unet_config=dict(unet.config),
        vae_config=dict(vae.config),
        scheduler_config={k: v for k, v in sched.items() if not k.startswith("_")},
        clip_config={
            "hidden_size": args.vision_hidden,
            "intermediate_size": args.vision_hidden * 4,
            "num_hidden_layers": args.vision_layers,
            "num_attention_heads": args.heads,
            "image_size": args.image_size,
            "patch_size": args.patch,
            "projection_dim": args.vision_hidden,
        },
        up_block=args.up_block,
        timestep=args.timestep,
        ensemble_size=1,
        image_size=args.image_size,
        clip_feature_layer=-1,  # as the CLIP LLaVA (vision_feature_layer=-1)
        caption_dim=int(unet.config.cross_attention_dim),
        deterministic=True,
        seed=0,
    )
    if vision.feature_grid != grid or null.shape[0] != grid * grid:
        raise SystemExit(f"feature grid {vision.feature_grid} / null caption {tuple(null.shape)} vs CLIP grid {grid}")
    tokenizer = word_tokenizer(shapes.VOCABULARY)
    config = tiny_difflmm_config(tokenizer, vision, text_hidden=args.text_hidden, text_layers=args.text_layers,
                                 text_heads=args.heads, intermediate=args.text_hidden * 4)
    torch.manual_seed(args.seed)
    model = DiffLMMForConditionalGeneration(config).eval()
    tower = model.model.vision_tower
    tower.unet.load_state_dict(unet.state_dict())
    tower.vae.load_state_dict(vae.state_dict())
    proj = model.model.multi_modal_projector
    with torch.no_grad():
        proj.clip_pe.copy_(null)
        proj.clip_projector[2].weight.zero_()
        proj.clip_projector[2].bias.zero_()
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = (
        tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
    model.save_pretrained(folder)
    make_processor(tokenizer, vision, chat_template=CHAT_TEMPLATE).save_pretrained(folder)
    return folder


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoProcessor

    from attendseg.encoders import DiffLMMForConditionalGeneration

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    state_path = out / "state.pt"

    def log(msg):
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    if args.export:
        export(model_dir, Path(args.export), half=True, model_class=DiffLMMForConditionalGeneration)
        return
    if args.choose_settings:  # the shapes evaluation's own choice (attendseg.shapes.evaluation.choose_settings)
        from attendseg.shapes.evaluation import choose_settings

        print(json.dumps(choose_settings(args.choose_settings, n=args.n, world=args.world), indent=1))
        return
    if args.eval_only:  # the branch probe (see probe()), of --probe-model or this run's model
        res = probe(Path(args.probe_model) if args.probe_model else model_dir, args.n)
        print(json.dumps(res, indent=1))
        if args.eval_json:
            Path(args.eval_json).write_text(json.dumps(res, indent=1))
        return
    if not (model_dir / "config.json").exists():
        build(args, model_dir)
    torch.manual_seed(args.seed)
    model = DiffLMMForConditionalGeneration.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_dir)
    batcher = DiffBatcher(processor, args.image_size)
    # the processor and our pixel_values agree
    sc = shapes.make_scene(0)
    ref = processor(images=[sc.image], text=[batcher.prompt_text(sc.prompt)], return_tensors="pt")["pixel_values"]
    assert torch.allclose(ref, pixel_values([sc.image]), atol=1e-5), (ref - pixel_values([sc.image])).abs().max()

    tower = model.model.vision_tower
    tower.unet.requires_grad_(False).eval()
    tower.vae.requires_grad_(False).eval()

    train(args, model, batcher, model_dir, state_path, make_accelerator(), log, frozen=(tower.unet, tower.vae))


@torch.no_grad()
def probe(model_dir: Path, n: int = 200, batch: int = 25) -> dict:
    """Which branch the trained model reads: teacher-forced caption loss and colour/shape word
    accuracy on ``n`` tune scenes with both branches intact, with the UNet features of another
    scene of the batch (cyclic shift), and with the CLIP tokens of another scene (the concatenated
    tokens and the implicit caption that conditions the UNet)."""
    from transformers import AutoProcessor

    from attendseg.encoders import DiffLMMForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    is_llava = json.loads((Path(model_dir) / "config.json").read_text())["model_type"] == "llava"
    if is_llava:  # the CLIP LLaVA: the intact figures only, for comparison
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        batcher = Batcher(processor, 64)
    else:
        model = DiffLMMForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
        batcher = DiffBatcher(processor, 64)
    tok = processor.tokenizer
    ids_of = {w: tok.convert_tokens_to_ids(w) for w in (*shapes.COLOURS, *shapes.SHAPES)}
    colour_ids = torch.tensor([ids_of[w] for w in shapes.COLOURS])
    shape_ids = torch.tensor([ids_of[w] for w in shapes.SHAPES])
    tower = model.model.vision_tower
    if is_llava:
        tower.diffusion_features = tower.clip_features = None
    orig_diff, orig_clip = tower.diffusion_features, tower.clip_features
    seeds = list(shapes.TUNE_SEEDS[:n])
    res = {}
    for mode in ("intact",) if is_llava else ("intact", "unet_from_other_scene", "clip_from_other_scene"):
        tower.diffusion_features = (lambda *a, **k: [f.roll(1, 0) for f in orig_diff(*a, **k)]) \
            if mode == "unet_from_other_scene" else orig_diff
        tower.clip_features = (lambda *a, **k: orig_clip(*a, **k).roll(1, 0)) \
            if mode == "clip_from_other_scene" else orig_clip
        tot_loss = tot_tok = 0.0
        ok = {"colour": [0, 0], "shape": [0, 0]}
        for b0 in range(0, n, batch):
            scenes = [shapes.make_scene(s) for s in seeds[b0 : b0 + batch]]
            inp = batcher(scenes)
            out = model(**inp)
            logits, labels = out.logits[:, :-1], inp["labels"][:, 1:]
            m = labels != -100
            tot_loss += torch.nn.functional.cross_entropy(logits[m], labels[m], reduction="sum").item()
            tot_tok += m.sum().item()
            pred = logits.argmax(-1)
            for kind, kind_ids in (("colour", colour_ids), ("shape", shape_ids)):
                km = torch.isin(labels, kind_ids)
                ok[kind][0] += (pred[km] == labels[km]).sum().item()
                ok[kind][1] += km.sum().item()
        res[mode] = {"caption_loss": round(tot_loss / tot_tok, 4),
                     **{f"{k}_word_acc": round(v[0] / max(v[1], 1), 4) for k, v in ok.items()}}
    if not is_llava:
        tower.diffusion_features, tower.clip_features = orig_diff, orig_clip
    return res


if __name__ == "__main__":
    main()
