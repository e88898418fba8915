"""Capture cost: plain sdpa generation vs attendseg capture vs eager ``output_attentions``.

A random-weight model generates a fixed number of tokens (EOS suppressed) three ways, each in its
own process, the modes interleaved over repeats. ``--family llava`` (default): a LLaVA with
LLaVA-1.5's image-token count (336 px / patch 14 → 24 × 24 = 576) and a scaled Llama text model,
fed synthetic ids. ``--family qwen2_vl`` (or another any-resolution family): the family's tiny
checkpoint (:mod:`attendseg.tiny`) with its released image-processor limits, so a 1024 × 768
photo gets the family's real image-token count, and the family's 7B text geometry scaled to a
CPU width; inputs come from the adapter (real processor, chat template). The modes:

* ``plain``   — ``generate`` with sdpa attention (the speed to match);
* ``capture`` — attendseg capture on (mean over all layers and heads, as the method uses);
* ``eager``   — eager attention, ``output_attentions=True, return_dict_in_generate=True``: the
  reference implementation's way, keeping every layer's full attention.

Peak memory is the process's resident set (CPU) or ``max_memory_allocated`` (CUDA) during
``generate``; "added" is the peak minus the level just before ``generate`` (model loaded, inputs
built). Usage::

    python benchmarks/capture.py                      # CPU, the default config
    python benchmarks/capture.py --family qwen2_vl    # an any-resolution family
    python benchmarks/capture.py --device cuda --dtype bf16 --text-config llava-1.5-7b
    python benchmarks/capture.py --write BENCHMARKS.md  # also record the table there
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MODES = ("plain", "capture", "eager")
#: Any-resolution families: the tiny checkpoint's builder and its options: the released image
#: processor (so the photo gets the real token count) and the family's 7B text geometry
#: (layers × heads, kv heads) at a CPU width.
FAMILIES = {
    "qwen2_vl": ("attendseg.tiny.qwen_vl:build_qwen_vl", dict(
        model_type="qwen2_vl", image_processor={"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280},
        text=dict(hidden_size=448, intermediate_size=1216, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4))),
    "llava_next": ("attendseg.tiny.llava_next:build_llava_next", dict(
        tile=336, patch=14, text_model="mistral", text_hidden=512, intermediate=1376, text_layers=32,
        text_heads=32, kv_heads=8)),
}
TEXT_CONFIGS = {
    # Vicuna-7B's attention geometry (32 layers × 32 heads: what eager attention keeps scales
    # with layers × heads × sequence²) at a width that runs on a CPU
    "7b-shape-narrow": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=32),
    # LLaVA-1.5-7B's language model (Vicuna-7B) shape
    "llava-1.5-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32),
}


def build(args):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=32064, max_position_embeddings=4096, **TEXT_CONFIGS[args.text_config])
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=2, image_size=336, patch_size=14)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=32000,
                         image_seq_length=576)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlavaForConditionalGeneration(config)
    return model.to(torch.bfloat16 if args.dtype == "bf16" else torch.float32).eval()


def inputs(args, model):
    import torch

    torch.manual_seed(1)
    prompt = torch.randint(100, 31000, (1, 40))
    image = torch.full((1, 576), 32000)
    ids = torch.cat([prompt[:, :5], image, prompt[:, 5:]], 1).to(args.device)
    pixels = torch.randn(1, 3, 336, 336, device=args.device, dtype=model.dtype)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels)


class PeakMemory:
    """Peak resident memory (CPU, sampled every millisecond) or CUDA peak allocation."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")

    def current(self) -> int:
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated()
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if not self.cuda:  # return freed heap to the OS so every mode starts from the same floor
            import ctypes

            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except OSError:
                pass
        self.start = self.current()
        self.peak = self.start
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.current())


def build_family(family: str, folder: Path) -> Path:
    """The family's tiny checkpoint at benchmark size, written to ``folder``."""
    import importlib

    builder, options = FAMILIES[family]
    module_name, function = builder.split(":")
    words = "describe the image in detail a red cat on sofa".split()
    return getattr(importlib.import_module(module_name), function)(folder, words, **options)


def family_inputs(args):
    """``(model, language model, generate inputs, per-row image-key positions)`` for a 1024 × 768
    photo through the family's adapter."""
    import numpy as np
    from PIL import Image
    from skimage import data

    import attendseg

    attender = attendseg.load(args.checkpoint, device=args.device, dtype="bf16" if args.dtype == "bf16" else None)
    photo = Image.fromarray(np.asarray(Image.fromarray(data.coffee()).resize((1024, 768))))
    prepared = attender.adapter.prepare([photo], ["describe the image in detail"])
    return attender.model, attender.adapter.language_model, prepared.inputs, prepared.key_index


