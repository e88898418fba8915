"""Train a shapes-world model (LLaVA, or Qwen2-VL with ``--family qwen2_vl``) from scratch with
caption loss only.

Runs as ``python scripts/train_shapes.py`` or ``accelerate launch scripts/train_shapes.py``
(CPU or GPUs; each process draws its own scenes). Data-parallel on CPU cores (gloo), e.g. both
cores of a 2-core machine::

    ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 scripts/train_shapes.py ...

Only the caption tokens (and the closing ``</s>`` / ``<|im_end|>``) are labels; masks, boxes and positions never
enter training. With ``--vision-pretrain-minutes`` a first stage trains the vision tower alone
to predict which words a scene's caption contains (:func:`pretrain_vision`), which is what lets
the tower learn shapes within a CPU hour (RESULTS.md).

Scenes are drawn on the fly from training seeds: step ``s``, process ``p``, row ``i`` uses
seed ``(s * world + p) * batch + i`` (always inside ``attendseg.shapes.TRAIN_SEEDS`` and below
``TUNE_SEEDS``), so a step-based run is a pure function of its options and resuming replays
nothing (``--max-minutes`` makes the schedule depend on the machine's speed).

``--family qwen2_vl`` builds a tiny ``Qwen2VLForConditionalGeneration`` (2-D multimodal RoPE
in the language model, the image at its own aspect ratio through the family's real processor,
``--merge`` × ``--merge`` merged patches) and ``--world mixed`` draws every training scene at
one of ``shapes.ASPECTS``. Its batches go through the processor itself (:class:`QwenBatcher`).
``--family qwen3_vl`` builds a tiny ``Qwen3VLForConditionalGeneration`` the same way (learned
absolute positions in the tower, interleaved M-RoPE). ``--text-heads``, ``--rope-theta`` and
``--mrope-section`` set the language model's rotary geometry, ``--vision-heads`` and
``--vision-rope-theta`` the tower's, ``--vision-pool`` stage 1's pooling (RESULTS.md has the
measurements behind the shipped choices).

Usage (the bundled models' runs on 2 cores: shapes-llava 12 + 45 minutes, shapes-qwen2vl
14 + 42 minutes)::

    ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 scripts/train_shapes.py \
        --out runs/shapes5 --steps 8000 --vision-pretrain-minutes 12 --max-minutes 45 \
        --batch 32 --lr 1e-3 --warmup 200 --vision-hidden 64 --vision-layers 6 --text-hidden 64 \
        --n-weights 2,1,1,1 --uniform-after 0.3 --vision-positions sincos
    ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 scripts/train_shapes.py \
        --family qwen2_vl --world mixed --vision-pretrain-world square --out runs/qwen5 --steps 8000 \
        --vision-pretrain-minutes 14 --max-minutes 42 --batch 32 --lr 1e-3 --warmup 200 --patch 8 --merge 1 \
        --vision-hidden 64 --vision-layers 6 --vision-pool max --freeze-vision-until 0.3 --text-hidden 64 \
        --text-heads 2 --rope-theta 1000 --mrope-section 3,4,9 --n-weights 2,1,1,1 --uniform-after 0.3
    python scripts/train_shapes.py --out runs/shapes5 ... --resume        # continue stage 2
    python scripts/train_shapes.py --out runs/qwen5 --world mixed --eval-only --eval-seeds tune --n 300
    python scripts/train_shapes.py --world mixed --choose-settings runs/qwen5/model --n 300
    python scripts/train_shapes.py --out runs/qwen5 --export attendseg/data/shapes-qwen2vl

``--out`` holds ``model/`` (a ``save_pretrained`` folder), ``state.pt`` (optimizer, scheduler,
step — the resume point), ``log.jsonl`` (loss per logging interval, the command of every start)
and ``eval_*.json``; ``--export`` writes the package folder with ``training_log.json`` built
from them. Evaluation and the choice of map settings are the one shapes evaluation,
:mod:`attendseg.shapes.evaluation` (attendseg's own capture, as ``attendseg eval shapes`` runs it).
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
from attendseg.files import atomic_write, atomic_write_text  # noqa: E402

QWEN_FAMILIES = ("qwen2_vl", "qwen3_vl")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/shapes")
    p.add_argument("--family", choices=("llava",) + QWEN_FAMILIES, default="llava")
    p.add_argument("--world", choices=shapes.WORLDS, default="square",
                   help="training scenes: all square, or each at its seed's aspect ratio (mixed)")
    p.add_argument("--merge", type=int, default=2, help="qwen2_vl: spatial merge size")
    p.add_argument("--rope-theta", type=float, default=0,
                   help="qwen2_vl: the language model's rope_theta (0: the builder's 1e6)")
    p.add_argument("--mrope-section", default="",
                   help="qwen2_vl: the M-RoPE sections (temporal,height,width) of the text heads' rotary "
                        "frequencies, highest first, summing to head_dim / 2 (default: the builder's 1:1.5:1.5)")
    p.add_argument("--max-pixels", type=int, default=64 * 128,
                   help="qwen2_vl: the image processor's max_pixels (larger images are scaled down)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--lr-hold", type=float, default=0,
                   help="stage 2: the learning rate stays at its peak until this fraction of the schedule, "
                        "then decays (cosine); 0: the cosine starts after the warmup")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0, help="model init / torch seed")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--vision-hidden", type=int, default=128)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--text-hidden", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--text-heads", type=int, default=0, help="the language model's heads (0: --heads)")
    p.add_argument("--vision-heads", type=int, default=0, help="the vision tower's heads (0: --heads)")
    p.add_argument("--vision-rope-theta", type=float, default=0,
                   help="qwen2_vl: the vision tower's 2-D RoPE theta (0: the family's 1e4)")
    p.add_argument("--vision-pool", default="",
                   help="stage 1's pooling of the tower's patch tokens: mean, max or attention, or two of them "
                        "comma-separated for the first (one-object) and second half, each with its own head "
                        "(default: mean for llava, max for qwen2_vl)")
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
    p.add_argument("--vision-pretrain-world", choices=shapes.WORLDS, default=None,
                   help="stage 1's scenes (default: --world); square scenes are the cheapest, and a tower "
                        "without absolute positions (Qwen2-VL's) reads any aspect ratio after them")
    p.add_argument("--freeze-vision-until", type=float, default=0,
                   help="stage 2: the vision tower's blocks stay as stage 1 left them (no gradient, no update, "
                        "no backward pass through them; the projector / merger trains) until this fraction "
                        "of the schedule")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--n-weights", default="",
                   help="curriculum: relative weights of 1..4-object training scenes, e.g. "
                        "'4,3,2,1' (default: uniform, like make_scene)")
    p.add_argument("--uniform-after", type=float, default=0.8,
                   help="schedule progress after which training scenes are uniform again")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate the run's model (attendseg.shapes.evaluation, in --world) and exit")
    p.add_argument("--untrained", action="store_true", help="with --eval-only: also the untrained and "
                                                                "random-point baselines")
    p.add_argument("--eval-seeds", default="tune", help="'tune' (training range), 'heldout' or 'heldout:SET'")
    p.add_argument("--n", type=int, default=200, help="scenes to evaluate / to choose settings on")
    p.add_argument("--eval-json", default="",
                   help="write the evaluation here (default OUT/eval_<seeds>_<world>.json; export gathers "
                        "OUT/eval_*.json into training_log.json)")
    p.add_argument("--choose-settings", default="", metavar="FOLDER",
                   help="choose FOLDER's map settings on --n tune scenes of --world, write its attendseg.json, exit")
    p.add_argument("--export", default="", help="write the package folder here and exit")
    p.add_argument("--half", action="store_true", help="export fp16 weights")
    args = p.parse_args(argv)
    pools = args.vision_pool.split(",") if args.vision_pool else []
    if len(pools) > 2 or any(pool not in ("mean", "max", "attention") for pool in pools):
        p.error(f"--vision-pool: one or two of mean, max, attention, not {args.vision_pool!r}")
    return args


# ---------------------------------------------------------------------------- model / data
def build(args, folder: Path):
    if args.family in QWEN_FAMILIES:
        return build_qwen(args, folder)
    from attendseg.tiny import build_llava

    return build_llava(
        folder,
        shapes.VOCABULARY,
        image_size=args.image_size,
        patch_size=args.patch,
        vision_hidden=args.vision_hidden,
        vision_layers=args.vision_layers,
        vision_heads=vision_heads(args),
        text_hidden=args.text_hidden,
        text_layers=args.text_layers,
        text_heads=text_heads(args),
        vision_feature_layer=-1,
        seed=args.seed,
        vision_positions=args.vision_positions,
    )


def text_heads(args) -> int:
    return args.text_heads or args.heads


def vision_heads(args) -> int:
    return args.vision_heads or args.heads


def build_qwen(args, folder: Path):
    """A tiny Qwen2-VL (or Qwen3-VL, ``--family``): vision tower ``--vision-layers`` ×
    ``--vision-hidden`` with ``--vision-heads`` and ``--vision-rope-theta`` (``--patch`` px patches,
    ``--merge`` × ``--merge`` merge), language model ``--text-layers`` × ``--text-hidden`` with
    ``--text-heads``, ``--rope-theta`` and ``--mrope-section`` (temporal, height, width; default:
    as the builder derives them)."""
    from attendseg.tiny.qwen_vl import build_qwen_vl

    text = dict(hidden_size=args.text_hidden, intermediate_size=4 * args.text_hidden,
                num_hidden_layers=args.text_layers, num_attention_heads=text_heads(args),
                num_key_value_heads=text_heads(args), max_position_embeddings=1024)
    if args.rope_theta:
        text["rope_theta"] = args.rope_theta
    if args.mrope_section:
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": args.rope_theta or 1e6,
                                   "mrope_section": [int(n) for n in args.mrope_section.split(",")],
                                   **({"mrope_interleaved": True} if args.family == "qwen3_vl" else {})}
    factor = args.patch * args.merge
    vision = dict(depth=args.vision_layers, num_heads=vision_heads(args), patch_size=args.patch,
                  spatial_merge_size=args.merge)
    if args.vision_rope_theta:
        vision["rope_parameters"] = {"rope_type": "axial", "rope_theta": args.vision_rope_theta}
    if args.family == "qwen3_vl":  # learned absolute positions (an image_size / patch grid, interpolated)
        vision.update(hidden_size=args.vision_hidden, intermediate_size=4 * args.vision_hidden,
                      num_position_embeddings=(args.image_size // args.patch) ** 2, deepstack_visual_indexes=[])
    else:
        vision.update(embed_dim=args.vision_hidden, mlp_ratio=4)
    return build_qwen_vl(
        folder, shapes.VOCABULARY, model_type=args.family, seed=args.seed, text=text, vision=vision,
        image_processor=dict(min_pixels=factor * factor * 4, max_pixels=args.max_pixels),
    )


def load_model(args, folder: Path, attn: str = "sdpa"):
    """The family's model class ``from_pretrained(folder)`` (fp32) and its processor."""
    from attendseg.adapters import load_processor
    import transformers

    cls = getattr(transformers, {"llava": "LlavaForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration",
                                 "qwen3_vl": "Qwen3VLForConditionalGeneration"}[args.family])
    return cls.from_pretrained(folder, attn_implementation=attn, dtype=torch.float32), load_processor(folder)


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


