"""Backend selection for GCT: accelerated kernels (Triton on CUDA, C++ on CPU) or the lean eager path.

``GCTNET_BACKEND=auto|triton|cpp|eager`` (environment) or :func:`set_backend` choose the path:

* ``auto`` (default): the Triton kernels for CUDA tensors when Triton is importable; the C++ CPU
  kernels (:mod:`gctnet.kernels.cpu_ops`, built on first use) for CPU tensors when they can be built;
  the lean PyTorch path otherwise (with one warning when the C++ kernels could not be built);
* ``triton``: always the Triton kernels (CPU tensors too, which needs ``TRITON_INTERPRET=1``);
* ``cpp``: the C++ kernels for CPU tensors (an error if they cannot be built); eager elsewhere;
* ``eager``: the lean PyTorch path of :mod:`gctnet.functional` everywhere.

The C++ kernels run inside :class:`gctnet.functional._GCTFunction` (same saved tensors), and so do
the Triton kernels when the lean GCT+conv path of :mod:`gctnet.surgery` runs them in eager mode;
:func:`native_ops` says which.

Export/tracing paths never come here: :func:`gctnet.functional.gct` switches to plain ops first.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from types import ModuleType
from typing import Callable, Iterator, Optional

import torch

__all__ = [
    "BACKENDS", "get_backend", "set_backend", "use_backend", "select", "native_ops", "cpu_kernels", "triton_available",
    "report",
]

BACKENDS = ("auto", "triton", "cpp", "eager")
_backend: Optional[str] = None
_warned_cpp = False


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


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """``with use_backend("eager"): ...``: :func:`set_backend` for a block, then the previous setting.

    A GCT forward run inside the block keeps its choice of kernels for its backward pass, wherever
    that runs.  ``None`` leaves the setting as it is.
    """
    if name is None:
        yield
        return
    previous = _backend  # the explicit setting; None when the environment decides
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def select(x: torch.Tensor) -> Optional[Callable[..., torch.Tensor]]:
    """The accelerated op to use for ``x``, or ``None`` for the eager path."""
    return _select(x, get_backend())


def _select(x: torch.Tensor, backend: str) -> Optional[Callable[..., torch.Tensor]]:
    if backend in ("eager", "cpp"):
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


def native_ops(x: torch.Tensor) -> Optional[ModuleType]:
    """The kernel module the eager autograd functions call for ``x``, or ``None`` for PyTorch ops.

    :mod:`gctnet.kernels.triton_ops` where :func:`select` picks the Triton kernels and they can address
    ``x`` without a copy; else :func:`cpu_kernels`.  Both modules offer the same calls (``forward``,
    ``forward_into``, ``scale``, ``scale_into``, ``backward``), which the lean GCT+conv path of
    :mod:`gctnet.surgery` uses to keep only ``x`` for the backward, on CUDA as on CPU.
    """
    backend = get_backend()  # read once: this runs for every GCT call
    if x.device.type == "cpu" and backend in ("auto", "cpp"):  # the common CPU case, without the Triton probe
        return _cpu_kernels(x, backend)
    if _select(x, backend) is not None:
        from . import triton_ops

        return triton_ops if triton_ops.supports(x) else None
    return _cpu_kernels(x, backend) if x.device.type == "cpu" else None


def cpu_kernels(x: torch.Tensor) -> Optional[ModuleType]:
    """:mod:`gctnet.kernels.cpu_ops` when the C++ CPU kernels should run on ``x``, else ``None``.

    They run for tensors they support (non-empty CPU floating tensors) under the ``auto`` and ``cpp``
    backends, once built.  Under ``auto`` a failed build warns once and falls back to eager; under
    ``cpp`` it raises.  The caller checks that it is not compiling or tracing.
    """
    return _cpu_kernels(x, get_backend())


def _cpu_kernels(x: torch.Tensor, backend: str) -> Optional[ModuleType]:
    global _warned_cpp
    if backend not in ("auto", "cpp"):
        return None
    from . import cpu_ops

    if not cpu_ops.supports(x):
        return None
    st = cpu_ops.status() or cpu_ops.load()
    if st.available:
        return cpu_ops
    if backend == "cpp":
        raise RuntimeError(f"GCTNET_BACKEND=cpp but the C++ CPU kernels are unavailable: {st.reason}")
    if not _warned_cpp:
        _warned_cpp = True
        warnings.warn(
            "gctnet: the C++ CPU kernels could not be built, so GCT uses the (slower) PyTorch path on CPU: "
            f"{st.reason}. `gctnet kernels` shows details; GCTNET_BACKEND=eager silences this.",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


def report(build: bool = False, verbose: bool = False) -> dict:
    """What runs where: the backend, Triton/CUDA availability and the C++ CPU kernels' state.

    ``build=True`` loads the C++ kernels (compiling them if there is no cached build); otherwise only
    says whether a cached build exists.
    """
    from . import cpu_ops

    cpp: dict = {"cache_dir": str(cpu_ops.cache_dir())}
    st = cpu_ops.status()
    if build and st is None:
        st = cpu_ops.load(verbose=verbose)
    if st is not None:
        cpp.update(available=st.available, state=st.describe(), path=st.path, reason=st.reason, built_now=st.built,
                   seconds=round(st.seconds, 2), isa=cpu_ops.isa() if st.available else None,
                   vector_tanh="libmvec" if cpu_ops.uses_libmvec() else "scalar")
    else:
        lib = cpu_ops.cached_build()
        cpp.update(available=None, path=str(lib) if lib else None,
                   state=f"cached build: {lib}" if lib else "not built yet (built on first CPU use, or: gctnet kernels --build)")
    backend = get_backend()
    return {
        "backend": backend,
        "backend_source": "set_backend()" if _backend is not None else (
            "GCTNET_BACKEND" if os.environ.get("GCTNET_BACKEND") else "default"),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "triton_available": triton_available(),
        "cpu_threads": torch.get_num_threads(),
        "cpp_kernels": cpp,
        "cpu_path": _cpu_path(backend, cpp),
        "cuda_path": "Triton kernels" if backend in ("auto", "triton") and triton_available() else "PyTorch ops (lean eager)",
    }


def _cpu_path(backend: str, cpp: dict) -> str:
    if backend == "eager":
        return "PyTorch ops (lean eager)"
    if backend == "triton":
        return "Triton interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "PyTorch ops (lean eager)"
    if cpp.get("available") is False:
        return "PyTorch ops (lean eager): the C++ kernels are unavailable" + (" (an error under cpp)" if backend == "cpp" else "")
    return "C++ kernels"
