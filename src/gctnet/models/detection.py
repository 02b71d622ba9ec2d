"""Mask R-CNN R50-FPN with a GCT backbone (the paper's COCO setting) on torchvision's detection code.

Registered names (family ``"detection"``):

* ``maskrcnn_resnet50_fpn``      torchvision's Mask R-CNN R50-FPN, backbone with frozen BN
* ``gct_maskrcnn_resnet50_fpn``  the same with a GCT before every backbone conv (53 GCTs: stem,
  bottleneck and downsample convs; none in the FPN, RPN or ROI heads)

As in the paper (maskrcnn-benchmark's 1x schedule) the backbone uses ``FrozenBatchNorm2d`` and the stem
and ``layer1`` are frozen (``trainable_backbone_layers=3``); GCT parameters of the frozen part are frozen
too.  ``backbone="official"`` builds the official GCT-ResNet-50 body (stride on the 1x1 conv), which
takes the authors' ImageNet checkpoint through ``backbone_weights=<path>``; ``backbone="torchvision"``
(default) has torchvision's ResNet-50 layout and takes a gctnet ``gct_resnet50`` checkpoint.  No weights
are ever downloaded.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from ..checkpoints import describe_mismatch
from ..errors import KeyMismatchError
from .official import official_to_gctnet, resnet50_official
from .registry import register_model

__all__ = ["maskrcnn_resnet50_fpn", "gct_maskrcnn_resnet50_fpn", "BACKBONES"]

BACKBONES = ("torchvision", "official")
_CFG = {"input_size": (3, 800, 800), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def _load_backbone_weights(body: nn.Module, source: Union[str, "os.PathLike[str]", Mapping[str, Any]]) -> None:
    """Load an ImageNet classification checkpoint (official or gctnet layout; a path or a mapping, read
    by :mod:`gctnet.checkpoints`) into ``body``; the classifier (``fc.*``) is dropped."""
    # FrozenBatchNorm2d has no num_batches_tracked; the classifier is not part of the backbone
    state = {k: v for k, v in official_to_gctnet(source).items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    expected = {k: v for k, v in body.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(state) & set(expected) if state[k].numel() != expected[k].numel())
    if missing or unexpected or shapes:
        raise KeyMismatchError(
            f"backbone_weights do not fit the detection backbone: {describe_mismatch(missing, unexpected, shapes)}. "
            "Use backbone='official' for the authors' checkpoint (official key layout) and backbone='torchvision' "
            "for gctnet's gct_resnet50."
        )
    body.load_state_dict(state, strict=False)  # only fc.* and num_batches_tracked are absent


def _build(
    gct: bool,
    num_classes: int = 91,
    in_chans: int = 3,
    *,
    backbone: str = "torchvision",
    trainable_backbone_layers: int = 3,
    backbone_weights: Optional[Union[str, "os.PathLike[str]", Mapping[str, Any]]] = None,
    gct_kwargs: Optional[Mapping[str, Any]] = None,
    **maskrcnn_kwargs: Any,
) -> MaskRCNN:
    if in_chans != 3:
        raise ValueError(f"Mask R-CNN takes RGB images (its transform normalises 3 channels); in_chans must be 3, got {in_chans}")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if not isinstance(trainable_backbone_layers, int) or not 0 <= trainable_backbone_layers <= 5:
        raise ValueError(f"trainable_backbone_layers must be an int in 0..5, got {trainable_backbone_layers!r}")
    if gct_kwargs is not None and not gct:
        raise ValueError("gct_kwargs is only accepted by the gct_ model")
    if backbone == "official":
        body = resnet50_official(norm_layer=FrozenBatchNorm2d)
    else:
        body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    if gct:
        from ..surgery import apply_gct

        apply_gct(body, placement="all", **dict(gct_kwargs or {}))
    if backbone_weights is not None:
        _load_backbone_weights(body, backbone_weights)
    # freezes the stem and early stages (GCT parameters included) as torchvision/maskrcnn-benchmark do
    fpn_backbone = _resnet_fpn_extractor(body, trainable_backbone_layers)
    return MaskRCNN(fpn_backbone, num_classes=num_classes, **maskrcnn_kwargs)


def maskrcnn_resnet50_fpn(num_classes: int = 91, in_chans: int = 3, **kwargs: Any) -> MaskRCNN:
    """torchvision Mask R-CNN R50-FPN, frozen-BN backbone, no downloads (the baseline of the paper).

    Keyword arguments: ``backbone`` ("torchvision" or "official"), ``trainable_backbone_layers`` (0..5,
    default 3), ``backbone_weights`` (path or state_dict of an ImageNet checkpoint) and any
    ``torchvision.models.detection.MaskRCNN`` argument (``min_size``, ``max_size``, ...).
    """
    return _build(False, num_classes, in_chans, **kwargs)


def gct_maskrcnn_resnet50_fpn(num_classes: int = 91, in_chans: int = 3, **kwargs: Any) -> MaskRCNN:
    """:func:`maskrcnn_resnet50_fpn` with a GCT before every backbone conv; ``gct_kwargs`` go to
    :func:`gctnet.surgery.apply_gct`."""
    return _build(True, num_classes, in_chans, **kwargs)


for _name, _fn in (("maskrcnn_resnet50_fpn", maskrcnn_resnet50_fpn), ("gct_maskrcnn_resnet50_fpn", gct_maskrcnn_resnet50_fpn)):
    register_model(_name, _fn, defaults={"num_classes": 91}, cfg=_CFG, family="detection")