class QwenBatcher:
    """Qwen2-VL training batches through the family's real processor: chat template, image
    processor (``smart_resize`` at the image's own aspect ratio), ``<|image_pad|>`` expansion,
    ``mm_token_type_ids`` for M-RoPE. Labels are the caption tokens and ``<|im_end|>`` (every
    token after the assistant turn's header); rows are left-padded as the tokenizer pads."""

    def __init__(self, processor):
        self.processor = processor
        self.tok = processor.tokenizer
        self.eos = self.tok.eos_token_id
        self.pad = self.tok.pad_token_id
        self.assistant = self.tok.convert_tokens_to_ids("assistant")
        self.texts = {order: self.prompt_text(prompt) for order, (prompt, _) in shapes.ORDERS.items()}

    def prompt_text(self, prompt: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def __call__(self, scenes):
        texts = [self.texts[sc.order] + sc.caption + self.tok.eos_token for sc in scenes]
        batch = self.processor(images=[sc.image for sc in scenes], text=texts, padding=True, return_tensors="pt")
        ids = batch["input_ids"]
        # the caption starts after the last "assistant" token of each row
        last = ids.shape[1] - 1 - (ids == self.assistant).flip(1).int().argmax(1)
        labels = ids.masked_fill(torch.arange(ids.shape[1]) <= last[:, None], -100)
        batch["labels"] = labels.masked_fill(batch["attention_mask"] == 0, -100)
        return dict(batch)


def make_batcher(args, processor):
    return QwenBatcher(processor) if args.family in QWEN_FAMILIES else Batcher(processor, args.image_size)


def training_scenes(args, seeds, n_weights=None, progress: float = 1.0, world: str | None = None, **options):
    """The scenes of ``seeds`` in ``world`` (default ``--world``; object counts from
    ``n_weights`` while ``progress < --uniform-after``)."""
    world = world or args.world
    if n_weights is not None and progress < args.uniform_after:
        return [shapes.world_scene(s, world, size=args.image_size, n_objects=int(
            np.random.default_rng([s, 1]).choice(4, p=n_weights)) + 1, **options) for s in seeds]
    return [shapes.world_scene(s, world, size=args.image_size, **options) for s in seeds]


def scene_seed(step: int, proc: int, world: int, batch: int, i: int) -> int:
    seed = (step * world + proc) * batch + i
    assert seed < shapes.TUNE_SEEDS.start
    return seed


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
    return most_over_processes(acc, float(flag)) > 0


def most_over_processes(acc, value: float) -> float:
    """The largest ``value`` over the processes: every process takes the same time-based
    decisions (learning rate, frozen tower, curriculum, stop) at the same step."""
    if acc.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=acc.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.item()


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
    """Stage-1 model: the vision tower's patch tokens pooled per image, then one logit per
    vocabulary word (does the caption contain it?). LLaVA: CLIP's patch tokens without CLS
    (``pixel_values [B, 3, S, S]``); Qwen-VL: the blocks' output before the patch merger
    (``pixel_values [sum patches, C·T·p·p]``, ``image_grid_thw [B, 3]``).

    ``pool``: ``"mean"`` (then a linear layer), ``"max"`` (then a linear layer) or
    ``"attention"``: every word ``w`` has its own query, ``logit_w = u_w · Σ_t softmax_t(q_w · k_t) v_t``
    over the image's tokens ``t`` (``k``, ``v`` linear in the layer-normed tokens): the word
    reads the tokens the way a caption token reads image tokens in the language model.
    RESULTS.md has the measurements that chose between them per family.
    """

    def __init__(self, vision_tower, vocab_size: int, pool: str = "mean"):
        super().__init__()
        self.vision_tower = vision_tower
        self.pool = pool
        config = vision_tower.config
        width = getattr(config, "embed_dim", None) or config.hidden_size
        if pool == "attention":
            self.norm = torch.nn.LayerNorm(width)
            self.key = torch.nn.Linear(width, width)
            self.value = torch.nn.Linear(width, width)
            self.query = torch.nn.Parameter(torch.randn(vocab_size, width) * width ** -0.5)
            self.read = torch.nn.Parameter(torch.randn(vocab_size, width) * width ** -0.5)
            self.bias = torch.nn.Parameter(torch.zeros(vocab_size))
        else:
            self.head = torch.nn.Linear(width, vocab_size)

    def pooled_logits(self, tokens: torch.Tensor) -> torch.Tensor:  # [T, D] -> [vocab]
        if self.pool == "mean":
            return self.head(tokens.mean(0))
        if self.pool == "max":
            return self.head(tokens.max(0).values)
        x = self.norm(tokens)
        weights = (self.query @ self.key(x).T / x.shape[-1] ** 0.5).softmax(-1)  # [vocab, T]
        return ((weights @ self.value(x)) * self.read).sum(-1) + self.bias

    def forward(self, pixel_values, image_grid_thw=None):  # -> [B, vocab]
        if image_grid_thw is None:
            tokens = self.vision_tower(pixel_values=pixel_values).last_hidden_state[:, 1:]  # without CLS
            return torch.stack([self.pooled_logits(t) for t in tokens])
        hidden = self.vision_tower(pixel_values, grid_thw=image_grid_thw).last_hidden_state
        return torch.stack([self.pooled_logits(t) for t in hidden.split(image_grid_thw.prod(-1).tolist())])


def is_tower_parameter(name: str) -> bool:
    """Whether the named parameter belongs to the vision tower proper (LLaVA's CLIP, Qwen-VL's
    patch embedding and blocks), not to the projector / patch merger or the language model."""
    return name.startswith(("model.vision_tower.", "model.visual.")) and ".merger." not in name


def vision_tower(model):
    """The model's vision tower (LLaVA's CLIP, Qwen2-VL's ``visual``)."""
    inner = model.model
    return inner.visual if hasattr(inner, "visual") else inner.vision_tower


def vision_inputs(batcher, scenes) -> dict:
    """What :class:`CaptionWords` reads for ``scenes``: the processor's image inputs."""
    if isinstance(batcher, QwenBatcher):
        out = batcher.processor.image_processor(images=[sc.image for sc in scenes], return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}
    return {"pixel_values": pixel_values([sc.image for sc in scenes])}


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
    pools = (args.vision_pool or ("max" if args.family in QWEN_FAMILIES else "mean")).split(",")
    nets = [CaptionWords(vision_tower(model), vocab, pool).to(acc.device) for pool in pools]
    params = {id(p): p for net in nets for p in net.parameters()}  # the tower once, every head
    shape_ids = torch.tensor(tok.convert_tokens_to_ids(list(shapes.SHAPES)))
    opt = torch.optim.AdamW(list(params.values()), lr=args.vision_pretrain_lr, weight_decay=0.05)
    for net in nets:
        net.train()
    budget = args.vision_pretrain_minutes * 60
    t0, step, run, shape_hits = time.time(), 0, [], []
    record = jsonl_log(Path(args.out) / "log.jsonl", acc.is_main_process)
    while not any_process(acc, time.time() - t0 >= budget):
        for group in opt.param_groups:
            group["lr"] = args.vision_pretrain_lr * min(1.0, (step + 1) / 100)
        first_half = not any_process(acc, time.time() - t0 >= budget / 2)  # the same step on every process
        seeds = [600_000_000 + scene_seed(step, acc.process_index, acc.num_processes, args.batch, i)
                 for i in range(args.batch)]
        scenes = training_scenes(args, seeds, world=args.vision_pretrain_world, n_objects=1 if first_half else None)
        target = torch.zeros(len(scenes), vocab)
        for row, sc in enumerate(scenes):
            target[row, tok(sc.caption, add_special_tokens=False)["input_ids"]] = 1.0
        net = nets[0] if first_half else nets[-1]
        logits = net(**{k: v.to(acc.device) for k, v in vision_inputs(batcher, scenes).items()})
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.to(acc.device))
        top_shape = shape_ids[logits.detach()[:, shape_ids].argmax(-1).cpu()]  # is the likeliest shape word present?
        shape_hits.append(target[torch.arange(len(scenes)), top_shape].mean().item())
        loss.backward()
        if acc.num_processes > 1:  # average gradients by hand: the tower gets DDP-wrapped later
            for param in params.values():
                if param.grad is not None:
                    torch.distributed.all_reduce(param.grad)
                    param.grad /= acc.num_processes
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        run.append(loss.item())
        if step % args.log_every == 0:
            rec = {"stage": "vision", "step": step, "loss": round(float(np.mean(run)), 5),
                   "shape_acc": round(float(np.mean(shape_hits)), 3),
                   "elapsed_min": round((time.time() - t0) / 60, 2)}
            log(json.dumps(rec))
            record(rec)
            run, shape_hits = [], []
    log(f"vision pretraining: {step} steps in {(time.time() - t0) / 60:.1f} min")
    acc.wait_for_everyone()


