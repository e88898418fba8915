"""Execute the notebooks in ``notebooks/`` and save them with their outputs (figures included).

    python scripts/execute_notebooks.py            # all notebooks, in place
    python scripts/execute_notebooks.py 01_attention_and_masks.ipynb

Notebooks are committed executed, so a reader on a code host sees the pictures. Each saved
notebook records the SHA-256 of the code cells that produced its outputs
(``metadata.attendseg.code_sha256``); ``tests/test_notebooks.py`` fails when the committed code
cells differ from it (edit a cell → run this script again). The kernel is this interpreter;
each notebook runs in a temporary working folder, offline, on CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL_NAME = "attendseg-notebooks"
TIMEOUT = 300  # per cell, seconds
#: Tag of the cell that ``execute(..., parameters=...)`` inserts (papermill's convention).
INJECTED = "injected-parameters"


def code_sha256(nb) -> str:
    """Hash of the notebook's code cells (sources only, in order; injected cells left out)."""
    cells = [c.source for c in nb.cells
             if c.cell_type == "code" and INJECTED not in c.metadata.get("tags", [])]
    return hashlib.sha256(json.dumps(cells).encode("utf-8")).hexdigest()


def kernel_spec_dir(root: Path) -> Path:
    """A private kernelspec folder whose one kernel runs ``sys.executable`` (no global registration)."""
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"attendseg ({sys.executable})",
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


def execute(path: Path, workdir: Path, kernel_dir: Path, parameters: dict | None = None):
    """Run the notebook at ``path`` with ``workdir`` as its working folder; ``parameters`` go in a
    cell after the one tagged ``parameters``. Returns the executed notebook (raises on an error)."""
    import nbclient
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}")
    if parameters:
        cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
        cell.metadata["tags"] = [INJECTED]
        nb.cells.insert(tagged[0] + 1, cell)
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    km = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs,
                       connection_file=str(workdir / ".kernel-connection.json"))
    client = nbclient.NotebookClient(nb, km=km, timeout=TIMEOUT, startup_timeout=120,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    return nb


def save_executed(nb, path: Path) -> None:
    """Write ``nb`` with the hash of its code cells, kernel-neutral metadata and no run timings."""
    import nbformat

    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["attendseg"] = {"code_sha256": code_sha256(nb),
                                "executed_by": "python scripts/execute_notebooks.py"}
    nbformat.validate(nb)
    from attendseg.files import atomic_write_text

    atomic_write_text(path, nbformat.writes(nb) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook file names (default: all in notebooks/)")
    args = parser.parse_args(argv)
    paths = [NOTEBOOKS / n for n in args.names] or sorted(NOTEBOOKS.glob("*.ipynb"))
    with tempfile.TemporaryDirectory(prefix="attendseg-nb-") as tmp:
        kernels = kernel_spec_dir(Path(tmp))
        for path in paths:
            workdir = Path(tmp) / path.stem
            workdir.mkdir()
            nb = execute(path, workdir, kernels)
            save_executed(nb, path)
            print(f"{path.relative_to(NOTEBOOKS.parent)}: executed, {path.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
