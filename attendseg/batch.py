"""Runs over files and folders: collect images, mirror the input tree, resume, never lose work.

Output layout: each image ``IN/sub/cat.jpg`` found under a folder argument ``IN`` is written as
``OUT/sub/cat.jpg.json`` (the full file name is kept, so ``cat.jpg`` and ``cat.png`` never
collide); with several folder arguments, outputs go under ``OUT/<folder name>/``; two inputs that
would write the same output are refused up front. A file is
complete once its JSON exists: extra outputs (overlay, PNG masks, traces) are written first,
the JSON last, each atomically, so a stopped run resumes by skipping images whose JSON exists.
Inputs are only read.
"""

from __future__ import annotations

import os
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
    phrases: int = 0

    def lines(self) -> list[str]:
        out = [f"{len(self.written)} image(s) done, {self.phrases} phrase(s) grounded"]
        if self.existing:
            out.append(f"{len(self.existing)} already done (skipped; --overwrite to redo)")
        for path, why in self.failed:
            out.append(f"failed: {path}: {why}")
        if self.ignored:
            out.append(f"{len(self.ignored)} file(s) ignored (not images):")
            out += [f"  {path}: {why}" for path, why in self.ignored[:20]]
            if len(self.ignored) > 20:
                out.append(f"  … and {len(self.ignored) - 20} more")
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


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def run(jobs: Sequence[Job], out: Path, process: Callable, *, done_suffix: str, overwrite: bool = False,
        batch_size: int = 1, progress: bool = True, summary: Summary | None = None) -> Summary:
    """Process jobs in batches, skipping finished ones, recording failures, never stopping early.

    Args:
        process: ``process(batch: list[(Job, PIL.Image)]) -> int`` writes the outputs of a batch
            and returns the number of phrases grounded; it may raise :class:`AttendsegError`.
        done_suffix: the output suffix whose existence marks a job finished.
    """
    summary = summary or Summary()
    todo = []
    for job in jobs:
        done = job.output(out, done_suffix)
        if done.exists() and not overwrite:
            summary.existing.append(done)
        else:
            todo.append(job)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="image", desc="attendseg")
    for start in range(0, len(todo), max(1, batch_size)):
        loaded = []
        for job in todo[start:start + batch_size]:
            try:
                loaded.append((job, load_image(job.source)))
            except AttendsegError as error:
                summary.failed.append((job.source, str(error).removeprefix(f"{job.source}: ")))
        if loaded:
            try:
                summary.phrases += process(loaded)
                summary.written += [job.output(out, done_suffix) for job, _ in loaded]
            except AttendsegError as error:
                summary.failed += [(job.source, str(error)) for job, _ in loaded]
            except Exception as error:  # a bug or a resource problem: name it, keep going
                why = f"{type(error).__name__}: {error}"
                summary.failed += [(job.source, why) for job, _ in loaded]
        if bar is not None:
            bar.update(len(todo[start:start + batch_size]))
    if bar is not None:
        bar.close()
    return summary


def atomic_save_image(image, path: Path) -> Path:
    """Save a PIL image atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path

