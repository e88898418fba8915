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
    assert "image(s) done" in result.stdout and "phrase" not in result.stdout  # attend grounds nothing
    import attendseg

    trace = attendseg.Trace.load(tmp_path / "coffee.jpg.trace.safetensors")
    assert trace.layers == (0, 1) and trace.per_layer and trace.maps.shape[1] == 2
    assert Image.open(tmp_path / "coffee.jpg.heatmaps.png").size[0] > 0


def test_user_mistakes_print_one_line(folder, tmp_path):
    missing = cli("ground", folder, "--model", tmp_path / "nope", "--out", tmp_path / "o")
    assert missing.returncode == 2 and "error: model folder not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    nothing = cli("ground", tmp_path / "empty-dir-that-does-not-exist", "--out", tmp_path / "o")
    assert nothing.returncode == 2 and "does-not-exist: no such file or folder" in nothing.stderr
    (tmp_path / "empty").mkdir()
    empty = cli("ground", tmp_path / "empty", "--out", tmp_path / "o")
    assert empty.returncode == 2 and "no images found" in empty.stderr
    bad_layers = cli("attend", folder / "coffee.jpg", "--layers", "x-y", "--out", tmp_path / "o")
    assert bad_layers.returncode == 2 and "--layers" in bad_layers.stderr


def test_help_reads_well():
    top = cli("--help")
    assert top.returncode == 0 and "ground" in top.stdout and "attend" in top.stdout
    sub = cli("ground", "--help")
    assert "--sam-model" in sub.stdout and "--overlays" in sub.stdout
    assert "--layers" in sub.stdout and "--heads" in sub.stdout  # as in the Python API


def option_help(help_text: str) -> dict:
    """``{option: its help text}`` from click's plain help layout."""
    options, current = {}, None
    for line in help_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-"):
            names, _, rest = stripped.partition("  ")
            current = [n.strip(",") for n in names.split() if n.startswith("-")][-1].split("/")[0]
            options[current] = rest.strip()
        elif current and stripped:
            options[current] += " " + stripped
        elif not stripped:
            current = None
    return options


@pytest.mark.parametrize("command", ["ground", "attend", "demo", "eval shapes"])
def test_every_option_is_explained_and_flags_take_no_value(command):
    result = cli(*command.split(), "--help")
    assert result.returncode == 0 and "<bool>" not in result.stdout
    options = option_help(result.stdout)
    assert "--quiet" in options and "--help" in options
    unexplained = [name for name, text in options.items() if not text.replace("[default:", "").strip()
                   or text.startswith("[")]
    assert not unexplained, unexplained
    if command in ("ground", "attend"):
        assert "lmsys/vicuna-7b-v1.5" in options["--base"].replace(" ", "")


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


HEAVY = ("torch", "transformers", "spacy")


@pytest.mark.parametrize("mistake, message", [
    (["ground", "{folder}", "--refiner", "sma"], "unknown --refiner 'sma'"),
    (["ground", "{folder}", "--out", "{folder}/readme.txt"], "exists and is not a folder"),
    (["ground", "{folder}/no-such-photo.jpg"], "no-such-photo.jpg: no such file or folder"),
    (["ground", "{folder}", "--model", "./no-such-model"], "model folder not found"),
    (["ground", "{folder}", "--phrases", "vocob:cat"], "unknown phrase extractor"),
    (["attend", "{folder}", "--layers", "x-y"], "--layers: cannot read"),
])
def test_argument_errors_come_before_heavy_imports(folder, tmp_path, mistake, message):
    args = [a.format(folder=folder) for a in mistake]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "o")]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "attendseg.cli.main", *args],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == [f"error: {errors[0][7:]}"] and message in errors[0]
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & set(HEAVY), imported & set(HEAVY)


