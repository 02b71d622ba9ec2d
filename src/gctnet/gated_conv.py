"""GCT-gated convolutions: ``conv(gct(x))`` as one module, with a lean-memory autograd function.

:class:`GCTConv1d`/:class:`GCTConv2d`/:class:`GCTConv3d` are subclasses of ``nn.Conv1d/2d/3d`` (so
``isinstance(m, nn.Conv2d)`` still holds) that own a ``gct`` child (:class:`gctnet.GCT`) and compute
``conv(gct(x))``; :func:`gctnet.apply_gct` re-classes a model's convs to them in place, keeping every
``state_dict`` key.

With ``gct_checkpoint`` (the default of ``apply_gct``), a grad-recording eager forward runs
:class:`GCTConvFunction`: it saves only the GCT's input ``x`` and the per-(sample, channel) statistics
(besides the conv weight), not the gated activation ``gct(x)`` the conv reads, and rebuilds that in the
backward with one ``gct_scale`` pass.  So GCT adds almost no saved-activation memory.  It is built on
the GCT operators (``torch.ops.gctnet.gct``, ``gct_scale``, ``gct_backward``), so it runs the same
kernels as the GCT module.  Elsewhere (no grad, compiling, exporting, tracing, a hooked ``gct``, a
string or non-zero padding mode, unbatched input) the module runs the plain composition
``conv(gct(x))``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .functional import traceable, validate_gct_args
from .kernels.ops import _no_autocast, below_autograd
from .layers import GCT

__all__ = ["GCTConv1d", "GCTConv2d", "GCTConv3d", "GCTConvFunction", "GCT_CLASS", "PLAIN_CLASS"]


def _is_fx_tracing() -> bool:
    fx_trace = torch.fx._symbolic_trace
    check = getattr(fx_trace, "is_fx_symbolic_tracing", None) or getattr(fx_trace, "is_fx_tracing", None)
    return bool(check is not None and check())


_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run hooks (its own or global ones), as ``nn.Module.__call__`` checks."""
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks:
        return True
    glob = torch.nn.modules.module
    return any(getattr(glob, name, None) for name in _GLOBAL_HOOKS)


def _lean_applicable(conv: nn.Module, gct: nn.Module, x: Tensor) -> bool:
    """Whether the fused path may run: a grad-recording eager forward of a batched tensor, integer zero
    padding, and no hooks on the GCT module (analysis tools and users hook it: they must see each call)."""
    if not isinstance(x, Tensor) or traceable() or _is_fx_tracing() or _has_hooks(gct):
        return False
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    return x.dim() == conv.weight.dim()


class _GCTConvMixin:
    """``forward(x) = conv(gct(x))``; with ``gct_checkpoint`` the lean fused autograd path."""

    gct: GCT
    gct_checkpoint: bool

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - torch's argument name
        gct = self._modules["gct"]  # (a plain dict lookup: this runs for every conv call)
        if self.gct_checkpoint and torch.is_grad_enabled() and _lean_applicable(self, gct, input):
            return GCTConvFunction.apply(input, gct.alpha, gct.gamma, gct.beta, self.weight, self.bias, self.stride,
                                         self.padding, self.dilation, self.groups, gct.eps, gct.mode, gct.after_relu)
        return super().forward(gct(input))  # type: ignore[misc]


class GCTConv1d(_GCTConvMixin, nn.Conv1d):
    """An ``nn.Conv1d`` whose input is gated by its ``gct`` child (created by :func:`gctnet.apply_gct`)."""


class GCTConv2d(_GCTConvMixin, nn.Conv2d):
    """An ``nn.Conv2d`` whose input is gated by its ``gct`` child (created by :func:`gctnet.apply_gct`)."""


class GCTConv3d(_GCTConvMixin, nn.Conv3d):
    """An ``nn.Conv3d`` whose input is gated by its ``gct`` child (created by :func:`gctnet.apply_gct`)."""


GCT_CLASS = {nn.Conv1d: GCTConv1d, nn.Conv2d: GCTConv2d, nn.Conv3d: GCTConv3d}
PLAIN_CLASS = {v: k for k, v in GCT_CLASS.items()}


class GCTConvFunction(torch.autograd.Function):
    """``conv(gct(x))`` saving x, the per-(n, c) statistics and the conv's weight (and bias).

    Forward: ``torch.ops.gctnet.gct`` then the convolution.  Backward: ``y = gct_scale(x, t)`` (one
    pointwise pass), ``aten.convolution_backward`` on it, then ``gct_backward`` writing grad_x into the
    conv's fresh input gradient.  Under autocast the conv runs in the autocast dtype, as ``F.conv*d``
    would.  Double backward is not supported (``once_differentiable``).
    """

    @staticmethod
    def forward(ctx, x, alpha, gamma, beta, weight, bias, stride, padding, dilation, groups, eps, mode,  # type: ignore[override]
                after_relu):
        validate_gct_args(x, alpha, gamma, beta, eps, mode)
        device_type = x.device.type
        cdt = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        with _no_autocast(device_type), below_autograd():
            y, t, s, e, norm_inv = torch.ops.gctnet.gct(x, alpha, gamma, beta, float(eps), mode, bool(after_relu))
            y, w, b = _conv_operands(y, weight, bias, cdt)
            out = torch.convolution(y, w, b, stride, padding, dilation, False, [0] * len(stride), groups)
        ctx.gct_args = (mode, bool(after_relu), beta.dtype)
        ctx.conv_args = (stride, padding, dilation, groups)
        ctx.cdt = cdt
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, alpha, gamma, t, s, e, norm_inv, weight, bias)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, alpha, gamma, t, s, e, norm_inv, weight, bias = ctx.saved_tensors
        mode, after_relu, beta_dtype = ctx.gct_args
        stride, padding, dilation, groups = ctx.conv_args
        need_x, need_a, need_g, need_b, need_w, need_bias = ctx.needs_input_grad[:6]
        need_gct = need_x or need_a or need_g or need_b
        with _no_autocast(x.device.type):
            y = torch.ops.gctnet.gct_scale(x, t)  # rebuilt from the statistics, not saved
            yc, w, _ = _conv_operands(y, weight, None, ctx.cdt)
            grad_y, grad_w, grad_bias = torch.ops.aten.convolution_backward(
                grad_out.to(yc.dtype), yc, w, [weight.shape[0]] if ctx.has_bias else None, stride, padding,
                dilation, False, [0] * len(stride), groups, [need_gct, need_w, need_bias and ctx.has_bias])
            del y, yc
            grads_gct: tuple = (None, None, None, None)
            if need_gct:
                # grad_y is fresh from the conv backward and ours: grad_x is written into it
                grad_y = grad_y.to(x.dtype)
                grad_x = grad_y if need_x else x.new_empty((0,))
                ga, gg, gb = torch.ops.gctnet.gct_backward(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode,
                                                           after_relu, grad_x)
                grads_gct = (grad_x if need_x else None, ga.to(alpha.dtype) if need_a else None,
                             gg.to(gamma.dtype) if need_g else None, gb.to(beta_dtype) if need_b else None)
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return (*grads_gct, grad_w, grad_bias, None, None, None, None, None, None, None)


def _conv_operands(y: Tensor, weight: Tensor, bias: Optional[Tensor], cdt: Optional[torch.dtype]):
    """Conv operands in the autocast dtype ``cdt`` (or the input's dtype rules when ``cdt`` is None)."""
    if cdt is None or not y.is_floating_point():
        return y, weight, bias
    return y.to(cdt), weight.to(cdt), None if bias is None else bias.to(cdt)
