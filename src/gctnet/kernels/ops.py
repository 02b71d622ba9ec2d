"""The GCT operators: one schema each, a fake implementation, one autograd formula, kernels per device.

Three operators in the ``gctnet`` namespace (``torch.ops.gctnet.*``)::

    gct(Tensor x, Tensor alpha, Tensor gamma, Tensor beta, float eps, str gct_mode, bool after_relu)
        -> (Tensor y, Tensor t, Tensor s, Tensor e, Tensor norm_inv)
    gct_scale(Tensor x, Tensor t) -> Tensor                    # y again from the statistics
    gct_backward(Tensor grad_y, Tensor x, Tensor alpha, Tensor gamma, Tensor t, Tensor s, Tensor e,
                 Tensor norm_inv, str gct_mode, bool after_relu, Tensor(a!) grad_x) -> (Tensor, Tensor, Tensor)

``t, s, e`` (N, C) and ``norm_inv`` (N, 1) are the per-(n, c) statistics (see
:mod:`gctnet.kernels.composite`); the backward writes grad_x into ``grad_x`` (numel 0: not wanted; it
may be ``grad_y`` itself) and returns the parameter gradients in the accumulation dtype.  ``y`` keeps
x's layout when x is contiguous, channels_last(_3d) or a transposed (N, L, C) 1-D tensor
(:func:`addressable`), and is contiguous otherwise.

Kernels, chosen by the dispatcher from the tensors' device:

* ``CompositeExplicitAutograd``: :mod:`gctnet.kernels.composite` (PyTorch ops) for every device;
* ``CPU``: the C++ kernels (:mod:`gctnet.kernels.cpu_ops`, built on first use);
* ``CUDA``: the Triton kernels (:mod:`gctnet.kernels.triton_ops`).

The ``CPU``/``CUDA`` entries run the accelerated kernel only where the backend setting
(:mod:`gctnet.kernels.backend`) allows it and after it passed its one-time self-check for the input's
(device, dtype, layout) against the composite kernel (:mod:`gctnet.kernels.check`); a kernel that fails
to build, compile or match warns once, and that device runs the composite kernel from then on.

Autograd is registered on ``gct``: only x and the statistics are saved; the backward is one
``gct_backward`` call.  Double backward (``create_graph=True``) differentiates the composite formula.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from . import backend, composite

__all__ = ["Kernels", "COMPOSITE", "addressable", "layout_name", "kernels_for", "accelerated", "failed_devices",
           "reset", "below_autograd"]


@dataclass(frozen=True)
class Kernels:
    """One implementation of the three operators (the calls of :mod:`gctnet.kernels.composite`)."""

    name: str
    forward: Callable[..., Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]
    scale: Callable[[Tensor, Tensor], Tensor]
    backward: Callable[..., Tuple[Tensor, Tensor, Tensor]]
    dtypes: Tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


COMPOSITE = Kernels("PyTorch ops", composite.forward, composite.scale, composite.backward)


# --------------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------------
def layout_name(x: Tensor) -> str:
    """``contiguous``, ``channels_last`` (4-D/5-D channels_last, or (N, C, L) with strides of a
    transposed (N, L, C) tensor) or ``strided`` (anything else)."""
    if x.is_contiguous():
        return "contiguous"
    if (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)) or (
        x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)
    ):
        return "channels_last"
    if x.dim() == 3:
        c, length = x.shape[1], x.shape[2]
        if x.stride(1) == 1 and x.stride(2) == c and x.stride(0) == c * length:
            return "channels_last"
    return "strided"


def addressable(x: Tensor) -> Tensor:
    """x itself in a layout every kernel addresses and keeps; a contiguous copy otherwise."""
    return x if layout_name(x) != "strided" else x.contiguous()


def _no_autocast(device_type: str):
    """GCT manages its own precision: autocast must not recast the kernels' inner ops."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:  # device types without autocast (e.g. "meta")
        enabled = False
    return torch.autocast(device_type=device_type, enabled=False) if enabled else contextlib.nullcontext()


def below_autograd():
    """A context that calls operators below the autograd dispatch key, for callers that record no graph
    (no-grad forwards, the inside of :class:`gctnet.gated_conv.GCTConvFunction`): it skips the Python
    wrapper of the registered autograd formula (about 15 us per call in an ad-hoc timing at 1x16x8x8; no
    repo benchmark isolates it: it is not a switch, the numbers are the same either way)."""
    return torch._C._AutoDispatchBelowAutograd()


