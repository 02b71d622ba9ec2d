"""GCT's C++ CPU kernels: fused per-sample forward/backward, built on first use and cached.

The source is ``csrc/gct_cpu.cpp`` with the loops in ``csrc/gct_cpu_kernels.h`` (shipped with the
package).  It is compiled once per machine, torch version and source version with
:func:`torch.utils.cpp_extension.load` (ninja and a C++ compiler are needed for that one build; loading
a cached build needs neither) into ``$GCTNET_CACHE_DIR`` (default ``$XDG_CACHE_HOME/gctnet`` or
``~/.cache/gctnet``).  ``make install`` and ``gctnet kernels --build`` build it ahead of time.

The library holds the raw kernels as three ops in the ``gctnet_cpu`` namespace (``forward``, ``scale``,
``backward``: the calls of :mod:`gctnet.kernels.composite`, see :mod:`gctnet.kernels.ops` for their
meaning).  They are the CPU kernels of the ``gctnet::gct*`` operators: :data:`KERNELS` is what
:mod:`gctnet.kernels.ops` runs for CPU tensors once the library is loaded and has passed its
self-check.  Per sample, the reduction and the scaling share one read of the sample's slab while it is
in the cache; work is split over samples (or over (n, c) rows when there are fewer samples than
threads) with ``at::parallel_for`` on torch's OpenMP thread pool (the library is built with
``-fopenmp`` and links the ``libgomp`` that torch already loaded, so the kernels use as many threads as
``torch.get_num_threads()``).  The loops are compiled for the baseline x86-64 and for AVX2+FMA; the
AVX2 copy runs where the CPU has it.

``python -m gctnet.kernels.cpu_ops`` (or ``gctnet kernels --build``) builds and reports.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..fileio import atomic_write_text
from .ops import Kernels

__all__ = [
    "SOURCE",
    "KERNELS",
    "KernelStatus",
    "cache_dir",
    "cached_build",
    "load",
    "status",
    "forward",
    "scale",
    "backward",
    "instruction_set",
    "uses_libmvec",
]

SOURCE = Path(__file__).with_name("csrc") / "gct_cpu.cpp"
HEADERS = (SOURCE.with_name("gct_cpu_kernels.h"),)  # included by SOURCE (part of the build key)
_NAME = "gctnet_cpu"


def _libmvec() -> bool:
    """x86-64 glibc >= 2.35 ships vector tanhf variants in libmvec (the gate math's tanh, vectorized)."""
    if platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"):
        return False
    lib, version = platform.libc_ver()
    try:
        major, minor = (int(v) for v in version.split(".")[:2])
    except ValueError:
        return False
    return lib == "glibc" and (major, minor) >= (2, 35)


@dataclass(frozen=True)
class _Variant:
    """One way to build the library: its compiler and linker flags."""

    cflags: Tuple[str, ...]
    ldflags: Tuple[str, ...] = ()

    @property
    def libmvec(self) -> bool:
        return "-lmvec" in self.ldflags


# -fopenmp: at::parallel_for is inline OpenMP code in torch's headers; without it the kernels run on one
# thread.  The resulting NEEDED libgomp.so.1 resolves to the libgomp.so.1 torch has already loaded.
_CFLAGS = ("-O3", "-fopenmp", "-DNDEBUG")
_LDFLAGS = ("-fopenmp",)
# tried in order: with glibc's vector tanhf where it should exist, then without (a toolchain whose
# sysroot lacks libmvec, e.g. an older glibc under a newer one, still gets the kernels)
_VARIANTS: Tuple[_Variant, ...] = (
    *((_Variant(_CFLAGS + ("-DGCTNET_USE_LIBMVEC=1",), _LDFLAGS + ("-lmvec",)),) if _libmvec() else ()),
    _Variant(_CFLAGS, _LDFLAGS),
)
_OK_MARKER = "gctnet-build-ok"


@dataclass(frozen=True)
class KernelStatus:
    """Whether the C++ CPU kernels are loaded in this process, from where, or why not."""

    available: bool
    path: Optional[str]  # the shared library that was loaded
    reason: str  # "" when available; otherwise why not, in one line
    built: bool = False  # True when this process compiled it
    seconds: float = 0.0  # time spent loading (and building)
    libmvec: bool = False  # the gate math's tanh is glibc's vector tanhf
    note: str = ""  # e.g. why a preferred build variant was not used

    def describe(self) -> str:
        if self.available:
            how = f"built in {self.seconds:.0f} s" if self.built else "cached build"
            return f"loaded ({how}): {self.path}" + (f"; {self.note}" if self.note else "")
        return f"unavailable: {self.reason}"


_lock = threading.Lock()
_status: Optional[KernelStatus] = None


def _tag(variant: _Variant) -> str:
    """Build key: the sources, the flags, torch, Python and the platform."""
    h = hashlib.sha256(SOURCE.read_bytes())
    for header in HEADERS:
        h.update(b"\0" + (header.read_bytes() if header.is_file() else b"missing"))
    parts = (*variant.cflags, *variant.ldflags, torch.__version__, str(torch.version.git_version), sys.version,
             platform.machine(), sys.platform)
    for part in parts:
        h.update(b"\0" + str(part).encode())
    return h.hexdigest()[:16]


def cache_dir(variant: Optional[_Variant] = None) -> Path:
    """Where this build of the kernels lives (``$GCTNET_CACHE_DIR`` or the user cache); by default the
    preferred build variant's folder."""
    root = os.environ.get("GCTNET_CACHE_DIR")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg, "gctnet") if xdg else os.path.join(os.path.expanduser("~"), ".cache", "gctnet")
    tag = _tag(variant or _VARIANTS[0])
    return Path(root) / "cpu-kernels" / f"torch{torch.__version__.split('+')[0]}-{tag}"


