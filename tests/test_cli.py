"""The CLI as a user runs it: a subprocess on a folder of real and broken files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def cli(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "attendseg.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos):
    root = tmp_path_factory.mktemp("inputs")
    (root / "sub").mkdir()
    Image.fromarray(photos["coffee"]).save(root / "coffee.jpg")
    Image.fromarray(photos["chelsea"]).convert("RGBA").save(root / "sub" / "cat.png")
    Image.fromarray((np.asarray(Image.fromarray(photos["rocket"]).convert("L")).astype(np.uint16) * 257)).save(
        root / "sub" / "rocket16.png")
    Image.fromarray(photos["astronaut"]).convert("CMYK").save(root / "sub" / "astronaut_cmyk.jpg")
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes((root / "coffee.jpg").read_bytes()[:1500])
    (root / "readme.txt").write_text("not an image")
    return root


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and "out" not in p.parts}


def test_ground_folder_resumes_and_never_touches_inputs(folder, tiny_llava):
    before = snapshot(folder)
    out = folder / "out"  # inside the input folder on purpose
    args = ["ground", folder, "--model", tiny_llava, "--out", out, "--prompt", "describe the image",
            "--text", "a red circle on the left of a blue square", "--overlays", "-q", "--batch-size", "2"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert "4 image(s) done" in first.stdout
    assert "empty.jpg: empty file" in first.stdout and "truncated.jpg" in first.stdout
    assert "readme.txt" in first.stdout
    outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))
    assert outputs == ["coffee.jpg.json", "sub/astronaut_cmyk.jpg.json", "sub/cat.png.json", "sub/rocket16.png.json"]
    data = json.loads((out / "sub" / "cat.png.json").read_text())
    assert data["image"]["width"] == 451 and len(data["phrases"]) == 2
    assert (out / "sub" / "cat.png.overlay.png").exists()
    stamp = (out / "coffee.jpg.json").stat().st_mtime_ns
    second = cli(*args)
    assert "4 already done" in second.stdout and (out / "coffee.jpg.json").stat().st_mtime_ns == stamp
    (out / "coffee.jpg.json").unlink()  # as if the run had been stopped before this image
    third = cli(*args)
    assert "1 image(s) done" in third.stdout and (out / "coffee.jpg.json").exists()
    assert snapshot(folder) == before


def test_attend_writes_traces_and_heatmaps(folder, tiny_llava, tmp_path):
    result = cli("attend", folder / "coffee.jpg", "--model", tiny_llava, "--out", tmp_path, "--prompt", "describe",
                 "--max-new-tokens", "4", "--layers", "0-1", "--per-layer", "-q")
    assert result.returncode == 0, result.stderr
    import attendseg

    trace = attendseg.Trace.load(tmp_path / "coffee.jpg.trace.safetensors")
    assert trace.layers == (0, 1) and trace.per_layer and trace.maps.shape[1] == 2
    assert Image.open(tmp_path / "coffee.jpg.heatmaps.png").size[0] > 0


def test_user_mistakes_print_one_line(folder, tmp_path):
    missing = cli("ground", folder, "--model", tmp_path / "nope", "--out", tmp_path / "o")
    assert missing.returncode == 2 and "error: model folder not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    nothing = cli("ground", tmp_path / "empty-dir-that-does-not-exist", "--out", tmp_path / "o")
    assert nothing.returncode == 2 and "no images found" in nothing.stderr
    bad_layers = cli("attend", folder / "coffee.jpg", "--layers", "x-y", "--out", tmp_path / "o")
    assert bad_layers.returncode == 2 and "--layers" in bad_layers.stderr


def test_help_reads_well():
    top = cli("--help")
    assert top.returncode == 0 and "ground" in top.stdout and "attend" in top.stdout
    sub = cli("ground", "--help")
    assert "--sam-model" in sub.stdout and "--overlays" in sub.stdout


def test_ground_with_sam_refiner(folder, tiny_llava, tiny_sam, tmp_path):
    result = cli("ground", folder / "coffee.jpg", "--model", tiny_llava, "--refiner", "sam", "--sam-model", tiny_sam,
                 "--sam-choice", "best-iou", "--text", "a red circle", "--out", tmp_path, "--masks-png", "-q")
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "coffee.jpg.json").read_text())
    assert data["refiner"] == "sam" and data["phrases"][0]["segmentation"]["size"] == [400, 600]
    assert list((tmp_path / "coffee.jpg.masks").glob("*.png"))


def test_output_folder_around_the_inputs_is_refused(folder):
    result = cli("ground", folder / "sub", "--out", folder, "-q")
    assert result.returncode == 2 and "lies inside --out" in result.stderr
