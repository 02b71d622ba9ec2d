"""Reusable CPU output buffers for GCT outputs that live only for one op call.

In a GCT-gated convolution (:mod:`gctnet.surgery`) the GCT output ``y`` is consumed by the convolution
right away and never saved: in inference (no grad), and in the lean training path
(``apply_gct(..., checkpoint=True)``, the default) in the forward and again (recomputed) in the backward.  Allocating it fresh each time costs more on the CPU than writing it:
large blocks come from ``mmap`` or a freshly trimmed heap, so every page faults (and is zeroed by the
kernel) on first write, and freeing it unmaps it again.  :func:`like` hands out one buffer per
(shape, strides, dtype) instead, kept per thread and reused while nobody else holds it.

Bounded: at most ``MAX_ENTRIES`` buffers and ``GCTNET_SCRATCH_MB`` MiB (default 512) per thread,
least recently used first out; ``GCTNET_SCRATCH_MB=0`` (or :func:`set_limit_mb`/:func:`use_limit_mb`)
turns reuse off.  :func:`clear` frees them.
CUDA tensors never come here (PyTorch's caching allocator already reuses device memory).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from typing import Iterator, Optional

import torch
from torch import Tensor

from .cpu_ops import _addressable

__all__ = ["MAX_ENTRIES", "limit_bytes", "set_limit_mb", "use_limit_mb", "like", "clear", "held_bytes"]

MAX_ENTRIES = 16
_DEFAULT_MB = 512


class _Buffers(threading.local):
    def __init__(self) -> None:
        self.entries: "OrderedDict[tuple, Tensor]" = OrderedDict()
        self.bytes = 0


_local = _Buffers()
_override: Optional[int] = None  # bytes, from set_limit_mb (wins over the environment)


def _check_mb(mb: float, source: str) -> int:
    if not mb >= 0:
        raise ValueError(f"the scratch budget must be a number of MiB >= 0 (0 disables reuse), got {mb!r} from {source}")
    return int(mb * (1 << 20))


def set_limit_mb(mb: Optional[float]) -> None:
    """Set the per-thread budget in MiB for this process (0 disables reuse); ``None``: back to the
    environment (``GCTNET_SCRATCH_MB``, default 512).  Buffers already held stay until evicted by a new one
    or freed by :func:`clear`."""
    global _override
    _override = None if mb is None else _check_mb(float(mb), "set_limit_mb")


@contextlib.contextmanager
def use_limit_mb(mb: Optional[float]) -> Iterator[None]:
    """:func:`set_limit_mb` for a block (``with use_limit_mb(0):`` runs it without reuse)."""
    global _override
    previous = _override
    set_limit_mb(mb)
    try:
        yield
    finally:
        _override = previous


_env_limit: tuple = ("", _DEFAULT_MB << 20)  # (GCTNET_SCRATCH_MB as read, its bytes): parsed once per value


def limit_bytes() -> int:
    """The per-thread byte budget: :func:`set_limit_mb`, else ``GCTNET_SCRATCH_MB`` MiB (default 512)."""
    global _env_limit
    if _override is not None:
        return _override
    raw = os.environ.get("GCTNET_SCRATCH_MB", "")
    if raw == _env_limit[0]:  # every gated conv asks: parse a value once
        return _env_limit[1]
    text = raw.strip()
    if not text:
        value = _DEFAULT_MB << 20
    else:
        try:
            mb = float(text)
        except ValueError:
            raise ValueError(f"GCTNET_SCRATCH_MB must be a number of MiB >= 0 (0 disables reuse), got {text!r}") from None
        value = _check_mb(mb, f"GCTNET_SCRATCH_MB={text!r}")
    _env_limit = (raw, value)
    return value


def _nbytes(t: Tensor) -> int:
    return t.untyped_storage().nbytes()


def _storage_users(t: Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


_SOLE: Optional[int] = None  # the use count of a storage held by one tensor only


def _only_ours(buf: Tensor) -> bool:
    """No tensor other than the cached one uses the buffer's storage (every handed-out view is gone)."""
    global _SOLE
    if not hasattr(torch._C, "_storage_Use_Count"):  # pragma: no cover - a torch without the helper: no reuse
        return False
    if _SOLE is None:
        _SOLE = _storage_users(torch.empty(1))
    return _storage_users(buf) <= _SOLE


def like(x: Tensor) -> Optional[Tensor]:
    """A buffer with ``x``'s shape, strides and dtype for an output that dies before the next call.

    Returns ``None`` (the caller allocates as usual) for non-CPU or subclassed ``x``, for layouts other
    than contiguous, channels_last(_3d) and (N, L, C)-strided 1-D (those the C++ kernels write), when
    reuse is off, or when the buffer would not fit the budget.  The contents are garbage.  The buffer is handed
    out again only after every tensor on it (the returned one, views of it) has been freed.
    """
    if type(x) is not Tensor or x.device.type != "cpu":  # subclasses (FakeTensor, ...) never share buffers
        return None
    if not _addressable(x):  # the layouts the C++ kernels write without a copy (which empty_like keeps)
        return None
    limit = limit_bytes()
    size = x.numel() * x.element_size()
    if limit <= 0 or size > limit or size == 0:
        return None
    # inference tensors (made under torch.inference_mode) cannot be written outside it: separate buffers
    key = (tuple(x.shape), x.stride(), x.dtype, torch.is_inference_mode_enabled())
    entries = _local.entries
    buf = entries.get(key)
    if buf is not None:
        if _only_ours(buf):
            entries.move_to_end(key)
            return buf.detach()  # a new tensor on the same storage: while it lives, the buffer is taken
        # still in use somewhere (a caller kept it): forget it, hand out a new one
        del entries[key]
        _local.bytes -= _nbytes(buf)
    buf = torch.empty_like(x)
    while entries and (len(entries) >= MAX_ENTRIES or _local.bytes + size > limit):
        _, old = entries.popitem(last=False)
        _local.bytes -= _nbytes(old)
    entries[key] = buf
    _local.bytes += size
    return buf.detach()


def held_bytes() -> int:
    """Bytes held by this thread's buffers."""
    return _local.bytes


def clear() -> None:
    """Free this thread's buffers."""
    _local.entries.clear()
    _local.bytes = 0
