"""GCT in plain PyTorch ops: the per-(n, c) math, written once, and the composite kernel built on it.

The math (official semantics, see ``REFERENCE.md``), per sample ``n`` and channel ``c``::

    S  = sum_spatial x^2 (l2) | sum_spatial |x| (l1) | sum_spatial x (l1 after ReLU)
    l2:  e = sqrt(S + eps);  s = alpha * e;  norm_inv = 1 / sqrt(mean_c s^2 + eps)
    l1:  e = S;              s = alpha * e;  norm_inv = 1 / (mean_c |s| + eps)
    t  = tanh(gamma * s * norm_inv + beta);   y = x * (1 + t)

``t, s, e`` (N, C) and ``norm_inv`` (N, 1) are *the statistics*: every kernel (this one, the C++ CPU
kernels, the Triton kernels) returns them from the forward in the accumulation dtype (float64 for
float64 input, else float32) and takes them in the backward, so the backward of one kernel can follow
the forward of another.

:func:`gate_stats`, :func:`param_grads` and :func:`scale` are used three ways: by the composite kernel
below (registered for every device without an accelerated kernel), by the Triton kernels (which
compute ``S`` and the full-size passes themselves) and, with autograd, by the traceable formula of
:func:`gctnet.functional.gct` (tracing, export, ONNX, ``torch.compile``).  The C++ kernels carry the
same formulas in C++ (``csrc/gct_cpu_kernels.h``).

Precision: statistics are accumulated in the accumulation dtype, so half-precision input is never
squared in half precision (the reference code overflows for RMS(x) > ~4.6 at 56x56).  The reductions
may make a float32 temporary of a half input on some devices; the output keeps x's dtype and memory
format (the gate is cast to x's dtype before the one broadcast multiply).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["acc_dtype", "spatial_sums", "gate_stats", "param_grads", "scale", "forward", "backward"]

Stats = Tuple[Tensor, Tensor, Tensor, Tensor]  # t, s, e, norm_inv


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype GCT accumulates statistics in: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _stat_shape(x: Tensor) -> Tuple[int, ...]:
    """Shape of a per-(n, c) statistic that broadcasts against x."""
    return (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)


def spatial_sums(x: Tensor, mode: str, after_relu: bool) -> Tensor:
    """``S`` (N, C) in the accumulation dtype: sum x^2 (l2), sum |x| (l1), sum x (l1 after ReLU)."""
    acc, dims = acc_dtype(x.dtype), tuple(range(2, x.dim()))
    if mode == "l2":
        return torch.linalg.vector_norm(x, 2, dim=dims, dtype=acc).square()
    if after_relu:
        return torch.sum(x, dim=dims, dtype=acc)
    return torch.linalg.vector_norm(x, 1, dim=dims, dtype=acc)


def gate_stats(S: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, eps: float, mode: str) -> Stats:
    """``(t, s, e, norm_inv)`` from the spatial sums ``S`` (N, C) (differentiable plain ops)."""
    acc = S.dtype
    a, g, b = alpha.to(acc), gamma.to(acc), beta.to(acc)
    if mode == "l2":
        e = torch.sqrt(S + eps)
        s = a * e
        norm_inv = torch.rsqrt(s.square().mean(dim=1, keepdim=True) + eps)
    else:
        e = S
        s = a * e
        norm_inv = 1.0 / (s.abs().mean(dim=1, keepdim=True) + eps)
    t = torch.tanh(g * s * norm_inv + b)
    return t, s, e, norm_inv


def param_grads(p: Tensor, alpha: Tensor, gamma: Tensor, t: Tensor, s: Tensor, e: Tensor, norm_inv: Tensor,
                mode: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The per-(n, c) part of the backward from ``p = sum_spatial(grad_y * x)`` (N, C).

    Returns ``(coef, grad_alpha, grad_gamma, grad_beta)`` in the accumulation dtype, where
    ``grad_x = grad_y * (1 + t) + coef * f(x)`` with ``f(x) = x`` (l2), ``sign(x)`` (l1) or ``1``
    (l1 after ReLU).
    """
    a, g = alpha.to(t.dtype), gamma.to(t.dtype)
    dz = p * (1.0 - t * t)
    gsum = (dz * g * s).sum(dim=1, keepdim=True) / t.shape[1]
    if mode == "l2":
        ds = dz * g * norm_inv - s * norm_inv.pow(3) * gsum
        coef = ds * a / e  # e = sqrt(S + eps) > 0
    else:
        ds = dz * g * norm_inv - torch.sign(s) * norm_inv.square() * gsum
        coef = ds * a
    return coef, (ds * e).sum(dim=0), (dz * s * norm_inv).sum(dim=0), dz.sum(dim=0)


def scale(x: Tensor, t: Tensor) -> Tensor:
    """``y = x * (1 + t)`` with ``t`` (N, C) broadcast, in x's dtype and memory format."""
    return x * (1.0 + t).to(x.dtype).view(_stat_shape(x))


# --------------------------------------------------------------------------------------------------
# the composite kernel (the schemas are in gctnet.kernels.ops)
# --------------------------------------------------------------------------------------------------
def forward(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, eps: float, mode: str,
            after_relu: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(y, t, s, e, norm_inv)``: one reduction read of x, one read+write for the scaling."""
    t, s, e, norm_inv = gate_stats(spatial_sums(x, mode, after_relu), alpha, gamma, beta, eps, mode)
    return scale(x, t), t, s, e, norm_inv


def _dot(a: Tensor, b: Tensor, acc: torch.dtype) -> Tensor:
    """Per-(n, c) ``sum_spatial a * b`` in ``acc``, shape (N, C); a batched dot product (no full-size
    temporary) where both are contiguous in ``acc``."""
    n, c = a.shape[0], a.shape[1]
    if a.dtype == b.dtype == acc and a.is_contiguous() and b.is_contiguous() and a.numel() > 0:
        hw = a[0, 0].numel()
        return torch.bmm(a.reshape(n * c, 1, hw), b.reshape(n * c, hw, 1)).view(n, c)
    return torch.sum(a.to(acc) * b.to(acc), dim=tuple(range(2, a.dim())))


def backward(grad_y: Tensor, x: Tensor, alpha: Tensor, gamma: Tensor, t: Tensor, s: Tensor, e: Tensor,
             norm_inv: Tensor, mode: str, after_relu: bool, grad_x: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """``(grad_alpha, grad_gamma, grad_beta)`` in the accumulation dtype; grad_x written into
    ``grad_x`` (``None``: not wanted; it may be ``grad_y`` itself)."""
    coef, ga, gg, gb = param_grads(_dot(grad_y, x, t.dtype), alpha, gamma, t, s, e, norm_inv, mode)
    if grad_x is not None:
        shape = _stat_shape(x)
        torch.mul(grad_y, (1.0 + t).to(x.dtype).view(shape), out=grad_x)
        cx = coef.to(x.dtype).view(shape)
        if mode == "l2":
            grad_x.addcmul_(x, cx)
        elif after_relu:
            grad_x.add_(cx)
        else:
            grad_x.addcmul_(torch.sign(x), cx)
    return ga, gg, gb
