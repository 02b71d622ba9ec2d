"""The math of Gated Channel Transformation (GCT), as plain functions.

``gct(x, alpha, gamma, beta, eps, mode, after_relu)`` computes, per sample ``n`` and channel ``c``
(official semantics, see ``REFERENCE.md``)::

    l2:  s = alpha * sqrt(sum_spatial x^2 + eps);   z = gamma * s / sqrt(mean_c s^2 + eps) + beta
    l1:  s = alpha * sum_spatial |x|  (x if after_relu);  z = gamma * s / (mean_c |s| + eps) + beta
    y  = x * (1 + tanh(z))

Implementation notes
--------------------
* Statistics are accumulated in float32 (float64 for float64 input).  Half-precision inputs are never
  squared in half precision (the reference code overflows for RMS(x) > ~4.6 at 56x56) and are never
  copied to a full-size float32 tensor: on CPU the float32 reduction runs over bounded chunks.
* The output has the input's dtype and memory format; the gate is cast to the input dtype before the
  single broadcast multiply, so under AMP no full-size float32 tensor is written.
* Training uses :class:`_GCTFunction`, a hand-written autograd function: the forward makes one reduction
  read of ``x`` plus one read+write for the scaling; it saves only ``x`` and per-(sample, channel)
  statistics; the backward makes one reduction over ``(grad, x)`` and one pointwise pass.
* Eager CPU work (forward, backward, and the lean GCT+conv recomputation) runs the fused C++ kernels of
  :mod:`gctnet.kernels.cpu_ops` when the backend allows (``auto``/``cpp``): per sample, the reduction
  and the pointwise pass share one read of the sample's slab from memory.  Same math, same saved
  tensors; ``GCTNET_BACKEND=eager`` keeps the PyTorch ops below.
* Under ``torch.fx``/``torch.export``/ONNX/TorchScript tracing the same math runs as plain traceable
  ops (:func:`gct_reference` is *not* used there; that is the paper's formula kept for tests/benchmarks).
"""

from __future__ import annotations

import contextlib
from typing import Literal, Optional

import torch
from torch import Tensor

__all__ = ["gct", "gct_reference", "validate_gct_args", "MODES", "gct_gate"]

MODES = ("l2", "l1")
Mode = Literal["l2", "l1"]

# Largest number of elements upcast to the accumulation dtype at once for half-precision inputs on
# CPU (bounds the float32 temporaries to 4 MiB instead of a full-size copy of the activation).
_CHUNK_ELEMS = 1 << 20


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
    if not eps > 0:  # also rejects NaN
        raise ValueError(f"GCT eps must be > 0 (it keeps the normalisation finite), got {eps!r}")
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
# helpers
# --------------------------------------------------------------------------------------------------
def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _spatial_dims(x: Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.dim()))


def _stat_shape(x: Tensor) -> tuple[int, ...]:
    """Shape of a per-(n, c) statistic that broadcasts against x."""
    return (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)


