"""ImageNet architectures from :mod:`torchvision.models`, as plain, ``<attn>_``, ``gct_`` and ``gct_..._block``.

Plain models come straight from torchvision's builders (``weights=None``: nothing is ever downloaded),
so torchvision checkpoints a user has on disk load into them, and into the ``gct_`` variants via
:func:`gctnet.surgery.load_plain_weights` (only GCT keys are missing; GCT starts as the identity).

Registered names (family ``"torchvision"``):

============================  ==========================================================================
``resnet18/34/50/101/152``,   plain, ``<attn>_`` (block attention on the output of each block's last BN,
``resnext50_32x4d``           before the addition: ``se_`` = SE-ResNet, ``eca_``, ``cbam_``, ... one per
                              key of :data:`gctnet.attention.ATTENTION_KEYS`), ``gct_`` (GCT before every
                              conv, stem and downsample convs included) and ``gct_<arch>_block`` (one GCT
                              per residual block)
``vgg16_bn``,                 plain and ``gct_``
``inception_v3``,             (``inception_v3``: ``aux_logits=False`` and ``init_weights=True`` unless
``mobilenet_v2``              given; nominal input 299x299, any size >= 75 works)
============================  ==========================================================================

Builder arguments: ``num_classes`` (default 1000; replaces the classifier), ``in_chans`` (default 3; any
other value replaces the stem conv by a freshly initialised one with that many input channels, and a
``gct_`` model's stem GCT follows), plus any keyword of the torchvision builder (e.g.
``zero_init_residual=True``, ``width_mult=0.5``).  ``gct_`` variants also take ``gct_kwargs``, ``<attn>_``
variants ``attn_kwargs`` (options of the attention layer).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..attention import AttentionSpec
from ..data.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from ._variants import register_variants
from .attention import attention_block, reset_attention

__all__ = [
    "ARCHS",
    "TorchvisionArch",
    "build_torchvision",
    "build_attn_resnet",
    "build_se_resnet",
    "replace_stem",
]


# --------------------------------------------------------------------------------------------------
# architecture table
# --------------------------------------------------------------------------------------------------
def _kaiming_fan_out(w: Tensor) -> None:
    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")


def _inception_init(w: Tensor) -> None:  # torchvision Inception3's init of its convs
    nn.init.trunc_normal_(w, mean=0.0, std=0.1, a=-2, b=2)


@dataclass(frozen=True)
class TorchvisionArch:
    """How to build one torchvision architecture and where its stem conv and classifier live."""

    first_conv: str  # dotted module path of the stem conv
    classifier: str  # dotted module path of the classifier layer
    input_size: Tuple[int, int, int] = (3, 224, 224)
    pool_size: Tuple[int, int] = (7, 7)  # spatial size of forward_features at input_size
    crop_pct: float = 0.875
    defaults: Mapping[str, Any] = field(default_factory=dict)  # builder kwargs gctnet sets unless given
    stem_init: Callable[[Tensor], None] = _kaiming_fan_out  # init of a replaced stem conv (as the arch does)
    # ResNet family only: (block, layers, fixed kwargs) for the <attn>_ variants and gct_..._block
    resnet: Optional[Tuple[Type[Union[BasicBlock, Bottleneck]], Sequence[int], Mapping[str, Any]]] = None

    def cfg(self) -> Dict[str, Any]:
        return {
            "input_size": self.input_size,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "first_conv": self.first_conv,
            "classifier": self.classifier,
            "pool_size": self.pool_size,
            "crop_pct": self.crop_pct,
            "interpolation": "bilinear",
        }


def _resnet_arch(block: type, layers: Sequence[int], **fixed: Any) -> TorchvisionArch:
    return TorchvisionArch(first_conv="conv1", classifier="fc", resnet=(block, tuple(layers), dict(fixed)))


ARCHS: Dict[str, TorchvisionArch] = {
    "resnet18": _resnet_arch(BasicBlock, [2, 2, 2, 2]),
    "resnet34": _resnet_arch(BasicBlock, [3, 4, 6, 3]),
    "resnet50": _resnet_arch(Bottleneck, [3, 4, 6, 3]),
    "resnet101": _resnet_arch(Bottleneck, [3, 4, 23, 3]),
    "resnet152": _resnet_arch(Bottleneck, [3, 8, 36, 3]),
    "resnext50_32x4d": _resnet_arch(Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4),
    "vgg16_bn": TorchvisionArch(first_conv="features.0", classifier="classifier.6"),
    "inception_v3": TorchvisionArch(
        first_conv="Conv2d_1a_3x3.conv",
        classifier="fc",
        input_size=(3, 299, 299),
        pool_size=(8, 8),
        defaults={"aux_logits": False, "init_weights": True},
        stem_init=_inception_init,
    ),
    "mobilenet_v2": TorchvisionArch(first_conv="features.0.0", classifier="classifier.1"),
}


# --------------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------------
def replace_stem(
    model: nn.Module, path: str, in_chans: int, init: Callable[[Tensor], None] = _kaiming_fan_out
) -> nn.Conv2d:
    """Replace the conv at ``path`` by a new one reading ``in_chans`` channels (other settings kept)."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, attr)
    if not isinstance(old, nn.Conv2d):
        raise TypeError(f"expected an nn.Conv2d stem at {path!r}, found {type(old).__name__}")
    if in_chans % old.groups:
        raise ValueError(f"in_chans={in_chans} is not divisible by the stem conv's groups={old.groups}")
    new = nn.Conv2d(
        in_chans,
        old.out_channels,
        old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    init(new.weight)
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    setattr(parent, attr, new)
    return new


def _without_weights(name: str, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """``kwargs`` minus ``weights=None``/``pretrained=False``; refuses real weights (no downloads)."""
    if kwargs.get("weights") is not None or kwargs.get("pretrained"):
        raise ValueError(
            f"{name}: gctnet never downloads weights; build the model without 'weights' and load a local "
            "torchvision checkpoint with model.load_state_dict(torch.load(path)) "
            "(or gctnet.load_plain_weights(model, path) for gct_ models)"
        )
    return {k: v for k, v in kwargs.items() if k not in ("weights", "pretrained")}


def _finish(name: str, arch: TorchvisionArch, model: nn.Module, in_chans: int) -> nn.Module:
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans <= 0:
        raise ValueError(f"{name}: in_chans must be a positive int, got {in_chans!r}")
    if in_chans != 3:
        if getattr(model, "transform_input", False):
            raise ValueError(
                f"{name}: transform_input=True assumes 3 RGB channels; it cannot be used with in_chans={in_chans}"
            )
        replace_stem(model, arch.first_conv, in_chans, arch.stem_init)
    return model


def build_torchvision(name: str, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build torchvision architecture ``name`` (a key of :data:`ARCHS`) with ``weights=None``."""
    arch = _arch(name)
    kwargs = _without_weights(name, kwargs)
    builder = getattr(torchvision.models, name)
    model = builder(weights=None, num_classes=num_classes, **{**arch.defaults, **kwargs})
    return _finish(name, arch, model, in_chans)


def build_attn_resnet(
    name: str,
    attn: AttentionSpec,
    num_classes: int = 1000,
    in_chans: int = 3,
    *,
    attn_kwargs: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> ResNet:
    """torchvision's :class:`ResNet` for ResNet/ResNeXt ``name`` with block attention ``attn`` (a key such as
    ``"se"`` or ``"eca"``, or a layer class) after the last BN of every block, before the addition."""
    arch = _arch(name)
    if arch.resnet is None:
        raise ValueError(
            f"{name} is not a ResNet-family architecture; attention variants exist for {sorted(_resnet_names())}"
        )
    label = f"{attn}_{name}" if isinstance(attn, str) else name
    kwargs = _without_weights(label, kwargs)
    block, layers, fixed = arch.resnet
    model = ResNet(attention_block(block, attn, attn_kwargs, what=label), list(layers), num_classes=num_classes,
                   **{**fixed, **kwargs})
    return _finish(label, arch, reset_attention(model), in_chans)  # type: ignore[return-value]


def build_se_resnet(name: str, num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> ResNet:
    """SE-ResNet/ResNeXt: :func:`build_attn_resnet` with gctnet's SE (``"se"``)."""
    return build_attn_resnet(name, "se", num_classes, in_chans, **kwargs)


def _arch(name: str) -> TorchvisionArch:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown torchvision architecture {name!r}; known: {', '.join(ARCHS)}") from None


def _resnet_names() -> Sequence[str]:
    return [n for n, a in ARCHS.items() if a.resnet is not None]


def _named(fn: Callable[..., nn.Module], name: str, doc: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> nn.Module:
        return fn(num_classes=num_classes, in_chans=in_chans, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    return build


def _attention_builder(name: str, key: str) -> Callable[..., nn.Module]:
    def build(num_classes: int = 1000, in_chans: int = 3, **kwargs: Any) -> nn.Module:
        if "attn" in kwargs:
            raise TypeError(f"{key}_{name}: 'attn' is fixed by the model name; use build_attn_resnet(...) to choose it")
        return build_attn_resnet(name, key, num_classes, in_chans, **kwargs)

    build.__name__ = build.__qualname__ = f"{key}_{name}"
    build.__doc__ = f"{name} with {key!r} block attention after each block's last BN (torchvision's ResNet)."
    return build


def _register() -> None:
    for name, arch in ARCHS.items():
        plain = _named(
            lambda n=name, **kw: build_torchvision(n, **kw),
            name,
            f"torchvision.models.{name}(weights=None) with num_classes/in_chans handling.",
        )
        register_variants(
            name,
            plain,
            attention=functools.partial(_attention_builder, name) if arch.resnet is not None else None,
            block=arch.resnet is not None,
            family="torchvision",
            cfg=arch.cfg(),
            defaults={"num_classes": 1000, "in_chans": 3},
        )


_register()
