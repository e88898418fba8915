"""Execute the notebooks in ``notebooks/`` and check that they run cleanly.

The kernel is the interpreter running the tests: a kernelspec whose ``argv`` starts with
``sys.executable`` is written to a temporary folder and handed to the kernel manager directly
(no global registration, no ``python3`` kernel registered elsewhere picked up by mistake), so it
works in any fresh virtual environment with the ``test`` extra. Each notebook runs in its own
temporary working directory, which is where its files land.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL_NAME = "attendseg-test"
TIMEOUT = 300  # per cell, seconds (a notebook takes ~15–30 s on 2 CPU cores)


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory) -> Path:
    """A private kernelspec folder whose one kernel runs ``sys.executable`` (this interpreter)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"attendseg tests ({sys.executable})",
        "language": "python",
        "env": {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
            "MPLBACKEND": "Agg",
            "IPYTHONDIR": str(root / "ipython"),
        },
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return root / "kernels"


def kernel_manager(kernel_dir: Path, workdir: Path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    assert specs.get_kernel_spec(KERNEL_NAME).argv[0] == sys.executable
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs,
                         connection_file=str(workdir / ".kernel-connection.json"))


def run_notebook(name: str, kernel_dir: Path, workdir: Path, parameters: dict | None = None):
    """Execute ``notebooks/<name>`` with ``workdir`` as its working directory; ``parameters``
    are injected in a cell after the one tagged ``parameters`` (papermill's convention).
    Returns the executed notebook."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: expected one cell tagged 'parameters'"
    if parameters:
        source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = ["injected-parameters"]
        nb.cells.insert(tagged[0] + 1, cell)
    client = nbclient.NotebookClient(
        nb,
        km=kernel_manager(kernel_dir, workdir),
        timeout=TIMEOUT,
        startup_timeout=120,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
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


def bundled() -> bool:
    from attendseg.demo import BUNDLED_MODEL

    return (BUNDLED_MODEL / "config.json").exists()


def test_notebooks_are_committed_without_outputs():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["01_attention_and_masks.ipynb", "02_layers_and_heads.ipynb"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name} has outputs"


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2
def test_attention_and_masks(kernel_dir, tmp_path):
    nb = run_notebook("01_attention_and_masks.ipynb", kernel_dir, tmp_path)
    text = text_of(nb)
    assert ("bundled shapes-world demo model" in text) == bundled()
    if not bundled():
        assert "RANDOM-weight" in text  # the fallback says so
    # the JSON it wrote decodes, with pycocotools as the notebook did and with attendseg
    from pycocotools import mask as mask_utils

    from attendseg import Grounding

    path = tmp_path / "chelsea.grounding.json"
    assert path.is_file()
    saved = json.loads(path.read_text())
    assert saved["schema"] == "attendseg.grounding" and saved["image"]["width"] == 451
    assert saved["phrases"], "no phrase was grounded"
    for phrase in saved["phrases"]:
        mask = mask_utils.decode(phrase["segmentation"])
        assert mask.shape == (300, 451) and int(mask.sum()) == phrase["area"]
    assert len(Grounding.load_json(path).phrases) == len(saved["phrases"])
    assert images_of(nb) >= 4  # photo, heatmap grid, overlay, mask (+ shapes sheet)


# The other branch of each notebook: the shapes-world parts with the tiny random model while
# the bundled model is missing; the tiny fallback once it is installed.
def other_branch() -> dict:
    return {"MODEL": "tiny"} if bundled() else {"SHAPES": True}


@pytest.mark.slow
def test_attention_and_masks_other_branch(kernel_dir, tmp_path):
    nb = run_notebook("01_attention_and_masks.ipynb", kernel_dir, tmp_path, other_branch())
    text = text_of(nb)
    assert (tmp_path / "chelsea.grounding.json").is_file()
    if bundled():
        assert "RANDOM-weight" in text and "skipped" in text
    else:
        assert "truth:" in text and "answer:" in text and "skipped" not in text


def test_layers_and_heads(kernel_dir, tmp_path):
    nb = run_notebook("02_layers_and_heads.ipynb", kernel_dir, tmp_path)
    text = text_of(nb)
    assert "maps [T, L, H, N]" in text and "mean + outliers" in text
    assert images_of(nb) >= 3  # layers, layers × heads, normalisation / sinks


@pytest.mark.slow
def test_layers_and_heads_other_branch(kernel_dir, tmp_path):
    from attendseg import shapes

    nb = run_notebook("02_layers_and_heads.ipynb", kernel_dir, tmp_path, other_branch())
    text = text_of(nb)
    word = text.split("phrase word:")[1].split()[0]
    assert (word == "cat") == bundled() and (word in shapes.SHAPES) != bundled()
