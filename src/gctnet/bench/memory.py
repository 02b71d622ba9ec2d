"""Saved-for-backward accounting with ``torch.autograd.graph.saved_tensors_hooks``.

Counts the bytes autograd keeps alive between forward and backward, once per unique storage (a tensor
saved by two ops, or a view of a saved tensor, is counted once).  Parameters and buffers of the given
modules can be excluded, so the number is the *activation* memory a training step holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

__all__ = ["SavedBytes", "saved_tensor_bytes"]


@dataclass
class SavedBytes:
    total: int  # bytes of unique storages saved for backward
    count: int  # number of unique storages
    largest: int  # bytes of the largest saved storage
    sizes: tuple[int, ...] = ()  # bytes of each unique saved storage, in saving order

    def per(self, n: int) -> float:
        return self.total / max(n, 1)


def _storage_key(t: torch.Tensor):
    s = t.untyped_storage()
    return (t.device.type, t.device.index, s.data_ptr())


def saved_tensor_bytes(
    fn: Callable[[], Any],
    exclude: Optional[Iterable[nn.Module]] = None,
) -> tuple[Any, SavedBytes]:
    """Run ``fn()`` (a forward pass) and measure what autograd saved for backward.

    Returns ``(fn's result, SavedBytes)``.  Keep the result alive until you have read the numbers if you
    also want to run backward afterwards.
    """
    skip = set()
    for m in exclude or ():
        for t in list(m.parameters()) + list(m.buffers()):
            skip.add(_storage_key(t))
    seen: dict = {}

    def pack(t: torch.Tensor):
        try:
            key = _storage_key(t)
        except (RuntimeError, NotImplementedError):  # e.g. tensor subclasses without storage
            return t
        if key not in skip and key not in seen:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    sizes = list(seen.values())
    return out, SavedBytes(total=sum(sizes), count=len(sizes), largest=max(sizes, default=0), sizes=tuple(sizes))
