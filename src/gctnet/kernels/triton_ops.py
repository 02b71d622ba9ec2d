"""GCT as PyTorch custom ops backed by Triton kernels (CUDA; CPU tensors in Triton's interpreter).

Two ops, registered with :mod:`torch.library` so ``torch.compile`` and ``torch.export`` see them as
single nodes (fake implementations give shapes/dtypes/strides; autograd is registered):

* ``gctnet::gct_fwd(x, alpha, gamma, beta, eps, mode, after_relu) -> (y, t, s, e, norm_inv)``:
  one reduction kernel (per-(n, c) sum of x^2, |x| or x in float32), the tiny per-(n, c) gate math in
  PyTorch (shared with the eager path: :func:`gctnet.functional._stats_from_sums`), one scaling kernel.
  Memory traffic: 3 passes over x.  ``t, s, e, norm_inv`` are the (N, C)/(N, 1) float32 statistics the
  backward needs; only ``x`` and those are saved.
* ``gctnet::gct_bwd(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, need_grad_x)``
  ``-> (grad_x, grad_alpha, grad_gamma, grad_beta)``: one reduction kernel over (grad_y, x), the tiny
  per-(n, c) math (:func:`gctnet.functional._grads_from_dot`), one pointwise kernel for grad_x
  (5 passes).  ``grad_x`` is empty when ``need_grad_x`` is false (e.g. GCT on the raw image).

Layouts: any layout whose spatial dims flatten to one stride (contiguous, channels_last,
channels_last_3d, (N, L, C)-strided 1-D); others are made contiguous first.  Dtypes: float32, float16,
bfloat16 (statistics in float32; output in the input dtype).  Double backward (``create_graph=True``)
differentiates a plain-ops recomputation, like the eager path.

The module-level ``forward``/``forward_into``/``scale``/``scale_into``/``backward`` are the same kernels
as plain calls, with the interface of :mod:`gctnet.kernels.cpu_ops`: the eager autograd functions (the
lean GCT+conv path of :mod:`gctnet.surgery`) call them through :func:`gctnet.kernels.native_ops`.

:func:`op_for` is what :func:`gctnet.kernels.select` calls: it returns :func:`gct_triton` for tensors
these kernels take (CUDA tensors; CPU tensors too when ``TRITON_INTERPRET=1`` was set before Triton
was imported), ``None`` otherwise.
"""

import os
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

import triton

from .. import functional as F
from ._triton_kernels import reduce_kernel, scale_kernel

__all__ = [
    "SUPPORTED_DTYPES", "INTERPRET", "op_for", "gct_triton", "spatial_reduce", "scale_pass",
    "supports", "forward", "forward_into", "scale", "scale_into", "backward",
]

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
# the kernel interface of the eager autograd functions (the same calls as gctnet.kernels.cpu_ops)
# --------------------------------------------------------------------------------------------------
def supports(x: Tensor) -> bool:
    """Whether :func:`forward` etc. take ``x`` as it is: a tensor :func:`op_for` accepts whose spatial
    dims flatten to one stride (no copy, so the tensor the caller saves is the one the kernels read)."""
    return op_for(x) is not None and _flat_strides(x) is not None


def forward(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, eps: float, mode: str, after_relu: bool):
    """``(y, t, s, e, norm_inv)``: one reduction kernel, the per-(n, c) gate math, one scaling kernel."""
    return forward_into(x, alpha, gamma, beta, eps, mode, after_relu, None)


def forward_into(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, eps: float, mode: str, after_relu: bool,
                 out: Optional[Tensor]):
    """:func:`forward` writing ``y`` into ``out`` (x's shape and layout) when given."""
    with F._no_autocast(x.device.type):
        sums = spatial_reduce(x, _reduce_kind(mode, after_relu))
        t, s, e, norm_inv = F._stats_from_sums(sums, alpha, gamma, beta, eps, mode)
        y = scale_into(x, t, torch.empty_like(x) if out is None else out)
    return y, t, s, e, norm_inv


def scale(x: Tensor, t: Tensor) -> Tensor:
    """``x * (1 + t)`` with ``t`` (N, C): the output rebuilt from the saved statistics (one pass)."""
    return scale_into(x, t, torch.empty_like(x))


def scale_into(x: Tensor, t: Tensor, out: Tensor) -> Tensor:
    """:func:`scale` written into ``out``; returns ``out``."""
    return _into(out, lambda target: scale_pass(x, 1.0 + t, target))


def backward(
    grad_y: Tensor,
    x: Tensor,
    alpha: Tensor,
    gamma: Tensor,
    t: Tensor,
    s: Tensor,
    e: Tensor,
    norm_inv: Tensor,
    mode: str,
    after_relu: bool,
    grad_x: Optional[Tensor],
):
    """``(grad_alpha, grad_gamma, grad_beta)`` in float32; grad_x written into ``grad_x`` (``grad_y``
    itself works: the pointwise kernel reads each element before it writes it); ``None`` skips it."""
    grad_y = _flattenable(grad_y)
    with F._no_autocast(x.device.type):
        p = spatial_reduce(grad_y, "dot", x)
        coef, grad_alpha, grad_gamma, grad_beta = F._grads_from_dot(p, alpha, gamma, t, s, e, norm_inv, mode)
        if grad_x is not None:
            kind = 1 if mode == "l2" else (3 if after_relu else 2)
            _into(grad_x, lambda target: scale_pass(grad_y, 1.0 + t, target, coef=coef, b=x, kind=kind))
    return grad_alpha, grad_gamma, grad_beta


