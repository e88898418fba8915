"""Train the shapes-world LLaVA from scratch with caption loss only.

Runs as ``python scripts/train_shapes.py`` or ``accelerate launch scripts/train_shapes.py``
(CPU or GPUs; each process draws its own scenes). Data-parallel on CPU cores (gloo), e.g. both
cores of a 2-core machine::

    ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 scripts/train_shapes.py ...

Only the caption tokens (and the closing ``</s>``) are labels; masks, boxes and positions never
enter training. With ``--vision-pretrain-minutes`` a first stage trains the vision tower alone
to predict which words a scene's caption contains (:func:`pretrain_vision`), which is what lets
the tower learn shapes within a CPU hour (RESULTS.md).

Scenes are drawn on the fly from training seeds: step ``s``, process ``p``, row ``i`` uses
seed ``(s * world + p) * batch + i`` (always inside ``attendseg.shapes.TRAIN_SEEDS`` and below
``TUNE_SEEDS``), so a step-based run is a pure function of its options and resuming replays
nothing (``--max-minutes`` makes the schedule depend on the machine's speed).

Usage (the bundled model's run, 12 + 45 minutes on 2 cores)::

    ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 scripts/train_shapes.py \
        --out runs/shapes5 --steps 8000 --vision-pretrain-minutes 12 --max-minutes 45 \
        --batch 32 --lr 1e-3 --warmup 200 --vision-hidden 64 --vision-layers 6 --text-hidden 64 \
        --n-weights 2,1,1,1 --uniform-after 0.3 --vision-positions sincos
    python scripts/train_shapes.py --out runs/shapes5 ... --resume        # continue stage 2
    python scripts/train_shapes.py --out runs/shapes5 --eval-only --eval-seeds tune --n 300
    python scripts/train_shapes.py --out runs/shapes5 --export attendseg/data/shapes-llava

``--out`` holds ``model/`` (a ``save_pretrained`` folder), ``state.pt`` (optimizer, scheduler,
step — the resume point) and ``log.jsonl`` (loss per logging interval, evaluations).
The measurement (``--eval-only``) uses transformers' eager ``output_attentions`` on a
teacher-forced pass over the *generated* caption: the map of a word is the attention row of the
position that predicts it, over the image-token columns, mean over heads, per layer.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attendseg import shapes  # noqa: E402
from attendseg.files import atomic_write  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/shapes")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0, help="model init / torch seed")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--vision-hidden", type=int, default=128)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--text-hidden", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vision-positions", choices=("learned", "sincos"), default="learned",
                   help="CLIP position table: learned from random init, or a fixed 2-D sine-cosine "
                        "table (never trained; every patch token starts with its column and row)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--max-minutes", type=float, default=0,
                   help="training-time budget: the schedule's progress is max(step / steps, "
                        "time / budget) and training stops (and saves) when either ends; "
                        "0: step-based only (bit-reproducible)")
    p.add_argument("--vision-pretrain-minutes", type=float, default=0,
                   help="stage 1 (before the caption-loss LLaVA training): train the vision tower "
                        "alone for this long to predict which words its caption contains "
                        "(bag-of-words captioning); 0: skip")
    p.add_argument("--vision-pretrain-lr", type=float, default=1e-3)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--n-weights", default="",
                   help="curriculum: relative weights of 1..4-object training scenes, e.g. "
                        "'4,3,2,1' (default: uniform, like make_scene)")
    p.add_argument("--uniform-after", type=float, default=0.8,
                   help="schedule progress after which training scenes are uniform again")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--untrained", action="store_true", help="evaluate the random init instead")
    p.add_argument("--eval-seeds", default="tune", help="'tune' (training range) or 'heldout'")
    p.add_argument("--n", type=int, default=200, help="scenes to evaluate")
    p.add_argument("--eval-json", default="", help="write the evaluation here")
    p.add_argument("--export", default="", help="write the package folder here and exit")
    p.add_argument("--half", action="store_true", help="export fp16 weights")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- model / data
def build(args, folder: Path):
    from attendseg.tiny import build_llava

    return build_llava(
        folder,
        shapes.VOCABULARY,
        image_size=args.image_size,
        patch_size=args.patch,
        vision_hidden=args.vision_hidden,
        vision_layers=args.vision_layers,
        vision_heads=args.heads,
        text_hidden=args.text_hidden,
        text_layers=args.text_layers,
        text_heads=args.heads,
        vision_feature_layer=-1,
        seed=args.seed,
        vision_positions=args.vision_positions,
    )


def pixel_values(images: list[np.ndarray]) -> torch.Tensor:
    """CLIP-normalised ``[B, 3, S, S]`` — the processor's output for square images of its size."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class Batcher:
    """Turns scenes into model inputs exactly as the processor + chat template would."""

    def __init__(self, processor, image_size: int):
        self.processor = processor
        self.tok = processor.tokenizer
        self.size = image_size
        self.prompt_ids = {}
        dummy = np.zeros((image_size, image_size, 3), np.uint8)
        for order, (prompt, _) in shapes.ORDERS.items():
            text = self.prompt_text(prompt)
            enc = processor(images=[dummy], text=[text], return_tensors="pt")
            self.prompt_ids[order] = enc["input_ids"][0].tolist()
        self.eos = self.tok.eos_token_id
        self.pad = self.tok.pad_token_id

    def prompt_text(self, prompt: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def __call__(self, scenes):
        seqs, labels = [], []
        for sc in scenes:
            p = self.prompt_ids[sc.order]
            c = self.tok(sc.caption, add_special_tokens=False)["input_ids"] + [self.eos]
            seqs.append(p + c)
            labels.append([-100] * len(p) + c)
        L = max(map(len, seqs))
        ids = torch.full((len(seqs), L), self.pad, dtype=torch.long)
        lab = torch.full((len(seqs), L), -100, dtype=torch.long)
        att = torch.zeros((len(seqs), L), dtype=torch.long)
        for i, (s, l) in enumerate(zip(seqs, labels)):  # right padding for training
            ids[i, : len(s)] = torch.tensor(s)
            lab[i, : len(l)] = torch.tensor(l)
            att[i, : len(s)] = 1
        return {
            "input_ids": ids,
            "attention_mask": att,
            "labels": lab,
            "pixel_values": pixel_values([sc.image for sc in scenes]),
        }


def scene_seed(step: int, proc: int, world: int, batch: int, i: int) -> int:
    seed = (step * world + proc) * batch + i
    assert seed < shapes.TUNE_SEEDS.start
    return seed


# ---------------------------------------------------------------------------- evaluation
def _word_maps(model, ids, pv, n_prompt, start, n_img):
    """``[L + 1, T, N]``: per layer (and the mean over layers, last) the mean-over-heads
    attention of the row predicting each of the ``T`` tokens after the prompt, image columns."""
    o = model(input_ids=ids, pixel_values=pv, output_attentions=True)
    rows = torch.arange(ids.shape[1] - n_prompt) + n_prompt - 1
    maps = torch.stack([a[0][:, rows, start : start + n_img].mean(0) for a in o.attentions])
    return torch.cat([maps, maps.mean(0, keepdim=True)]), o.logits[0]


@torch.no_grad()
def evaluate(model, processor, batcher, seeds, image_size, batch=25, log=print):
    """Caption exact match; point accuracy per layer, raw and mean-normalised; random point.

    Point accuracy: for each ground-truth object, the phrase "a <colour> <shape>" is looked up
    in the caption; its map (the row predicting the shape word — the phrase root — or the colour
    word, or the mean of the three words' rows) is upsampled bicubically to the image, and a hit
    is its argmax inside the object's mask. ``generated``: on the greedy caption (a phrase the
    model did not say is a miss); ``forced``: teacher-forced on the ground-truth caption (what an
    untrained model is measured on). Normalised = minus the mean map over all caption tokens
    (EOS included), as in the paper.
    """
    import torch.nn.functional as F

    model.eval()
    tok = processor.tokenizer
    n_layers = model.config.text_config.num_hidden_layers
    grid = image_size // model.config.vision_config.patch_size
    n_img = grid * grid
    img_id = model.config.image_token_id
    rng = np.random.default_rng(12345)
    exact = 0
    n_obj = 0
    layer_names = [*map(str, range(n_layers)), "all"]
    hits = {f"{mode}/{norm}/{which}/{layer}": 0 for mode in ("generated", "forced")
            for norm in ("raw", "norm") for which in ("shape", "colour", "phrase")
            for layer in layer_names}
    hits_rand = 0
    tf_ok = {"colour": [0, 0], "shape": [0, 0], "all": [0, 0]}
    by_n = {}

    def score(mode, maps, words, obj, mask):
        t_shape = None
        for t in range(1, len(words)):
            if words[t] == obj.shape and words[t - 1] == obj.colour:
                t_shape = t
                break
        if t_shape is None:
            return
        normed = maps - maps.mean(1, keepdim=True)
        for norm, M in (("raw", maps), ("norm", normed)):
            for which, ts in (("shape", [t_shape]), ("colour", [t_shape - 1]),
                              ("phrase", [t_shape - 2, t_shape - 1, t_shape])):
                m = M[:, ts].mean(1).view(-1, 1, grid, grid)
                up = F.interpolate(m, size=(image_size, image_size), mode="bicubic",
                                   align_corners=False).flatten(1)
                inside = mask.flatten()[up.argmax(1)]
                for li, h in enumerate(inside.tolist()):
                    hits[f"{mode}/{norm}/{which}/{layer_names[li]}"] += h

    for b0 in range(0, len(seeds), batch):
        scenes = [shapes.make_scene(s, size=image_size) for s in seeds[b0 : b0 + batch]]
        # prompts all have the same length, so the batch needs no padding
        prompt = torch.tensor([batcher.prompt_ids[sc.order] for sc in scenes])
        pv = pixel_values([sc.image for sc in scenes])
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                             pixel_values=pv, max_new_tokens=40, do_sample=False,
                             suppress_tokens=[img_id, batcher.pad])
        gen = out[:, prompt.shape[1]:]
        for i, sc in enumerate(scenes):
            g = gen[i].tolist()
            if batcher.eos in g:
                g = g[: g.index(batcher.eos) + 1]
            text = tok.decode(g, skip_special_tokens=True).strip()
            ok = text == sc.caption
            exact += ok
            by_n.setdefault(len(sc.objects), [0, 0])
            by_n[len(sc.objects)][0] += ok
            by_n[len(sc.objects)][1] += 1
            P = len(batcher.prompt_ids[sc.order])
            start = batcher.prompt_ids[sc.order].index(img_id)
            # generated caption: the model's own tokens
            ids = torch.tensor([batcher.prompt_ids[sc.order] + g])
            gen_maps, _ = _word_maps(model, ids, pv[i : i + 1], P, start, n_img)
            gen_words = tok.convert_ids_to_tokens(g)
            # teacher-forced ground-truth caption
            gt = tok(sc.caption, add_special_tokens=False)["input_ids"] + [batcher.eos]
            ids = torch.tensor([batcher.prompt_ids[sc.order] + gt])
            tf_maps, logits = _word_maps(model, ids, pv[i : i + 1], P, start, n_img)
            gt_words = tok.convert_ids_to_tokens(gt)
            pred = logits[P - 1 : -1].argmax(-1).tolist()
            for t, (p_, y) in enumerate(zip(pred, gt)):
                kind = ("colour" if gt_words[t] in shapes.COLOURS else
                        "shape" if gt_words[t] in shapes.SHAPES else None)
                for key in (kind, "all"):
                    if key:
                        tf_ok[key][0] += p_ == y
                        tf_ok[key][1] += 1
            for k_obj, obj in enumerate(sc.objects):
                n_obj += 1
                mask = torch.from_numpy(sc.masks[k_obj])
                ry, rx = rng.integers(0, image_size, 2)
                hits_rand += bool(mask[ry, rx])
                score("generated", gen_maps, gen_words, obj, mask)
                score("forced", tf_maps, gt_words, obj, mask)
        log(f"eval {b0 + len(scenes)}/{len(seeds)}: exact {exact / (b0 + len(scenes)):.3f}")
    return {
        "n_scenes": len(seeds),
        "n_objects": n_obj,
        "caption_exact": exact / len(seeds),
        "exact_by_n_objects": {k: v[0] / v[1] for k, v in sorted(by_n.items())},
        "teacher_forced_word_acc": {k: v[0] / max(v[1], 1) for k, v in tf_ok.items()},
        "point_acc": {k: v / max(n_obj, 1) for k, v in hits.items()},
        "random_point_acc": hits_rand / max(n_obj, 1),
    }


