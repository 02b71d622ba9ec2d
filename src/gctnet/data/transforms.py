"""Batched transforms for in-memory ``uint8`` image tensors (N x C x H x W).

Augmenting a whole batch with a few tensor operations is much faster than per-image PIL transforms
in DataLoader workers, and it works on whichever device holds the images.  Randomness comes from an
explicit ``torch.Generator`` (on the CPU), so a batch's augmentation is reproducible from its seed.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["normalize", "random_crop_flip", "TensorTransform"]


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32) -> Tensor:
    """``uint8`` (or float in [0, 255]) N x C x H x W -> ``(x / 255 - mean) / std`` in ``dtype``."""
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {x.shape[1]} channels")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = torch.tensor(mean, dtype=dtype, device=x.device).view(shape)
    s = torch.tensor(std, dtype=dtype, device=x.device).view(shape)
    return (x.to(dtype) / 255.0 - m) / s


def random_crop_flip(
    x: Tensor, padding: int = 0, hflip: bool = False, generator: Optional[torch.Generator] = None
) -> Tensor:
    """Per-image random crop (zero padding ``padding`` on each side) and horizontal flip (p = 0.5).

    Equivalent to torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()`` applied to
    each image independently, done for the whole batch with one gather.  Output keeps dtype and shape.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0 and not hflip:
        return x
    n, _, h, w = x.shape
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    rows = oy + torch.arange(h)
    cols = ox + torch.arange(w)
    if hflip:
        flip = torch.rand(n, 1, generator=generator) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    dev = x.device
    batch = torch.arange(n, device=dev)[:, None, None]
    out = x[batch, :, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]]  # N x H x W x C
    # clone, not .contiguous(): with C == 1 the permuted view already counts as contiguous, but its
    # strides (H*W, 1, W, 1) also read as channels_last, which makes oneDNN run the whole network in
    # channels_last (and torch 2.14's 1x1 stride-2 conv backward crashes on it for < 8 channels)
    return out.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


class TensorTransform:
    """Random crop + flip (training only) then normalisation, for ``uint8`` N x C x H x W batches.

    ``crop_padding=0`` and ``hflip=False`` give the evaluation transform.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], *, crop_padding: int = 0, hflip: bool = False
    ) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def __call__(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected an N x C x H x W batch, got shape {tuple(x.shape)}")
        x = random_crop_flip(x, self.crop_padding, self.hflip, generator)
        return normalize(x, self.mean, self.std)

    def __repr__(self) -> str:
        return (
            f"TensorTransform(mean={self.mean}, std={self.std}, crop_padding={self.crop_padding}, "
            f"hflip={self.hflip})"
        )
