"""The backend setting: which kernels the GCT operators may use.

* ``auto`` (default): the accelerated kernel of the tensor's device where there is one that passed its
  self-check (C++ on CPU, Triton on CUDA), the PyTorch-ops (composite) kernel otherwise;
* ``cpp``: the C++ kernels on CPU (an error if they cannot be built or fail their self-check); the
  composite kernel elsewhere;
* ``triton``: the Triton kernels (an error where they cannot run); CPU tensors too when Triton runs in
  its interpreter (``TRITON_INTERPRET=1``);
* ``eager``: the composite kernel everywhere.

``GCTNET_BACKEND`` sets the process default; it is read once, on the first GCT call (or the first
:func:`get_backend`), and a bad value raises :class:`gctnet.errors.SettingsError` (a ``ValueError``) naming
the variable.  :func:`set_backend` and
:func:`use_backend` override it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

from ..errors import SettingsError

__all__ = ["BACKENDS", "get_backend", "set_backend", "use_backend", "backend_source"]

BACKENDS = ("auto", "triton", "cpp", "eager")
ENV_VAR = "GCTNET_BACKEND"

_explicit: Optional[str] = None  # set_backend()
_from_env: Optional[str] = None  # GCTNET_BACKEND, read once


def _check(name: object, source: str) -> str:
    if name not in BACKENDS:
        raise SettingsError(f"GCT backend must be one of {BACKENDS}, got {name!r} (from {source})")
    return str(name)


def get_backend() -> str:
    """The active backend: :func:`set_backend`'s, else ``GCTNET_BACKEND``'s (read once), else ``auto``."""
    global _from_env
    if _explicit is not None:
        return _explicit
    if _from_env is None:
        _from_env = _check(os.environ.get(ENV_VAR, "").strip().lower() or "auto", ENV_VAR)
    return _from_env


def backend_source() -> str:
    """Where the active backend comes from: ``set_backend()``, ``GCTNET_BACKEND`` or ``default``."""
    if _explicit is not None:
        return "set_backend()"
    return ENV_VAR if os.environ.get(ENV_VAR, "").strip() else "default"


def set_backend(name: Optional[str]) -> None:
    """Set the backend for this process; ``None`` returns to ``GCTNET_BACKEND``/``auto``."""
    global _explicit
    _explicit = None if name is None else _check(name, "set_backend")


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """``with use_backend("eager"): ...``: :func:`set_backend` for a block, then the previous setting.

    ``None`` leaves the setting as it is.  Every kernel returns and takes the same statistics, so a
    backward pass may run under another backend than its forward.
    """
    if name is None:
        yield
        return
    previous = _explicit
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)
