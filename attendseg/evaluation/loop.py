"""The common evaluation loop: groups of samples, resume, ``--limit``, a samples/s progress bar.

Samples come in *groups* that share expensive work (all referring expressions of one image share
its encoding and its SAM embedding). :func:`run_groups` skips samples already in the
:class:`~attendseg.evaluation.records.SampleLog`, stops after ``limit`` new samples, calls
``process`` once per group with the group's pending samples, and appends the records it returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable, Sequence

from .records import SampleLog


class SkipGroup(Exception):
    """Raised by ``process`` when a group's input is missing or unreadable: its samples are
    skipped and counted (with the reason), and the run goes on."""


@dataclass
class RunStats:
    """What a run did.

    Attributes:
        processed: samples evaluated in this run.
        resumed: samples found already done in the log.
        skipped: ``[(sample id, reason), …]`` for samples whose input was missing.
        seconds: wall time of the processing.
    """

    processed: int = 0
    resumed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Samples per second in this run."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def lines(self, unit: str = "sample") -> list[str]:
        out = [f"{self.processed} {unit}(s) evaluated in {self.seconds:.1f} s ({self.rate:.2f}/s)"]
        if self.resumed:
            out.append(f"{self.resumed} already done (resumed from the record file)")
        if self.skipped:
            reasons: dict[str, int] = {}
            for _, why in self.skipped:
                reasons[why] = reasons.get(why, 0) + 1
            out += [f"skipped {n} {unit}(s): {why}" for why, n in sorted(reasons.items())]
        return out


def run_groups(
    groups: Iterable[Sequence],
    process: Callable[[Sequence], list[dict]],
    log: SampleLog,
    *,
    sample_id: Callable[[object], Hashable],
    limit: int | None = None,
    progress: bool = True,
    desc: str = "eval",
    unit: str = "sample",
    total: int | None = None,
) -> RunStats:
    """Evaluate the pending samples of each group; append one record per sample to ``log``.

    Args:
        groups: sequences of samples; each group is handed to ``process`` in one call.
        process: ``process(pending_samples) -> records``, one dict with an ``"id"`` per sample
            (in any order); raises :class:`SkipGroup` to skip the group's samples.
        sample_id: a sample's id (as written in its record).
        limit: evaluate at most this many new samples (None: all).
        total: the number of samples over all groups, for the progress bar (optional).
    """
    stats = RunStats()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        left = None if total is None else max(total - len(log), 0)
        if limit is not None:
            left = limit if left is None else min(left, limit)
        bar = tqdm(total=left, desc=desc, unit=unit, dynamic_ncols=True)
    started = time.perf_counter()
    try:
        for group in groups:
            if limit is not None and stats.processed >= limit:
                break
            pending = [s for s in group if sample_id(s) not in log]
            stats.resumed += len(group) - len(pending)
            if limit is not None:
                pending = pending[: limit - stats.processed]
            if not pending:
                continue
            try:
                records = process(pending)
            except SkipGroup as why:
                stats.skipped += [(str(sample_id(s)), str(why)) for s in pending]
                continue
            for record in records:
                log.append(record)
            stats.processed += len(records)
            if bar is not None:
                bar.update(len(records))
    finally:
        stats.seconds = time.perf_counter() - started
        if bar is not None:
            bar.close()
    return stats