def test_an_argument_error_costs_well_under_the_issues_1_5_seconds(folder, tmp_path):
    """The issue's target: an argument error within 1.5 s. Measured as the CPU time of the
    command (user + system), which, unlike wall time, a busy shared machine does not inflate;
    importing torch alone costs several CPU seconds."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = cli("ground", folder, "--refiner", "sma", "--out", tmp_path / "o")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 2
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 1.5, f"{cpu:.2f} s of CPU"


def test_resume_with_other_settings_stops_or_redoes(folder, tiny_llava, tmp_path):
    """Also: an answer cut at --max-new-tokens is flagged (a random model never says EOS)."""
    args = ["ground", folder / "coffee.jpg", "--model", tiny_llava, "--max-new-tokens", "3", "--phrases", "simple",
            "--out", tmp_path, "-q"]
    first = cli(*args, "--refiner", "threshold", "--layers", "1", "--heads", "0-1")
    assert first.returncode == 0, first.stderr
    assert "coffee.jpg: the answer stopped at the 3-token limit" in first.stdout
    result = tmp_path / "coffee.jpg.json"
    before = result.read_bytes()
    saved = json.loads(before)
    assert saved["meta"]["run"]["refiner"] == "threshold" and saved["meta"]["hit_token_limit"] is True
    assert saved["meta"]["settings"]["layers"] == [1] and saved["meta"]["settings"]["heads"] == [0, 1]
    args += ["--layers", "1", "--heads", "0-1"]
    changed = cli(*args, "--refiner", "superpixel")
    assert changed.returncode == 2 and result.read_bytes() == before
    assert "made with other settings (refiner)" in changed.stderr
    assert "--overwrite" in changed.stderr and "another --out" in changed.stderr
    redo = cli(*args, "--refiner", "superpixel", "--overwrite")
    assert redo.returncode == 0, redo.stderr
    assert "1 redone (--overwrite); 1 of them had been made with other settings (refiner)" in redo.stdout
    assert json.loads(result.read_text())["refiner"] == "superpixel"


def test_a_run_over_files_that_are_not_images_writes_nothing_and_says_so(tiny_llava, tmp_path):
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "a.jpg").write_text("not a picture")
    (fakes / "b.png").write_bytes(b"")
    result = cli("ground", fakes, "--model", tiny_llava, "--out", tmp_path / "o", "-q")
    assert result.returncode == 1 and "nothing written to" in result.stdout and "outputs in" not in result.stdout


def test_ctrl_c_prints_a_summary_and_how_to_resume(tiny_llava, tmp_path, photos):
    import signal
    import time

    inputs = tmp_path / "in"
    inputs.mkdir()
    small = Image.fromarray(photos["coffee"]).resize((48, 32))
    n_images = 60
    for i in range(n_images):
        small.save(inputs / f"{i:03d}.png")
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # A shell without job control starts background commands with SIGINT ignored, and children
    # inherit that (Python then installs no KeyboardInterrupt handler): the child gets the
    # default disposition back, as when a user presses Ctrl-C in a terminal.
    proc = subprocess.Popen([sys.executable, "-m", "attendseg.cli.main", "attend", inputs, "--model", tiny_llava,
                             "--max-new-tokens", "24", "--no-grid", "--out", out, "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not list(out.glob("*.safetensors")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    done = len(list(out.glob("*.safetensors")))
    assert f"{done} image(s) done" in stdout and "Traceback" not in stderr
    assert f"interrupted: {n_images - done} image(s) not done" in stdout
    assert "run the same command again to resume" in stdout


def test_quick_start_leaves_the_clone_clean():
    """README's quick start writes demo-out/; the CLI's default --out folders are ignored too."""
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("demo-out/contact_sheet.png", "attendseg-out/a.jpg.json", "attendseg-traces/a.jpg.trace.safetensors",
                 "attendseg-demo/metrics.json"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0, path


@pytest.mark.parametrize("command", [("eval", "shapes", "-q"), ("demo", "-q")])
def test_a_wrong_aspect_is_refused_in_one_line(command, tmp_path):
    result = cli(*command, "--aspect", "wide", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--aspect must be one of square, mixed, not 'wide'" in result.stderr + result.stdout
