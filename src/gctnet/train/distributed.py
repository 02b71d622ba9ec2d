"""torchrun / DDP plumbing: process-group set-up with a timeout, device choice, reductions.

Under ``torchrun`` (environment ``WORLD_SIZE`` > 1) :func:`setup` joins the process group (gloo on
CPU, nccl on CUDA) with ``timeout`` seconds for initialisation and every collective, so when one rank
dies the others fail with an error after at most that long instead of hanging.  Without torchrun
everything here is a no-op for a single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from .config import ConfigError

__all__ = ["DistContext", "setup", "teardown", "resolve_device", "resolve_threads", "shard"]

T = TypeVar("T")


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``; checks availability."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available (use --device cpu)")
        if spec == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(spec)


def resolve_threads(threads: "int | None" = None) -> int:
    """The torch intra-op thread count to use: ``threads`` if given; else ``OMP_NUM_THREADS`` if set (the
    user's or torchrun's choice, which torch already follows); else one less than the cores this process
    may run on, shared among the torchrun processes of this machine, at least 1.

    Why not all cores (torch's default): OpenMP threads spin while they wait for each other, so with
    one thread per core a single other busy process on the machine makes every parallel region wait for
    a descheduled thread -- on 2 shared cores, 2 threads trained ResNet-20 ~8x slower than 1 thread
    (docs/training.md, Threads).  Leaving one core free costs little when the machine is idle.
    """
    if threads is not None:
        return int(threads)
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, per_process - 1)


@dataclass
class DistContext:
    """Where this process sits: rank, world size, device; ``owns_group`` if :func:`setup` created it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """In-place sum/max over ranks (a tensor on this rank's device); identity for one process."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and share its result (or its error) with every rank."""
        if not self.distributed:
            return fn()
        box: List[Any] = [None, None]
        if self.is_main:
            try:
                box = [fn(), None]
            except Exception as exc:  # noqa: BLE001 - re-raised below on every rank
                box = [None, exc]
        dist.broadcast_object_list(box, src=0)
        result, error = box
        if error is not None:
            if self.is_main:
                raise error
            raise RuntimeError(f"rank 0 failed: {error}") from None
        return result

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every rank."""
        if self.distributed:
            for buf in module.buffers():
                dist.broadcast(buf, src=0)


def setup(device: str = "auto", timeout: float = 300.0) -> DistContext:
    """Join the torchrun process group if there is one; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        return DistContext(rank, world, local_rank, resolve_device(device, local_rank), owns_group=False)
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev, owns_group=False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        backend=backend,
        timeout=datetime.timedelta(seconds=float(timeout)),
        **({"device_id": dev} if dev.type == "cuda" else {}),
    )
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns_group=True)


def teardown(ctx: DistContext) -> None:
    """Leave the process group if :func:`setup` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: Sequence[int] | Tensor, rank: int, world_size: int) -> Tensor:
    """Every ``world_size``-th index starting at ``rank``: disjoint shards covering each index once.

    Used for evaluation (unlike ``DistributedSampler`` it never pads, so no sample counts twice).
    """
    return torch.as_tensor(indices, dtype=torch.long)[rank::world_size]
