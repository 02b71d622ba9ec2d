"""GCT's compute core: the ``gctnet::gct*`` operators and their kernels.

* :mod:`~gctnet.kernels.ops`: the operator schemas, fake implementations, the autograd formula and the
  per-device kernel registration (the dispatcher picks the kernel);
* :mod:`~gctnet.kernels.composite`: the math in PyTorch ops (the kernel for every device without an
  accelerated one, and the formulas the other kernels and the traceable path share);
* :mod:`~gctnet.kernels.cpu_ops`: the C++ CPU kernels (built once, cached);
* :mod:`~gctnet.kernels.triton_ops`: the Triton CUDA kernels;
* :mod:`~gctnet.kernels.check`: the one-time self-check of accelerated kernels;
* :mod:`~gctnet.kernels.backend`: the backend setting (``set_backend``, ``use_backend``, ``GCTNET_BACKEND``).
"""

from __future__ import annotations

import os

import torch

from . import ops
from .backend import BACKENDS, backend_source, get_backend, set_backend, use_backend

__all__ = ["BACKENDS", "get_backend", "set_backend", "use_backend", "triton_available", "report", "ops"]


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


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
                   seconds=round(st.seconds, 2), isa=cpu_ops.instruction_set() if st.available else None,
                   vector_tanh="libmvec" if cpu_ops.uses_libmvec() else "scalar")
    else:
        lib = cpu_ops.cached_build()
        cpp.update(available=None, path=str(lib) if lib else None,
                   state=f"cached build: {lib}" if lib else "not built yet (built on first CPU use, or: gctnet kernels --build)")
    backend = get_backend()
    failed = ops.failed_devices()
    return {
        "backend": backend,
        "backend_source": backend_source(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "triton_available": triton_available(),
        "cpu_threads": torch.get_num_threads(),
        "cpp_kernels": cpp,
        "cpu_path": _cpu_path(backend, cpp, failed.get("cpu")),
        "cuda_path": ("PyTorch ops: " + failed["cuda"]) if "cuda" in failed else (
            "Triton kernels" if backend in ("auto", "triton") and triton_available() else "PyTorch ops"),
    }


def _cpu_path(backend: str, cpp: dict, failure) -> str:
    if failure:
        return f"PyTorch ops: {failure}"
    if backend == "eager":
        return "PyTorch ops"
    if backend == "triton":
        return "Triton interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "PyTorch ops"
    if cpp.get("available") is False:
        return "PyTorch ops: the C++ kernels are unavailable" + (" (an error under cpp)" if backend == "cpp" else "")
    return "C++ kernels"
