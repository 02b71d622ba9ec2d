"""GCT before timm's ``MixedConv2d`` (imported by :func:`gctnet.apply_gct` only when a model has one).

``MixedConv2d`` (MixNet) splits its input channels into groups, each convolved by its own conv with
its own kernel size.  GCT normalises the channel embeddings over *all* input channels, so a GCT per
split conv would be another operator; :class:`GCTMixedConv2d` gates the whole input with one GCT (its
child ``gct``, so the parameters sit at ``<mixed conv>.gct.alpha|gamma|beta``) and then runs timm's
split convs unchanged.
"""

from __future__ import annotations

import torch
from timm.layers.mixed_conv2d import MixedConv2d
from torch import Tensor

from .layers import GCT

__all__ = ["GCTMixedConv2d"]


class GCTMixedConv2d(MixedConv2d):
    """timm's ``MixedConv2d`` whose input is gated by one GCT over all its channels (child ``gct``).

    ``MixedConv2d`` is an ``nn.ModuleDict`` whose forward calls every child on one channel split; here
    the split convs are every child but ``gct``.
    """

    gct: GCT

    def forward(self, x: Tensor) -> Tensor:
        x = self.gct(x)
        convs = [m for name, m in self.items() if name != "gct"]
        return torch.cat([conv(part) for conv, part in zip(convs, torch.split(x, self.splits, 1))], 1)
