"""The bundled shapes-world demo model and the ``attendseg demo`` run."""

from __future__ import annotations

from pathlib import Path

from .errors import AttendsegError

BUNDLED_MODEL = Path(__file__).parent / "data" / "shapes-llava"


def bundled_model() -> Path:
    """Folder of the bundled demo model (a LLaVA trained on shapes-world captions only)."""
    if not (BUNDLED_MODEL / "config.json").exists():
        raise AttendsegError(f"the bundled demo model is missing from {BUNDLED_MODEL}; pass --model")
    return BUNDLED_MODEL
