"""The per-sample JSONL file of an evaluation run: resumable, atomic appends, settings checked.

Layout (one JSON object per line)::

    {"header": {"benchmark": "refcoco", "settings": {...}, "format": 1}}
    {"id": "refcoco/val/12", "iou": 0.71, ...}
    {"id": "refcoco/val/13", "iou": 0.05, ...}

A line is written with a single ``os.write`` on a file opened with ``O_APPEND`` and then
``fsync``'ed, so a killed run leaves whole lines plus at most one torn last line; reopening
drops a torn (unterminated) tail and resumes after the last whole line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import AttendsegError

FORMAT = 1


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays, tuples and paths become plain values; NaN → None."""
    from ..results import _jsonable

    return _jsonable(value)


class SampleLog:
    """One run's per-sample records in ``path`` (see the module docstring).

    Args:
        path: the JSONL file (created with its parent folder when missing).
        benchmark: a name stored in the header (a file of another benchmark is refused).
        settings: everything that changes the records (model, prompt, split, refiner, …);
            a resumed run must give equal settings (compared after a JSON round trip).
        overwrite: start afresh even when the file has records.

    Attributes:
        done: ``{id: record}`` of the finished samples, in file order.
    """

    def __init__(self, path: str | os.PathLike, benchmark: str, settings: dict, overwrite: bool = False):
        self.path = Path(path)
        self.benchmark = benchmark
        self.settings = json.loads(json.dumps(_plain(settings)))
        self.done: dict[str, dict] = {}
        if self.path.exists() and self.path.is_dir():
            raise AttendsegError(f"{self.path} is a folder; give a .jsonl file for the per-sample records")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite or not self.path.exists() or self.path.stat().st_size == 0:
            self._start()
        else:
            self._resume()

    def _start(self) -> None:
        header = json.dumps({"header": {"benchmark": self.benchmark, "settings": self.settings, "format": FORMAT}})
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(header + "\n")
        os.replace(tmp, self.path)

    def _resume(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a torn last line from a killed run: drop it
            with open(self.path, "r+b") as f:
                f.truncate(end)
        lines = data[:end].decode("utf-8").splitlines()
        try:
            header = json.loads(lines[0])["header"] if lines else None
        except (json.JSONDecodeError, KeyError, TypeError):
            header = None
        if not isinstance(header, dict):
            raise AttendsegError(f"{self.path} is not an attendseg record file (no header line); "
                                 f"choose another --out or pass --overwrite")
        if header.get("benchmark") != self.benchmark:
            raise AttendsegError(f"{self.path} holds {header.get('benchmark')!r} records, not {self.benchmark!r}")
        if header.get("settings") != self.settings:
            old, new = header.get("settings") or {}, self.settings
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            shown = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in diff[:4])
            raise AttendsegError(f"{self.path} was written with other settings ({shown}); "
                                 f"resume with the same settings, or choose another --out, or pass --overwrite")
        for number, line in enumerate(lines[1:], start=2):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise AttendsegError(f"{self.path}, line {number}: not JSON; the file is damaged") from None
            self.done[str(record["id"])] = record

    def __contains__(self, sample_id) -> bool:
        return str(sample_id) in self.done

    def __len__(self) -> int:
        return len(self.done)

    def append(self, record: dict) -> None:
        """Add one finished sample (must carry a new ``"id"``); durable when this returns."""
        if "id" not in record:
            raise ValueError("a record needs an 'id'")
        record = _plain(record)
        record["id"] = str(record["id"])
        if record["id"] in self.done:
            raise ValueError(f"sample {record['id']!r} is already recorded")
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.done[record["id"]] = record

    def records(self) -> Iterator[dict]:
        """The finished samples' records, in file order."""
        return iter(self.done.values())

    @staticmethod
    def read(path: str | os.PathLike) -> tuple[dict, list[dict]]:
        """``(header, records)`` of a record file, for inspection; a torn last line is ignored."""
        lines = Path(path).read_text("utf-8").split("\n")
        whole = [line for line in lines[:-1] if line]  # text after the last newline is torn
        if not whole:
            raise AttendsegError(f"{path} is empty")
        return json.loads(whole[0])["header"], [json.loads(line) for line in whole[1:]]
