"""Batch iteration over an explicit list of sample indices (one epoch, one rank).

The training engine decides which indices a rank sees in an epoch (a ``DistributedSampler``, also for
one process) and can start part-way through an epoch; these loaders turn that list into batches:

* :class:`TensorBatches` for :class:`~gctnet.data.memory.TensorImageDataset`: batched indexing and
  augmentation in the calling process; batch ``i`` of an epoch is augmented with a generator seeded
  from ``(seed_key..., i)``, so any batch is reproducible without replaying the ones before it.
* :class:`LoaderBatches` for any other dataset: a ``torch.utils.data.DataLoader`` with workers; with
  ``skip_bad_images`` the unreadable samples are dropped from their batch and counted in ``skipped``.
"""

from __future__ import annotations

from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from ..errors import BadImageError
from .memory import TensorImageDataset

__all__ = ["TensorBatches", "LoaderBatches", "make_batches", "collate_skip_none", "batch_seed"]


def batch_seed(key: Sequence[int], batch_index: int) -> int:
    """A 63-bit seed derived from ``key`` (e.g. seed, epoch, rank) and the batch number."""
    words = np.random.SeedSequence([int(k) for k in key] + [int(batch_index)]).generate_state(2, np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


def collate_skip_none(samples: List[Any]) -> Tuple[Optional[Tensor], Optional[Tensor], int]:
    """Collate ``(image, label)`` samples, dropping ``None`` (skipped bad images): ``(x, y, n_skipped)``."""
    good = [s for s in samples if s is not None]
    skipped = len(samples) - len(good)
    if not good:
        return None, None, skipped
    x, y = default_collate(good)
    return x, y, skipped


class _IndexBatches:
    """What every batch iterator here shares: the indices, the batch size, where to start, the seed key.

    Keyword options (``drop_last``, ``seed_key``, ``start_batch``) as for :func:`make_batches`.
    """

    def __init__(
        self,
        indices: Sequence[int] | Tensor,
        batch_size: int,
        *,
        drop_last: bool = False,
        seed_key: Sequence[int] = (0,),
        start_batch: int = 0,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.batch_size = int(batch_size)
        self.drop_last = drop_last
        self.seed_key = tuple(seed_key)
        self.start_batch = int(start_batch)
        self.skipped = 0


class TensorBatches(_IndexBatches):
    """Batches of an in-memory dataset, see the module docstring (options as for :func:`make_batches`)."""

    def __init__(self, dataset: TensorImageDataset, indices: Sequence[int] | Tensor, batch_size: int, **options: Any) -> None:
        super().__init__(indices, batch_size, **options)
        self.dataset = dataset

    def _total(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return max(0, self._total() - self.start_batch)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        gen = torch.Generator()
        for b in range(self.start_batch, self._total()):
            idx = self.indices[b * self.batch_size : (b + 1) * self.batch_size]
            gen.manual_seed(batch_seed(self.seed_key, b))
            yield self.dataset.get_batch(idx, gen)


class LoaderBatches(_IndexBatches):
    """A DataLoader over ``indices`` of ``dataset`` yielding ``(x, y)``; counts skipped bad images.

    Options (``drop_last``, ``seed_key``, ``start_batch``) as for :func:`make_batches`.
    """

    def __init__(
        self,
        dataset: Dataset,
        indices: Sequence[int] | Tensor,
        batch_size: int,
        *,
        workers: int = 0,
        pin_memory: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(indices, batch_size, **options)
        gen = torch.Generator()
        gen.manual_seed(batch_seed(self.seed_key, self.start_batch))
        self.loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.indices[self.start_batch * self.batch_size :].tolist(),
            drop_last=self.drop_last,
            num_workers=int(workers),
            collate_fn=collate_skip_none,
            pin_memory=pin_memory,
            generator=gen,
            persistent_workers=False,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        try:
            for x, y, skipped in self.loader:
                self.skipped += skipped
                if x is not None:
                    yield x, y
        except BadImageError as exc:  # from a worker, its message is the worker's whole traceback
            raise BadImageError(_worker_message(exc)) from None


def _worker_message(exc: BaseException) -> str:
    """The original one-line message of an exception a DataLoader worker raised (the last line of the
    traceback text the DataLoader puts into the message it re-raises), or the message itself."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    name = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return last[len(name):] if last.startswith(name) else str(exc)


def make_batches(
    dataset: Dataset,
    indices: Sequence[int] | Tensor,
    batch_size: int,
    *,
    drop_last: bool = False,
    seed_key: Sequence[int] = (0,),
    start_batch: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
) -> "TensorBatches | LoaderBatches":
    """The right batch iterator for ``dataset`` (in-memory: no workers needed).

    ``indices`` are the samples of this epoch on this rank, in order; ``drop_last`` drops a last partial
    batch; ``seed_key`` (e.g. seed, epoch, rank) seeds the augmentation (in-memory) or the worker RNG;
    ``start_batch`` skips the first batches (resuming mid-epoch).
    """
    options = dict(drop_last=drop_last, seed_key=seed_key, start_batch=start_batch)
    if isinstance(dataset, TensorImageDataset):
        return TensorBatches(dataset, indices, batch_size, **options)
    return LoaderBatches(dataset, indices, batch_size, workers=workers, pin_memory=pin_memory, **options)