def _no_autocast(device_type: str):
    """GCT manages its own precision: autocast must not upcast x to a full-size float32 copy."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # device types without autocast (e.g. "meta")
        enabled = False
    if enabled:
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _chunks(x: Tensor) -> list[tuple[slice, slice]]:
    """(batch, channel) slices that cover x with at most ``_CHUNK_ELEMS`` elements each."""
    n, c = x.shape[0], x.shape[1]
    per_channel = max(1, x[0, 0].numel()) if n and c else 1
    per_sample = per_channel * max(c, 1)
    if per_sample <= _CHUNK_ELEMS:
        step = max(1, _CHUNK_ELEMS // per_sample)
        return [(slice(i, min(i + step, n)), slice(0, c)) for i in range(0, n, step)]
    cstep = max(1, _CHUNK_ELEMS // per_channel)
    return [(slice(i, i + 1), slice(j, min(j + cstep, c))) for i in range(n) for j in range(0, c, cstep)]


def _needs_chunking(x: Tensor, acc: torch.dtype) -> bool:
    # Reductions over half inputs with a float32 result upcast the whole input first on CPU.  CUDA
    # reads half and accumulates in float32 without a copy; compiled code fuses the cast.
    return x.dtype != acc and x.device.type != "cuda" and not _is_compiling() and x.numel() > 0


def _chunked_cpu(x: Tensor) -> bool:
    """Eager CPU work on a non-empty tensor: reduce bounded chunks whose temporaries stay in cache."""
    return x.device.type == "cpu" and x.numel() > 0 and not _is_compiling()


def _reduce_whole(t: Tensor, kind: str, acc: torch.dtype, dims: tuple[int, ...]) -> Tensor:
    if kind == "sumsq":
        return torch.linalg.vector_norm(t, 2, dim=dims, dtype=acc).square()
    if kind == "sumabs":
        return torch.linalg.vector_norm(t, 1, dim=dims, dtype=acc)
    return torch.sum(t, dim=dims, dtype=acc)


def _reduce_chunk(t: Tensor, kind: str, acc: torch.dtype, dims: tuple[int, ...]) -> Tensor:
    t = t.to(acc)  # a bounded chunk: the upcast copy and the temporaries stay small
    if kind == "sumsq":
        return (t * t).sum(dim=dims)
    if kind == "sumabs":
        return t.abs().sum(dim=dims)
    return t.sum(dim=dims)


def _reduce_spatial(x: Tensor, kind: str, acc: torch.dtype) -> Tensor:
    """Per-(n, c) statistic over all spatial dims, accumulated and returned in ``acc``, shape (N, C).

    kind: "sumsq" (sum x^2), "sumabs" (sum |x|) or "sum" (sum x).

    On CPU (eager) ``vector_norm`` is fast only for the 2-norm of a contiguous input; it is 7-15x
    slower for channels_last input and for the 1-norm, so those (and half inputs, which must not be
    upcast whole) reduce bounded (batch, channel) chunks of ``(x*x)``/``|x|`` instead: the chunk
    temporaries stay in cache, so the only full-size traffic is one read of ``x``.
    """
    dims = _spatial_dims(x)
    whole_is_fast = x.dtype == acc and (kind == "sum" or (kind == "sumsq" and x.is_contiguous()))
    if not (_needs_chunking(x, acc) or (_chunked_cpu(x) and not whole_is_fast)):
        return _reduce_whole(x, kind, acc, dims)
    out = x.new_empty((x.shape[0], x.shape[1]), dtype=acc)
    for bs, cs in _chunks(x):
        out[bs, cs] = _reduce_chunk(x[bs, cs], kind, acc, dims)
    return out


def _dot_spatial(a: Tensor, b: Tensor, acc: torch.dtype) -> Tensor:
    """Per-(n, c) ``sum_spatial a * b`` in ``acc`` without a full-size temporary, shape (N, C).

    CPU (eager): products of bounded (batch, channel) chunks, reduced chunk by chunk (in cache; 2x
    faster than a batched ``bmm`` dot product for contiguous input and ~8x faster than ``sum(a * b)``
    for channels_last at 16x256x56x56).  CUDA: a batched dot product for contiguous input.  Compiled:
    one expression the compiler fuses.
    """
    n, c = a.shape[0], a.shape[1]
    if a.numel() == 0:
        return a.new_zeros((n, c), dtype=acc)
    dims = _spatial_dims(a)
    if _is_compiling():
        return torch.sum(a.to(acc) * b.to(acc), dim=dims)
    if not _chunked_cpu(a) and a.dtype == acc and b.dtype == acc:
        if a.is_contiguous() and b.is_contiguous():
            hw = a[0, 0].numel()
            # a batched dot product: (NC, 1, HW) @ (NC, HW, 1)
            return torch.bmm(a.reshape(n * c, 1, hw), b.reshape(n * c, hw, 1)).view(n, c)
        return torch.sum(a * b, dim=dims)
    out = a.new_empty((n, c), dtype=acc)
    for bs, cs in _chunks(a):
        out[bs, cs] = torch.sum(a[bs, cs].to(acc) * b[bs, cs].to(acc), dim=dims)
    return out


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - older torch
        return False


_is_exporting = getattr(torch.compiler, "is_exporting", None)
_onnx_exporting = getattr(torch.onnx, "is_in_onnx_export", None)


def _is_tracing() -> bool:
    """True under torch.export / ONNX export / TorchScript tracing: use plain traceable ops."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    if _is_exporting is not None and _is_exporting():
        return True
    return bool(_onnx_exporting is not None and _onnx_exporting())


