"""Outputs: one atomic writer with the normal file mode; one device / dtype resolver."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attendseg import AttendsegError
from attendseg.devices import resolve_device, resolve_dtype
from attendseg.files import atomic_save_image, atomic_write, atomic_write_text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o644
    os.umask(old)


def test_plain_open_and_atomic_write_give_the_same_mode(tmp_path, umask_022):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what any program's output gets
    assert mode(atomic_write_text(tmp_path / "a.json", "{}")) == mode(plain) == umask_022
    os.umask(0o077)
    assert mode(atomic_write_text(tmp_path / "private.json", "{}")) == 0o600  # the umask is honoured


def test_every_output_kind_is_readable_by_others(tmp_path, umask_022, photos):
    from attendseg import Trace
    from attendseg.results import GroundedPhrase, Grounding
    from attendseg.views import View

    mask = np.zeros((300, 451), bool)
    mask[10:50, 20:80] = True
    g = Grounding((451, 300), "a cat", "describe", "m", "threshold",
                  [GroundedPhrase("a cat", (0, 5), "cat", (1,), np.array([[30.5, 20.5]]), mask, None, 0.5)])
    trace = Trace(token_ids=torch.zeros(2, dtype=torch.long), text="a cat", offsets=torch.tensor([[0, 1], [2, 5]]),
                  maps=torch.rand(2, 1, 1, 4), views=[View(start=0, grid=(2, 2), box=(0, 0, 451, 300))],
                  image_size=(451, 300), layers=(0,), heads=(0,))
    written = [g.save_json(tmp_path / "g.json"), *g.save_masks_png(tmp_path / "masks"),
               trace.save(tmp_path / "t.trace.safetensors"),
               atomic_save_image(Image.fromarray(photos["chelsea"]), tmp_path / "o.png")]
    assert {p.name: mode(p) for p in written} == {p.name: umask_022 for p in written}
    assert Trace.load(tmp_path / "t.trace.safetensors").text == "a cat"
    assert sorted(os.listdir(tmp_path)) == ["g.json", "masks", "o.png", "t.trace.safetensors"]  # no temp files


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "r.json", "old")

    def fail(f):
        f.write(b"half")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["r.json"]


def test_one_dtype_resolver_for_every_loader():
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("bf16") == resolve_dtype("torch.bfloat16") == resolve_dtype(torch.bfloat16) == torch.bfloat16
    assert resolve_dtype("half") == resolve_dtype("fp16") == torch.float16
    with pytest.raises(AttendsegError, match="unknown dtype"):
        resolve_dtype("float8")
    assert resolve_device("cpu").type == "cpu"
    import attendseg.attender as attender
    from attendseg.encoders import checkpoint

    # the loaders use this resolver, not copies of their own (SAM imports it where it loads)
    assert attender.resolve_dtype is checkpoint.resolve_dtype is resolve_dtype
    root = Path(attender.__file__).parent
    sources = [*root.rglob("*.py"), *(root.parent / "encoders").rglob("*.py"), *(root.parent / "cli").rglob("*.py")]
    defining = [p.name for p in sources if "def resolve_dtype" in p.read_text() or "def resolve_device" in p.read_text()]
    assert defining == ["devices.py"]
    assert "from ..devices import resolve_device, resolve_dtype" in (root / "refiners" / "sam.py").read_text()
