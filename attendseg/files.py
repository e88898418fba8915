"""The one way attendseg writes an output file: atomically, with the normal file mode.

Every output (result JSON, trace ``.safetensors``, mask and overlay PNGs, metrics, checkpoints)
goes through :func:`atomic_write`: the data is written to a temporary sibling file, flushed to
disk, and renamed over the target (``os.replace``), so a reader never sees half a file and an
interrupted run never leaves one. The temporary file is created with mode ``0o666`` and the
process umask applies, exactly as for a plain ``open(path, "w")`` (``tempfile.mkstemp`` would make
it ``0o600``, and the rename would keep that private mode).
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_save_image"]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace ``path`` with what ``write(f)`` writes to the binary file ``f``.

    The parent folder is created if needed. On any error (or Ctrl-C) the target is left as it was
    and the temporary file is removed. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_image(image, path: str | os.PathLike) -> Path:
    """Save a PIL image as PNG to ``path`` atomically (see :func:`atomic_write`)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
