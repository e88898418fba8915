"""The ``attendseg`` command line: thin — parse, call the library, print.

User mistakes (a missing model, a bad option value) print one ``error:`` line and exit with
status 2; images that cannot be read are listed in the run's summary, and the run goes on.
Arguments are checked before torch, transformers or spaCy are imported, so a typo costs well
under a second. Ctrl-C prints what was done and exits with status 130.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import typer

from attendseg.bundled import BUNDLED_MODELS, DEFAULT_MODEL  # names only: nothing heavy is imported

app = typer.Typer(
    name="attendseg",
    help="Training-free pixel grounding: one mask per noun phrase of a multimodal model's "
    "answer, from the model's own attention.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: flags without a '<bool>' metavar, no cut-off text
)
eval_app = typer.Typer(help="Measure grounding quality.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(eval_app, name="eval")
shapes_app = typer.Typer(help="The shapes world (the bundled demo model's world).", no_args_is_help=True)
app.add_typer(shapes_app, name="shapes")
export_app = typer.Typer(help="Write held-out shapes-world scenes in a benchmark's data layout.",
                         no_args_is_help=True)
shapes_app.add_typer(export_app, name="export")

MODEL_HELP = ("Hub id or folder of a supported model, or a bundled model's short name "
              f"({', '.join(BUNDLED_MODELS)}; default: {DEFAULT_MODEL}, the bundled shapes-world demo model).")
BASE_HELP = ("DiffLMM only: the base LLM under the released LoRA adapter, e.g. lmsys/vicuna-7b-v1.5 or a "
             "local copy under any name (its config must match the release's).")
SD_HELP = "DiffLMM only: hub id or folder of Stable Diffusion (unet/, vae/, scheduler/; default: the release's)."
CLIP_HELP = "DiffLMM only: hub id or folder of the CLIP vision model (default: the release's)."
FRESH_NOISE_HELP = ("DiffLMM only: fresh random noise and VAE sample on every call, as the original code "
                    "(default: seeded, the same answer every run).")
PROMPT_HELP = "What the model is asked (default: the model's own, else 'Describe the image in detail.')."
LAYERS_HELP = "Layers whose attention is used: all, or e.g. 0,1,5 or 10-20 (default: the model's, else all)."
HEADS_HELP = "Heads whose attention is used: all, or e.g. 0,3 or 0-7 (default: all)."
BATCH_HELP = "Images per model call."
TOKENS_HELP = "Longest answer, in tokens (an answer cut at this limit is flagged in the summary)."
DEVICE_HELP = "cpu | cuda | cuda:N (default: cuda when available)."
DTYPE_HELP = "float32 | bfloat16 | float16 (default: bf16 on CUDA, fp32 on CPU)."
OVERWRITE_HELP = ("Redo images whose output already exists (needed when they were made with other "
                  "settings).")
QUIET_HELP = "No progress bar."


def _fail(message: str, code: int = 2):
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _quiet_transformers():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _model(model: Optional[str]) -> str:
    from attendseg.bundled import resolve_model

    return resolve_model(model)


def _model_record(model: Optional[str]) -> str:
    """How a result names its model: a bundled short name, an absolute folder, or a hub id."""
    if model is None or (model in BUNDLED_MODELS and not Path(model).exists()):
        return model or DEFAULT_MODEL
    return str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model


def _check_inputs(paths: List[Path]):
    """Every input path must exist (a typo is not 'no images found')."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        _fail(f"{', '.join(missing)}: no such file or folder")


def _check_refiner(refiner: str):
    from attendseg.refiners import available_refiners

    if refiner not in available_refiners():
        _fail(f"unknown --refiner {refiner!r}; choose one of {', '.join(available_refiners())}")


def _check_stale(jobs, out: Path, done_suffix: str, record: dict, overwrite: bool):
    """Stop before the model loads when finished outputs were made with other settings."""
    from attendseg.batch import describe_stale, stale_outputs

    stale = stale_outputs(jobs, out, done_suffix, record)
    if stale and not overwrite:
        _fail(describe_stale(stale))
    return stale


def _check_hub_ids(parts) -> None:
    """Fail now, before torch and transformers load, when a part given by hub id is not cached
    and the hub cannot be reached (:func:`attendseg.hub.resolve`; loading asks again, at once).

    Args:
        parts: ``(what, hub id or folder or None, key file)`` triples.
    """
    from attendseg.hub import resolve

    for what, source, key in parts:
        if source:
            resolve(source, what, key)


