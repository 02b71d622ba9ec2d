"""The functional form of Gated Channel Transformation (GCT): validation and the entry points.

``gct(x, alpha, gamma, beta, eps, mode, after_relu)`` computes, per sample ``n`` and channel ``c``
(official semantics, see ``REFERENCE.md``)::

    l2:  s = alpha * sqrt(sum_spatial x^2 + eps);   z = gamma * s / sqrt(mean_c s^2 + eps) + beta
    l1:  s = alpha * sum_spatial |x|  (x if after_relu);  z = gamma * s / (mean_c |s| + eps) + beta
    y  = x * (1 + tanh(z))

In eager mode it is the operator ``torch.ops.gctnet.gct`` (:mod:`gctnet.kernels.ops`: the dispatcher
picks the device's kernel; it saves only x and per-(n, c) statistics for the backward).  Under
``torch.compile``, ``torch.export``, ONNX export and TorchScript tracing it is the same math as plain
differentiable ops (:mod:`gctnet.kernels.composite`), which Inductor fuses into the neighbouring ops.
:func:`gct_reference` is the paper's formula in plain ops, kept as the benchmark baseline.

Precision: statistics in float32 (float64 for float64 input), never in half precision; the output
keeps x's dtype and memory format; autocast does not recast GCT.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["gct", "gct_reference", "validate_gct_args", "MODES", "gct_gate"]

from .kernels import composite
from .kernels.ops import _no_autocast, below_autograd

MODES = ("l2", "l1")
Mode = Literal["l2", "l1"]


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------
def validate_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"GCT mode must be one of {MODES}, got {mode!r}")
    return mode


def validate_eps(eps: float) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"GCT eps must be a positive float, got {type(eps).__name__} {eps!r}")
    if not 0 < eps < float("inf"):  # also rejects NaN
        raise ValueError(f"GCT eps must be > 0 and finite (it keeps the normalisation finite), got {eps!r}")
    return float(eps)


def validate_gct_args(
    x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, eps: float, mode: str
) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for anything :func:`gct` cannot take."""
    validate_mode(mode)
    validate_eps(eps)
    if not isinstance(x, Tensor):
        raise TypeError(f"GCT input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(
            "GCT expects input of shape (N, C, *spatial) with at least one spatial dim "
            f"(e.g. (N, C, H, W)), got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"GCT expects a floating-point input (float32, float64, float16 or bfloat16), got {x.dtype}"
        )
    channels = x.shape[1]
    for name, p in (("alpha", alpha), ("gamma", gamma), ("beta", beta)):
        if not isinstance(p, Tensor):
            raise TypeError(f"GCT {name} must be a torch.Tensor, got {type(p).__name__}")
        if p.dim() != 1 or p.shape[0] != channels:
            raise ValueError(
                f"GCT {name} must have shape ({channels},) to match the input's {channels} channels "
                f"(input shape {tuple(x.shape)}), got shape {tuple(p.shape)}"
            )
        if not p.is_floating_point():
            raise TypeError(f"GCT {name} must be floating point, got {p.dtype}")


# --------------------------------------------------------------------------------------------------
# eager or traceable
# --------------------------------------------------------------------------------------------------
def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


_is_exporting = getattr(torch.compiler, "is_exporting", None)
_onnx_exporting = getattr(torch.onnx, "is_in_onnx_export", None)


def _is_tracing() -> bool:
    """True under torch.export / ONNX export / TorchScript tracing: use plain traceable ops."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    if _is_exporting is not None and _is_exporting():
        return True
    return bool(_onnx_exporting is not None and _onnx_exporting())


def traceable() -> bool:
    """Whether GCT runs as plain differentiable ops here (compiling, exporting or tracing), not the operator."""
    return _is_compiling() or _is_tracing()


def gct_gate(
    x: Tensor,
    alpha: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float = 1e-5,
    mode: str = "l2",
    after_relu: bool = False,
) -> Tensor:
    """The gate ``1 + tanh(z)`` of shape (N, C) in the accumulation dtype (for analysis tools)."""
    validate_gct_args(x, alpha, gamma, beta, eps, mode)
    with torch.no_grad(), _no_autocast(x.device.type):
        S = composite.spatial_sums(x, mode, bool(after_relu))
        t = composite.gate_stats(S, alpha, gamma, beta, eps, mode)[0]
    return 1.0 + t


# --------------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------------
def gct(
    x: Tensor,
    alpha: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float = 1e-5,
    mode: str = "l2",
    after_relu: bool = False,
) -> Tensor:
    """Gated Channel Transformation of ``x`` (N, C, *spatial); see the module docstring for the math.

    Args:
        x: input of shape (N, C, *spatial) with at least one spatial dim; any floating dtype; contiguous,
            channels_last or channels_last_3d.  The output keeps its dtype and memory format.
        alpha, gamma, beta: per-channel parameters of shape (C,).
        eps: > 0; where it sits follows the official code (inside the sqrt for l2 embedding and
            normaliser; outside for the l1 normaliser).
        mode: ``"l2"`` (paper default) or ``"l1"``.
        after_relu: l1 only: skip the abs because the input is known to be non-negative.
    """
    validate_gct_args(x, alpha, gamma, beta, eps, mode)
    if traceable():
        with _no_autocast(x.device.type):
            return composite.forward(x, alpha, gamma, beta, float(eps), mode, bool(after_relu))[0]
    args = (x, alpha, gamma, beta, float(eps), mode, bool(after_relu))
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad or gamma.requires_grad or beta.requires_grad):
        return torch.ops.gctnet.gct(*args)[0]
    with below_autograd():  # no graph to record
        return torch.ops.gctnet.gct(*args)[0]


def gct_reference(
    x: Tensor,
    alpha: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float = 1e-5,
    mode: str = "l2",
    after_relu: bool = False,
) -> Tensor:
    """The official code's formula in plain eager ops (parameters broadcast as (1, C, 1, ...)).

    Kept as the baseline for benchmarks and as documentation; it has the reference's costs (five
    full-size memory passes) and its fp16 overflow, but reduces over *all* spatial dims.
    """
    validate_mode(mode)
    dims = tuple(range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    a, g, b = alpha.view(shape), gamma.view(shape), beta.view(shape)
    if mode == "l2":
        embedding = (x.pow(2).sum(dims, keepdim=True) + eps).pow(0.5) * a
        norm = g / (embedding.pow(2).mean(dim=1, keepdim=True) + eps).pow(0.5)
    else:
        _x = x if after_relu else torch.abs(x)
        embedding = _x.sum(dims, keepdim=True) * a
        norm = g / (torch.abs(embedding).mean(dim=1, keepdim=True) + eps)
    gate = 1.0 + torch.tanh(embedding * norm + b)
    return x * gate
