"""CIFAR-style ResNets (He et al., 2016, section 4.2) for 28x28 / 32x32 inputs.

Depth ``6n + 2``: a 3x3 stem conv (stride 1), three stages of ``n`` basic blocks with 16, 32, 64 channels
(times ``width``), global average pooling and a linear classifier.  Shortcuts are option B: a 1x1 conv
+ BN projection where the shape changes (so, as in the paper's placement, those convs get their own GCT
in ``gct_`` models), identity otherwise.

Registered names (family ``"cifar_resnet"``), for depth in 20, 32, 44, 56, 110:

* ``resnet<depth>``          plain
* ``<attn>_resnet<depth>``   block attention on each block's residual branch, after ``bn2`` and before
  the addition, for every key of :data:`gctnet.attention.ATTENTION_KEYS`: ``se_`` (gctnet's SE:
  reduction 16, hidden width >= 8; no timm needed), ``eca_``, ``cbam_``, ... (timm's layers)
* ``gct_resnet<depth>``      GCT before every conv (stem, block and shortcut convs)
* ``gct_resnet<depth>_block`` one GCT per block (before its first conv)

Builder arguments: ``num_classes`` (default 10), ``in_chans`` (default 3; 1 for Fashion-MNIST),
``width`` (channel multiplier, default 1), ``zero_init_residual`` (default False).  ``gct_`` variants
also accept ``gct_kwargs`` (a mapping forwarded to :func:`gctnet.surgery.apply_gct`), ``<attn>_``
variants ``attn_kwargs`` (a mapping forwarded to the attention layer).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

from torch import Tensor, nn

from ..attention import AttentionSpec, get_attention
from ._variants import register_variants
from .attention import attention_block, reset_attention
from .interface import ClassifierMixin, FeatureInfo, _levels
from .se import SE_REDUCTION, make_se

__all__ = ["BasicBlock", "CifarResNet", "cifar_resnet", "CIFAR_DEPTHS", "CIFAR_CFG"]

CIFAR_DEPTHS = (20, 32, 44, 56, 110)
STAGE_CHANNELS = (16, 32, 64)

# CIFAR-10 statistics; Fashion-MNIST users take theirs from gctnet.data.dataset_info.
CIFAR_CFG = {
    "input_size": (3, 32, 32),
    "mean": (0.4914, 0.4822, 0.4465),
    "std": (0.2470, 0.2435, 0.2616),
    "first_conv": "conv1",
    "classifier": "fc",
    "crop_pct": 1.0,
    "interpolation": "bilinear",
    "pool_size": (8, 8),  # forward_features at 32x32 (reduction 4)
}


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (optionally attention on the residual branch).

    Attributes ``conv1, bn1, conv2, bn2`` and ``shortcut`` (``nn.Sequential(conv1x1, BN)`` when the
    shape changes, else ``nn.Identity``); ``se`` is ``attn_layer(planes)``, applied after ``bn2`` and
    before the addition, or ``None`` without ``attn_layer``.
    """

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, *, attn_layer: Optional[Callable[[int], nn.Module]] = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.se: Optional[nn.Module] = attn_layer(planes) if attn_layer is not None else None
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        out = out + self.shortcut(x)
        return self.relu(out)


