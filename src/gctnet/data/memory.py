"""A dataset held entirely in memory as one ``uint8`` tensor, with batched transforms."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .transforms import TensorTransform

__all__ = ["TensorImageDataset"]


class TensorImageDataset(Dataset):
    """Images ``uint8`` N x C x H x W and labels ``int64`` N, transformed on access.

    ``dataset[i]`` returns ``(float C x H x W, int)`` like any torch dataset (augmentation drawn from
    the global RNG); :meth:`get_batch` builds a whole batch at once with an explicit generator, which
    is what gctnet's training loop uses.  :meth:`subset` and :meth:`to` return cheap views/copies.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        transform: TensorTransform,
        classes: Sequence[str] = (),
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.transform = transform
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        x, y = self.get_batch(torch.tensor([index]))
        return x[0], int(y[0])

    def get_batch(self, indices: Tensor, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        """``(images float B x C x H x W, labels int64 B)`` for ``indices``, on the data's device."""
        idx = indices.to(self.images.device)
        return self.transform(self.images[idx], generator), self.labels[idx]

    def subset(self, indices: Sequence[int] | Tensor) -> "TensorImageDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorImageDataset(self.images[idx], self.labels[idx], self.transform, self.classes)

    def to(self, device: "torch.device | str") -> "TensorImageDataset":
        return TensorImageDataset(self.images.to(device), self.labels.to(device), self.transform, self.classes)

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"TensorImageDataset({n} images {c}x{h}x{w}, {len(self.classes)} classes, {self.transform})"
