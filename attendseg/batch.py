"""Runs over files and folders: collect images, mirror the input tree, resume, never lose work.

Output layout: each image ``IN/sub/cat.jpg`` found under a folder argument ``IN`` is written as
``OUT/sub/cat.jpg.json`` (the full file name is kept, so ``cat.jpg`` and ``cat.png`` never
collide); with several folder arguments, outputs go under ``OUT/<folder name>/``; two inputs that
would write the same output are refused up front. A file is
complete once its JSON exists: extra outputs (overlay, PNG masks, traces) are written first,
the JSON last, each atomically, so a stopped run resumes by skipping images whose JSON exists.
Each finished output records what produced it (``meta["run"]``: model, prompt, refiner, …);
:func:`stale_outputs` finds those made with other settings, so that a resumed run with changed
settings never passes them off as done. Ctrl-C stops a run between batches with a summary.
Inputs are only read.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import AttendsegError
from .images import IMAGE_SUFFIXES, load_image


@dataclass(frozen=True)
class Job:
    """One input image and its output stem (``OUT / stem`` + suffix)."""

    source: Path
    stem: Path

    def output(self, out: Path, suffix: str) -> Path:
        return out / self.stem.parent / (self.stem.name + suffix)


@dataclass
class Summary:
    """What a run did."""

    written: list[Path] = field(default_factory=list)
    existing: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)
    #: phrases grounded; None for runs that ground nothing (``attend``)
    phrases: int | None = 0
    #: outputs that existed and were made again (``overwrite``)
    redone: list[Path] = field(default_factory=list)
    #: existing outputs made with other settings → what differed (see :func:`stale_outputs`)
    stale: dict[Path, list[str]] = field(default_factory=dict)
    #: ``(image, note)`` for results worth a look (an answer cut at the token limit)
    notes: list[tuple[Path, str]] = field(default_factory=list)
    #: jobs not started because the run was interrupted (Ctrl-C); None when it was not
    interrupted: list[Path] | None = None

    def lines(self) -> list[str]:
        done = f"{len(self.written)} image(s) done"
        out = [done if self.phrases is None else f"{done}, {self.phrases} phrase(s) grounded"]
        if self.redone:
            stale = [p for p in self.redone if p in self.stale]
            why = f"; {len(stale)} of them had been made with other settings ({_keys(self.stale, stale)})" \
                if stale else ""
            out.append(f"{len(self.redone)} redone (--overwrite){why}")
        if self.existing:
            out.append(f"{len(self.existing)} already done (skipped; --overwrite to redo)")
        for path, note in self.notes:
            out.append(f"note: {path}: {note}")
        for path, why in self.failed:
            out.append(f"failed: {path}: {why}")
        if self.ignored:
            out.append(f"{len(self.ignored)} file(s) ignored (not images):")
            out += [f"  {path}: {why}" for path, why in self.ignored[:20]]
            if len(self.ignored) > 20:
                out.append(f"  … and {len(self.ignored) - 20} more")
        if self.interrupted is not None:
            out.append(f"interrupted: {len(self.interrupted)} image(s) not done"
                       + (f" (next: {self.interrupted[0]})" if self.interrupted else "")
                       + "; run the same command again to resume (finished images are kept)")
        return out


def collect(paths: Sequence[str | os.PathLike], exclude: Path | None = None):
    """Images named by ``paths`` (files, or folders searched recursively).

    Returns:
        ``(jobs, ignored)``: jobs in a stable order; ignored ``(path, reason)`` for files that
        are not images and for paths that do not exist. Anything under ``exclude`` (the output
        folder) is skipped.
    """
    if not paths:
        raise AttendsegError("no input paths given")
    exclude = exclude.resolve() if exclude is not None else None
    prefix = len(paths) > 1
    jobs, ignored, seen = [], [], set()
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            ignored.append((root, "no such file or folder"))
            continue
        if root.is_file():
            candidates = [(root, Path(root.name))]  # files keep their own name: collisions are refused
        else:
            candidates = []
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                if exclude is not None and _inside(path.resolve(), exclude):
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    ignored.append((path, "not an image file type"))
                    continue
                relative = path.relative_to(root)
                candidates.append((path, Path(root.resolve().name) / relative if prefix else relative))
        for path, stem in candidates:
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                jobs.append(Job(path, stem))
    owners: dict[Path, Path] = {}
    for job in jobs:
        other = owners.setdefault(job.stem, job.source)
        if other != job.source:
            raise AttendsegError(f"{other} and {job.source} would write the same output "
                                 f"({job.stem}); run them separately or rename one")
    return jobs, ignored


def read_run_record(path: Path) -> dict | None:
    """The ``meta["run"]`` record of a finished output (a result ``.json`` or a trace
    ``.safetensors``), or None when it has none or cannot be read."""
    try:
        if path.suffix == ".safetensors":  # the header: u64 length, then JSON (the format's spec)
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            meta = json.loads(header.get("__metadata__", {}).get("attendseg", "{}")).get("meta", {})
        else:
            meta = json.loads(path.read_text(encoding="utf-8")).get("meta", {})
    except (OSError, ValueError, struct.error, AttributeError):
        return None
    record = meta.get("run") if isinstance(meta, dict) else None
    return record if isinstance(record, dict) else None


def stale_outputs(jobs: Sequence[Job], out: Path, done_suffix: str, record: dict) -> dict[Path, list[str]]:
    """Finished outputs whose run record differs from ``record``: ``{path: [differing keys]}``
    (``["no record"]`` for outputs that carry none)."""
    stale = {}
    for job in jobs:
        done = job.output(out, done_suffix)
        if not done.exists():
            continue
        old = read_run_record(done)
        if old is None:
            stale[done] = ["no record"]
        else:
            keys = [k for k in sorted(set(record) | set(old)) if record.get(k) != old.get(k)]
            if keys:
                stale[done] = keys
    return stale


def describe_stale(stale: dict[Path, list[str]]) -> str:
    """One line for the user: how many outputs were made otherwise, how, and how to choose."""
    return (f"{len(stale)} finished result(s) were made with other settings ({_keys(stale, stale)}), "
            f"e.g. {next(iter(stale))}; pass --overwrite to redo them, or choose another --out")


def _keys(stale: dict[Path, list[str]], paths) -> str:
    keys = dict.fromkeys(k for p in paths for k in stale[p])
    return ", ".join(k if k != "no record" else "no record of its settings" for k in keys)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def run(jobs: Sequence[Job], out: Path, process: Callable, *, done_suffix: str, overwrite: bool = False,
        batch_size: int = 1, progress: bool = True, summary: Summary | None = None) -> Summary:
    """Process jobs in batches, skipping finished ones, recording failures, never stopping early.

    Args:
        process: ``process(batch: list[(Job, PIL.Image)]) -> int`` writes the outputs of a batch
            and returns the number of phrases grounded; it may raise :class:`AttendsegError`.
        done_suffix: the output suffix whose existence marks a job finished.

    Ctrl-C (KeyboardInterrupt) ends the run after recording what was done;
    ``summary.interrupted`` then lists the jobs not finished.
    """
    summary = summary or Summary()
    todo = []
    for job in jobs:
        done = job.output(out, done_suffix)
        if done.exists() and not overwrite:
            summary.existing.append(done)
        else:
            todo.append(job)
            if done.exists():
                summary.redone.append(done)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="image", desc="attendseg")
    try:
        _run_batches(todo, out, process, done_suffix, batch_size, summary, bar)
    except KeyboardInterrupt:
        written, failed = set(summary.written), {path for path, _ in summary.failed}
        summary.interrupted = [job.source for job in todo
                               if job.output(out, done_suffix) not in written and job.source not in failed]
    finally:
        if bar is not None:
            bar.close()
    return summary


def _run_batches(todo, out, process, done_suffix, batch_size, summary, bar):
    for start in range(0, len(todo), max(1, batch_size)):
        loaded = []
        for job in todo[start:start + batch_size]:
            try:
                loaded.append((job, load_image(job.source)))
            except AttendsegError as error:
                summary.failed.append((job.source, str(error).removeprefix(f"{job.source}: ")))
        if loaded:
            try:
                phrases = process(loaded)
                if summary.phrases is not None:
                    summary.phrases += phrases
                summary.written += [job.output(out, done_suffix) for job, _ in loaded]
            except AttendsegError as error:
                summary.failed += [(job.source, str(error)) for job, _ in loaded]
            except Exception as error:  # a bug or a resource problem: name it, keep going
                why = f"{type(error).__name__}: {error}"
                summary.failed += [(job.source, why) for job, _ in loaded]
        if bar is not None:
            bar.update(len(todo[start:start + batch_size]))

