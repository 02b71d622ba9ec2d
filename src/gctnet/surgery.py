"""Model surgery: put a GCT before the convolutions of any network, and take it out again.

``apply_gct(model)`` gates the *input* of every ``nn.Conv1d/2d/3d`` (the paper's placement: stem and
shortcut convs included, each with its own GCT) or, with ``placement="block"``, only the first conv
of every residual block (the authors' memory-saving variant).  The surgery is in place and keeps the
plain model's ``state_dict`` keys: a conv stays at ``layer1.0.conv1.weight`` and its GCT appears at
``layer1.0.conv1.gct.alpha|gamma|beta``.  Because a fresh GCT is exactly the identity, the model's
outputs are bitwise those of the plain model until the GCT parameters are trained, and a plain
pretrained checkpoint loads with :func:`load_plain_weights`.

How a conv is changed:

* an exact ``nn.Conv1d/2d/3d`` is re-classed to :class:`GCTConv1d`/:class:`GCTConv2d`/:class:`GCTConv3d`
  (subclasses, so ``isinstance(m, nn.Conv2d)`` still holds) that own a ``gct`` child and compute
  ``conv(gct(x))``;
* a conv *subclass* (timm's ``Conv2dSame``/``StdConv2d``, QAT convs, ...) keeps its class and forward;
  it gets the ``gct`` child plus a forward pre-hook that gates its input.

``checkpoint=True`` (the default; re-classed convs) uses a fused GCT+conv autograd function that saves only the
GCT's input ``x`` and per-(sample, channel) statistics and recomputes ``gct(x)`` in the backward pass,
so the gated activation is not kept alive for the conv: GCT then adds almost no saved-activation
memory.  Under ``torch.compile``, ``torch.export``, ``torch.fx`` and TorchScript/ONNX tracing the plain
composition ``conv(gct(x))`` is used (the compiler chooses what to recompute itself).
"""

from __future__ import annotations

import fnmatch
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .kernels import scratch
from .functional import _GCTFunction, _forward, _is_compiling, _is_tracing, _native, _no_autocast, validate_gct_args
from .layers import GCT

__all__ = [
    "apply_gct",
    "remove_gct",
    "gct_modules",
    "load_plain_weights",
    "GCTReport",
    "GCTReportEntry",
    "LoadResult",
    "GCTConv1d",
    "GCTConv2d",
    "GCTConv3d",
    "PLACEMENTS",
    "is_attention_conv",
]

PLACEMENTS = ("all", "block")
SkipSpec = Union[None, str, Sequence[str], Callable[[str, nn.Module], bool]]