def lr_factor(args, step: int, progress: float) -> float:
    """The learning rate over ``--lr`` at ``step`` and schedule ``progress`` (0–1): linear warmup
    over ``--warmup`` steps, the peak until ``--lr-hold``, then a cosine down to 0.05 at the end."""
    if step < args.warmup:
        return (step + 1) / args.warmup
    f0 = max(args.warmup / args.steps, args.lr_hold)
    f = max(0.0, (progress - f0) / max(1e-9, 1 - f0))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(f, 1.0)))


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
    groups = []
    for tower in (False, True):
        named = [(n, p) for n, p in trainable if is_tower_parameter(n) == tower]
        decay = [p for n, p in named if p.dim() >= 2 and "embed" not in n]
        no_decay = [p for n, p in named if not (p.dim() >= 2 and "embed" not in n)]
        groups += [{"params": decay, "weight_decay": args.weight_decay, "tower": tower},
                   {"params": no_decay, "weight_decay": 0.0, "tower": tower}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=args.lr, betas=(0.9, 0.98))

    step = 0
    elapsed0 = 0.0  # training seconds before this (resumed) run
    t_start = time.time()

    def progress() -> float:
        f = step / args.steps
        if args.max_minutes:
            f = max(f, (elapsed0 + time.time() - t_start) / (args.max_minutes * 60))
        return min(f, 1.0)

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
    record({"start": step, "args": vars(args), "argv": sys.argv, "world_size": acc.num_processes})
    word_kind = word_kinds(batcher.tok, acc.device)
    run_loss, run_n, t_log = 0.0, 0, time.time()
    run_ok = torch.zeros(2, 2)  # [shape, colour] x [right, total] on the training batches
    tower = [p for n, p in trainable if is_tower_parameter(n)]
    while step < args.steps:
        shared_progress = most_over_processes(acc, progress())
        if shared_progress >= 1.0:
            break
        frozen_tower = shared_progress < args.freeze_vision_until
        for p in tower:  # a frozen tower needs no backward pass: its blocks get no gradient at all
            p.requires_grad_(not frozen_tower)
        for group in opt.param_groups:
            group["lr"] = 0.0 if group["tower"] and frozen_tower else args.lr * lr_factor(args, step, shared_progress)
        seeds = [scene_seed(step, acc.process_index, acc.num_processes, args.batch, i)
                 for i in range(args.batch)]
        scenes = training_scenes(args, seeds, n_weights, shared_progress)
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
        write_training_log(out, Path(args.export))
        return
    if args.choose_settings:
        from attendseg.shapes.evaluation import choose_settings

        print(json.dumps(choose_settings(args.choose_settings, n=args.n, world=args.world), indent=1))
        return
    if args.eval_only:
        evaluate_run(args, model_dir, out)
        return

    if not (model_dir / "config.json").exists():
        if is_main:
            build(args, model_dir)
        acc.wait_for_everyone()
    torch.manual_seed(args.seed)
    model, processor = load_model(args, model_dir)
    if args.vision_positions == "sincos":  # a fixed table, as in MAE
        model.model.vision_tower.embeddings.position_embedding.weight.requires_grad_(False)
    batcher = make_batcher(args, processor)

    if args.vision_pretrain_minutes and not (args.resume and state_path.exists()):
        pretrain_vision(args, model, batcher, acc, log)
    train(args, model, batcher, model_dir, state_path, acc, log)