def _model_options(base: Optional[str], sd: Optional[str] = None, clip: Optional[str] = None,
                   fresh_noise: bool = False) -> dict:
    """DiffLMM's loader options, only those given (other models refuse any)."""
    options = {k: v for k, v in dict(base=base, sd=sd, clip=clip).items() if v}
    if fresh_noise:
        options["deterministic"] = False
    return options


def _version(value: bool):
    if value:
        from attendseg import __version__

        typer.echo(f"attendseg {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")):
    """attendseg command line."""


def _output_folder(out: Path, paths: List[Path]) -> Path:
    _check_inputs(paths)
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        _fail(f"--out {out} exists and is not a folder")
    target = out.resolve()
    for path in paths:
        resolved = path.resolve()
        if resolved == target or target in resolved.parents:
            _fail(f"the input {path} lies inside --out {out}; choose an output folder outside the inputs")
    return out


def _print_summary(summary, out: Path):
    for line in summary.lines():
        typer.echo(line)
    typer.echo(f"outputs in {out}" if summary.written or summary.existing else f"nothing written to {out}")
    if summary.interrupted is not None:
        raise typer.Exit(130)
    if summary.failed and not (summary.written or summary.existing):
        raise typer.Exit(1)


def _interrupted_before_run():
    _fail("interrupted before any image was processed; nothing was written", 130)


