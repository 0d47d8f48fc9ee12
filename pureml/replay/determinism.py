"""Deterministic kernels, so that a run, its resume and its replay compute the same bits.

On CPU the kernels pureml uses are deterministic already: nothing to do, nothing to pay. On GPU,
cuBLAS picks reduction orders per workspace and some kernels use atomics; the fix is
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (read by cuBLAS when its first handle is created, so it must
be in the environment before the first CUDA matmul) and ``torch.use_deterministic_algorithms``.
Measured on an H100 in the design notes: a small step went from 2.9 ms to 5-7 ms, hence an
option (recipe key ``train.deterministic``) rather than always on.

Call :func:`set_deterministic` as early as possible: before anything touches CUDA.

>>> set_deterministic(True)["deterministic"]
True
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

CUBLAS_VALUE = ":4096:8"
_CUBLAS_OK = (":4096:8", ":16:8")


def cuda_started() -> bool:
    """Whether this process has initialised CUDA (after which cuBLAS may ignore the setting)."""
    return bool(torch.cuda.is_available() and torch.cuda.is_initialized())


def set_deterministic(enabled: bool = True, *, warn_only: bool = False) -> dict[str, Any]:
    """Turn deterministic GPU kernels on (or leave torch's defaults when ``enabled`` is False).

    Sets ``CUBLAS_WORKSPACE_CONFIG`` (unless already set to a deterministic value),
    ``torch.use_deterministic_algorithms(True, warn_only=warn_only)`` and cuDNN's deterministic,
    non-benchmarking mode. ``warn_only=False`` makes an op without a deterministic kernel raise
    (a silent non-determinism would break bitwise replay without saying why).

    Returns what was done: ``{"deterministic", "cuda", "late"}``; ``late`` is True when CUDA
    was already initialised (a warning is issued: the cuBLAS setting may come too late).
    """
    cuda = torch.cuda.is_available()
    if not enabled:
        return {"deterministic": False, "cuda": cuda, "late": False}
    if not cuda:  # CPU kernels are deterministic already; leave torch's checks alone
        return {"deterministic": True, "cuda": False, "late": False}
    late = False
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in _CUBLAS_OK:
        late = cuda_started()
        if late:
            warnings.warn(
                "set_deterministic: CUDA is already initialised; CUBLAS_WORKSPACE_CONFIG set now "
                "may be ignored by existing cuBLAS handles. Call it first thing (pureml's "
                "trainer does) or export CUBLAS_WORKSPACE_CONFIG=:4096:8",
                stacklevel=2,
            )
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_VALUE
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return {"deterministic": True, "cuda": cuda, "late": late}


def deterministic_settings() -> dict[str, Any]:
    """The current settings, as recorded next to replay reports."""
    return {
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
    }


__all__ = ["CUBLAS_VALUE", "cuda_started", "deterministic_settings", "set_deterministic"]
