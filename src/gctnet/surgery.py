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

``checkpoint=True`` (the default; re-classed convs) uses the lean GCT+conv autograd function of
:mod:`gctnet.gated_conv`, which saves only the GCT's input ``x`` and per-(sample, channel) statistics
and rebuilds ``gct(x)`` in the backward pass: GCT then adds almost no saved-activation memory.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .gated_conv import GCT_CLASS as _GCT_CLASS
from .gated_conv import PLAIN_CLASS as _PLAIN_CLASS
from .gated_conv import GCTConv1d, GCTConv2d, GCTConv3d
from .layers import GCT

__all__ = [
    "apply_gct",
    "remove_gct",
    "attach_no_weight_decay",
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
# conv subclasses: a forward pre-hook gates their input
# --------------------------------------------------------------------------------------------------
def _gct_pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook of a conv subclass: gate the first positional input with ``module.gct``."""
    return (module.gct(args[0]),) + tuple(args[1:])


def _has_gct_hook(module: nn.Module) -> bool:
    return any(h is _gct_pre_hook for h in module._forward_pre_hooks.values())



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
    Residual blocks that carry attention (gctnet's ``AttnBasicBlock``/``AttnBottleneck``) do not match.
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


def _loaded_class(module_name: str, class_name: str) -> Optional[type]:
    """``module_name.class_name`` if that module is imported (a model can only hold instances of classes
    whose module is imported, so this never imports timm or torchvision)."""
    return getattr(sys.modules.get(module_name), class_name, None)


# conv-like modules that are not nn.ConvNd and convolve their first positional input: gated by a
# forward pre-hook (timm's CondConv2d: forward(x, routing_weights); torchvision's DeformConv2d:
# forward(input, offset, mask))
_HOOKED_CONV_LIKES = (("timm.layers.cond_conv2d", "CondConv2d"), ("torchvision.ops.deform_conv", "DeformConv2d"))


def _conv_kind(module: nn.Module) -> Optional[str]:
    """How :func:`apply_gct` treats ``module``: "conv" (an ``nn.Conv1d/2d/3d``), "transposed", "mixed"
    (timm's ``MixedConv2d``: one GCT over its whole input), "hooked" (a known conv-like module, see
    ``_HOOKED_CONV_LIKES``), "unknown" (looks like a conv: ``in_channels``/``out_channels``, parameters of
    its own and no conv inside, but gctnet does not know its forward; reported as skipped) or None."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "transposed"
    if isinstance(module, _PLAIN_CONVS):
        return "conv"
    mixed = _loaded_class("timm.layers.mixed_conv2d", "MixedConv2d")
    if mixed is not None and isinstance(module, mixed):
        return "mixed"
    if any(type(module) is _loaded_class(*where) for where in _HOOKED_CONV_LIKES):
        return "hooked"
    if (isinstance(getattr(module, "in_channels", None), int) and isinstance(getattr(module, "out_channels", None), int)
            and module._parameters and not any(isinstance(m, _PLAIN_CONVS) for m in module.modules())):
        return "unknown"
    return None


def _record_input_size(sizes: dict[str, list[tuple[int, ...]]], name: str, module: nn.Module,
                       args: tuple[Any, ...]) -> None:
    if args and isinstance(args[0], Tensor) and args[0].dim() >= 3:
        sizes.setdefault(name, []).append(tuple(args[0].shape[2:]))


def _input_sizes(model: nn.Module, example_input: Any) -> dict[str, list[tuple[int, ...]]]:
    """Spatial sizes of the input of every conv (of the kinds apply_gct gates) in one forward of
    ``example_input`` (a tensor, or a tuple of positional arguments) in eval mode without autograd;
    the modes of all modules are restored afterwards."""
    sizes: dict[str, list[tuple[int, ...]]] = {}
    handles = [m.register_forward_pre_hook(functools.partial(_record_input_size, sizes, name))
               for name, m in model.named_modules() if _conv_kind(m) in ("conv", "mixed", "hooked")]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(*example_input) if isinstance(example_input, tuple) else model(example_input)
    finally:
        for m, mode in modes:
            m.training = mode
        for handle in handles:
            handle.remove()
    return sizes


def _pooled_input_reason(name: str, module: nn.Module, sizes: Optional[list[tuple[int, ...]]]) -> Optional[str]:
    """The skip reason for a conv whose input was 1x1 (every spatial dim) in the example forward."""
    if not sizes or any(any(d != 1 for d in size) for size in sizes):
        return None
    kernel = getattr(module, "kernel_size", 1)
    if any(k > 1 for k in (kernel if isinstance(kernel, (tuple, list)) else (kernel,))):
        warnings.warn(
            f"apply_gct: {name!r} ({type(module).__name__}, kernel {kernel}) sees a 1x1 input in example_input "
            "and is left without GCT; is the example smaller than the resolution the model works at?",
            stacklevel=3,
        )
    return "skipped: 1x1 spatial input in the example forward (a pooled input)"


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
class _NoWeightDecay:
    """``model.no_weight_decay()``, timm's hook for its optimizer factory: the names the model's own
    ``no_weight_decay()`` lists (ViT's position embeddings, ...) plus its GCT parameters without decay
    under ``policy`` (the paper: GCT beta; see :func:`gctnet.optim.no_weight_decay`).

    A plain object in the model's ``__dict__`` (not a bound method), so deepcopy (timm's EMA) and
    pickling keep it working; ``previous`` is the instance attribute it replaced, if any.
    """

    def __init__(self, model: nn.Module, policy: str, previous: Optional[Callable[[], Iterable[str]]]) -> None:
        self.model, self.policy, self.previous = model, policy, previous

    def __call__(self) -> set[str]:
        from .optim import no_weight_decay

        if self.previous is not None:
            own: Iterable[str] = self.previous()
        else:
            method = getattr(type(self.model), "no_weight_decay", None)
            own = method(self.model) if callable(method) else ()
        return set(own) | no_weight_decay(self.model, self.policy)


def attach_no_weight_decay(model: nn.Module, policy: Optional[str] = None) -> nn.Module:
    """Give ``model`` a ``no_weight_decay()`` that timm's ``create_optimizer_v2`` honours: the model's
    own names (if its class or instance has such a method) plus the GCT parameters without decay under
    ``policy`` (``"paper"``: beta, ``"none"``: alpha, gamma, beta, ``"all"``: none; see
    :func:`gctnet.param_groups`).  Attached again, only the policy changes; ``policy=None`` keeps the
    current one ("paper" when new).  :func:`apply_gct` attaches it, :func:`remove_gct` restores the original.
    """
    from .optim import POLICIES

    if policy is not None and policy not in POLICIES:
        raise ValueError(f"gct_wd_policy must be one of {POLICIES}, got {policy!r}")
    current = model.__dict__.get("no_weight_decay")
    if isinstance(current, _NoWeightDecay):
        current.policy = policy or current.policy
    else:
        model.__dict__["no_weight_decay"] = _NoWeightDecay(model, policy or "paper", current)
    return model


def _detach_no_weight_decay(model: nn.Module) -> None:
    current = model.__dict__.get("no_weight_decay")
    if isinstance(current, _NoWeightDecay):
        if current.previous is None:
            del model.__dict__["no_weight_decay"]
        else:
            model.__dict__["no_weight_decay"] = current.previous


def apply_gct(
    model: nn.Module,
    *,
    placement: str = "all",
    skip: SkipSpec = None,
    checkpoint: bool = True,
    skip_attention: bool = True,
    example_input: Any = None,
    **gct_kwargs: Any,
) -> nn.Module:
    """Insert a GCT before convolutions of ``model`` (in place) and return ``model``.

    Args:
        model: any ``nn.Module``.
        placement: ``"all"`` (paper): before every ``nn.Conv1d/2d/3d``, stem and shortcut convs
            included (``ConvTranspose`` is never touched), before timm's ``CondConv2d`` and torchvision's
            ``DeformConv2d``, and once before each timm ``MixedConv2d`` (one GCT over its whole input, its
            split convs not gated); other conv-like modules (``in_channels``/``out_channels`` and own
            parameters, not an ``nn.ConvNd``) are reported as skipped.  ``"block"``: before the first conv of
            every residual block only (torchvision/timm ``BasicBlock``/``Bottleneck``, gctnet's CIFAR blocks,
            any module whose class name contains "Block"/"Bottleneck" and has a ``conv1`` child, or any
            module with a ``gct_block_conv = "<child conv name>"`` attribute).
        skip: convs to leave alone: a predicate ``(qualified_name, conv) -> bool``, an fnmatch pattern or
            a list of patterns matched against the conv's qualified name (e.g. ``["conv1", "layer4.*"]``).
        checkpoint: lean memory (default ``True``): the GCT output is not kept alive for the conv; the
            backward rebuilds it from ``x`` and the per-(n, c) gate (one pointwise pass).  Saved activations
            stay at the plain network's level (ResNet-50: 1.003x instead of 1.50x) for a few percent of
            step time.  ``False`` composes ``conv(gct(x))`` plainly (needed only for double backward).
            Calling again with another value updates it.
        skip_attention: skip kernel-1 convs inside channel-attention modules (SE's FC convs), which see
            1x1 inputs (default True; see :func:`is_attention_conv`).
        example_input: an input of ``model`` (a tensor, or a tuple of positional arguments) at the
            resolution it works at.  One forward of it (eval mode, no autograd, modes restored) finds the
            convs whose input is 1x1 (fed by global pooling: SE and split-attention FCs, a ``conv_head``
            after the pool, DeepLab's ASPP pooling branch, ...); they are skipped, whatever their class
            names.  A skipped conv with a kernel larger than 1 warns (the example may be too small).
        **gct_kwargs: passed to :class:`gctnet.GCT` (``eps``, ``mode``, ``after_relu``).

    The GCT parameters take each conv's device and dtype.  Convs that already have a GCT are not
    gated twice.  ``model.gct_report`` (a :class:`GCTReport`) lists every conv considered with its
    channels and the reason it was or was not gated.  ``model.no_weight_decay()`` lists the GCT betas
    for timm's optimizer factory, merged with the model's own list (see :func:`attach_no_weight_decay`).

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

    sizes = _input_sizes(model, example_input) if example_input is not None else None
    parents = _parents(model)
    report = GCTReport(placement=placement, checkpoint=checkpoint)
    mixed: list[str] = []  # MixedConv2d modules seen (their split convs are never gated on their own)
    for name, module in list(model.named_modules()):
        kind = _conv_kind(module)
        if kind is None or (targets is not None and name not in targets):
            continue
        ctype = type(module).__name__
        channels = getattr(module, "in_channels", 0)

        def note(inserted: bool, reason: str, channels: int = channels) -> None:
            report.entries.append(GCTReportEntry(name, ctype, channels, inserted, reason))

        owner = next((m for m in mixed if name.startswith(m + ".")), None)
        if kind == "transposed":
            note(False, "skipped: transposed conv")
            continue
        if owner is not None:
            note(False, f"skipped: split conv of MixedConv2d {owner!r} (one GCT over its whole input)")
            continue
        if kind == "unknown":
            note(False, f"skipped: conv-like {ctype} is not an nn.Conv1d/2d/3d (gctnet does not know which input "
                        "it convolves)")
            continue
        if kind == "mixed":
            mixed.append(name)
        if _conv_has_gct(module):
            if hasattr(module, "gct_checkpoint"):
                module.gct_checkpoint = checkpoint
            note(False, "already has a GCT", module.gct.channels)
            continue
        if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
            note(False, "skipped: lazy conv not initialised (run a forward first)", 0)
            continue
        reason = _skip_reason(skip, name, module)
        if reason is None and sizes is not None:
            reason = _pooled_input_reason(name, module, sizes.get(name))
        parent, pname = parents.get(name, (None, ""))
        if reason is None and skip_attention and is_attention_conv(module, parent):
            reason = f"skipped: FC conv of attention module {type(parent).__name__} {pname!r} (1x1 input)"
        if reason is None and kind == "mixed" and type(module) is not _loaded_class("timm.layers.mixed_conv2d", "MixedConv2d"):
            reason = f"skipped: subclass {ctype} of MixedConv2d (gctnet does not know its forward)"
        if reason is not None:
            note(False, reason)
            continue
        ref = next(module.parameters())
        gct = GCT(channels, device=ref.device, dtype=ref.dtype, **gct_kwargs)
        why = targets[name] if targets is not None else "before every conv"
        if sizes is not None and name not in sizes:
            why += " (not run by example_input)"
        if type(module) in _GCT_CLASS:
            module.__class__ = _GCT_CLASS[type(module)]
            module.gct_checkpoint = checkpoint
            module.add_module("gct", gct)
        elif kind == "mixed":
            from .gated_timm import GCTMixedConv2d

            module.__class__ = GCTMixedConv2d
            module.add_module("gct", gct)
            why = f"one GCT over the whole input of its {len(module) - 1} split convs"
        else:
            if hasattr(module, "gct"):
                raise ValueError(
                    f"conv {name!r} ({ctype}) already has an attribute `gct` that is not a GCT; cannot insert one"
                )
            module.add_module("gct", gct)
            module.register_forward_pre_hook(_gct_pre_hook)
            if checkpoint:
                why += f"; checkpoint not applied ({'conv subclass' if kind == 'conv' else ctype} with its own forward)"
        note(True, why)
    model.gct_report = report
    attach_no_weight_decay(model)
    return model


def remove_gct(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_gct` in place: restore the plain conv classes, drop the ``gct`` children, hooks,
    ``model.gct_report`` and the ``no_weight_decay()`` it attached (the model's own comes back).  GCT
    modules that were not inserted by ``apply_gct`` stay.  Returns ``model``.
    """
    gated_mixed = _loaded_class("gctnet.gated_timm", "GCTMixedConv2d")
    for module in model.modules():
        cls = type(module)
        if cls in _PLAIN_CLASS:
            del module.gct
            del module.gct_checkpoint
            module.__class__ = _PLAIN_CLASS[cls]
        elif gated_mixed is not None and cls is gated_mixed:
            del module.gct
            module.__class__ = cls.__bases__[0]
        elif _has_gct_hook(module):
            for key, hook in list(module._forward_pre_hooks.items()):
                if hook is _gct_pre_hook:
                    del module._forward_pre_hooks[key]
            if _conv_has_gct(module):
                del module.gct
    if "gct_report" in model.__dict__:
        del model.gct_report
    _detach_no_weight_decay(model)
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
