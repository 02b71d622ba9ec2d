"""3-D video ResNet-18 (torchvision's ``r3d_18``) with GCT before every ``Conv3d`` (the paper's Kinetics
experiment puts GCT before the 3-D convs).

Registered names (family ``"video"``): ``r3d_18`` (plain), ``gct_r3d_18`` (GCT before every Conv3d,
stem and shortcut convs included: 20 GCTs) and ``gct_r3d_18_block`` (one GCT per residual block).
Input: clips of shape (N, C, T, H, W); GCT reduces over T, H and W together.  No weights are downloaded.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.video import r3d_18 as _tv_r3d_18
from torchvision.models.video.resnet import VideoResNet

from ._variants import register_variants

__all__ = ["r3d_18", "gct_r3d_18", "gct_r3d_18_block"]

# Kinetics-400 statistics as in torchvision's video weights; input_size is (C, T, H, W)
_CFG = {
    "input_size": (3, 16, 112, 112),
    "mean": (0.43216, 0.394666, 0.37645),
    "std": (0.22803, 0.22145, 0.216989),
    "first_conv": "stem.0",
    "classifier": "fc",
}


def r3d_18(num_classes: int = 400, in_chans: int = 3) -> VideoResNet:
    """torchvision's R3D-18 (random init); ``in_chans`` replaces the stem conv's input channels."""
    model = _tv_r3d_18(weights=None, num_classes=num_classes)
    if in_chans != 3:
        old = model.stem[0]
        model.stem[0] = nn.Conv3d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    return model


_BUILDERS = register_variants("r3d_18", r3d_18, family="video", cfg=_CFG,
                              defaults={"num_classes": 400, "in_chans": 3}, block=True)
gct_r3d_18 = _BUILDERS["gct_r3d_18"]
gct_r3d_18_block = _BUILDERS["gct_r3d_18_block"]
