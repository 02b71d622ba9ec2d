"""GCT's Triton kernels: the CUDA kernels of the ``gctnet::gct*`` operators (CPU tensors too in Triton's
interpreter, ``TRITON_INTERPRET=1``).

:data:`KERNELS` offers the calls of :mod:`gctnet.kernels.composite`; :mod:`gctnet.kernels.ops` runs
them for CUDA tensors once they passed their one-time self-check for the input's (device, dtype,
layout), and falls back to the composite kernel (with one warning) when they fail to compile or match.

* forward: one reduction kernel (per-(n, c) sum of x^2, |x| or x in float32), the tiny per-(n, c)
  gate math in PyTorch (:func:`gctnet.kernels.composite.gate_stats`), one scaling kernel (3 passes).
* scale: the scaling kernel alone (the lean GCT+conv path's recomputation).
* backward: one reduction kernel over (grad_y, x), the per-(n, c) math
  (:func:`gctnet.kernels.composite.param_grads`), one pointwise kernel for grad_x (5 passes).

Layouts: any layout whose spatial dims flatten to one stride (contiguous, channels_last,
channels_last_3d, (N, L, C)-strided 1-D); others are made contiguous first.  Dtypes: float32, float16,
bfloat16 (statistics in float32; output in the input dtype).
"""

import os
from typing import Optional, Tuple

import torch
from torch import Tensor

import triton

from . import composite
from ._triton_kernels import reduce_kernel, scale_kernel
from .ops import Kernels

__all__ = ["SUPPORTED_DTYPES", "INTERPRET", "KERNELS", "spatial_reduce", "scale_pass", "forward", "scale", "backward"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Triton reads TRITON_INTERPRET when kernels are first built; we read it once, at import, so compiled
# graphs do not depend on the environment at call time.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")

_REDUCE_KINDS = {"sumsq": 0, "sumabs": 1, "sum": 2, "dot": 3}
_TILE_ELEMS = 2048  # elements per program tile (BLOCK_C * BLOCK_HW)


# --------------------------------------------------------------------------------------------------
# geometry and launchers
# --------------------------------------------------------------------------------------------------
def _flat_strides(t: Tensor) -> Optional[Tuple[int, int, int]]:
    """Strides (n, c, hw) of ``t`` seen as (N, C, HW), or None if its spatial dims do not flatten."""
    dims = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:]) if size != 1]
    for (_, outer), (size, inner) in zip(dims, dims[1:]):
        if outer != inner * size:
            return None
    return t.stride(0), t.stride(1), (dims[-1][1] if dims else 1)


def _hw(t: Tensor) -> int:
    n = 1
    for size in t.shape[2:]:
        n *= size
    return n