def _into(out: Tensor, write: Callable[[Tensor], Tensor]) -> Tensor:
    """Run ``write(target)`` into ``out``, through a contiguous temporary if the kernels cannot address it."""
    if _flat_strides(out) is not None:
        write(out)
    else:
        out.copy_(write(torch.empty_like(out, memory_format=torch.contiguous_format)))
    return out


# --------------------------------------------------------------------------------------------------
# custom ops
# --------------------------------------------------------------------------------------------------
@torch.library.custom_op(
    "gctnet::gct_fwd",
    mutates_args=(),
    schema="(Tensor x, Tensor alpha, Tensor gamma, Tensor beta, float eps, str mode, bool after_relu)"
    " -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def _gct_fwd(x, alpha, gamma, beta, eps, mode, after_relu):
    return forward(x, alpha, gamma, beta, eps, mode, after_relu)


@_gct_fwd.register_fake
def _gct_fwd_fake(x, alpha, gamma, beta, eps, mode, after_relu):
    n, c = x.shape[0], x.shape[1]
    stat = lambda cols: x.new_empty((n, cols), dtype=torch.float32)  # noqa: E731
    return torch.empty_like(x), stat(c), stat(c), stat(c), stat(1)


@torch.library.custom_op(
    "gctnet::gct_bwd",
    mutates_args=(),
    schema="(Tensor grad_y, Tensor x, Tensor alpha, Tensor gamma, Tensor t, Tensor s, Tensor e, "
    "Tensor norm_inv, str mode, bool after_relu, bool need_grad_x) -> (Tensor, Tensor, Tensor, Tensor)",
)
def _gct_bwd(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, need_grad_x):
    grad_x = torch.empty_like(x) if need_grad_x else x.new_empty((0,))
    grads = backward(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, grad_x if need_grad_x else None)
    return (grad_x, *grads)


@_gct_bwd.register_fake
def _gct_bwd_fake(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, need_grad_x):
    grad_x = torch.empty_like(x) if need_grad_x else x.new_empty((0,))
    c = x.shape[1]
    param = lambda: x.new_empty((c,), dtype=torch.float32)  # noqa: E731
    return grad_x, param(), param(), param()


def _setup_context(ctx, inputs, output) -> None:
    x, alpha, gamma, beta, eps, mode, after_relu = inputs
    _, t, s, e, norm_inv = output
    ctx.save_for_backward(x, alpha, gamma, beta, t, s, e, norm_inv)
    ctx.eps, ctx.mode, ctx.after_relu = eps, mode, after_relu


def _backward(ctx, grad_y, *_unused_stat_grads):
    x, alpha, gamma, beta, t, s, e, norm_inv = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: differentiate a plain-ops recomputation
        return F._double_backward(ctx, grad_y, x, alpha, gamma, beta)
    needs = ctx.needs_input_grad
    grad_x, grad_alpha, grad_gamma, grad_beta = torch.ops.gctnet.gct_bwd(
        grad_y, x, alpha, gamma, t, s, e, norm_inv, ctx.mode, ctx.after_relu, bool(needs[0])
    )
    return (
        grad_x if needs[0] else None,
        grad_alpha.to(alpha.dtype) if needs[1] else None,
        grad_gamma.to(gamma.dtype) if needs[2] else None,
        grad_beta.to(beta.dtype) if needs[3] else None,
        None,
        None,
        None,
    )


torch.library.register_autograd("gctnet::gct_fwd", _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------
def gct_triton(
    x: Tensor,
    alpha: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float = 1e-5,
    mode: str = "l2",
    after_relu: bool = False,
) -> Tensor:
    """GCT through the Triton custom ops (arguments as :func:`gctnet.functional.gct`, validated there)."""
    x = _flattenable(x)
    return torch.ops.gctnet.gct_fwd(x, alpha, gamma, beta, float(eps), mode, bool(after_relu))[0]


def op_for(x: Tensor) -> Optional[Callable[..., Tensor]]:
    """:func:`gct_triton` if these kernels take ``x``, else ``None`` (the caller uses the eager path).

    Taken: float32/float16/bfloat16 tensors with 1-3 spatial dims and at least one element, on CUDA
    (or on CPU when Triton runs in interpreter mode, ``TRITON_INTERPRET=1``).
    """
    if x.dtype not in SUPPORTED_DTYPES or not 3 <= x.dim() <= 5 or x.numel() == 0:
        return None
    if x.device.type == "cuda" or (INTERPRET and x.device.type == "cpu"):
        return gct_triton
    return None
