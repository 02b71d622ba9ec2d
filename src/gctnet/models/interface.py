"""timm's model interface for gctnet's image classifiers (plain PyTorch: timm is not imported).

Every classifier :func:`gctnet.create_model` builds (CIFAR ResNets, torchvision ResNet/ResNeXt/SE-ResNet,
VGG-16-BN, Inception-v3, MobileNetV2, the official GCT-ResNet-50) has timm's interface:

* ``num_classes``, ``num_features`` (channels of :meth:`forward_features`), ``head_hidden_size`` (width
  of ``forward_head(x, pre_logits=True)``), ``feature_info`` (one dict per feature level: ``module``,
  ``num_chs``, ``reduction``);
* ``forward(x) = forward_head(forward_features(x))``, computing exactly what the architecture's own
  forward computes;
* ``get_classifier()``, ``reset_classifier(num_classes, global_pool=None)``: ``num_classes=0`` removes
  the classifier (the forward returns the pre-logits features), ``global_pool=""`` also removes the
  pooling (the forward returns the unpooled feature map; needs ``num_classes=0``), ``"avg"`` restores it;
* ``forward_intermediates(x, indices=None, ...)`` (timm's ``features_only=True, feature_cls="getter"``),
  ``prune_intermediate_layers(...)``, ``set_grad_checkpointing(enable=True)`` (each feature stage runs
  under ``torch.utils.checkpoint``).

torchvision models keep their classes' names and ``state_dict`` keys: :func:`adapt` re-classes a
torchvision ``ResNet``/``VGG``/``Inception3``/``MobileNetV2`` to a subclass defined here (the same
trick :func:`gctnet.apply_gct` uses for convs), so ``isinstance(model, torchvision.models.ResNet)`` holds.

What a level of ``feature_info`` is: the forward of ``forward_features`` is a list of *steps* (module
names); a step ends a level when the next step downsamples (or it is the last step), so each level is
the last map of its resolution, as in timm.  The steps between two levels form a *stage*.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torchvision
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..gated_conv import _is_fx_tracing

__all__ = ["ClassifierMixin", "ResNet", "VGG", "Inception3", "MobileNetV2", "adapt", "GLOBAL_POOLS"]

#: the ``global_pool`` values gctnet models support ("" = no pooling, for a headless backbone)
GLOBAL_POOLS = ("avg", "")

FeatureInfo = List[Dict[str, Any]]


def _stride(module: nn.Module) -> int:
    """Downsampling factor of ``module``: the largest stride of a conv or pooling layer inside it
    (the parallel branches of an Inception or residual block all downsample by the same factor)."""
    strides = [1]
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            s = m.stride
            strides.append(int(s[0] if isinstance(s, (tuple, list)) else s))
    return max(strides)


def _levels(steps: Sequence[str], modules: Sequence[nn.Module], channels: Sequence[int],
            reduction: int = 1) -> FeatureInfo:
    """``feature_info`` for a chain of steps: a step is a level when it is the last one or the next
    step downsamples; ``channels[i]`` is the output width of step i (only read at levels)."""
    strides = [_stride(m) for m in modules]
    info: FeatureInfo = []
    for i, name in enumerate(steps):
        reduction *= strides[i]
        if i == len(steps) - 1 or strides[i + 1] > 1:
            info.append({"module": name, "num_chs": int(channels[i]), "reduction": reduction})
    return info


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
    return num_classes


def _take_indices(levels: int, indices: Union[None, int, Sequence[int]]) -> List[int]:
    """timm's convention: None = every level, an int n = the last n levels, a sequence = those levels
    (negative ones count from the end)."""
    if indices is None:
        indices = levels
    if isinstance(indices, int):
        if not 0 < indices <= levels:
            raise ValueError(f"indices={indices}: this model has {levels} feature levels (1..{levels} last levels)")
        return list(range(levels - indices, levels))
    out = []
    for i in indices:
        j = levels + i if i < 0 else i
        if not 0 <= j < levels:
            raise ValueError(f"feature index {i} is out of range: this model has {levels} feature levels")
        out.append(j)
    return out


class ClassifierMixin:
    """timm's model interface on top of an architecture's modules (see the module docstring).

    An architecture provides :meth:`_layout` (its steps and ``feature_info``), :meth:`_pool`,
    :meth:`_pre_logits`, ``_classifier`` (dotted name of the classifier layer) and optionally
    :meth:`_prepare` (input transform before the first step); :meth:`_init_interface` sets the rest.
    """

    _classifier: str = "fc"
    #: True when forward_features is its top-level children called one after the other (timm's
    #: FeatureListNet(flatten_sequential=True) then reproduces it)
    feature_chain: bool = True

    # ---- per architecture -------------------------------------------------------------------------
    def _layout(self) -> Tuple[List[str], FeatureInfo]:
        raise NotImplementedError

    def _pool(self, x: Tensor) -> Tensor:
        """Global pooling and flatten: (N, C, H, W) -> (N, C)."""
        return torch.flatten(self.avgpool(x), 1)  # type: ignore[attr-defined]

    def _pre_logits(self, x: Tensor) -> Tensor:
        return x

    def _prepare(self, x: Tensor) -> Tensor:
        return x

    # ---- setup -----------------------------------------------------------------------------------
    def _init_interface(self) -> None:
        steps, info = self._layout()
        cuts = [steps.index(f["module"]) + 1 for f in info]
        if cuts[-1] != len(steps):
            raise AssertionError(f"{type(self).__name__}: the last step must be a feature level")
        self._stages = [steps[a:b] for a, b in zip([0] + cuts[:-1], cuts)]
        self.feature_info = info
        self.num_features = info[-1]["num_chs"]
        head = self.get_classifier()
        self.head_hidden_size = int(head.in_features) if isinstance(head, nn.Linear) else self.num_features
        self.num_classes = int(head.out_features) if isinstance(head, nn.Linear) else 0
        self.grad_checkpointing = False
        self._global_pool = "avg"

    # ---- timm's interface ------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self._classifier)  # type: ignore[attr-defined]

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier with ``num_classes`` outputs (0: none); ``global_pool`` "avg" or "" (none)."""
        num_classes = _check_num_classes(num_classes)
        pool = self._global_pool if global_pool is None else global_pool
        if pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS} (gctnet models pool by averaging), got {pool!r}")
        if pool == "" and num_classes:
            raise ValueError("global_pool='' (no pooling) needs num_classes=0: a classifier needs pooled features")
        old = self.get_classifier()
        if num_classes:
            ref = getattr(old, "weight", None)
            new: nn.Module = nn.Linear(self.head_hidden_size, num_classes,
                                       device=None if ref is None else ref.device,
                                       dtype=None if ref is None else ref.dtype)
        else:
            new = nn.Identity()
        parent, _, attr = self._classifier.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, attr, new)  # type: ignore[attr-defined]
        self.num_classes = num_classes
        self._global_pool = pool

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)

    def _run_stage(self, x: Tensor, stage: List[str]) -> Tensor:
        for name in stage:
            x = self.get_submodule(name)(x)  # type: ignore[attr-defined]
        return x

    def _forward_stages(self, x: Tensor, take: Sequence[int] = (), last: Optional[int] = None) -> Tuple[Tensor, List[Tensor]]:
        x = self._prepare(x)
        ckpt = self.grad_checkpointing and torch.is_grad_enabled() and not _is_fx_tracing()
        out: List[Tensor] = []
        for i, stage in enumerate(self._stages):
            x = checkpoint(self._run_stage, x, stage, use_reentrant=False) if ckpt else self._run_stage(x, stage)
            if i in take:
                out.append(x)
            if i == last:
                break
        return x, out

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, before global pooling: (N, num_features, H / r, W / r)."""
        return self._forward_stages(x)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooling, the layers before the classifier, and (unless ``pre_logits``) the classifier."""
        if self._global_pool == "":
            return x
        x = self._pre_logits(self._pool(x))
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: Union[None, int, Sequence[int]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """The feature maps of the levels ``indices`` (timm's convention) and the final features.

        ``norm`` is accepted for timm's API (these models have no final norm layer); ``stop_early``
        (and ``intermediates_only``) stop after the last requested level.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' for gctnet models, got {output_fmt!r}")
        take = _take_indices(len(self._stages), indices)
        last = max(take) if (stop_early or intermediates_only) else None
        final, intermediates = self._forward_stages(x, take, last)
        return intermediates if intermediates_only else (final, intermediates)

    def prune_intermediate_layers(
        self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the stages after the last of ``indices`` (and the head): what timm's getter needs."""
        take = _take_indices(len(self._stages), indices)
        for stage in self._stages[max(take) + 1:]:
            for name in stage:
                parent, _, attr = name.rpartition(".")
                setattr(self.get_submodule(parent) if parent else self, attr, nn.Identity())  # type: ignore[attr-defined]
        if prune_head:
            self.reset_classifier(0, "")
        return take


# --------------------------------------------------------------------------------------------------
# the architectures
# --------------------------------------------------------------------------------------------------
def _children(model: nn.Module, names: Sequence[str]) -> List[nn.Module]:
    return [model.get_submodule(n) for n in names]


class ResNet(ClassifierMixin, torchvision.models.ResNet):
    """torchvision's ResNet (ResNeXt, SE blocks, the official stride-in-1x1 blocks) with timm's interface."""

    def _layout(self) -> Tuple[List[str], FeatureInfo]:
        steps = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        width = [self.conv1.out_channels] * 4
        for i in range(1, 5):
            last = getattr(self, f"layer{i}")[-1]
            width.append((last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels)
        return steps, _levels(steps, _children(self, steps), width)


class VGG(ClassifierMixin, torchvision.models.VGG):
    """torchvision's VGG; the pooling is its 7x7 adaptive average pool, the pre-logits its MLP."""

    _classifier = "classifier.6"

    def _layout(self) -> Tuple[List[str], FeatureInfo]:
        steps, width, c = [], [], 0
        for i, m in enumerate(self.features):
            c = m.out_channels if isinstance(m, nn.Conv2d) else c
            steps.append(f"features.{i}")
            width.append(c)
        return steps, _levels(steps, list(self.features), width)

    def _pre_logits(self, x: Tensor) -> Tensor:
        for layer in list(self.classifier)[:6]:  # the modules themselves (a slice would be a new module)
            x = layer(x)
        return x


class MobileNetV2(ClassifierMixin, torchvision.models.MobileNetV2):
    """torchvision's MobileNetV2: features -> average pool -> dropout -> ``classifier.1``."""

    _classifier = "classifier.1"

    def _layout(self) -> Tuple[List[str], FeatureInfo]:
        steps = [f"features.{i}" for i in range(len(self.features))]
        width = [m.out_channels for m in self.features]
        return steps, _levels(steps, list(self.features), width)

    def _pool(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)

    def _pre_logits(self, x: Tensor) -> Tensor:
        return self.classifier[0](x)


class Inception3(ClassifierMixin, torchvision.models.Inception3):
    """torchvision's Inception-v3.  With ``aux_logits=True`` the forward stays torchvision's (the
    auxiliary head branches off inside the stages); the other methods work alike."""

    _STEPS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
              "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
              "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")

    @property
    def feature_chain(self) -> bool:  # type: ignore[override]
        return not self.transform_input and self.AuxLogits is None  # both act outside the chain of children

    def _layout(self) -> Tuple[List[str], FeatureInfo]:
        steps = list(self._STEPS)
        nxt = {"Conv2d_2b_3x3": self.Conv2d_2b_3x3.conv.out_channels,
               "Conv2d_4a_3x3": self.Conv2d_4a_3x3.conv.out_channels,
               "Mixed_5d": self.Mixed_6a.branch3x3.conv.in_channels,
               "Mixed_6e": self.Mixed_7a.branch3x3_1.conv.in_channels,
               "Mixed_7c": self.fc.in_features}
        return steps, _levels(steps, _children(self, steps), [nxt.get(s, 0) for s in steps])

    def _prepare(self, x: Tensor) -> Tensor:
        return self._transform_input(x)

    def _pre_logits(self, x: Tensor) -> Tensor:
        return self.dropout(x)

    def forward(self, x: Tensor) -> Any:
        if self.AuxLogits is not None:
            return torchvision.models.Inception3.forward(self, x)
        return ClassifierMixin.forward(self, x)


_ADAPTED = {torchvision.models.ResNet: ResNet, torchvision.models.VGG: VGG,
            torchvision.models.MobileNetV2: MobileNetV2, torchvision.models.Inception3: Inception3}


def adapt(model: nn.Module) -> nn.Module:
    """Give a torchvision ``ResNet``/``VGG``/``Inception3``/``MobileNetV2`` (exactly those classes, not
    subclasses) timm's interface in place by re-classing it; models that have it already or are of
    another class are returned unchanged.  The modules, parameters and ``state_dict`` keys stay."""
    cls = _ADAPTED.get(type(model))
    if cls is not None:
        model.__class__ = cls
        model._init_interface()
    return model
