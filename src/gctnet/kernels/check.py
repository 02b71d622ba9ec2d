"""The one-time self-check of accelerated kernels against the composite (PyTorch-ops) kernel.

Before an accelerated kernel (C++ on CPU, Triton on CUDA) runs for a new (device, dtype, number of dims,
layout), :func:`check_kernels` runs it and the composite kernel on a small random tensor of that kind,
forward (``y`` and the statistics), ``gct_scale`` and backward (grad_x and the parameter gradients), in
the three modes (l2, l1, l1 after ReLU).  A compile error, an exception or a difference beyond the
dtype's tolerance is a failure: :mod:`gctnet.kernels.ops` then warns once and that device runs the
composite kernel from then on.  The check uses its own random generator (training runs stay
bit-identical) and costs a few milliseconds per kind of input.

:func:`check_table` runs it for every dtype, number of dims and layout (``gctnet kernels --check``).
"""

from __future__ import annotations

import itertools
from typing import List, Optional

import torch
from torch import Tensor

from . import composite
from .ops import addressable

__all__ = ["TOLERANCE", "check_kernels", "check_table", "LAYOUTS"]

# (rtol, atol) per dtype for comparing two kernels that both accumulate in float32/float64
TOLERANCE = {
    torch.float64: (1e-9, 1e-11),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 2e-3),
    torch.bfloat16: (4e-2, 2e-2),
}
# (rtol, atol) for the statistics and parameter gradients (sums over many elements), by input dtype
STAT_TOLERANCE = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-3, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (3e-2, 3e-2),
}
LAYOUTS = ("contiguous", "channels_last", "strided")
_SPATIAL = {3: (13,), 4: (5, 6), 5: (3, 4, 5)}
_MODES = (("l2", False), ("l1", False), ("l1", True))


def _sample(dim: int, layout: str, dtype: torch.dtype, device: torch.device, gen: torch.Generator,
            positive: bool = False) -> Tensor:
    n, c, spatial = 3, 8, _SPATIAL[dim]
    if layout == "channels_last":
        base = torch.randn((n, *spatial, c), generator=gen, dtype=torch.float64)
        x = base.movedim(-1, 1)  # (N, C, *spatial) with channels innermost
    elif layout == "strided":
        base = torch.randn((n, c, *spatial[:-1], 2 * spatial[-1]), generator=gen, dtype=torch.float64)
        x = base[..., ::2]
    else:
        x = torch.randn((n, c, *spatial), generator=gen, dtype=torch.float64)
    x = (x.abs() if positive else x) * 1.5
    return x.to(device=device, dtype=dtype)


def _compare(name: str, got: Tensor, want: Tensor, tolerance: tuple) -> Optional[str]:
    if got.shape != want.shape:
        return f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    if not torch.isfinite(got.double()).all():
        return f"{name} has non-finite values"
    rtol, atol = tolerance
    err = (got.double() - want.double()).abs()
    bound = atol + rtol * want.double().abs()
    if bool((err > bound).any()):
        return f"{name} differs from the PyTorch ops by up to {err.max().item():.3g} (tolerance {rtol:g} rel + {atol:g} abs)"
    return None


def _check_mode(kernels, x: Tensor, mode: str, after_relu: bool, gen: torch.Generator) -> Optional[str]:
    c = x.shape[1]
    params = [torch.randn(c, generator=gen, dtype=torch.float64) * 0.7 for _ in range(3)]
    alpha, gamma, beta = (p.to(x.device, torch.float32) for p in params)
    alpha = alpha.abs() + 0.5
    eps = 1e-5
    tol, stat_tol = TOLERANCE[x.dtype], STAT_TOLERANCE[x.dtype]
    got = kernels.forward(x, alpha, gamma, beta, eps, mode, after_relu)
    want = composite.forward(x, alpha, gamma, beta, eps, mode, after_relu)
    for name, g, w in zip(("y", "t", "s", "e", "norm_inv"), got, want):
        problem = _compare(f"forward {name}", g, w, tol if name == "y" else stat_tol)
        if problem is None and name == "y" and g.stride() != x.stride():
            problem = f"forward y has strides {g.stride()}, expected x's {x.stride()}"
        if problem:
            return problem
    t, s, e, norm_inv = want[1:]
    problem = _compare("scale", kernels.scale(x, t), composite.scale(x, t), tol)
    if problem:
        return problem
    grad_y = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.device, x.dtype)
    gx_got, gx_want = torch.empty_like(x), torch.empty_like(x)
    got_p = kernels.backward(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, gx_got)
    want_p = composite.backward(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, gx_want)
    for name, g, w in (("grad_x", gx_got, gx_want), *zip(("grad_alpha", "grad_gamma", "grad_beta"), got_p, want_p)):
        problem = _compare(f"backward {name}", g, w, tol if name == "grad_x" else stat_tol)
        if problem:
            return problem
    return None


def check_kernels(kernels, device: torch.device, dtype: torch.dtype, dim: int, layout: str) -> Optional[str]:
    """``None`` when ``kernels`` agree with the composite kernel for such inputs, else what failed (one line)."""
    if dim not in _SPATIAL:
        return f"{dim}-D input is not covered by the self-check (1-3 spatial dims are)"
    gen = torch.Generator().manual_seed(20200614)
    for mode, after_relu in _MODES:
        what = f"{dtype_name(dtype)} {layout} {dim}-D input, mode {mode}{' after_relu' if after_relu else ''}"
        try:
            # as the operators pass it: strided input is made contiguous first
            x = addressable(_sample(dim, layout, dtype, torch.device(device), gen, positive=after_relu))
            problem = _check_mode(kernels, x, mode, after_relu, gen)
        except Exception as exc:  # a kernel that does not compile or crashes: the caller falls back
            problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        if problem:
            return f"{what}: {problem}"
    return None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_table(kernels, device: torch.device) -> List[dict]:
    """One row per (dtype, dims, layout): ``{"dtype", "dims", "layout", "ok", "problem"}``."""
    rows = []
    for dtype, dim, layout in itertools.product(kernels.dtypes, sorted(_SPATIAL), LAYOUTS):
        problem = check_kernels(kernels, device, dtype, dim, layout)
        rows.append({"dtype": dtype_name(dtype), "dims": dim, "layout": layout, "ok": problem is None,
                     "problem": problem or ""})
    return rows
