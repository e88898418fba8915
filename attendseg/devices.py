"""The one place that turns ``device=`` / ``dtype=`` arguments into torch objects.

Defaults, for every model attendseg loads (LMMs, DiffLMM, SAM): the device is CUDA when available,
else CPU; the dtype is bfloat16 on CUDA (float16 where the GPU has no bf16) and float32 elsewhere.
Callers with a reason to differ pass their dtype explicitly (SAM runs in float32 unless asked).
"""

from __future__ import annotations

import torch

from .errors import AttendsegError

#: Accepted dtype names (``torch.float16`` objects and ``"torch.float16"`` strings work too).
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device) -> torch.device:
    """``None`` → CUDA when available, else CPU; a bad or unavailable device is an error."""
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise AttendsegError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AttendsegError(f"device {str(device)!r} requested, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AttendsegError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type not in ("cpu", "mps", "xpu"):
        raise AttendsegError(f"unsupported device {str(device)!r}")
    return device


def resolve_dtype(dtype, device=None) -> torch.dtype:
    """``None`` → bfloat16 on CUDA (float16 where bf16 is unsupported), float32 otherwise.

    ``device`` (default: :func:`default_device`) only matters for the default.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        device = resolve_device(device)
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise AttendsegError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]
