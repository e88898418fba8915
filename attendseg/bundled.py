"""Models that ship inside the package, and their short names.

``attendseg.load("shapes-llava")``, ``Grounder.from_pretrained("shapes-llava")`` and the CLI's
``--model shapes-llava`` all name a bundled shapes-world model through :func:`resolve_model`
(``"shapes-qwen2vl"`` names the Qwen2-VL one).
To bundle another model, put its folder under ``attendseg/data/`` and add a line to
:data:`BUNDLED_MODELS`. This module imports nothing heavy: the CLI checks names with it before
it loads torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import AttendsegError

DATA = Path(__file__).parent / "data"

#: Short name → folder of a bundled model. The first entry is the default model: the Qwen2-VL
#: one, which beats the LLaVA one on held-out scenes of mixed aspect ratios (RESULTS.md).
BUNDLED_MODELS: dict[str, Path] = {
    "shapes-qwen2vl": DATA / "shapes-qwen2vl",  # Qwen2-VL architecture, scenes of every aspect from 1:2 to 2:1
    "shapes-llava": DATA / "shapes-llava",  # LLaVA-1.5 architecture, square scenes
}
DEFAULT_MODEL = next(iter(BUNDLED_MODELS))


def bundled_model(name: str = DEFAULT_MODEL) -> Path:
    """Folder of the bundled model ``name`` (default: :data:`DEFAULT_MODEL`)."""
    if name not in BUNDLED_MODELS:
        raise AttendsegError(f"no bundled model named {name!r}; bundled: {', '.join(BUNDLED_MODELS)}")
    folder = BUNDLED_MODELS[name]
    if not (folder / "config.json").exists():
        raise AttendsegError(f"the bundled model {name!r} is missing from {folder}; pass --model")
    return folder


def resolve_model(model: str | os.PathLike | None) -> str:
    """What ``model`` names, as ``load`` reads it: a bundled short name becomes its folder,
    ``None`` the default bundled model; a path that looks local (``./x``, ``/x``, ``~/x``,
    ``a/b/c`` or an existing path) must exist. Hub ids (``org/name``) are returned unchanged.

    Raises:
        AttendsegError: a bundled model is missing, or a local-looking folder does not exist.
    """
    if model is None:
        return str(bundled_model())
    name = os.fspath(model)
    if name in BUNDLED_MODELS and not Path(name).exists():
        return str(bundled_model(name))
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not path.exists():
        raise AttendsegError(f"model folder not found: {name}")
    return name
