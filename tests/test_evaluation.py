"""The shared evaluation machinery: resumable record files, the group loop, tables and JSON."""

import json

import numpy as np
import pytest

from attendseg.errors import AttendsegError
from attendseg.evaluation import SampleLog, SkipGroup, format_table, run_groups, to_json


def test_record_file_resumes_and_refuses_other_settings(tmp_path):
    path = tmp_path / "run" / "records.jsonl"
    log = SampleLog(path, "refcoco", {"model": "m", "split": "val"})
    log.append({"id": 1, "iou": np.float32(0.5), "box": (1, 2, 3, 4)})
    log.append({"id": "b", "iou": float("nan")})
    with pytest.raises(ValueError):
        log.append({"id": "b"})
    again = SampleLog(path, "refcoco", {"split": "val", "model": "m"})
    assert list(again.done) == ["1", "b"] and "1" in again and 1 in again
    assert again.done["1"] == {"id": "1", "iou": 0.5, "box": [1, 2, 3, 4]}
    assert again.done["b"]["iou"] is None
    with pytest.raises(AttendsegError, match=r"other settings \(split: 'val' → 'testA'\)"):
        SampleLog(path, "refcoco", {"model": "m", "split": "testA"})
    with pytest.raises(AttendsegError, match="holds 'refcoco' records"):
        SampleLog(path, "gcg", {"model": "m", "split": "val"})
    fresh = SampleLog(path, "refcoco", {"model": "m", "split": "testA"}, overwrite=True)
    assert len(fresh) == 0
    header, records = SampleLog.read(path)
    assert header["settings"] == {"model": "m", "split": "testA"} and records == []


def test_record_file_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "r.jsonl"
    log = SampleLog(path, "x", {})
    log.append({"id": "a"})
    with open(path, "a") as f:
        f.write('{"id": "b", "io')  # killed mid-write
    log = SampleLog(path, "x", {})
    assert list(log.done) == ["a"]
    log.append({"id": "b"})
    assert [r["id"] for r in SampleLog.read(path)[1]] == ["a", "b"]
    (tmp_path / "bad.jsonl").write_text("not json\n")
    with pytest.raises(AttendsegError, match="not an attendseg record file"):
        SampleLog(tmp_path / "bad.jsonl", "x", {})


def test_run_groups_resumes_limits_and_skips(tmp_path):
    groups = [[("g0", i) for i in range(3)], [("g1", i) for i in range(2)], [("g2", 0)], [("g3", i) for i in range(2)]]
    calls = []

    def process(pending):
        calls.append([f"{g}/{i}" for g, i in pending])
        if pending[0][0] == "g2":
            raise SkipGroup("image missing")
        return [{"id": f"{g}/{i}", "v": i} for g, i in pending]

    sid = lambda s: f"{s[0]}/{s[1]}"
    log = SampleLog(tmp_path / "r.jsonl", "t", {"a": 1})
    stats = run_groups(groups, process, log, sample_id=sid, limit=4, progress=False)
    assert stats.processed == 4 and calls == [["g0/0", "g0/1", "g0/2"], ["g1/0"]]
    log = SampleLog(tmp_path / "r.jsonl", "t", {"a": 1})
    calls.clear()
    stats = run_groups(groups, process, log, sample_id=sid, progress=True, total=8)
    assert calls == [["g1/1"], ["g2/0"], ["g3/0", "g3/1"]]  # one call per group, done ids left out
    assert stats.processed == 3 and stats.resumed == 4 and stats.skipped == [("g2/0", "image missing")]
    assert any("skipped 1 sample(s): image missing" in line for line in stats.lines())
    assert len(log) == 7


def test_table_and_json():
    table = format_table([{"name": "model", "giou": 0.71234, "n": 3}, {"name": "random", "giou": float("nan")}],
                         [("name", ""), ("giou", "gIoU"), ("n", "n")])
    assert table.splitlines() == ["|  | gIoU | n |", "|---|---|---|", "| model | 0.712 | 3 |", "| random | – | – |"]
    assert json.loads(to_json({"a": np.float32(0.25), "b": float("nan"), "c": (1, 2)})) == {"a": 0.25, "b": None, "c": [1, 2]}