def evaluate_run(args, model_dir: Path, out: Path) -> dict:
    """``--eval-only``: the one shapes evaluation (:func:`attendseg.shapes.evaluation.evaluate_shapes`,
    per-layer figures, both refiners) of the run's model on ``--n`` scenes of ``--eval-seeds`` in
    ``--world``, printed and written to ``--eval-json``."""
    from attendseg.shapes.evaluation import evaluate_shapes

    kind, _, set_id = args.eval_seeds.partition(":")
    t0 = time.time()
    res = evaluate_shapes(str(model_dir), n=args.n, seeds=kind, seed=int(set_id or 0), world=args.world,
                          per_layer=True, baselines=args.untrained)
    res["seconds"] = round(time.time() - t0, 1)
    res["model_folder"] = str(model_dir)
    print(json.dumps(res, indent=1))
    path = Path(args.eval_json or out / f"eval_{kind}{set_id}_{args.world}.json")
    atomic_write_text(path, json.dumps(res, indent=1) + "\n")
    return res


def command_line(argv: list[str], world_size: int) -> str:
    """The shell command that started a run (``sys.argv`` and the number of processes)."""
    launcher = (f"ACCELERATE_USE_CPU=1 OMP_NUM_THREADS=1 torchrun --nproc_per_node {world_size}"
                if world_size > 1 else "python")
    return f"{launcher} {' '.join(argv)}"