# --------------------------------------------------------------------------------------------------
# which kernel runs: backend setting, availability, self-check
# --------------------------------------------------------------------------------------------------
_lock = threading.Lock()
_verdicts: Dict[tuple, Optional[str]] = {}  # (kernels, device, dtype, dim, layout) -> None (ok) or why not
_failed: Dict[str, str] = {}  # device type -> why its accelerated kernel is off for this process


def _cpp() -> Optional[Kernels]:
    from . import cpu_ops

    st = cpu_ops.load(quiet=True)
    if st.available:
        return cpu_ops.KERNELS
    if backend.get_backend() == "cpp":
        raise RuntimeError(f"GCTNET_BACKEND=cpp but the C++ CPU kernels are unavailable: {st.reason}")
    _disable("cpu", f"the C++ CPU kernels could not be built ({st.reason})")
    return None


def _triton(device_type: str) -> Optional[Kernels]:
    try:
        from . import triton_ops
    except Exception as exc:  # not installed, or an incompatible build
        if backend.get_backend() == "triton":
            raise RuntimeError(f"GCTNET_BACKEND=triton but the Triton kernels are unavailable: {exc}") from exc
        return None
    if device_type == "cpu" and not triton_ops.INTERPRET:
        return None
    return triton_ops.KERNELS


def accelerated(device_type: str) -> Optional[Kernels]:
    """The accelerated kernels the backend allows for ``device_type`` (before their self-check)."""
    name = backend.get_backend()
    if name == "eager" or (name == "auto" and device_type in _failed):
        return None
    if device_type == "cpu":
        return _triton("cpu") if name == "triton" else _cpp()
    if device_type == "cuda" and name in ("auto", "triton"):
        return _triton("cuda")
    return None


def _disable(device_type: str, why: str) -> None:
    if device_type not in _failed:
        _failed[device_type] = why
        warnings.warn(f"gctnet: {why}; GCT runs on PyTorch ops for {device_type} tensors from now on "
                      "(`gctnet kernels --check` shows details; GCTNET_BACKEND=eager silences this)",
                      RuntimeWarning, stacklevel=4)


def kernels_for(x: Tensor) -> Kernels:
    """The kernels that run for ``x``: the device's accelerated kernels once they passed their self-check
    for x's (device, dtype, layout), else :data:`COMPOSITE`."""
    kernels = accelerated(x.device.type)
    if kernels is None or x.dtype not in kernels.dtypes or x.numel() == 0 or not 3 <= x.dim() <= 5:
        return COMPOSITE  # (1-3 spatial dims: the kinds of input the self-check covers)
    key = (kernels.name, str(x.device), x.dtype, x.dim(), layout_name(x))
    if key not in _verdicts:
        with _lock:
            if key not in _verdicts:
                from .check import check_kernels

                _verdicts[key] = check_kernels(kernels, x.device, x.dtype, x.dim(), key[-1])
    failure = _verdicts[key]
    if failure is None:
        return kernels
    if backend.get_backend() in ("cpp", "triton"):
        raise RuntimeError(f"GCTNET_BACKEND={backend.get_backend()} but the {kernels.name} kernels failed their "
                           f"self-check: {failure}")
    _disable(x.device.type, f"the {kernels.name} kernels failed their self-check: {failure}")
    return COMPOSITE


def failed_devices() -> Dict[str, str]:
    """Device types whose accelerated kernels were turned off in this process, with the reason."""
    return dict(_failed)


def reset() -> None:
    """Forget the self-check verdicts and turned-off devices (tests; after fixing a kernel)."""
    _verdicts.clear()
    _failed.clear()


# --------------------------------------------------------------------------------------------------
# the device entries (CPU and CUDA dispatch keys)
# --------------------------------------------------------------------------------------------------
def _gct_device(x, alpha, gamma, beta, eps, mode, after_relu):
    with _no_autocast(x.device.type):
        return kernels_for(x).forward(addressable(x), alpha, gamma, beta, eps, mode, after_relu)


def _scale_device(x, t):
    with _no_autocast(x.device.type):
        return kernels_for(x).scale(addressable(x), t)


def _backward_device(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, grad_x):
    with _no_autocast(x.device.type):
        return kernels_for(x).backward(grad_y, addressable(x), alpha, gamma, t, s, e, norm_inv, mode, after_relu,
                                       grad_x if grad_x.numel() else None)