# --------------------------------------------------------------------------------------------------
# the forward statistics (shared by every path)
# --------------------------------------------------------------------------------------------------
def _stats(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, eps: float, mode: str, after_relu: bool):
    """Per-(n, c) quantities in the accumulation dtype.

    Returns (t, s, e, norm_inv, denom) where t = tanh(z), s the embedding, e the per-channel part of s
    that alpha multiplies (sqrt(S + eps) for l2, S for l1) and norm_inv the per-sample factor
    (1 / sqrt(mean s^2 + eps) for l2, 1 / (mean |s| + eps) for l1).
    """
    acc = _acc_dtype(x.dtype)
    kind = "sumsq" if mode == "l2" else ("sum" if after_relu else "sumabs")
    return _stats_from_sums(_reduce_spatial(x, kind, acc), alpha, gamma, beta, eps, mode)


def _stats_from_sums(S: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, eps: float, mode: str):
    """(t, s, e, norm_inv) of :func:`_stats` from the per-(n, c) spatial sums ``S`` (N, C).

    ``S`` is sum x^2 (l2), sum |x| (l1) or sum x (l1 after ReLU) in the accumulation dtype; shared with
    the accelerated kernels, which compute ``S`` themselves.
    """
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


def _grads_from_dot(
    p: Tensor,
    alpha: Tensor,
    gamma: Tensor,
    t: Tensor,
    s: Tensor,
    e: Tensor,
    norm_inv: Tensor,
    mode: str,
    needs: tuple[bool, bool, bool] = (True, True, True),
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The per-(n, c) part of the backward from ``p = sum_spatial(grad_y * x)`` (N, C).

    Returns ``(coef, grad_alpha, grad_gamma, grad_beta)`` in the accumulation dtype (parameter grads
    only where ``needs`` says so).  ``grad_x = grad_y * (1 + t) + coef * x`` for l2,
    ``+ coef * sign(x)`` for l1 and ``+ coef`` for l1 after ReLU.  Shared with the accelerated kernels.
    """
    acc = t.dtype
    a, g = alpha.to(acc), gamma.to(acc)
    dz = p * (1.0 - t * t)
    c = t.shape[1]
    gsum = (dz * g * s).sum(dim=1, keepdim=True)
    if mode == "l2":
        ds = dz * g * norm_inv - s * norm_inv.pow(3) * gsum / c
        coef = ds * a / e  # dL/dx extra term = x * coef   (e = sqrt(S + eps) > 0)
    else:
        ds = dz * g * norm_inv - torch.sign(s) * norm_inv.square() * gsum / c
        coef = ds * a  # dL/dx extra term = sign(x) * coef  (or coef after ReLU)
    grad_alpha = (ds * e).sum(dim=0) if needs[0] else None
    grad_gamma = (dz * s * norm_inv).sum(dim=0) if needs[1] else None
    grad_beta = dz.sum(dim=0) if needs[2] else None
    return coef, grad_alpha, grad_gamma, grad_beta


def _scale(x: Tensor, gate: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """y = x * gate with gate (N, C) broadcast, in x's dtype and memory format (into ``out`` if given)."""
    g = gate.to(x.dtype).view(_stat_shape(x))
    return x * g if out is None else torch.mul(x, g, out=out)


def _native(x: Tensor):
    """The kernels for eager work on ``x`` (:mod:`gctnet.kernels.triton_ops` on CUDA,
    :mod:`gctnet.kernels.cpu_ops` on CPU; see :func:`gctnet.kernels.native_ops`), or ``None``."""
    if _is_compiling():
        return None
    from . import kernels  # local import: the backend registry imports this module

    return kernels.native_ops(x)


def _forward(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, eps: float, mode: str, after_relu: bool,
             native=None, out: Optional[Tensor] = None):
    """``(y, t, s, e, norm_inv)``: the output and the statistics the backward needs.

    With ``native`` (kernels from :func:`_native`) their fused passes (on CPU one pass per sample while
    its slab is in the cache); otherwise the PyTorch ops: one reduction read of x, one read+write
    for the scaling.  ``out`` (x's shape, strides and dtype) receives ``y`` when given.
    """
    if native is not None:
        if out is not None:
            return native.forward_into(x, alpha, gamma, beta, eps, mode, after_relu, out)
        return native.forward(x, alpha, gamma, beta, eps, mode, after_relu)
    t, s, e, norm_inv = _stats(x, alpha, gamma, beta, eps, mode, after_relu)
    return _scale(x, 1.0 + t, out), t, s, e, norm_inv


def _saved_native(ctx):
    """The kernels the forward of ``ctx`` ran, or ``None`` (the backward follows the forward's choice)."""
    return getattr(ctx, "native", None)


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
        t = _stats(x, alpha, gamma, beta, eps, mode, after_relu)[0]
    return 1.0 + t


# --------------------------------------------------------------------------------------------------
# the lean autograd function
# --------------------------------------------------------------------------------------------------
class _GCTFunction(torch.autograd.Function):
    """Forward: one reduction read of x, one read+write for the scaling.

    Saves x and per-(n, c) statistics only.  Backward: one reduction over (grad, x) (a batched dot
    product, no full-size temporary in the common case) and one pointwise pass for grad_x.
    Double backward (``create_graph=True``) differentiates a recomputation with plain ops instead, so
    higher-order gradients are correct (just not lean).
    """

    @staticmethod
    def forward(ctx, x, alpha, gamma, beta, eps, mode, after_relu):  # type: ignore[override]
        return _GCTFunction.forward_into(ctx, x, alpha, gamma, beta, eps, mode, after_relu, None)

    @staticmethod
    def forward_into(ctx, x, alpha, gamma, beta, eps, mode, after_relu, out: Optional[Tensor]) -> Tensor:
        """:meth:`forward` with the output written into ``out`` (x's shape, strides and dtype) when
        given: the lean GCT+conv path of :mod:`gctnet.surgery` passes a reused buffer."""
        with _no_autocast(x.device.type):
            native = _native(x)
            y, t, s, e, norm_inv = _forward(x, alpha, gamma, beta, eps, mode, after_relu, native, out)
        ctx.native = native
        ctx.eps, ctx.mode, ctx.after_relu = eps, mode, after_relu
        ctx.param_dtypes = (alpha.dtype, gamma.dtype, beta.dtype)
        ctx.save_for_backward(x, alpha, gamma, beta, t, s, e, norm_inv)
        return y

    @staticmethod
    def recompute_output(ctx, out: Optional[Tensor] = None) -> Tensor:
        """``gct(x)`` again from the saved tensors: one pointwise pass, no reduction (used by the
        lean-memory GCT+conv path of :mod:`gctnet.surgery`); into ``out`` when given."""
        x, t = ctx.saved_tensors[0], ctx.saved_tensors[4]
        native = _saved_native(ctx)
        if native is not None:
            return native.scale(x, t) if out is None else native.scale_into(x, t, out)
        with _no_autocast(x.device.type):
            return _scale(x, 1.0 + t, out)

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, alpha, gamma, beta = ctx.saved_tensors[:4]
        if torch.is_grad_enabled():  # create_graph=True: differentiable recomputation
            return _double_backward(ctx, dy, x, alpha, gamma, beta)
        return _GCTFunction.backward_into(ctx, dy, reuse_grad=False)

    @staticmethod
    def backward_into(ctx, dy: Tensor, reuse_grad: bool = True):
        """The lean backward; with ``reuse_grad`` the input gradient is written into ``dy``'s storage.

        For callers that own ``dy`` (the fused GCT+conv path of :mod:`gctnet.surgery` gets it fresh from
        the conv backward): no full-size allocation, which on CPU also saves the page faults of a fresh
        buffer.  Autograd's own ``backward`` never reuses ``dy`` (it may be shared).
        """
        x, alpha, gamma, beta, t, s, e, norm_inv = ctx.saved_tensors
        acc = t.dtype
        native = _saved_native(ctx)
        if native is not None:  # the kernels: dot product, gate math and grad_x (C++: fused per sample)
            need_x = ctx.needs_input_grad[0]
            grad_x = None
            if need_x:
                grad_x = dy if reuse_grad and _reusable(dy, x) else torch.empty_like(x)
            grads = native.backward(dy, x, alpha, gamma, t, s, e, norm_inv, ctx.mode, ctx.after_relu, grad_x)
            grad_alpha, grad_gamma, grad_beta = (
                g.to(dt) if need else None
                for g, dt, need in zip(grads, ctx.param_dtypes, ctx.needs_input_grad[1:4])
            )
            return grad_x, grad_alpha, grad_gamma, grad_beta, None, None, None
        with _no_autocast(x.device.type):
            # dL/dgate, per (n, c): the only full-size reduction of the backward
            p = _dot_spatial(dy, x, acc)
            coef, grad_alpha, grad_gamma, grad_beta = _grads_from_dot(
                p, alpha, gamma, t, s, e, norm_inv, ctx.mode, tuple(ctx.needs_input_grad[1:4])
            )
            grad_alpha, grad_gamma, grad_beta = (
                g if g is None else g.to(dt) for g, dt in zip((grad_alpha, grad_gamma, grad_beta), ctx.param_dtypes)
            )
            grad_x = None
            if ctx.needs_input_grad[0]:
                shape = _stat_shape(x)
                gate = (1.0 + t).to(x.dtype).view(shape)
                coef_x = coef.to(x.dtype).view(shape)
                grad_x = dy.mul_(gate) if reuse_grad and _reusable(dy, x) else dy * gate
                if ctx.mode == "l2":
                    grad_x.addcmul_(x, coef_x)
                elif ctx.after_relu:
                    grad_x.add_(coef_x)
                else:
                    _addcmul_sign_(grad_x, x, coef_x)
        return grad_x, grad_alpha, grad_gamma, grad_beta, None, None, None


def _reusable(dy: Tensor, x: Tensor) -> bool:
    """``dy`` can take ``grad_x`` in place: same shape and dtype as ``x``, no overlapping elements."""
    if dy.shape != x.shape or dy.dtype != x.dtype or dy.requires_grad:
        return False
    return torch._debug_has_internal_overlap(dy) == 0  # 0: no overlap (1: overlap, 2: unknown)


def _addcmul_sign_(out: Tensor, x: Tensor, coef: Tensor) -> Tensor:
    """``out += sign(x) * coef`` (coef per (n, c)); chunked on CPU so the sign temporary stays in cache."""
    if not _chunked_cpu(x):
        return out.addcmul_(torch.sign(x), coef)
    for bs, cs in _chunks(x):
        out[bs, cs].addcmul_(torch.sign(x[bs, cs]), coef[bs, cs])
    return out


def _double_backward(ctx, dy, x, alpha, gamma, beta):
    inputs = (x, alpha, gamma, beta)
    wanted = [i for i in range(4) if ctx.needs_input_grad[i]]
    with torch.enable_grad():
        y = _gct_traceable(x, alpha, gamma, beta, ctx.eps, ctx.mode, ctx.after_relu)
        grads = torch.autograd.grad(y, [inputs[i] for i in wanted], dy, create_graph=True, allow_unused=True)
    out = [None] * 7
    for i, g in zip(wanted, grads):
        out[i] = g
    return tuple(out)


def _gct_traceable(x, alpha, gamma, beta, eps, mode, after_relu) -> Tensor:
    """Same numbers as the lean path, written with plain differentiable ops (export/ONNX/tracing)."""
    acc = _acc_dtype(x.dtype)
    dims = _spatial_dims(x)
    a, g, b = alpha.to(acc), gamma.to(acc), beta.to(acc)
    if mode == "l2":
        s = a * torch.sqrt(torch.linalg.vector_norm(x.to(acc), 2, dim=dims).square() + eps)
        norm_inv = torch.rsqrt(s.square().mean(dim=1, keepdim=True) + eps)
    else:
        xa = x.to(acc) if after_relu else x.to(acc).abs()
        s = a * xa.sum(dim=dims)
        norm_inv = 1.0 / (s.abs().mean(dim=1, keepdim=True) + eps)
    gate = 1.0 + torch.tanh(g * s * norm_inv + b)
    return _scale(x, gate)


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
    after_relu = bool(after_relu)
    if _is_tracing():
        return _gct_traceable(x, alpha, gamma, beta, eps, mode, after_relu)
    from . import kernels  # local import: the backend registry imports this module

    op = kernels.select(x)
    if op is not None:
        return op(x, alpha, gamma, beta, eps, mode, after_relu)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or alpha.requires_grad or gamma.requires_grad or beta.requires_grad
    )
    if needs_grad:
        return _GCTFunction.apply(x, alpha, gamma, beta, eps, mode, after_relu)
    with _no_autocast(x.device.type):
        return _forward(x, alpha, gamma, beta, eps, mode, after_relu, _native(x))[0]


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