def write_training_log(out: Path, dest: Path) -> dict:
    """``dest/training_log.json`` from the run's ``log.jsonl`` and evaluations: the command of
    each (resumed) start, the stage-1 and stage-2 curves, and every ``OUT/eval_*.json``."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    starts = [r for r in records if "start" in r]
    log = {
        "commands": [command_line(r.get("argv", []), r.get("world_size", 1)) for r in starts],
        "args": starts[-1]["args"] if starts else {},
        "vision_pretrain_curve": [r for r in records if r.get("stage") == "vision"],
        "loss_curve": [r for r in records if "loss" in r and "stage" not in r],
        "evaluations": {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("eval_*.json"))},
    }
    atomic_write_text(dest / "training_log.json", json.dumps(log, indent=1) + "\n")
    return log


#: The processor's files in a model folder (copied as they are by :func:`export`).
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "processor_config.json", "preprocessor_config.json")


def export(model_dir: Path, dest: Path, half: bool = False, model_class=None):
    """Write the trained model + processor as a package folder (fp32; fp16 with ``half``).
    ``model_class``: the model's class (default: the class ``config.json`` names). The
    processor's files are copied unchanged (a processor without its video part, as built here
    where torchvision is missing, could not be saved back with its video settings)."""
    import shutil

    import transformers

    if model_class is None:
        config = json.loads((model_dir / "config.json").read_text())
        model_class = getattr(transformers, config["architectures"][0])
    model = model_class.from_pretrained(model_dir, dtype=torch.float32)
    if half:
        model = model.half()
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    for name in PROCESSOR_FILES:
        if (model_dir / name).exists():
            shutil.copy2(model_dir / name, dest / name)
    print(f"exported to {dest}: {(dest / 'model.safetensors').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