def worker(args) -> dict:
    import torch

    from attendseg import capture  # imported in every mode, so baselines match

    torch.set_num_threads(args.threads)
    if args.family == "llava":
        model = build(args)
        batch = inputs(args, model)
        language_model = model.model.language_model
        key_index = torch.nonzero(batch["input_ids"][0] == 32000).squeeze(1)[None]
    else:
        model, language_model, batch, key_index = family_inputs(args)
    kwargs = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                  pad_token_id=0, eos_token_id=None)
    recorder = None
    if args.mode == "capture":
        capture.enable(language_model)
        recorder = capture.Recorder(key_index, layers=range(language_model.config.num_hidden_layers))
    else:
        language_model.set_attn_implementation("sdpa" if args.mode == "plain" else "eager")
        if args.mode == "eager":
            kwargs.update(output_attentions=True, return_dict_in_generate=True)
    with torch.inference_mode():  # warm-up (kernels, allocator)
        model.generate(**batch, max_new_tokens=2, do_sample=False, pad_token_id=0)
    with torch.inference_mode(), PeakMemory(args.device) as memory:
        start = time.perf_counter()
        if recorder is not None:
            with capture.recording(recorder):
                out = model.generate(**batch, **kwargs)
            maps = recorder.maps()
        else:
            out = model.generate(**batch, **kwargs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    sequences = out.sequences if hasattr(out, "sequences") else out
    generated = sequences.shape[1] - batch["input_ids"].shape[1]
    if recorder is not None:
        assert maps.shape[1] == generated, (maps.shape, generated)
    return dict(mode=args.mode, seconds=seconds, peak=memory.peak, added=memory.peak - memory.start,
                tokens=generated, sequence=batch["input_ids"].shape[1],
                image_tokens=sum(len(k) for k in key_index))


def run_all(args) -> dict:
    results = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = "-"
        if args.family != "llava":
            checkpoint = str(build_family(args.family, Path(tmp) / "checkpoint"))
        for repeat in range(args.repeats):
            for mode in MODES:
                out = Path(tmp) / f"{mode}{repeat}.json"
                cmd = [sys.executable, __file__, "--worker", mode, "--json", str(out)]
                cmd += ["--device", args.device, "--dtype", args.dtype, "--tokens", str(args.tokens),
                        "--text-config", args.text_config, "--threads", str(args.threads),
                        "--family", args.family, "--checkpoint", checkpoint]
                subprocess.run(cmd, check=True)
                results[mode].append(json.loads(out.read_text()))
                r = results[mode][-1]
                print(f"  {mode:8s} run {repeat + 1}: {r['seconds']:.2f} s, peak {r['peak'] / 2**20:.0f} MiB, "
                      f"added {r['added'] / 2**20:.0f} MiB", flush=True)
    return results


def summarise(args, results) -> str:
    med = {m: {k: statistics.median(r[k] for r in runs) for k in ("seconds", "peak", "added")}
           for m, runs in results.items()}
    best = {m: min(r["seconds"] for r in runs) for m, runs in results.items()}
    first = results["plain"][0]
    if args.family == "llava":
        model = f"random LLaVA, 576 image tokens, text `{args.text_config}` ({json.dumps(TEXT_CONFIGS[args.text_config])})"
    else:
        model = (f"random `{args.family}` (tiny checkpoint, released processor limits), a 1024 × 768 photo → "
                 f"{first['image_tokens']} image tokens, options {json.dumps(FAMILIES[args.family][1])}")
    lines = [
        f"Config: {model}, {args.dtype}, device `{args.device}`"
        f" ({platform.processor() or platform.machine()}, {args.threads} threads), prompt "
        f"{first['sequence']} tokens, {first['tokens']} generated tokens, median of {args.repeats} "
        f"runs per mode, modes interleaved, one process per run.",
        "",
        "| mode | time, median (s) | time, best (s) | peak memory (MiB) | added during generate (MiB) |",
        "|---|---|---|---|---|",
    ]
    for mode in MODES:
        m = med[mode]
        lines.append(f"| {mode} | {m['seconds']:.2f} | {best[mode]:.2f} | {m['peak'] / 2**20:.0f} | "
                     f"{m['added'] / 2**20:.0f} |")
    ratio = lambda a, b, k: med[a][k] / med[b][k] if med[b][k] else float("nan")  # noqa: E731
    lines += [
        "",
        f"- capture / plain: time **{ratio('capture', 'plain', 'seconds'):.3f}×** (median; best-of-"
        f"{args.repeats}: {best['capture'] / best['plain']:.3f}×), "
        f"peak memory **{ratio('capture', 'plain', 'peak'):.3f}×** "
        f"(added: {ratio('capture', 'plain', 'added'):.2f}×)",
        f"- eager reference / capture: peak memory **{ratio('eager', 'capture', 'peak'):.2f}×**, "
        f"added memory **{ratio('eager', 'capture', 'added'):.1f}×**, time {ratio('eager', 'capture', 'seconds'):.2f}×",
    ]
    return "\n".join(lines)


def write_section(path: Path, key: str, body: str):
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{body}\n{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text-config", default="7b-shape-narrow", choices=sorted(TEXT_CONFIGS),
                        help="text model of the llava family's benchmark")
    parser.add_argument("--family", default="llava", choices=["llava", *sorted(FAMILIES)])
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path, help="markdown file to record the table in")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.mode = args.worker
        args.json.write_text(json.dumps(worker(args)))
        return
    results = run_all(args)
    table = summarise(args, results)
    print("\n" + table)
    if args.write:
        config = args.text_config if args.family == "llava" else args.family
        write_section(args.write, f"capture-{args.device.split(':')[0]}-{config}", table)


if __name__ == "__main__":
    main()