def make_accelerator():
    """An ``Accelerator`` whose DDP tolerates parameters the caption loss never reaches (the
    vision tower's ``post_layernorm``: LLaVA reads the hidden states before it)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    return Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def jsonl_log(path: Path, is_main: bool):
    """A function appending one JSON record per line to ``path`` (flushed; the main process only)."""
    stream = open(path, "a") if is_main else None

    def write(record: dict) -> None:
        if stream:
            stream.write(json.dumps(record) + "\n")
            stream.flush()

    return write


def any_process(acc, flag: bool) -> bool:
    """``flag`` or'ed over the processes, so time-based stops happen at the same step everywhere
    (a process that stopped alone would leave the others waiting in an all-reduce)."""
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([float(flag)], device=acc.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def word_kinds(tok, device) -> torch.Tensor:
    """``long [vocab]``: 0 for shape words, 1 for colour words, -1 otherwise."""
    kinds = torch.full((len(tok),), -1, dtype=torch.long)
    for kind, words in ((0, shapes.SHAPES), (1, shapes.COLOURS)):
        kinds[tok.convert_tokens_to_ids(list(words))] = kind
    return kinds.to(device)


def word_accuracy(logits, labels, word_kind) -> torch.Tensor:
    """``[2, 2]``: (right, total) next-token predictions of shape words (row 0) and colour
    words (row 1) in a teacher-forced training batch (``logits [B, S, V]``, ``labels [B, S]``)."""
    pred, gold = logits[:, :-1].argmax(-1), labels[:, 1:]
    kind = torch.where(gold >= 0, word_kind[gold.clamp(min=0)], -1)
    out = torch.zeros(2, 2)
    for k in (0, 1):
        sel = kind == k
        out[k, 0] = (pred[sel] == gold[sel]).sum().item()
        out[k, 1] = sel.sum().item()
    return out


class CaptionWords(torch.nn.Module):
    """Stage-1 model: the vision tower, mean-pooled over patch tokens, then a linear layer giving
    one logit per vocabulary word (does the caption contain it?)."""

    def __init__(self, vision_tower, vocab_size: int):
        super().__init__()
        self.vision_tower = vision_tower
        self.head = torch.nn.Linear(vision_tower.config.hidden_size, vocab_size)

    def forward(self, pixel_values):  # [B, 3, S, S] -> [B, vocab]
        hidden = self.vision_tower(pixel_values=pixel_values).last_hidden_state
        return self.head(hidden[:, 1:].mean(1))


def pretrain_vision(args, model, batcher, acc, log):
    """Stage 1: bag-of-words captioning for ``--vision-pretrain-minutes``.

    The vision tower (which LLaVA reads before ``post_layernorm``, as ``last_hidden_state`` is)
    learns to tell which caption words a scene's caption contains: binary cross-entropy over the
    vocabulary, targets from the caption text only. Scenes: seeds from 600,000,000 up (training
    range, disjoint from stage 2's), one object for the first half, then 1–4 as in the world.
    Constant learning rate after a 100-step warmup; the head is thrown away afterwards.
    """
    tok = batcher.tok
    vocab = len(tok)
    torch.manual_seed(args.seed)  # the same head on every process
    net = CaptionWords(model.model.vision_tower, vocab).to(acc.device)
    opt = torch.optim.AdamW(net.parameters(), lr=args.vision_pretrain_lr, weight_decay=0.05)
    net.train()
    budget = args.vision_pretrain_minutes * 60
    t0, step, run = time.time(), 0, []
    record = jsonl_log(Path(args.out) / "log.jsonl", acc.is_main_process)
    while not any_process(acc, time.time() - t0 >= budget):
        for group in opt.param_groups:
            group["lr"] = args.vision_pretrain_lr * min(1.0, (step + 1) / 100)
        first_half = time.time() - t0 < budget / 2  # may switch a step apart per process
        seeds = [600_000_000 + scene_seed(step, acc.process_index, acc.num_processes, args.batch, i)
                 for i in range(args.batch)]
        scenes = [shapes.make_scene(s, size=args.image_size, n_objects=1 if first_half else None)
                  for s in seeds]
        target = torch.zeros(len(scenes), vocab)
        for row, sc in enumerate(scenes):
            target[row, tok(sc.caption, add_special_tokens=False)["input_ids"]] = 1.0
        logits = net(pixel_values([sc.image for sc in scenes]).to(acc.device))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.to(acc.device))
        loss.backward()
        if acc.num_processes > 1:  # average gradients by hand: the tower gets DDP-wrapped later
            for param in net.parameters():
                if param.grad is not None:
                    torch.distributed.all_reduce(param.grad)
                    param.grad /= acc.num_processes
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        run.append(loss.item())
        if step % args.log_every == 0:
            rec = {"stage": "vision", "step": step, "loss": round(float(np.mean(run)), 5),
                   "elapsed_min": round((time.time() - t0) / 60, 2)}
            log(json.dumps(rec))
            record(rec)
            run = []
    log(f"vision pretraining: {step} steps in {(time.time() - t0) / 60:.1f} min")
    acc.wait_for_everyone()


def train(args, model, batcher, model_dir: Path, state_path: Path, acc, log, frozen=()):
    """The caption-loss training loop (shared with ``train_shapes_difflmm.py``).

    AdamW over the parameters that require grad (no weight decay on biases, norms and
    embeddings), linear warmup then cosine decay over ``--steps`` or ``--max-minutes`` (whichever
    comes first), the ``--n-weights`` object-count curriculum until ``--uniform-after``, resumable
    from ``state_path``, JSONL log beside it, ``model_dir`` saved every ``--save-every`` steps.
    ``frozen`` modules are kept in eval mode.
    """
    is_main = acc.is_main_process
    out = state_path.parent
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_all = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for _, p in trainable)
    log(f"model: {n_all / 1e6:.2f} M parameters, {n_trainable / 1e6:.2f} M trainable; world {acc.num_processes}")
    decay = [p for n, p in trainable if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in trainable if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))

    step = 0
    elapsed0 = 0.0  # training seconds before this (resumed) run
    t_start = time.time()

    def progress() -> float:
        f = step / args.steps
        if args.max_minutes:
            f = max(f, (elapsed0 + time.time() - t_start) / (args.max_minutes * 60))
        return min(f, 1.0)

    def lr_factor() -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        f0 = args.warmup / args.steps
        f = max(0.0, (progress() - f0) / max(1e-9, 1 - f0))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(f, 1.0)))

    if args.resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        elapsed0 = state.get("elapsed", 0.0)
        log(f"resumed at step {step} ({elapsed0 / 60:.1f} min trained)")
    model, opt = acc.prepare(model, opt)
    model.train()
    for module in frozen:
        module.eval()

    def save():
        acc.wait_for_everyone()
        if is_main:
            unwrapped = acc.unwrap_model(model)
            unwrapped.save_pretrained(model_dir)
            state = {"model": unwrapped.state_dict(), "opt": opt.state_dict(), "step": step,
                     "elapsed": elapsed0 + time.time() - t_start, "args": vars(args)}
            atomic_write(state_path, lambda f: torch.save(state, f))
            log(f"saved step {step}")

    n_weights = None
    if args.n_weights:
        n_weights = np.array([float(w) for w in args.n_weights.split(",")])
        n_weights = n_weights / n_weights.sum()
    record = jsonl_log(out / "log.jsonl", is_main)
    record({"start": step, "args": vars(args)})
    word_kind = word_kinds(batcher.tok, acc.device)
    run_loss, run_n, t_log = 0.0, 0, time.time()
    run_ok = torch.zeros(2, 2)  # [shape, colour] x [right, total] on the training batches
    while step < args.steps and not any_process(acc, progress() >= 1.0):
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_factor()
        seeds = [scene_seed(step, acc.process_index, acc.num_processes, args.batch, i)
                 for i in range(args.batch)]
        if n_weights is not None and progress() < args.uniform_after:
            scenes = [shapes.make_scene(s, size=args.image_size, n_objects=int(
                np.random.default_rng([s, 1]).choice(4, p=n_weights)) + 1) for s in seeds]
        else:
            scenes = [shapes.make_scene(s, size=args.image_size) for s in seeds]
        batch = {k: v.to(acc.device) for k, v in batcher(scenes).items()}
        output = model(**batch)
        loss = output.loss
        run_ok += word_accuracy(output.logits.detach(), batch["labels"], word_kind)
        acc.backward(loss)
        acc.clip_grad_norm_([p for _, p in trainable], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        run_loss += loss.item()
        run_n += 1
        if step % args.log_every == 0 or step == args.steps:
            dt = time.time() - t_log
            rec = {"step": step, "loss": round(run_loss / run_n, 5), "lr": round(opt.param_groups[0]["lr"], 7),
                   "shape_acc": round((run_ok[0, 0] / run_ok[0, 1].clamp(min=1)).item(), 3),
                   "colour_acc": round((run_ok[1, 0] / run_ok[1, 1].clamp(min=1)).item(), 3),
                   "sec_per_step": round(dt / run_n, 3),
                   "elapsed_min": round((elapsed0 + time.time() - t_start) / 60, 2)}
            log(json.dumps(rec))
            record(rec)
            run_loss, run_n, t_log = 0.0, 0, time.time()
            run_ok.zero_()
        if step % args.save_every == 0:
            save()
    if step % args.save_every:
        save()


# ---------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = Path(args.out)
    model_dir = out / "model"
    state_path = out / "state.pt"
    acc = make_accelerator()
    is_main = acc.is_main_process

    def log(msg):
        if is_main:
            print(time.strftime("%H:%M:%S"), msg, flush=True)

    if args.export:
        export(model_dir, Path(args.export), half=args.half)
        return

    if not (model_dir / "config.json").exists():
        if is_main:
            build(args, model_dir)
        acc.wait_for_everyone()
    torch.manual_seed(args.seed)
    if args.untrained:
        tmp = out / "untrained"
        if is_main and not (tmp / "config.json").exists():
            build(args, tmp)
        acc.wait_for_everyone()
        model_dir = tmp
    model = LlavaForConditionalGeneration.from_pretrained(
        model_dir, attn_implementation="eager" if args.eval_only else "sdpa", dtype=torch.float32)
    if args.vision_positions == "sincos":  # a fixed table, as in MAE
        model.model.vision_tower.embeddings.position_embedding.weight.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(model_dir)
    batcher = Batcher(processor, args.image_size)

    if args.eval_only:
        if args.eval_seeds == "tune":
            seeds = list(shapes.TUNE_SEEDS[: args.n])
        else:
            seeds = shapes.heldout_seeds(args.n, int(args.eval_seeds.split(":")[1]) if ":" in args.eval_seeds else 0)
        t0 = time.time()
        res = evaluate(model, processor, batcher, seeds, args.image_size, log=log)
        res["seeds"] = args.eval_seeds
        res["model"] = str(model_dir)
        res["seconds"] = round(time.time() - t0, 1)
        print(json.dumps(res, indent=1))
        if args.eval_json:
            Path(args.eval_json).write_text(json.dumps(res, indent=1))
        return

    if args.vision_pretrain_minutes and not (args.resume and state_path.exists()):
        pretrain_vision(args, model, batcher, acc, log)
    train(args, model, batcher, model_dir, state_path, acc, log)


def export(model_dir: Path, dest: Path, half: bool = False, model_class=None):
    """Write the trained model + processor as a package folder (fp32; fp16 with ``half``).
    ``model_class``: the model's class (default ``LlavaForConditionalGeneration``)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = (model_class or LlavaForConditionalGeneration).from_pretrained(model_dir, dtype=torch.float32)
    if half:
        model = model.half()
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    AutoProcessor.from_pretrained(model_dir).save_pretrained(dest)
    print(f"exported to {dest}: {(dest / 'model.safetensors').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
