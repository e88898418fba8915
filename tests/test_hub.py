"""Hub ids without a hub: every piece fails within seconds with one line (or loads from the cache),
and with a hub transformers downloads as usual.

The "no hub" runs are child processes with ``HF_HUB_OFFLINE`` unset, a fresh empty ``HF_HOME``
and ``HF_ENDPOINT`` on a loopback port where nothing listens (connection refused), or with
``HF_HUB_OFFLINE=1``. The "hub" is a loopback HTTP server serving a tiny model's files the way
the hub's ``resolve`` URLs do; transformers and huggingface_hub download from it unmodified.
"""

import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from attendseg.errors import AttendsegError

UNREACHABLE = "http://127.0.0.1:9"  # loopback, nothing listens: connection refused
COMMIT = "c" * 40
PIECES = {  # piece → (hub id, the label its error line starts with)
    "model": ("llava-hf/llava-1.5-7b-hf", "model"),
    "SAM": ("facebook/sam-vit-huge", "SAM"),
    "SD": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "Stable Diffusion (SD)"),
    "CLIP": ("openai/clip-vit-large-patch14-336", "CLIP"),
    "base": ("lmsys/vicuna-7b-v1.5", "base LLM"),
}

#: Child process: warm the imports, then time each load alone; one JSON line per case.
CHILD = r"""
import json, sys, time
import attendseg, diffusers, transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, GenerationConfig
import attendseg.encoders
from attendseg.refiners.sam import load_sam
release, sd, clip, cached = sys.argv[1:5]
ids = json.loads(sys.argv[5])
cases = {
    "model": lambda: attendseg.load(ids["model"]),
    "SAM": lambda: load_sam(ids["SAM"]),
    "SD": lambda: attendseg.load(release),  # the release names SD, CLIP and base by hub id
    "CLIP": lambda: attendseg.load(release, sd=sd),
    "base": lambda: attendseg.load(release, sd=sd, clip=clip),
    "cached": lambda: attendseg.load(cached),
}
for name, load in cases.items():
    start = time.perf_counter()
    try:
        load()
        outcome = "loaded"
    except attendseg.AttendsegError as error:
        outcome = str(error)
    print(json.dumps({"case": name, "seconds": time.perf_counter() - start, "outcome": outcome}), flush=True)
"""


def child_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), **extra)
    return env


def put_in_cache(env: dict, repo_id: str, folder: Path) -> None:
    """Lay ``folder`` out in the hub cache of ``env``'s HF_HOME as revision ``main`` of ``repo_id``."""
    repo = Path(env["HF_HOME"]) / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


@pytest.fixture(scope="module")
def hub_release(tmp_path_factory):
    """The files of a DiffLMM release that are read before its parts are looked for: a config
    naming SD and CLIP, an adapter naming the base, all by the real hub ids (weights: stand-ins)."""
    import torch
    from safetensors.torch import save_file

    release = tmp_path_factory.mktemp("hub-release")
    (release / "config.json").write_text(json.dumps({
        "model_type": "llava_llama", "mm_projector_type": "SDCLIPBlock",
        "mm_vision_tower": PIECES["SD"][0], "mm_vision_sd_clip": PIECES["CLIP"][0]}))
    (release / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 1, "lora_alpha": 1, "base_model_name_or_path": PIECES["base"][0]}))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": torch.zeros(1, 4), f"{prefix}.lora_B.weight": torch.zeros(4, 1)},
              str(release / "adapter_model.safetensors"))
    torch.save({"base_model.model.model.mm_projector.vt_pe": torch.zeros(1)}, release / "non_lora_trainables.bin")
    # SD and CLIP given as folders are only looked into after all hub ids are resolved
    return {"difflmm": release, "sd": release / "sd", "clip": release / "clip"}


def run_child(env, hub_release, tiny_llava) -> tuple[dict, str]:
    args = [str(hub_release["difflmm"]), str(hub_release["sd"]), str(hub_release["clip"]), "test/tiny-llava",
            json.dumps({k: v[0] for k, v in PIECES.items()})]
    put_in_cache(env, "test/tiny-llava", tiny_llava)
    run = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = {r["case"]: r for r in map(json.loads, run.stdout.splitlines())}
    return results, run.stderr


def check_error_lines(results: dict, reason: str) -> None:
    for piece, (hub_id, label) in PIECES.items():
        outcome, seconds = results[piece]["outcome"], results[piece]["seconds"]
        assert outcome.startswith(f"{label} {hub_id!r} is neither a local folder nor in the local cache ("), outcome
        assert f"and the hub cannot be reached ({reason}): pass a local folder" in outcome and "HF_HUB_OFFLINE=1" in outcome
        assert "\n" not in outcome
        assert seconds < 5, (piece, seconds)