_PLAIN_CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Class names of channel-attention modules whose convs act on pooled inputs (1x1 spatial, or the channel
# axis for ECA): SE and friends in torchvision (SqueezeExcitation) and timm (SEModule, SqueezeExcite,
# EffectiveSEModule, EcaModule, CecaModule, CBAM's ChannelAttn/LightChannelAttn).  Only the *direct*
# conv children of such modules are skipped (GatherExcite's spatial gather convs sit in sub-modules).
_ATTENTION_CLASS_RE = re.compile(r"SqueezeExcit|Excite$|^(Effective)?SE(Module|Layer)?$|^[CE]caModule$|ChannelAttn")
_BLOCK_CLASS_RE = re.compile(r"Block|Bottleneck")


# --------------------------------------------------------------------------------------------------
# the GCT-gated convolutions
# --------------------------------------------------------------------------------------------------
def _is_fx_tracing() -> bool:
    fx_trace = torch.fx._symbolic_trace
    check = getattr(fx_trace, "is_fx_symbolic_tracing", None) or getattr(fx_trace, "is_fx_tracing", None)
    return bool(check is not None and check())


class _GCTConvMixin:
    """``forward(x) = conv(gct(x))``; with ``gct_checkpoint`` the lean fused autograd path."""

    gct: GCT
    gct_checkpoint: bool

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - torch's argument name
        gct = self._modules["gct"]  # (plain dict lookups: this runs for every conv call)
        if not torch.is_grad_enabled():
            if _transient_applicable(self, gct, input):
                # inference: the GCT output only feeds this conv, so it goes into a reused CPU buffer
                y = _gct_no_grad(input, gct.alpha, gct.gamma, gct.beta, gct.eps, gct.mode, gct.after_relu,
                                 scratch.like(input))
                return super().forward(y)  # type: ignore[misc]
        elif self.gct_checkpoint and _lean_applicable(self, gct, input):
            return _GCTConvFunction.apply(
                input,
                gct.alpha,
                gct.gamma,
                gct.beta,
                self.weight,
                self.bias,
                self.stride,
                self.padding,
                self.dilation,
                self.groups,
                gct.eps,
                gct.mode,
                gct.after_relu,
            )
        return super().forward(gct(input))  # type: ignore[misc]


class GCTConv1d(_GCTConvMixin, nn.Conv1d):
    """An ``nn.Conv1d`` whose input is gated by its ``gct`` child (created by :func:`apply_gct`)."""


class GCTConv2d(_GCTConvMixin, nn.Conv2d):
    """An ``nn.Conv2d`` whose input is gated by its ``gct`` child (created by :func:`apply_gct`)."""


class GCTConv3d(_GCTConvMixin, nn.Conv3d):
    """An ``nn.Conv3d`` whose input is gated by its ``gct`` child (created by :func:`apply_gct`)."""


_GCT_CLASS = {nn.Conv1d: GCTConv1d, nn.Conv2d: GCTConv2d, nn.Conv3d: GCTConv3d}
_PLAIN_CLASS = {v: k for k, v in _GCT_CLASS.items()}


def _gct_pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook of a conv subclass: gate the first positional input with ``module.gct``."""
    return (module.gct(args[0]),) + tuple(args[1:])


def _has_gct_hook(module: nn.Module) -> bool:
    return any(h is _gct_pre_hook for h in module._forward_pre_hooks.values())


# --------------------------------------------------------------------------------------------------
# lean memory: fused GCT + conv that saves only x
# --------------------------------------------------------------------------------------------------
def _has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run hooks (its own or global ones), as ``nn.Module.__call__`` checks."""
    if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks:
        return True
    glob = torch.nn.modules.module
    return any(getattr(glob, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks",
    ))


def _bypass_ok(gct: nn.Module, x: Tensor) -> bool:
    """Whether a gated conv may compute its GCT (module ``gct``) without calling that module: eager (not
    compiling or tracing), a tensor input, and no hooks on the GCT module (analysis tools and users hook
    it: they must see each call).  The kernels (Triton, C++) still run: see :func:`gctnet.kernels.native_ops`."""
    if not isinstance(x, Tensor) or _is_compiling() or _is_tracing() or _is_fx_tracing():
        return False
    return not _has_hooks(gct)


def _transient_applicable(conv: nn.Module, gct: nn.Module, x: Tensor) -> bool:
    """No-grad forward on the CPU: the GCT output can go into a reused buffer (see :mod:`gctnet.kernels.scratch`)."""
    return isinstance(x, Tensor) and x.device.type == "cpu" and x.dim() == conv.weight.dim() and _bypass_ok(gct, x)


def _gct_no_grad(x: Tensor, alpha: Tensor, gamma: Tensor, beta: Tensor, eps: float, mode: str, after_relu: bool,
                 out: Optional[Tensor]) -> Tensor:
    """``gct(x)`` without autograd, written into ``out`` when given (the C++ kernels where they run)."""
    validate_gct_args(x, alpha, gamma, beta, eps, mode)
    with _no_autocast(x.device.type):
        return _forward(x, alpha, gamma, beta, eps, mode, bool(after_relu), _native(x), out)[0]


def _lean_applicable(conv: nn.Module, gct: nn.Module, x: Tensor) -> bool:
    """The fused path needs a grad-recording eager forward and integer zero padding; with hooks on the
    GCT module the plain composition runs.  It uses the same kernels as the GCT module would (Triton on
    CUDA, C++ on CPU, or PyTorch ops)."""
    if not torch.is_grad_enabled() or not _bypass_ok(gct, x):
        return False
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    return x.dim() == conv.weight.dim()  # batched input only


class _InnerCtx:
    """A stand-in ctx for :class:`gctnet.functional._GCTFunction`: running its ``forward``/``backward``
    through this object reuses the GCT math (and its saved-tensor layout) without depending on it."""

    def __init__(self, needs_input_grad: tuple[bool, ...] = (False,) * 7) -> None:
        self.needs_input_grad = needs_input_grad
        self.saved_tensors: tuple[Tensor, ...] = ()

    def save_for_backward(self, *tensors: Tensor) -> None:
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *args: Any) -> None:  # pragma: no cover - protocol completeness
        pass

    def set_materialize_grads(self, value: bool) -> None:  # pragma: no cover - protocol completeness
        pass