class CifarResNet(ClassifierMixin, nn.Module):
    """ResNet for small images: stem conv -> ``layer1..layer3`` -> global average pool -> ``fc``.

    timm's model interface (``forward_features``, ``reset_classifier``, ``feature_info`` with the three
    stages, ...) comes from :class:`gctnet.models.interface.ClassifierMixin`.

    Args:
        depth: ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: classifier outputs.
        in_chans: input channels (the stem conv's ``in_channels``).
        width: multiplier of the stage widths 16/32/64 (e.g. 2 or 0.5); every width stays >= 1.
        attn_layer: block attention in every block (after ``bn2``): a key such as ``"se"`` or ``"eca"``
            or a layer class (:func:`gctnet.attention.get_attention`); None: plain blocks.
        attn_kwargs: keyword arguments of the attention layer.
        zero_init_residual: initialise each block's last BN weight to 0 (block starts as identity).
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1,
        *,
        attn_layer: Optional[AttentionSpec] = None,
        attn_kwargs: Optional[Mapping[str, Any]] = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}")
        for arg, value in (("num_classes", num_classes), ("in_chans", in_chans)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
            raise ValueError(f"width must be a positive number (a multiplier of the widths 16/32/64), got {width!r}")
        blocks_per_stage = (depth - 2) // 6
        widths: List[int] = [max(1, int(round(c * width))) for c in STAGE_CHANNELS]
        self.depth = depth
        self.widths = tuple(widths)

        self.conv1 = _conv3x3(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        block = BasicBlock if attn_layer is None else attention_block(BasicBlock, attn_layer, attn_kwargs)
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            stages.append(self._make_stage(block, in_planes, planes, blocks_per_stage, 1 if i == 0 else 2))
            in_planes = planes
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights(zero_init_residual)
        reset_attention(self)
        self._init_interface()

    @staticmethod
    def _make_stage(
        block: Callable[..., BasicBlock], in_planes: int, planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        layers = [block(in_planes, planes, stride)]
        layers += [block(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _layout(self) -> Tuple[List[str], FeatureInfo]:
        steps = ["conv1", "bn1", "relu", "layer1", "layer2", "layer3"]
        widths = [self.widths[0]] * 3 + list(self.widths)
        return steps, _levels(steps, [self.get_submodule(s) for s in steps], widths)


def cifar_resnet(
    depth: int = 20,
    num_classes: int = 10,
    in_chans: int = 3,
    width: float = 1,
    *,
    se: bool = False,
    se_reduction: int = SE_REDUCTION,
    attn_layer: Optional[AttentionSpec] = None,
    attn_kwargs: Optional[Mapping[str, Any]] = None,
    zero_init_residual: bool = False,
) -> CifarResNet:
    """Build a CIFAR-style ResNet (see :class:`CifarResNet`).

    ``se=True`` adds gctnet's SE (reduction ``se_reduction``) to every block; ``attn_layer`` any block
    attention (a key such as ``"eca"``, ``"cbam"``, ``"gct"``, or a layer class).
    """
    if se:
        if attn_layer is not None:
            raise ValueError("give either se=True or attn_layer, not both")
        attn_layer = functools.partial(make_se, reduction=se_reduction)
    return CifarResNet(
        depth,
        num_classes,
        in_chans,
        width,
        attn_layer=attn_layer,
        attn_kwargs=attn_kwargs,
        zero_init_residual=zero_init_residual,
    )


def _depth_builder(depth: int, attn: Optional[str] = None) -> Any:
    name = f"{attn + '_' if attn else ''}resnet{depth}"

    def build(num_classes: int = 10, in_chans: int = 3, width: float = 1, **kwargs: Any) -> CifarResNet:
        fixed = sorted({"depth", "se", "se_reduction", "attn_layer"} & set(kwargs))
        if fixed:
            raise TypeError(
                f"{name}: {', '.join(map(repr, fixed))} fixed by the model name; use "
                "gctnet.models.cifar_resnet.cifar_resnet(...) to choose depth and attention"
            )
        if attn is None and "attn_kwargs" in kwargs:
            raise TypeError(f"{name} has no block attention to take attn_kwargs (an <attn>_{name} model has)")
        if attn is not None:  # resolved here, so a missing timm is reported with the model name
            kwargs["attn_layer"] = get_attention(attn, what=name)
        return cifar_resnet(depth, num_classes, in_chans, width, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"CIFAR-style ResNet-{depth}{f' with {attn!r} attention in every block' if attn else ''} "
        "(see gctnet.models.cifar_resnet)."
    )
    return build


def _register(depths: Sequence[int] = CIFAR_DEPTHS) -> None:
    for depth in depths:
        register_variants(
            f"resnet{depth}",
            _depth_builder(depth),
            attention=functools.partial(_depth_builder, depth),
            block=True,
            family="cifar_resnet",
            cfg=CIFAR_CFG,
            defaults={"num_classes": 10, "in_chans": 3},
        )


_register()