@app.command()
def ground(
    paths: List[Path] = typer.Argument(..., help="Images and/or folders (searched recursively)."),
    out: Path = typer.Option(Path("attendseg-out"), "--out", "-o", help="Output folder (mirrors the input tree)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    base: Optional[str] = typer.Option(None, "--base", help=BASE_HELP),
    sd: Optional[str] = typer.Option(None, "--sd", help=SD_HELP),
    clip: Optional[str] = typer.Option(None, "--clip", help=CLIP_HELP),
    fresh_noise: bool = typer.Option(False, "--fresh-noise", help=FRESH_NOISE_HELP),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help=PROMPT_HELP),
    text: Optional[str] = typer.Option(None, "--text", help="Ground this text instead of generating an answer."),
    refiner: str = typer.Option("superpixel", "--refiner", "-r", help="sam | superpixel | threshold."),
    sam_model: Optional[str] = typer.Option(None, "--sam-model", help="SAM hub id or folder (with --refiner sam; default facebook/sam-vit-huge)."),
    sam_choice: str = typer.Option("last", "--sam-choice", help="SAM mask: last | best-iou | whole | part | subpart."),
    phrases: Optional[str] = typer.Option(None, "--phrases", help="auto | simple | spacy:NAME_OR_PATH | vocab:word,word (default: the model's, else auto)."),
    keep_nonvisual: bool = typer.Option(False, "--keep-nonvisual", help="Also ground pronouns and non-visual nouns."),
    overlays: bool = typer.Option(False, "--overlays", help="Also write an overlay PNG per image."),
    masks_png: bool = typer.Option(False, "--masks-png", help="Also write one PNG mask per phrase."),
    layers: Optional[str] = typer.Option(None, "--layers", help=LAYERS_HELP),
    heads: Optional[str] = typer.Option(None, "--heads", help=HEADS_HELP),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help=BATCH_HELP),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help=TOKENS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=DTYPE_HELP),
    normalisation: Optional[str] = typer.Option(None, "--normalisation", help="mean | none (default: the model's, else mean)."),
    sinks: Optional[str] = typer.Option(None, "--sinks", help="none | corners | outliers."),
    views: Optional[str] = typer.Option(None, "--views", help="fused | base | tiles: which views of a multi-view model (LLaVA-NeXT, …) make the map (default fused)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
):
    """Ground every noun phrase of the model's answer: one JSON per image (masks as COCO RLE)."""
    from attendseg.batch import Summary, collect, run
    from attendseg.errors import AttendsegError
    from attendseg.phrases import check_phrase_spec

    out = _output_folder(out, paths)  # cheap checks first: no torch, transformers or spaCy yet
    _check_refiner(refiner)
    settings = {k: v for k, v in dict(normalisation=normalisation, sinks=sinks, views=views).items()
                if v is not None}
    try:
        model_name = _model(model)
        if phrases is not None:
            check_phrase_spec(phrases)
        for name, spec in (("layers", layers), ("heads", heads)):
            if spec is not None:
                settings[name] = _parse_layers(spec, f"--{name}")
        jobs, ignored = collect(paths, exclude=out)
        if not jobs:
            _fail("no images found in " + ", ".join(map(str, paths)))
        from attendseg.refiners.sam import PAPER_SAM

        _check_hub_ids([("model", model_name, "config.json"), ("base LLM", base, "config.json"),
                        ("Stable Diffusion (SD)", sd, "unet/config.json"), ("CLIP", clip, "config.json"),
                        ("SAM", (sam_model or PAPER_SAM) if refiner == "sam" else None, "config.json")])
    except AttendsegError as error:
        _fail(str(error))

    try:
        from attendseg import Grounder, make_phrase_extractor, viz
        from attendseg.files import atomic_save_image
        from attendseg.grounder import DEFAULT_PROMPT, checkpoint_defaults

        _quiet_transformers()
        defaults = checkpoint_defaults(model_name)
        prompt = prompt or defaults.get("prompt", DEFAULT_PROMPT)
        phrases = phrases or defaults.get("phrases", "auto")
        record = {"command": "ground", "model": _model_record(model), "base": base, "sd": sd, "clip": clip,
                  "noise": "fresh" if fresh_noise else None, "prompt": prompt,
                  "text": text, "refiner": refiner, "sam_model": sam_model if refiner == "sam" else None,
                  "sam_choice": sam_choice if refiner == "sam" else None, "phrases": phrases,
                  "keep_nonvisual": keep_nonvisual, "max_new_tokens": None if text else max_new_tokens,
                  "settings": settings}
        stale = _check_stale(jobs, out, ".json", record, overwrite)
        options = {"choice": sam_choice} if refiner == "sam" else {}
        grounder = Grounder.from_pretrained(model_name, refiner=refiner, sam_model=sam_model,
                                            phrases=make_phrase_extractor(phrases, filter_nonvisual=not keep_nonvisual),
                                            device=device, dtype=dtype, refiner_options=options,
                                            model_options=_model_options(base, sd, clip, fresh_noise), **settings)
    except AttendsegError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        _interrupted_before_run()
    summary = Summary(ignored=ignored, stale=stale)

    def process(batch):
        images = [image for _, image in batch]
        if text is None:
            results = grounder.ground(images, prompt=prompt, max_new_tokens=max_new_tokens)
        else:
            results = grounder.ground_text(images, text, prompt=prompt)
        for (job, image), grounding in zip(batch, results):
            grounding.image_path = str(job.source)
            grounding.meta["run"] = record
            if grounding.meta.get("hit_token_limit"):
                summary.notes.append((job.source, f"the answer stopped at the {max_new_tokens}-token limit "
                                                  "(--max-new-tokens) before it ended"))
            if overlays:
                atomic_save_image(viz.overlay(image, grounding), job.output(out, ".overlay.png"))
            if masks_png:
                folder = job.output(out, ".masks")
                shutil.rmtree(folder, ignore_errors=True)  # no stale masks from an earlier run
                grounding.save_masks_png(folder)
            grounding.save_json(job.output(out, ".json"))
        return sum(len(g.phrases) for g in results)

    summary = run(jobs, out, process, done_suffix=".json", overwrite=overwrite, batch_size=batch_size,
                  progress=not quiet, summary=summary)
    _print_summary(summary, out)


