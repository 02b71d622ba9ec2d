"""Squeeze-and-Excitation (Hu et al., 2018) for the ``se_`` model variants.

The block itself is :class:`torchvision.ops.SqueezeExcitation` (global average pool -> 1x1 conv ->
ReLU -> 1x1 conv -> sigmoid -> scale).  This module only fixes the hidden width rule so every ``se_``
model in gctnet uses the same one.
"""

from __future__ import annotations

from torchvision.ops import SqueezeExcitation

__all__ = ["SE_REDUCTION", "SE_MIN_CHANNELS", "se_hidden_channels", "make_se"]

SE_REDUCTION = 16
"""Default reduction ratio r of the SE bottleneck (the SE paper's choice)."""

SE_MIN_CHANNELS = 8
"""Floor on the hidden width, so narrow layers (16 channels in CIFAR ResNets) keep a usable bottleneck
(same floor as timm's SE modules: ``16 // 16 = 1`` hidden unit would be nearly useless)."""


def _check_positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def se_hidden_channels(channels: int, reduction: int = SE_REDUCTION, min_channels: int = SE_MIN_CHANNELS) -> int:
    """Hidden width of the SE bottleneck: ``max(min_channels, channels // reduction)``, at most ``channels``."""
    _check_positive_int("SE channels", channels)
    _check_positive_int("SE reduction", reduction)
    _check_positive_int("SE min_channels", min_channels)
    return min(channels, max(min_channels, channels // reduction))


def make_se(channels: int, reduction: int = SE_REDUCTION, min_channels: int = SE_MIN_CHANNELS) -> SqueezeExcitation:
    """A :class:`torchvision.ops.SqueezeExcitation` for ``channels`` input channels."""
    return SqueezeExcitation(channels, se_hidden_channels(channels, reduction, min_channels))
