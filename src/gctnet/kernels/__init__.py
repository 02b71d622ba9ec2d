"""Backend selection for GCT: accelerated kernels (Triton on CUDA) or the lean eager path.

``GCTNET_BACKEND=auto|triton|eager`` (environment) or :func:`set_backend` choose the path:

* ``auto`` (default): the Triton kernels for CUDA tensors when Triton is importable, else eager;
* ``triton``: always the Triton kernels (CPU tensors too, which needs ``TRITON_INTERPRET=1``);
* ``eager``: the lean PyTorch path of :mod:`gctnet.functional` everywhere.

Export/tracing paths never come here: :func:`gctnet.functional.gct` switches to plain ops first.
"""

from __future__ import annotations

import os
from typing import Callable, Optional

import torch

__all__ = ["BACKENDS", "get_backend", "set_backend", "select", "triton_available"]

BACKENDS = ("auto", "triton", "eager")
_backend: Optional[str] = None


def _check(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"GCT backend must be one of {BACKENDS}, got {name!r} (from {source})")
    return name


def get_backend() -> str:
    """The active backend name (``set_backend`` wins over ``GCTNET_BACKEND``)."""
    if _backend is not None:
        return _backend
    return _check(os.environ.get("GCTNET_BACKEND", "auto").strip().lower() or "auto", "GCTNET_BACKEND")


def set_backend(name: Optional[str]) -> None:
    """Set the backend for this process; ``None`` returns to ``GCTNET_BACKEND``/``auto``."""
    global _backend
    _backend = None if name is None else _check(name, "set_backend")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def select(x: torch.Tensor) -> Optional[Callable[..., torch.Tensor]]:
    """The accelerated op to use for ``x``, or ``None`` for the eager path."""
    backend = get_backend()
    if backend == "eager":
        return None
    if backend == "auto" and not (x.is_cuda and triton_available()):
        return None
    try:
        from . import triton_ops
    except ImportError as exc:
        if backend == "triton":
            raise RuntimeError(f"GCTNET_BACKEND=triton but the Triton kernels are unavailable: {exc}") from exc
        return None
    return triton_ops.op_for(x)