@app.command()
def attend(
    paths: List[Path] = typer.Argument(..., help="Images and/or folders (searched recursively)."),
    out: Path = typer.Option(Path("attendseg-traces"), "--out", "-o", help="Output folder."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    base: Optional[str] = typer.Option(None, "--base", help=BASE_HELP),
    sd: Optional[str] = typer.Option(None, "--sd", help=SD_HELP),
    clip: Optional[str] = typer.Option(None, "--clip", help=CLIP_HELP),
    fresh_noise: bool = typer.Option(False, "--fresh-noise", help=FRESH_NOISE_HELP),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help=PROMPT_HELP),
    text: Optional[str] = typer.Option(None, "--text", help="Teacher-force this text instead of generating."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Layers to record: all, or e.g. 0,1,5 or 10-20."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Keep each layer's map separately."),
    grid: bool = typer.Option(True, "--grid/--no-grid", help="Write a per-token heatmap grid PNG."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help=BATCH_HELP),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help=TOKENS_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=DTYPE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
):
    """Record attention only: one Trace (.safetensors) per image and a per-token heatmap grid."""
    from attendseg.batch import Summary, collect, run
    from attendseg.errors import AttendsegError

    out = _output_folder(out, paths)  # cheap checks first: no torch or transformers yet
    try:
        model_name = _model(model)
        layer_list = _parse_layers(layers)
        jobs, ignored = collect(paths, exclude=out)
        if not jobs:
            _fail("no images found in " + ", ".join(map(str, paths)))
        _check_hub_ids([("model", model_name, "config.json"), ("base LLM", base, "config.json"),
                        ("Stable Diffusion (SD)", sd, "unet/config.json"), ("CLIP", clip, "config.json")])
    except AttendsegError as error:
        _fail(str(error))

    try:
        import attendseg
        from attendseg import viz
        from attendseg.attender import _layer_list
        from attendseg.files import atomic_save_image
        from attendseg.grounder import DEFAULT_PROMPT, checkpoint_defaults, hit_token_limit
        from attendseg.maps import to_image

        _quiet_transformers()
        prompt = prompt or checkpoint_defaults(model_name).get("prompt", DEFAULT_PROMPT)
        record = {"command": "attend", "model": _model_record(model), "base": base, "sd": sd, "clip": clip,
                  "noise": "fresh" if fresh_noise else None, "prompt": prompt,
                  "text": text, "layers": layer_list, "per_layer": per_layer,
                  "max_new_tokens": None if text else max_new_tokens}
        stale = _check_stale(jobs, out, ".trace.safetensors", record, overwrite)
        attender = attendseg.load(model_name, device=device, dtype=dtype, **_model_options(base, sd, clip, fresh_noise))
        _layer_list(layer_list, attender.n_layers)  # a bad --layers fails once, before the run
    except AttendsegError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        _interrupted_before_run()
    summary = Summary(ignored=ignored, stale=stale, phrases=None)  # attend grounds nothing

    def process(batch):
        images = [image for _, image in batch]
        options = dict(layers=layer_list, per_layer=per_layer)
        if text is None:
            traces = attender.attend(images, prompt, max_new_tokens=max_new_tokens, **options)
        else:
            traces = attender.attend_text(images, prompt, text, **options)
        for (job, image), trace in zip(batch, traces):
            trace.meta["run"] = record
            if hit_token_limit(attender, trace, max_new_tokens):
                summary.notes.append((job.source, f"the answer stopped at the {max_new_tokens}-token limit "
                                                  "(--max-new-tokens) before it ended"))
            if grid:
                maps = [to_image(m, trace.views, trace.image_size) for m in trace.token_maps()]
                atomic_save_image(viz.heatmap_grid(image, trace.tokens, maps), job.output(out, ".heatmaps.png"))
            trace.save(job.output(out, ".trace.safetensors"))
        return 0

    summary = run(jobs, out, process, done_suffix=".trace.safetensors", overwrite=overwrite,
                  batch_size=batch_size, progress=not quiet, summary=summary)
    _print_summary(summary, out)


def _world(aspect: Optional[str]) -> Optional[str]:
    """A checked ``--aspect`` (a shapes world name), or None."""
    from attendseg.shapes import WORLDS

    if aspect is not None and aspect not in WORLDS:
        _fail(f"--aspect must be one of {', '.join(WORLDS)}, not {aspect!r}")
    return aspect