def _gct_composite(x, alpha, gamma, beta, eps, mode, after_relu):
    with _no_autocast(x.device.type):
        return composite.forward(addressable(x), alpha, gamma, beta, eps, mode, after_relu)


def _scale_composite(x, t):
    with _no_autocast(x.device.type):
        return composite.scale(addressable(x), t)


def _backward_composite(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, grad_x):
    with _no_autocast(x.device.type):
        return composite.backward(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu,
                                  grad_x if grad_x.numel() else None)


# --------------------------------------------------------------------------------------------------
# schemas, fakes, autograd
# --------------------------------------------------------------------------------------------------
_lib = torch.library.Library("gctnet", "DEF")
_lib.define("gct(Tensor x, Tensor alpha, Tensor gamma, Tensor beta, float eps, str gct_mode, bool after_relu)"
            " -> (Tensor, Tensor, Tensor, Tensor, Tensor)")
_lib.define("gct_scale(Tensor x, Tensor t) -> Tensor")
_lib.define("gct_backward(Tensor grad_y, Tensor x, Tensor alpha, Tensor gamma, Tensor t, Tensor s, Tensor e, "
            "Tensor norm_inv, str gct_mode, bool after_relu, Tensor(a!) grad_x) -> (Tensor, Tensor, Tensor)")

for _name, _composite_fn, _device_fn in (
    ("gct", _gct_composite, _gct_device),
    ("gct_scale", _scale_composite, _scale_device),
    ("gct_backward", _backward_composite, _backward_device),
):
    _lib.impl(_name, _composite_fn, "CompositeExplicitAutograd")
    _lib.impl(_name, _device_fn, "CPU")
    _lib.impl(_name, _device_fn, "CUDA")


def _like_output(x: Tensor) -> Tensor:
    return torch.empty_like(x) if layout_name(x) != "strided" else torch.empty_like(
        x, memory_format=torch.contiguous_format)


@torch.library.register_fake("gctnet::gct")
def _gct_fake(x, alpha, gamma, beta, eps, mode, after_relu):
    acc = composite.acc_dtype(x.dtype)
    stat = lambda cols: x.new_empty((x.shape[0], cols), dtype=acc)  # noqa: E731
    return _like_output(x), stat(x.shape[1]), stat(x.shape[1]), stat(x.shape[1]), stat(1)


@torch.library.register_fake("gctnet::gct_scale")
def _scale_fake(x, t):
    return _like_output(x)


@torch.library.register_fake("gctnet::gct_backward")
def _backward_fake(grad_y, x, alpha, gamma, t, s, e, norm_inv, mode, after_relu, grad_x):
    return tuple(x.new_empty((x.shape[1],), dtype=composite.acc_dtype(x.dtype)) for _ in range(3))


def _setup_context(ctx, inputs, output) -> None:
    x, alpha, gamma, beta, eps, mode, after_relu = inputs
    _, t, s, e, norm_inv = output
    ctx.save_for_backward(x, alpha, gamma, beta, t, s, e, norm_inv)
    ctx.eps, ctx.mode, ctx.after_relu = eps, mode, after_relu


def _gct_backward(ctx, grad_y, *_stat_grads):
    x, alpha, gamma, beta, t, s, e, norm_inv = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if torch.is_grad_enabled():  # create_graph=True: differentiate the composite formula
        inputs = (x, alpha, gamma, beta)
        wanted = [i for i in range(4) if needs[i]]
        with torch.enable_grad():
            y = composite.forward(x, alpha, gamma, beta, ctx.eps, ctx.mode, ctx.after_relu)[0]
            grads = torch.autograd.grad(y, [inputs[i] for i in wanted], grad_y, create_graph=True, allow_unused=True)
        out: list = [None] * 7
        for i, g in zip(wanted, grads):
            out[i] = g
        return tuple(out)
    grad_x = torch.empty_like(x) if needs[0] else x.new_empty((0,))
    ga, gg, gb = torch.ops.gctnet.gct_backward(grad_y, x, alpha, gamma, t, s, e, norm_inv, ctx.mode, ctx.after_relu,
                                               grad_x)
    return (
        grad_x if needs[0] else None,
        ga.to(alpha.dtype) if needs[1] else None,
        gg.to(gamma.dtype) if needs[2] else None,
        gb.to(beta.dtype) if needs[3] else None,
        None,
        None,
        None,
    )


torch.library.register_autograd("gctnet::gct", _gct_backward, setup_context=_setup_context)