def _library_file(directory: Path) -> Optional[Path]:
    for ext in (".so", ".pyd", ".dylib"):
        candidate = directory / f"{_NAME}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _ops_registered() -> bool:
    try:
        torch.ops.gctnet_cpu.forward  # noqa: B018 - raises AttributeError until the library is loaded
    except (AttributeError, RuntimeError):
        return False
    return True


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _cached(variant: _Variant) -> Optional[Path]:
    directory = cache_dir(variant)
    lib = _library_file(directory)
    return lib if lib is not None and (directory / _OK_MARKER).is_file() else None


def _build_or_load(verbose: bool, quiet: bool) -> KernelStatus:
    start = time.perf_counter()
    if _ops_registered():
        return KernelStatus(True, "(already registered)", "", False, 0.0)
    for source in (SOURCE, *HEADERS):
        if not source.is_file():
            return KernelStatus(False, None, f"the kernel source {source} is missing from the installation")
    for variant in _VARIANTS:  # a cached build of any variant, preferred first
        lib = _cached(variant)
        if lib is None:
            continue
        try:
            torch.ops.load_library(str(lib))
            return KernelStatus(True, str(lib), "", False, time.perf_counter() - start, variant.libmvec)
        except Exception as exc:  # a stale or foreign file: rebuild below
            if not quiet:
                print(f"gctnet: cached C++ CPU kernels could not be loaded ({_one_line(exc)}); rebuilding", file=sys.stderr)
    failures = []  # (variant, one-line error)
    for variant in _VARIANTS:
        directory = cache_dir(variant)
        try:
            path = _compile(variant, directory, verbose, quiet)
        except Exception as exc:
            failures.append((variant, _one_line(exc)))
            continue
        lib = _library_file(directory)
        note = f"built without libmvec (scalar tanh): {failures[0][1]}" if failures else ""
        return KernelStatus(True, str(lib or path), "", True, time.perf_counter() - start, variant.libmvec, note)
    errors = [err for _, err in failures]
    if len(set(errors)) == 1:  # e.g. no compiler: the same reason for every variant
        reason = errors[0]
    else:
        reason = "; ".join(f"{'with' if v.libmvec else 'without'} libmvec: {err}" for v, err in failures)
    return KernelStatus(False, None, reason, False, time.perf_counter() - start)