class _GCTConvFunction(torch.autograd.Function):
    """``conv(gct(x))`` saving only what the GCT saves (x and per-(n, c) statistics) and the conv weight.

    The backward recomputes ``y = gct(x)`` (one reduction read of x and one pointwise pass), runs
    ``aten.convolution_backward`` on it, then the GCT backward of
    :class:`gctnet.functional._GCTFunction`.  Under autocast the conv runs in the autocast dtype, as
    ``F.conv*d`` would.  Double backward is not supported (``once_differentiable``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x, alpha, gamma, beta, weight, bias, stride, padding, dilation, groups, eps, mode, after_relu
    ):
        validate_gct_args(x, alpha, gamma, beta, eps, mode)
        device_type = x.device.type
        cdt = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        inner = _InnerCtx()
        with _no_autocast(device_type):
            # y lives only for the conv call: written into a reused buffer (no fresh pages per call)
            y = _GCTFunction.forward_into(inner, x, alpha, gamma, beta, eps, mode, after_relu, scratch.like(x))
            y, w, b = _conv_operands(y, weight, bias, cdt)
            out = torch.convolution(y, w, b, stride, padding, dilation, False, [0] * len(stride), groups)
        del y
        ctx.inner_attrs = {k: v for k, v in vars(inner).items() if k not in ("saved_tensors", "needs_input_grad")}
        ctx.num_inner = len(inner.saved_tensors)
        ctx.gct_args = (eps, mode, after_relu)
        ctx.conv_args = (stride, padding, dilation, groups)
        ctx.cdt = cdt
        ctx.has_bias = bias is not None
        ctx.save_for_backward(*inner.saved_tensors, x, alpha, gamma, beta, weight, bias)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        saved = ctx.saved_tensors
        inner_saved, (x, alpha, gamma, beta, weight, bias) = saved[: ctx.num_inner], saved[ctx.num_inner :]
        stride, padding, dilation, groups = ctx.conv_args
        need_x, need_a, need_g, need_b, need_w, need_bias = ctx.needs_input_grad[:6]
        need_gct = need_x or need_a or need_g or need_b
        inner = _InnerCtx((need_x, need_a, need_g, need_b, False, False, False))
        vars(inner).update(ctx.inner_attrs)
        inner.saved_tensors = inner_saved
        with _no_autocast(x.device.type):
            # recomputed from the saved statistics (one pointwise pass), not saved; into a reused buffer
            y = _GCTFunction.recompute_output(inner, scratch.like(x))
            yc, w, _ = _conv_operands(y, weight, None, ctx.cdt)
            grad_y, grad_w, grad_bias = torch.ops.aten.convolution_backward(
                grad_out.to(yc.dtype),
                yc,
                w,
                [weight.shape[0]] if ctx.has_bias else None,
                stride,
                padding,
                dilation,
                False,
                [0] * len(stride),
                groups,
                [need_gct, need_w, need_bias and ctx.has_bias],
            )
            del y, yc
            grads_gct: tuple[Optional[Tensor], ...] = (None, None, None, None)
            if need_gct:
                # grad_y is ours (fresh from the conv backward): the GCT backward writes grad_x into it
                grads_gct = tuple(_GCTFunction.backward_into(inner, grad_y.to(x.dtype))[:4])
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


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GCTReportEntry:
    """One convolution considered by :func:`apply_gct`."""

    name: str  # qualified name of the conv ("" for the root module)
    conv_type: str  # class name of the conv
    channels: int  # GCT channels = the conv's input channels
    inserted: bool  # True when this call inserted a GCT here
    reason: str  # why (e.g. "before every conv", "first conv of Bottleneck 'layer1.0'", "skipped: ...")


@dataclass
class GCTReport:
    """What :func:`apply_gct` did; ``print(model.gct_report)`` shows a table."""

    placement: str
    checkpoint: bool
    entries: list[GCTReportEntry] = field(default_factory=list)

    @property
    def inserted(self) -> list[GCTReportEntry]:
        return [e for e in self.entries if e.inserted]

    @property
    def skipped(self) -> list[GCTReportEntry]:
        return [e for e in self.entries if not e.inserted]

    @property
    def gct_params(self) -> int:
        """Parameters added by this call (3 per gated channel)."""
        return sum(3 * e.channels for e in self.inserted)

    def __repr__(self) -> str:
        return (
            f"GCTReport(placement={self.placement!r}, checkpoint={self.checkpoint}, "
            f"inserted={len(self.inserted)}, skipped={len(self.skipped)}, gct_params={self.gct_params})"
        )

    def table(self) -> str:
        """A plain-text table: one row per conv considered."""
        rows = [("conv", "type", "channels", "gct", "reason")]
        for e in self.entries:
            rows.append((e.name or "(root)", e.conv_type, str(e.channels), "yes" if e.inserted else "-", e.reason))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if j != 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))) + "  " + r[4])
            if i == 0:
                lines.append("-" * len(lines[0]))
        summary = (
            f"placement={self.placement!r} checkpoint={self.checkpoint}: {len(self.inserted)} GCT inserted "
            f"(+{self.gct_params:,} params), {len(self.skipped)} conv(s) left without a new GCT"
        )
        return "\n".join([*lines, summary])

    __str__ = table


# --------------------------------------------------------------------------------------------------
# selection helpers
# --------------------------------------------------------------------------------------------------
def is_attention_conv(conv: nn.Module, parent: Optional[nn.Module]) -> bool:
    """True for a conv that is a direct child of a channel-attention module (SE's FC convs and the like).

    Such convs see pooled 1x1 inputs, where a GCT adds nothing.  Detected by the parent's class name:
    ``SqueezeExcitation`` (torchvision), ``SEModule``, ``SqueezeExcite``, ``EffectiveSEModule``,
    ``EcaModule``, ``CecaModule``, ``ChannelAttn``/``LightChannelAttn`` (timm), ``SELayer``, ``SE``.
    Residual blocks with SE (``SEBottleneck``, ``SEBasicBlock``) do not match.
    """
    return parent is not None and bool(_ATTENTION_CLASS_RE.search(type(parent).__name__))


def _skip_reason(skip: SkipSpec, name: str, module: nn.Module) -> Optional[str]:
    if skip is None:
        return None
    if callable(skip):
        return "skipped: skip predicate" if skip(name, module) else None
    patterns = [skip] if isinstance(skip, str) else list(skip)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"skip patterns must be strings (fnmatch), got {type(pattern).__name__} {pattern!r}")
        if fnmatch.fnmatchcase(name, pattern):
            return f"skipped: matches skip pattern {pattern!r}"
    return None


def _validate_skip(skip: SkipSpec) -> None:
    if skip is None or callable(skip) or isinstance(skip, str):
        return
    if isinstance(skip, Iterable) and all(isinstance(p, str) for p in skip):
        return
    raise TypeError(
        "skip must be None, a predicate (name, module) -> bool, an fnmatch pattern or a list of patterns, "
        f"got {type(skip).__name__} {skip!r}"
    )


def _is_candidate_conv(module: nn.Module) -> bool:
    return isinstance(module, _PLAIN_CONVS)


def _parents(model: nn.Module) -> dict[str, tuple[Optional[nn.Module], str]]:
    """name -> (parent module, class name of the parent) for every module."""
    out: dict[str, tuple[Optional[nn.Module], str]] = {}
    for pname, parent in model.named_modules():
        for cname, child in parent.named_children():
            full = f"{pname}.{cname}" if pname else cname
            out.setdefault(full, (parent, pname))
    return out


def _first_conv(module: nn.Module) -> Optional[tuple[str, nn.Module]]:
    for name, m in module.named_modules():
        if _is_candidate_conv(m):
            return name, m
    return None


def _block_targets(model: nn.Module) -> dict[str, str]:
    """conv name -> reason, for the first conv of every residual block.

    A block is a module with a ``gct_block_conv`` attribute (dotted name of the conv to gate, relative to
    the block) or a module whose class name contains "Block" or "Bottleneck" and that has a ``conv1``
    child (the first conv inside ``conv1`` when ``conv1`` is a container).
    """
    targets: dict[str, str] = {}
    for bname, block in model.named_modules():
        hook = getattr(block, "gct_block_conv", None)
        cls = type(block).__name__
        if isinstance(hook, str):
            try:
                conv = block.get_submodule(hook)
            except AttributeError as exc:
                raise ValueError(f"{cls} {bname!r} has gct_block_conv={hook!r}, which is not a submodule") from exc
            if not _is_candidate_conv(conv):
                raise ValueError(
                    f"{cls} {bname!r} has gct_block_conv={hook!r}, which is a {type(conv).__name__}, "
                    "expected an nn.Conv1d/2d/3d"
                )
            rel = hook
        elif _BLOCK_CLASS_RE.search(cls) and isinstance(getattr(block, "conv1", None), nn.Module):
            found = _first_conv(block.conv1)
            if found is None:
                continue
            rel = "conv1" + (f".{found[0]}" if found[0] else "")
        else:
            continue
        full = f"{bname}.{rel}" if bname else rel
        targets.setdefault(full, f"first conv of {cls} {bname or '(root)'!r}")
    return targets


def _conv_has_gct(module: nn.Module) -> bool:
    return isinstance(getattr(module, "gct", None), GCT)


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------
def apply_gct(
    model: nn.Module,
    *,
    placement: str = "all",
    skip: SkipSpec = None,
    checkpoint: bool = True,
    skip_attention: bool = True,
    **gct_kwargs: Any,
) -> nn.Module:
    """Insert a GCT before convolutions of ``model`` (in place) and return ``model``.

    Args:
        model: any ``nn.Module``.
        placement: ``"all"`` (paper): before every ``nn.Conv1d/2d/3d``, stem and shortcut convs
            included (``ConvTranspose`` is never touched); ``"block"``: before the first conv of every
            residual block only (torchvision/timm ``BasicBlock``/``Bottleneck``, gctnet's CIFAR blocks, any
            module whose class name contains "Block"/"Bottleneck" and has a ``conv1`` child, or any module
            with a ``gct_block_conv = "<child conv name>"`` attribute).
        skip: convs to leave alone: a predicate ``(qualified_name, conv) -> bool``, an fnmatch pattern or
            a list of patterns matched against the conv's qualified name (e.g. ``["conv1", "layer4.*"]``).
        checkpoint: lean memory (default ``True``): the GCT output is not kept alive for the conv; the
            backward rebuilds it from ``x`` and the per-(n, c) gate (one pointwise pass).  Saved activations
            stay at the plain network's level (ResNet-50: 1.003x instead of 1.50x) for a few percent of
            step time.  ``False`` composes ``conv(gct(x))`` plainly (needed only for double backward).
            Calling again with another value updates it.
        skip_attention: skip kernel-1 convs inside channel-attention modules (SE's FC convs), which see
            1x1 inputs (default True; see :func:`is_attention_conv`).
        **gct_kwargs: passed to :class:`gctnet.GCT` (``eps``, ``mode``, ``after_relu``).

    The GCT parameters take each conv's weight device and dtype.  Convs that already have a GCT are not
    gated twice.  ``model.gct_report`` (a :class:`GCTReport`) lists every conv considered with its
    channels and the reason it was or was not gated.

    Raises:
        ValueError: unknown placement, bad GCT kwargs, or ``placement="block"`` on a model without blocks.
        TypeError: bad ``skip``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"apply_gct expects an nn.Module, got {type(model).__name__}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    _validate_skip(skip)
    GCT(1, **gct_kwargs)  # validate the GCT kwargs once, before touching the model
    checkpoint = bool(checkpoint)

    if placement == "block":
        targets = _block_targets(model)
        if not targets:
            raise ValueError(
                "placement='block' found no residual blocks: expected modules whose class name contains "
                "'Block' or 'Bottleneck' with a `conv1` child, or modules with a `gct_block_conv` attribute "
                "naming their first conv; use placement='all' for other networks"
            )
    else:
        targets = None

    parents = _parents(model)
    report = GCTReport(placement=placement, checkpoint=checkpoint)
    for name, module in list(model.named_modules()):
        is_transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        if placement == "all" and is_transposed:
            report.entries.append(
                GCTReportEntry(name, type(module).__name__, module.in_channels, False, "skipped: transposed conv")
            )
            continue
        if not _is_candidate_conv(module):
            continue
        if targets is not None and name not in targets:
            continue
        ctype = type(module).__name__
        if _conv_has_gct(module):
            if hasattr(module, "gct_checkpoint"):
                module.gct_checkpoint = checkpoint
            report.entries.append(GCTReportEntry(name, ctype, module.gct.channels, False, "already has a GCT"))
            continue
        if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
            report.entries.append(
                GCTReportEntry(name, ctype, 0, False, "skipped: lazy conv not initialised (run a forward first)")
            )
            continue
        channels = module.in_channels
        reason = _skip_reason(skip, name, module)
        parent, pname = parents.get(name, (None, ""))
        if reason is None and skip_attention and is_attention_conv(module, parent):
            reason = f"skipped: FC conv of attention module {type(parent).__name__} {pname!r} (1x1 input)"
        if reason is not None:
            report.entries.append(GCTReportEntry(name, ctype, channels, False, reason))
            continue
        gct = GCT(channels, device=module.weight.device, dtype=module.weight.dtype, **gct_kwargs)
        why = targets[name] if targets is not None else "before every conv"
        if type(module) in _GCT_CLASS:
            module.__class__ = _GCT_CLASS[type(module)]
            module.gct_checkpoint = checkpoint
            module.add_module("gct", gct)
        else:
            if hasattr(module, "gct"):
                raise ValueError(
                    f"conv {name!r} ({ctype}) already has an attribute `gct` that is not a GCT; cannot insert one"
                )
            module.add_module("gct", gct)
            module.register_forward_pre_hook(_gct_pre_hook)
            if checkpoint:
                why += "; checkpoint not applied (conv subclass with its own forward)"
        report.entries.append(GCTReportEntry(name, ctype, channels, True, why))
    model.gct_report = report
    return model


def remove_gct(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_gct` in place: restore the plain conv classes, drop the ``gct`` children, hooks
    and ``model.gct_report``.  GCT modules that were not inserted by ``apply_gct`` stay.  Returns ``model``.
    """
    for module in model.modules():
        cls = type(module)
        if cls in _PLAIN_CLASS:
            del module.gct
            del module.gct_checkpoint
            module.__class__ = _PLAIN_CLASS[cls]
        elif _has_gct_hook(module):
            for key, hook in list(module._forward_pre_hooks.items()):
                if hook is _gct_pre_hook:
                    del module._forward_pre_hooks[key]
            if _conv_has_gct(module):
                del module.gct
    if "gct_report" in model.__dict__:
        del model.gct_report
    return model


def gct_modules(model: nn.Module) -> list[tuple[str, GCT]]:
    """All :class:`gctnet.GCT` modules of ``model`` with their qualified names, in registration order
    (which is the forward order for torchvision/timm/gctnet networks)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, GCT)]


class LoadResult(NamedTuple):
    """Keys reported by :func:`load_plain_weights`."""

    missing_gct_keys: list[str]  # GCT parameters the plain checkpoint does not have (left as they are)
    missing_keys: list[str]  # other missing keys (non-empty only with strict=False)
    unexpected_keys: list[str]  # keys of the checkpoint the model does not have (strict=False only)


def load_plain_weights(
    model: nn.Module,
    state_dict_or_path: Union[str, os.PathLike, Mapping[str, Any]],
    strict: bool = True,
) -> LoadResult:
    """Load a plain (GCT-free) checkpoint into a model changed by :func:`apply_gct`.

    Accepts a state_dict, a training checkpoint dict holding one under ``state_dict``/``model``, or a
    path (``torch.load(weights_only=True)`` or ``.safetensors``); ``module.``/``_orig_mod.`` prefixes
    are stripped (all read by :func:`gctnet.checkpoints.state_dict`).  GCT parameters absent from the
    checkpoint are reported and left unchanged (a fresh GCT is the identity).  With ``strict=True`` any
    other missing key or any unexpected key raises :class:`gctnet.errors.KeyMismatchError` (a
    ``RuntimeError``) *before* anything is loaded; with ``strict=False`` they are returned (and warned).
    """
    from .checkpoints import describe_mismatch, state_dict

    sd = state_dict(state_dict_or_path)
    gct_prefixes = tuple(f"{name}." if name else "" for name, _ in gct_modules(model))
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    missing_gct = [k for k in missing if gct_prefixes and k.startswith(gct_prefixes)]
    missing_other = [k for k in missing if k not in set(missing_gct)]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
              for k, v in sd.items() if k in expected and v.shape != expected[k].shape]
    if shapes:  # never loadable, strict or not
        from .errors import KeyMismatchError

        raise KeyMismatchError(f"the checkpoint does not fit the model: {describe_mismatch([], [], shapes)}")
    if missing_other or unexpected:
        msg = f"the checkpoint does not match the model outside its GCT parameters: {describe_mismatch(missing_other, unexpected)}"
        if strict:
            from .errors import KeyMismatchError

            raise KeyMismatchError(msg + " (only GCT keys may be missing; pass strict=False to load the rest)")
        warnings.warn(msg, stacklevel=2)
    model.load_state_dict(sd, strict=False)
    return LoadResult(missing_gct, missing_other, unexpected)