def _tiles(c: int, hw: int, strides: Tuple[int, int, int]) -> Tuple[int, int]:
    """(BLOCK_C, BLOCK_HW): wide along the memory-contiguous dimension."""
    channels_last = strides[1] == 1 and strides[2] != 1 and c > 1
    if channels_last:
        block_c = min(triton.next_power_of_2(c), 128)
        block_hw = max(1, min(triton.next_power_of_2(hw), _TILE_ELEMS // block_c))
    else:
        block_hw = min(triton.next_power_of_2(hw), 1024)
        block_c = max(1, min(triton.next_power_of_2(c), _TILE_ELEMS // block_hw))
    return block_c, block_hw


def _num_splits(tiles: int, hw: int, block_hw: int, device: torch.device) -> int:
    """Split HW across programs when there are too few (n, c) tiles to fill the GPU."""
    if device.type != "cuda":
        return 1
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    if tiles >= target:
        return 1
    return max(1, min(triton.cdiv(target, tiles), triton.cdiv(hw, 4 * block_hw)))


def spatial_reduce(a: Tensor, kind: str, b: Optional[Tensor] = None, splits: Optional[int] = None) -> Tensor:
    """Per-(n, c) float32 reduction over the spatial dims: ``kind`` sumsq | sumabs | sum | dot (a*b).

    ``a`` (and ``b``) must have flattenable spatial dims (see :func:`_flat_strides`).  ``splits``
    overrides how many programs share one (n, c) row (default: enough to fill the GPU).
    """
    n, c, hw = a.shape[0], a.shape[1], _hw(a)
    sa = _flat_strides(a)
    if sa is None:
        raise ValueError(f"spatial dims of a tensor with shape {tuple(a.shape)}, stride {a.stride()} do not flatten")
    if kind == "dot":
        if b is None or b.shape != a.shape:
            raise ValueError("kind='dot' needs a second tensor b of the same shape")
        sb = _flat_strides(b)
        if sb is None:
            raise ValueError(f"spatial dims of b (stride {b.stride()}) do not flatten")
    else:
        b, sb = a, sa
    block_c, block_hw = _tiles(c, hw, sa)
    tiles = n * triton.cdiv(c, block_c)
    if splits is None:
        splits = _num_splits(tiles, hw, block_hw, a.device)
    hw_per_split = triton.cdiv(triton.cdiv(hw, splits), block_hw) * block_hw
    splits = max(1, triton.cdiv(hw, hw_per_split))
    out = torch.empty((splits, n, c), device=a.device, dtype=torch.float32)
    reduce_kernel[(tiles * splits,)](
        a, b, out, n * c, c, hw, hw_per_split, splits, *sa, *sb,
        KIND=_REDUCE_KINDS[kind], BLOCK_C=block_c, BLOCK_HW=block_hw,
    )
    return out[0] if splits == 1 else out.sum(dim=0)


def scale_pass(
    a: Tensor,
    gate: Tensor,
    out: Tensor,
    coef: Optional[Tensor] = None,
    b: Optional[Tensor] = None,
    kind: int = 0,
) -> Tensor:
    """``out = a * gate[n, c] (+ coef[n, c] * f(b))`` in one pass; see :func:`scale_kernel`."""
    n, c, hw = a.shape[0], a.shape[1], _hw(a)
    sa, so = _flat_strides(a), _flat_strides(out)
    sb = _flat_strides(b) if b is not None else sa
    if sa is None or so is None or sb is None:
        raise ValueError("scale() needs tensors whose spatial dims flatten to one stride")
    block_c, block_hw = _tiles(c, hw, so)
    grid = (n * triton.cdiv(c, block_c) * triton.cdiv(hw, block_hw),)
    gate = gate.contiguous()
    coef = gate if coef is None else coef.contiguous()
    scale_kernel[grid](
        a, a if b is None else b, out, gate, coef, c, hw, *sa, *sb, *so,
        KIND=kind, BLOCK_C=block_c, BLOCK_HW=block_hw,
    )
    return out


def _flattenable(t: Tensor) -> Tensor:
    """``t`` itself if the kernels can address it, else a contiguous copy."""
    return t if _flat_strides(t) is not None else t.contiguous()


def _reduce_kind(mode: str, after_relu: bool) -> str:
    return "sumsq" if mode == "l2" else ("sum" if after_relu else "sumabs")


# --------------------------------------------------------------------------------------------------
# the kernels (the calls of gctnet.kernels.composite)
# --------------------------------------------------------------------------------------------------
def forward(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, eps: float, mode: str, after_relu: bool):
    """``(y, t, s, e, norm_inv)``: one reduction kernel, the per-(n, c) gate math, one scaling kernel."""
    x = _flattenable(x)
    sums = spatial_reduce(x, _reduce_kind(mode, after_relu))
    t, s, e, norm_inv = composite.gate_stats(sums, alpha, gamma, beta, eps, mode)
    return scale(x, t), t, s, e, norm_inv


def scale(x: Tensor, t: Tensor) -> Tensor:
    """``x * (1 + t)`` with ``t`` (N, C): the output rebuilt from the saved statistics (one pass)."""
    x = _flattenable(x)
    return scale_pass(x, 1.0 + t, torch.empty_like(x))


def backward(grad_y: Tensor, x: Tensor, alpha: Tensor, gamma: Tensor, t: Tensor, s: Tensor, e: Tensor,
             norm_inv: Tensor, mode: str, after_relu: bool, grad_x: Optional[Tensor]):
    """``(grad_alpha, grad_gamma, grad_beta)`` in float32; grad_x written into ``grad_x`` (``grad_y``
    itself works: the pointwise kernel reads each element before it writes it); ``None`` skips it."""
    grad_y, x = _flattenable(grad_y), _flattenable(x)
    p = spatial_reduce(grad_y, "dot", x)
    coef, grad_alpha, grad_gamma, grad_beta = composite.param_grads(p, alpha, gamma, t, s, e, norm_inv, mode)
    if grad_x is not None:
        kind = 1 if mode == "l2" else (3 if after_relu else 2)
        if _flat_strides(grad_x) is not None:
            scale_pass(grad_y, 1.0 + t, grad_x, coef=coef, b=x, kind=kind)
        else:
            grad_x.copy_(scale_pass(grad_y, 1.0 + t, torch.empty_like(x), coef=coef, b=x, kind=kind))
    return grad_alpha, grad_gamma, grad_beta


KERNELS = Kernels("Triton", forward, scale, backward, SUPPORTED_DTYPES)
