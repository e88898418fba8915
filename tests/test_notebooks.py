"""The notebooks: committed executed (a reader on a code host sees their figures), fresh (the
committed code cells are the ones that produced the outputs), and still running cleanly.

Execution is shared with ``scripts/execute_notebooks.py`` (which writes the committed copies):
the kernel is the interpreter running the tests, through a private kernelspec, and each notebook
runs in its own temporary working folder.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
_spec = importlib.util.spec_from_file_location("execute_notebooks", ROOT / "scripts" / "execute_notebooks.py")
execute_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute_notebooks)
#: least number of figures each committed notebook shows
FIGURES = {"01_attention_and_masks.ipynb": 5, "02_layers_and_heads.ipynb": 3}


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory) -> Path:
    return execute_notebooks.kernel_spec_dir(tmp_path_factory.mktemp("jupyter"))


def run_notebook(name: str, kernel_dir: Path, workdir: Path, parameters: dict | None = None):
    nb = execute_notebooks.execute(NOTEBOOKS / name, workdir, kernel_dir, parameters)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    return nb


def text_of(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o["text"])
            elif "data" in o and "text/plain" in o["data"]:
                out.append(o["data"]["text/plain"])
    return "\n".join(out)


def images_of(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_committed_notebooks_are_executed_and_fresh(name):
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), \
        f"{name}: not one clean top-to-bottom run; run python scripts/execute_notebooks.py"
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert images_of(nb) >= FIGURES[name], f"{name}: committed without its figures"
    recorded = nb.metadata.get("attendseg", {}).get("code_sha256")
    assert recorded == execute_notebooks.code_sha256(nb), (
        f"{name}: its code cells changed after the outputs were made; "
        f"run python scripts/execute_notebooks.py {name}")
    edited = nbformat.from_dict(json.loads(json.dumps(nb)))  # the check notices a one-character edit
    [c for c in edited.cells if c.cell_type == "code"][-1].source += " "
    assert execute_notebooks.code_sha256(edited) != recorded
    assert max(len(o["data"]["image/png"]) for c in code for o in c.outputs if "image/png" in o.get("data", {})) \
        < 200_000, "figures are meant to be small PNGs"


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2
def test_attention_and_masks(kernel_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    nb = run_notebook("01_attention_and_masks.ipynb", kernel_dir, work, {"OUT_DIR": str(out)})
    text = text_of(nb)
    assert "Attender('shapes-qwen2vl'" in text and "IoU with the true mask" in text
    assert "box=(0.0, 0.0, 451.0, 300.0)" in text  # the Qwen2-VL grid covers the whole photo
    assert "shapes-llava's cropped-off sides are one flat value (its grid's lowest): True" in text
    assert [p.name for p in work.iterdir() if not p.name.startswith(".")] == []  # nothing lands in its folder
    # the JSON it wrote decodes, with pycocotools as the notebook did and with attendseg
    from pycocotools import mask as mask_utils

    from attendseg import Grounding

    path = out / "scene.grounding.json"
    saved = json.loads(path.read_text())
    height, width = saved["image"]["height"], saved["image"]["width"]
    assert saved["schema"] == "attendseg.grounding" and min(height, width) == 64  # a mixed-world scene
    assert saved["phrases"], "no phrase was grounded"
    for phrase in saved["phrases"]:
        mask = mask_utils.decode(phrase["segmentation"])
        assert mask.shape == (height, width) and int(mask.sum()) == phrase["area"]
    assert len(Grounding.load_json(path).phrases) == len(saved["phrases"])
    assert images_of(nb) >= FIGURES["01_attention_and_masks.ipynb"]


def test_layers_and_heads(kernel_dir, tmp_path):
    nb = run_notebook("02_layers_and_heads.ipynb", kernel_dir, tmp_path)
    text = text_of(nb)
    assert "maps [T, L, H, N]" in text and "mean + outliers" in text
    assert "have their centre on an object" in text  # the explanation's evidence
    assert images_of(nb) >= FIGURES["02_layers_and_heads.ipynb"]