def _compile(variant: _Variant, directory: Path, verbose: bool, quiet: bool) -> str:
    from torch.utils import cpp_extension

    directory.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(
            f"gctnet: compiling the C++ CPU kernels (once per machine and torch version, ~30 s) into {directory}",
            file=sys.stderr,
            flush=True,
        )
    path = cpp_extension.load(
        name=_NAME,
        sources=[str(SOURCE)],
        extra_cflags=list(variant.cflags),
        extra_ldflags=list(variant.ldflags),
        build_directory=str(directory),
        is_python_module=False,
        verbose=verbose,
    )
    # written last and atomically: another process loads the library directly only after this
    atomic_write_text(directory / _OK_MARKER, f"{torch.__version__}\n")
    return path


def load(verbose: bool = False, quiet: bool = False) -> KernelStatus:
    """Load the kernels (building them first if there is no cached build); once per process.

    Never raises: a failed build is reported in the returned status (``available=False``, ``reason``)
    and the callers use the PyTorch path.
    """
    global _status
    if _status is None:
        with _lock:
            if _status is None:
                _status = _build_or_load(verbose, quiet)
    return _status


def cached_build() -> Optional[Path]:
    """The cached shared library for this source/torch/Python, if one was built (without loading it)."""
    return next((lib for lib in map(_cached, _VARIANTS) if lib is not None), None)


def status() -> Optional[KernelStatus]:
    """The status of an earlier :func:`load` in this process, or ``None`` if none was attempted."""
    return _status


# --------------------------------------------------------------------------------------------------
# the kernels (the calls of gctnet.kernels.composite; gctnet.kernels.ops calls them once load() succeeded)
# --------------------------------------------------------------------------------------------------
def forward(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, eps: float, mode: str, after_relu: bool):
    """``(y, t, s, e, norm_inv)``: per sample, the reduction, the gate math and the scaling."""
    return torch.ops.gctnet_cpu.forward(x, alpha, gamma, beta, float(eps), mode, bool(after_relu))


def scale(x: Tensor, t: Tensor) -> Tensor:
    """``x * (1 + t)`` with ``t`` (N, C), in x's dtype and layout."""
    return torch.ops.gctnet_cpu.scale(x, t)


def backward(grad_y: Tensor, x: Tensor, alpha: Tensor, gamma: Tensor, t: Tensor, s: Tensor, e: Tensor,
             norm_inv: Tensor, mode: str, after_relu: bool, grad_x: Optional[Tensor]):
    """``(grad_alpha, grad_gamma, grad_beta)``; grad_x written into ``grad_x`` (``None``: not wanted)."""
    out = x.new_empty((0,)) if grad_x is None else grad_x
    return torch.ops.gctnet_cpu.backward(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, bool(after_relu), out)


KERNELS = Kernels("C++", forward, scale, backward)


def uses_libmvec() -> bool:
    """Whether the loaded build's gate math calls glibc's vector ``tanhf`` (libmvec; x86-64 glibc >= 2.35)."""
    return bool(_status is not None and _status.available and _status.libmvec)


def instruction_set() -> str:
    """The instruction set the loaded kernels run: ``avx2`` (AVX2+FMA, where the CPU has it) or ``baseline``."""
    st = load(quiet=True)
    if not st.available:
        raise RuntimeError(f"the C++ CPU kernels are unavailable, so they have no instruction set: {st.reason}")
    return torch.ops.gctnet_cpu.isa()


def _main(argv: Optional[list] = None) -> int:
    """``python -m gctnet.kernels.cpu_ops``: the same as ``gctnet kernels --build``."""
    from ..cli import main

    return main(["kernels", "--build", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