def test_unreachable_hub_fails_fast_and_uses_the_cache(tmp_path, hub_release, tiny_llava):
    env = child_env(tmp_path, HF_ENDPOINT=UNREACHABLE)
    results, stderr = run_child(env, hub_release, tiny_llava)
    check_error_lines(results, f"no answer from {UNREACHABLE}")
    assert results["cached"]["outcome"] == "loaded" and results["cached"]["seconds"] < 5
    assert "loading model 'test/tiny-llava' from the cache" in stderr
    assert "Retry" not in stderr  # no minute of retry messages


def test_offline_mode_fails_at_once_and_uses_the_cache(tmp_path, hub_release, tiny_llava):
    env = child_env(tmp_path, HF_ENDPOINT=UNREACHABLE, HF_HUB_OFFLINE="1")
    results, stderr = run_child(env, hub_release, tiny_llava)
    check_error_lines(results, "HF_HUB_OFFLINE=1 is set")
    assert results["cached"]["outcome"] == "loaded"
    assert "Retry" not in stderr


#: Child process: one CLI command from a cold start; which heavy modules were imported by the end.
CLI_COLD = r"""
import json, sys
from attendseg.cli.main import app
try:
    app(json.loads(sys.argv[1]))
except SystemExit as exit:
    print(json.dumps({"code": exit.code, "imported": [m for m in ("torch", "transformers") if m in sys.modules]}))
"""


@pytest.mark.parametrize("command, piece", [
    (["ground", "--model", PIECES["model"][0]], "model"),
    (["ground", "--refiner", "sam"], "SAM"),
    (["ground", "--model", "Shengcao1006/difflmm-llava-v1.5-7b-lora"], "model"),
    (["attend", "--model", PIECES["model"][0]], "model"),
])
def test_cli_checks_hub_ids_before_loading_torch(tmp_path, command, piece):
    """The CLI asks about hub ids with its other cheap checks: the error comes before torch and
    transformers are even imported."""
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    args = [command[0], str(tmp_path / "x.png"), "-q", "--out", str(tmp_path / "out"), *command[1:]]
    env = child_env(tmp_path, HF_ENDPOINT=UNREACHABLE)
    run = subprocess.run([sys.executable, "-c", CLI_COLD, json.dumps(args)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert json.loads(run.stdout) == {"code": 2, "imported": []}, run.stderr
    hub_id = args[args.index("--model") + 1] if "--model" in args else PIECES["SAM"][0]
    assert run.stderr.startswith(f"error: {piece} {hub_id!r} is neither a local folder nor in the local cache")
    assert len(run.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ with a hub
def serve_hub(repos: dict[str, Path], log: list[str]) -> http.server.ThreadingHTTPServer:
    """A loopback server answering the hub's ``/{repo}/resolve/{revision}/{file}`` HEAD and GET
    requests from local folders (commit, ETag and size headers as the hub sends them); anything
    else is a 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self, body: bool):
            log.append(f"{self.command} {self.path}")
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", self.path.split("?")[0])
            path = repos[m[1]] / m[2] if m and m[1] in repos else None
            if path is None or not path.is_file():
                self.send_response(404)
                if m:
                    self.send_header("X-Error-Code", "EntryNotFound" if m[1] in repos else "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self):
            self.answer(False)

        def do_GET(self):
            self.answer(True)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_with_a_hub_transformers_downloads_as_usual(tmp_path, tiny_llava):
    log: list[str] = []
    server = serve_hub({"test/tiny-llava": Path(tiny_llava)}, log)
    try:
        env = child_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}")
        code = "import attendseg; a = attendseg.load('test/tiny-llava'); print(a.adapter.family, a.model_id)"
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    finally:
        server.shutdown()
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["llava", "test/tiny-llava"]
    assert "GET /test/tiny-llava/resolve/main/model.safetensors" in log
    snapshot = Path(env["HF_HOME"]) / "hub" / "models--test--tiny-llava" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").read_bytes() == (Path(tiny_llava) / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------ the probe
@pytest.fixture
def online(monkeypatch):
    """This process as if HF_HUB_OFFLINE were unset (the suite sets it), probes not reused."""
    from huggingface_hub import constants

    from attendseg import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)  # never any address but loopback
    monkeypatch.setattr(hub, "_probes", {})
    return hub


def test_probe_gives_up_on_a_silent_server(online):
    """A server that accepts connections and never answers counts as unreachable, within the
    probe's time limit."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        start = time.perf_counter()
        assert not online.hub_reachable(f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert time.perf_counter() - start < online.PROBE_SECONDS + 1
    finally:
        silent.close()


def test_probe_answers_and_local_paths_pass(online, tmp_path):
    log: list[str] = []
    server = serve_hub({}, log)
    try:
        assert online.hub_reachable(f"http://127.0.0.1:{server.server_address[1]}")  # a 404 is an answer
    finally:
        server.shutdown()
    assert not online.hub_reachable(UNREACHABLE)
    for local in (str(tmp_path), "./relative/model", "~/models/x", "a/b/c"):
        assert online.resolve(local, "model") == local  # never probed nor looked up
    with pytest.raises(AttendsegError, match=f"^CLIP 'org/name' is neither .*no answer from {re.escape(UNREACHABLE)}"):
        online.resolve("org/name", "CLIP")