@app.command()
def demo(
    out: Path = typer.Option(Path("attendseg-demo"), "--out", "-o", help="Output folder."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    refiner: str = typer.Option("superpixel", "--refiner", "-r", help="superpixel | threshold."),
    aspect: Optional[str] = typer.Option(None, "--aspect", help="square | mixed: the scenes' aspect ratios "
                                         "(default: the world the model was trained in)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
):
    """Ground the fixed demo scenes with the bundled model: overlays, a contact sheet, metrics."""
    from attendseg import AttendsegError
    from attendseg.shapes.demo import run_demo

    _quiet_transformers()
    try:
        metrics = run_demo(out.expanduser(), model=model, refiner=refiner, world=_world(aspect), progress=not quiet)
    except AttendsegError as error:
        _fail(str(error))
    typer.echo(f"{metrics['scenes']} {metrics['world']} scenes, {metrics['objects']} objects: caption exact-match "
               f"{metrics['caption_exact']:.2f}, point accuracy {metrics['point_acc']:.2f} "
               f"({metrics['point_acc_tf']:.2f} with the true captions), "
               f"{refiner} mask mIoU {metrics[refiner]['miou']:.2f}")
    typer.echo(f"overlays, contact_sheet.png and metrics.json in {out}")


@eval_app.command("shapes")
def eval_shapes(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    refiner: List[str] = typer.Option(["superpixel", "threshold"], "--refiner", "-r",
                                      help="Refiners to score (repeat the option): superpixel, threshold, sam."),
    sam_model: Optional[str] = typer.Option(None, "--sam-model", help="SAM hub id or folder (with -r sam)."),
    n: int = typer.Option(500, "--n", min=1, help="Held-out scenes."),
    seed: int = typer.Option(0, "--seed", min=0, help="Held-out set (0: the standard test set)."),
    aspect: str = typer.Option("square", "--aspect", help="square: every scene square; mixed: each scene at one of "
                               "the aspect ratios 1:2, 2:3, 1:1, 3:2, 2:1 (width:height)."),
    per_layer: bool = typer.Option(False, "--per-layer", help="Also report each layer's point accuracy."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Score an untrained copy and a random point."),
    normalisation: Optional[str] = typer.Option(None, "--normalisation", help="mean | none (default: the model's)."),
    batch_size: int = typer.Option(25, "--batch-size", "-b", min=1, help=BATCH_HELP),
    device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_HELP),
):
    """Grounding quality on held-out shapes-world scenes (never seen in training)."""
    import json

    from attendseg import AttendsegError
    from attendseg.shapes.evaluation import evaluate_shapes, format_table

    _quiet_transformers()
    settings = {"normalisation": normalisation} if normalisation else {}
    try:
        results = evaluate_shapes(_model(model), refiners=tuple(refiner), n=n, seed=seed, batch_size=batch_size,
                                  per_layer=per_layer, sam_model=sam_model, baselines=baselines, device=device,
                                  progress=not quiet, world=_world(aspect), **settings)
    except AttendsegError as error:
        _fail(str(error))
    typer.echo(json.dumps(results, indent=1) if json_out else format_table(results))


@eval_app.command("refcoco")
def eval_refcoco(
    data: Optional[Path] = typer.Option(None, "--data", help="refer-layout folder holding refcoco/, refcoco+/, refcocog/ "
                                        "(each with instances.json and refs(…).p)."),
    dataset: str = typer.Option("refcoco", "--dataset", help="refcoco | refcoco+ | refcocog."),
    split: str = typer.Option("val", "--split", help="val | testA | testB | test (refcocog: val | test)."),
    split_by: Optional[str] = typer.Option(None, "--split-by", help="refs(…).p to read (default unc; umd for refcocog)."),
    images: Optional[Path] = typer.Option(None, "--images", help="COCO train2014 folder (default DATA/images/mscoco/images/train2014)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="A JSONL manifest of your own data instead of --data."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    base: Optional[str] = typer.Option(None, "--base", help=BASE_HELP),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="The prompt the expression answers."),
    template: str = typer.Option("{expression}", "--template", help="The teacher-forced answer, with {expression} in it."),
    expression_map: Optional[str] = typer.Option(None, "--expression-map", help="root (the head noun's tokens, default) | all."),
    refiner: str = typer.Option("superpixel", "--refiner", "-r", help="sam | superpixel | threshold."),
    sam_model: Optional[str] = typer.Option(None, "--sam-model", help="SAM hub id or folder (with -r sam)."),
    sam_choice: str = typer.Option("last", "--sam-choice", help="SAM mask: last | best-iou | whole | part | subpart."),
    phrases: str = typer.Option("auto", "--phrases", help="Finds the head noun: auto | simple | spacy:NAME | vocab:a,b."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Per-expression records (JSONL; default "
                                       "attendseg-refcoco/DATASET-SPLIT.jsonl); a rerun resumes it."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate at most N more expressions."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Expressions per model call from an image's cached prefix (default 8)."),
    untrained: bool = typer.Option(False, "--untrained", help="Also score the model with random weights (small models)."),
    random_point: bool = typer.Option(False, "--random-point", help="Also score a random point."),
    normalisation: Optional[str] = typer.Option(None, "--normalisation", help="mean | none (default: the model's)."),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the records afresh."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Referring segmentation (cIoU, gIoU) and comprehension (Acc@0.5) on RefCOCO/+/g or a manifest."""
    from attendseg import AttendsegError
    from attendseg.evaluation import refer  # light: bad data fails before the model imports

    _check_refiner(refiner)
    settings = {"normalisation": normalisation} if normalisation else {}
    try:
        if (data is None) == (manifest is None):
            raise AttendsegError("give either --data (the refer layout) or --manifest (a JSONL file)")
        if manifest is not None:
            expressions = refer.load_manifest(manifest)
            source = {"manifest": str(manifest.expanduser().resolve())}
            default_out = Path("attendseg-refcoco") / f"{manifest.stem}.jsonl"
        else:
            expressions = refer.load_refer(data, dataset, split, split_by, images)
            source = {"dataset": dataset, "split": split, "split_by": split_by or refer.DATASETS.get(dataset, ("",))[0]}
            default_out = Path("attendseg-refcoco") / f"{dataset}-{split}.jsonl"
        from attendseg.evaluation import format_table, refcoco, to_json

        _quiet_transformers()
        results = refcoco.evaluate(
            expressions, _model(model), out or default_out, source=source, prompt=prompt or refcoco.DEFAULT_PROMPT,
            template=template, expression_map=expression_map or refcoco.DEFAULT_EXPRESSION_MAP, refiner=refiner,
            sam_model=sam_model, sam_choice=sam_choice, phrases=phrases, batch_size=batch_size, limit=limit,
            untrained=untrained, random_point=random_point, overwrite=overwrite, progress=not quiet,
            device=device, dtype=dtype, model_options=_model_options(base), model_name=_model_record(model),
            **settings)
    except AttendsegError as error:
        _fail(str(error))
    if json_out:
        typer.echo(to_json(results))
        return
    typer.echo(format_table(results["rows"], refcoco.COLUMNS))
    for name, lines in results["stats"].items():
        typer.echo(f"{name}: " + "; ".join(lines) + f" — records in {results['records'][name]}")


@export_app.command("refcoco")
def export_refcoco(
    folder: Path = typer.Argument(..., help="Output folder (refcoco/ and images/ are written in it)."),
    n: int = typer.Option(100, "--n", min=1, help="Scenes per split (val, testA, testB)."),
):
    """Held-out shapes scenes in the refer layout (refs(unc).p, instances.json, train2014 images)."""
    from attendseg import AttendsegError
    from attendseg.shapes.export import export

    try:
        counts = export("refcoco", folder, n)
    except AttendsegError as error:
        _fail(str(error))
    for split, images in counts["images"].items():
        typer.echo(f"{split}: {images} images, {counts['refs'][split]} refs, {counts['expressions'][split]} expressions")
    typer.echo(f"written under {folder}")


@app.command()
def models(json_out: bool = typer.Option(False, "--json", help="Print the families as JSON.")):
    """List the supported model families: their model types, example hub ids and view layouts."""
    import json

    from attendseg.adapters import adapters

    rows = [dict(family=cls.family, model_types=list(cls.model_types), model_class=cls.model_class,
                 hub_ids=list(cls.hub_ids), layout=cls.layout) for cls in adapters()]
    if json_out:
        typer.echo(json.dumps(rows, indent=1))
        return
    for row in rows:
        typer.echo(f"{row['family']}  (model_type: {', '.join(row['model_types'])}; {row['model_class']})")
        typer.echo(f"  views: {row['layout']}")
        for hub_id in row["hub_ids"]:
            typer.echo(f"  --model {hub_id}")

    typer.echo("Any local folder of these architectures works too (--model ./folder).")
    typer.echo("Bundled (no download): " + ", ".join(
        f"--model {name}" + (" (the default)" if name == DEFAULT_MODEL else "") for name in BUNDLED_MODELS))


def _parse_layers(spec: Optional[str], option: str = "--layers"):
    """``all``/None → "all"; ``0,1,5`` / ``10-20`` → a list of indices (checked against the
    model once it is loaded)."""
    from attendseg.errors import AttendsegError

    if spec is None or spec == "all":
        return "all"
    layers = []
    try:
        for part in spec.split(","):
            if "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                layers += list(range(int(lo), int(hi) + 1))
            else:
                layers.append(int(part))
    except ValueError:
        raise AttendsegError(f"{option}: cannot read {spec!r} (use all, 0,1,5 or 10-20)") from None
    return layers


def _grounder_options(refiner, sam_model, sam_choice, phrases, keep_nonvisual, dtype, base, **settings) -> dict:
    """Grounder.from_pretrained options shared by the benchmark commands."""
    from attendseg import make_phrase_extractor

    return dict(refiner=refiner, sam_model=sam_model, refiner_options={"choice": sam_choice} if refiner == "sam" else {},
                phrases=make_phrase_extractor(phrases, filter_nonvisual=not keep_nonvisual), dtype=dtype,
                model_options=_model_options(base), **{k: v for k, v in settings.items() if v is not None})


def _print_runs(results: dict, columns, json_out: bool, notes=()):
    from attendseg.evaluation import format_table, to_json

    if json_out:
        typer.echo(to_json(results))
        return
    typer.echo(format_table(results["rows"], columns))
    for line in notes:
        typer.echo(line)
    for name, lines in results["stats"].items():
        typer.echo(f"{name}: " + "; ".join(lines) + f" — records in {results['records'][name]}")


@eval_app.command("gcg")
def eval_gcg(
    data: Path = typer.Argument(..., help="GranD-f GCG annotations: the folder with {split}_gcg_coco_mask_gt.json "
                                "and {split}_gcg_coco_caption_gt.json, or a folder above it in GLaMM's layout."),
    split: str = typer.Option("val", "--split", help="val | test."),
    images: Optional[Path] = typer.Option(None, "--images", help="GranDf_HA_images/val_test (default: found in GLaMM's layout)."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Score this folder of prediction files "
                                               "({image id}.json, GLaMM's layout) instead of running a model."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    base: Optional[str] = typer.Option(None, "--base", help=BASE_HELP),
    prompt: str = typer.Option("Describe the image in detail.", "--prompt", "-p", help="The GCG prompt (default: the paper's)."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", min=1, help="Longest answer (the paper: 512)."),
    refiner: str = typer.Option("superpixel", "--refiner", "-r", help="sam (the paper's) | superpixel | threshold."),
    sam_model: Optional[str] = typer.Option(None, "--sam-model", help="SAM hub id or folder (with -r sam)."),
    sam_choice: str = typer.Option("last", "--sam-choice", help="SAM mask: last | best-iou | whole | part | subpart."),
    phrases: str = typer.Option("auto", "--phrases", help="auto | simple | spacy:NAME_OR_PATH | vocab:word,word."),
    keep_nonvisual: bool = typer.Option(False, "--keep-nonvisual", help="Also ground pronouns and non-visual nouns."),
    text_encoder: str = typer.Option("bert-base-uncased", "--text-encoder", help="Text encoder of the recall gate "
                                     "(hub id or folder; GLaMM's: bert-base-uncased), or none (masks only)."),
    captions: bool = typer.Option(True, "--captions/--no-captions", help="METEOR and CIDEr (need pycocoevalcap and Java)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default attendseg-gcg/SPLIT): "
                                       "RUN.jsonl records and RUN/ predictions; a rerun resumes."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate at most N more images."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Images per model call."),
    untrained: bool = typer.Option(False, "--untrained", help="Also score the model with random weights (small models)."),
    random_point: bool = typer.Option(False, "--random-point", help="Also score random prompt points."),
    normalisation: Optional[str] = typer.Option(None, "--normalisation", help="mean | none (default: the model's)."),
    aggregate: Optional[str] = typer.Option(None, "--aggregate", help="mean | max | first (the paper's GCG run: max)."),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the records afresh."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Grounded conversation generation on GranD-f, scored as GLaMM does: METEOR, CIDEr, AP50, mIoU, mask recall."""
    from attendseg import AttendsegError
    from attendseg.evaluation import gcg

    _quiet_transformers()
    try:
        dataset = gcg.load_gcg(data, split, images)
        options = None if predictions else _grounder_options(
            refiner, sam_model, sam_choice, phrases, keep_nonvisual, dtype, base,
            normalisation=normalisation, aggregate=aggregate)
        results = gcg.evaluate(dataset, out or Path("attendseg-gcg") / split, model=_model(model),
                               predictions=predictions, prompt=prompt, max_new_tokens=max_new_tokens,
                               text_encoder=text_encoder, captions=captions, limit=limit, batch_size=batch_size,
                               untrained=untrained, random_point=random_point, overwrite=overwrite,
                               progress=not quiet, device=device, grounder_options=options)
    except AttendsegError as error:
        _fail(str(error))
    notes = sorted({f"METEOR / CIDEr {row['caption_metrics']}" for row in results["rows"]
                    if row["caption_metrics"] != "computed"})
    if text_encoder.lower() == "none":
        notes.append("mask recall without the text gate (--text-encoder none): not GLaMM's protocol")
    _print_runs(results, gcg.TABLE_COLUMNS, json_out, notes)


@eval_app.command("png")
def eval_png(
    data: Path = typer.Argument(..., help="Panoptic Narrative Grounding folder (annotations/ with png_coco_SPLIT.json, "
                                "panoptic_SPLIT.json and the panoptic PNGs; images/SPLIT)."),
    split: str = typer.Option("val2017", "--split", help="val2017 (the benchmark) | train2017."),
    images: Optional[Path] = typer.Option(None, "--images", help="COCO images folder (default: images/SPLIT or SPLIT)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    base: Optional[str] = typer.Option(None, "--base", help=BASE_HELP),
    prompt: str = typer.Option("Describe the image in detail.", "--prompt", "-p", help="The prompt the narrative answers."),
    refiner: str = typer.Option("superpixel", "--refiner", "-r", help="sam | superpixel | threshold."),
    sam_model: Optional[str] = typer.Option(None, "--sam-model", help="SAM hub id or folder (with -r sam)."),
    sam_choice: str = typer.Option("last", "--sam-choice", help="SAM mask: last | best-iou | whole | part | subpart."),
    proposals: Optional[Path] = typer.Option(None, "--proposals", help="Folder of predicted panoptic PNGs: a phrase's "
                                             "mask is the segment under its point (the paper's PNG protocol)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default attendseg-png/SPLIT): RUN.jsonl "
                                       "records, one line per phrase; a rerun resumes."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate at most N more phrases."),
    untrained: bool = typer.Option(False, "--untrained", help="Also score the model with random weights (small models)."),
    random_point: bool = typer.Option(False, "--random-point", help="Also score random prompt points."),
    normalisation: Optional[str] = typer.Option(None, "--normalisation", help="mean | none (default: the model's)."),
    aggregate: Optional[str] = typer.Option(None, "--aggregate", help="mean | max | first (the paper's PNG script: first)."),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the records afresh."),
    json_out: bool = typer.Option(False, "--json", help="Print the figures (and the recall curve) as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Panoptic narrative grounding: average recall over IoU thresholds, things / stuff, singular / plural."""
    from attendseg import AttendsegError
    from attendseg.evaluation import png

    _quiet_transformers()
    try:
        dataset = png.load_png(data, split, images)
        options = _grounder_options(refiner, sam_model, sam_choice, "simple", True, dtype, base,
                                    normalisation=normalisation, aggregate=aggregate)
        results = png.evaluate(dataset, out or Path("attendseg-png") / split, model=_model(model), prompt=prompt,
                               proposals=proposals, limit=limit, untrained=untrained, random_point=random_point,
                               overwrite=overwrite, progress=not quiet, device=device, grounder_options=options)
    except AttendsegError as error:
        _fail(str(error))
    _print_runs(results, png.TABLE_COLUMNS, json_out)


@export_app.command("gcg")
def export_gcg(
    folder: Path = typer.Argument(..., help="Output folder (GranDf/annotations/val_test and GranDf_HA_images/val_test)."),
    n: int = typer.Option(20, "--n", min=1, help="Scenes per split (val, test)."),
):
    """Held-out shapes scenes in GranD-f's GCG layout (for `attendseg eval gcg`)."""
    _export("gcg", folder, n)


@export_app.command("png")
def export_png(
    folder: Path = typer.Argument(..., help="Output folder (annotations/ and images/val2017)."),
    n: int = typer.Option(20, "--n", min=1, help="Scenes (val2017)."),
):
    """Held-out shapes scenes in the Panoptic Narrative Grounding layout (for `attendseg eval png`)."""
    _export("png", folder, n)


def _export(kind: str, folder: Path, n: int):
    from attendseg import AttendsegError
    from attendseg.shapes.export import export

    try:
        counts = export(kind, folder, n)
    except AttendsegError as error:
        _fail(str(error))
    for split, images in counts["images"].items():
        typer.echo(f"{split}: {images} images, {counts['phrases'][split]} grounded phrases")
    typer.echo(f"written under {folder}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
