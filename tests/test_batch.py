"""Folder runs: run records, stale outputs, Ctrl-C (in-process; the CLI tests run the real thing)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attendseg import Trace
from attendseg.batch import Summary, collect, describe_stale, read_run_record, run, stale_outputs
from attendseg.results import Grounding
from attendseg.views import View


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return collect([folder])[0]


def writer(out, record, stop_at=None):
    calls = []

    def process(batch):
        calls.append(len(calls))
        if stop_at is not None and len(calls) > stop_at:
            raise KeyboardInterrupt
        for job, image in batch:
            g = Grounding(image.size, "", "p", "m", "threshold", [], meta={"run": record})
            g.save_json(job.output(out, ".json"))
        return 0

    return process


def test_records_are_read_back_from_json_and_traces(tmp_path):
    record = {"command": "attend", "layers": [0, 1], "prompt": "describe"}
    trace = Trace(token_ids=torch.zeros(1, dtype=torch.long), text="a", offsets=torch.tensor([[0, 1]]),
                  maps=torch.rand(1, 1, 1, 4), views=[View(start=0, grid=(2, 2), box=(0, 0, 8, 8))],
                  image_size=(8, 8), layers=(0,), heads=(0,), meta={"run": record})
    assert read_run_record(trace.save(tmp_path / "t.trace.safetensors")) == record
    g = Grounding((8, 8), "", "p", "m", "threshold", [], meta={"run": record})
    assert read_run_record(g.save_json(tmp_path / "g.json")) == record
    (tmp_path / "old.json").write_text(json.dumps({"meta": {}}))
    assert read_run_record(tmp_path / "old.json") is None
    (tmp_path / "broken.json").write_text("{")
    assert read_run_record(tmp_path / "broken.json") is None


def test_stale_outputs_name_what_differs(images, tmp_path):
    out = tmp_path / "out"
    old = {"prompt": "describe", "refiner": "sam", "layers": "all"}
    run(images[:3], out, writer(out, old), done_suffix=".json", progress=False)
    assert stale_outputs(images, out, ".json", old) == {}
    new = {**old, "prompt": "what is it?", "layers": [1]}
    stale = stale_outputs(images, out, ".json", new)
    assert sorted(stale) == [job.output(out, ".json") for job in images[:3]]
    assert set(map(tuple, stale.values())) == {("layers", "prompt")}
    assert "3 finished result(s) were made with other settings (layers, prompt)" in describe_stale(stale)
    (out / "0.png.json").write_text(json.dumps({"meta": {}}))  # made before results had records
    assert stale_outputs(images, out, ".json", old)[out / "0.png.json"] == ["no record"]


def test_ctrl_c_keeps_what_was_done_and_lists_the_rest(images, tmp_path):
    out = tmp_path / "out"
    summary = run(images, out, writer(out, {}, stop_at=2), done_suffix=".json", batch_size=1, progress=False)
    assert len(summary.written) == 2 and summary.interrupted == [job.source for job in images[2:]]
    lines = "\n".join(summary.lines())
    assert "2 image(s) done" in lines
    assert "interrupted: 3 image(s) not done" in lines and "run the same command again to resume" in lines
    again = run(images, out, writer(out, {}), done_suffix=".json", progress=False)
    assert len(again.existing) == 2 and len(again.written) == 3 and again.interrupted is None


def test_summary_of_a_run_that_grounds_nothing_counts_no_phrases(images, tmp_path):
    out = tmp_path / "out"
    summary = run(images[:1], out, writer(out, {}), done_suffix=".json", progress=False,
                  summary=Summary(phrases=None))
    assert summary.lines() == ["1 image(s) done"]
