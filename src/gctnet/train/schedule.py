"""Learning-rate schedules as pure functions of the global step (so resuming is exact).

The factor multiplies each parameter group's base learning rate.  Warm-up covers the first
``warmup_epochs`` (counted in steps): ``"linear"`` ramps from ``warmup_factor`` to 1, ``"constant"``
holds ``warmup_factor`` (the paper's first epoch at 0.1x).  After warm-up: ``"cosine"`` decays to
``min_factor`` at the last step, ``"step"`` multiplies by ``gamma`` at each milestone epoch,
``"constant"`` stays at 1.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

from torch.optim import Optimizer

__all__ = ["lr_factor", "StepLR"]


def lr_factor(
    step: int,
    *,
    steps_per_epoch: int,
    epochs: int,
    sched: str = "cosine",
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
    warmup_factor: float = 0.1,
    warmup_mode: str = "linear",
    min_factor: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based global optimiser step)."""
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    total = steps_per_epoch * epochs
    warm = int(round(warmup_epochs * steps_per_epoch))
    if step < warm:
        if warmup_mode == "constant":
            return warmup_factor
        if warmup_mode == "linear":
            return warmup_factor + (1.0 - warmup_factor) * step / warm
        raise ValueError(f"unknown warmup_mode {warmup_mode!r}")
    if sched == "cosine":
        t = min(1.0, (step - warm) / max(1, total - warm - 1))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if sched == "step":
        return gamma ** sum(1 for m in milestones if step >= int(round(m * steps_per_epoch)))
    if sched == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {sched!r}")


class StepLR:
    """Sets ``lr = initial_lr * factor(step)`` on every group before each optimiser step.

    Its only state is the step counter, kept by the training loop; :meth:`state_dict` records the
    schedule's settings so a checkpoint documents them.
    """

    def __init__(self, optimizer: Optimizer, **schedule: Any) -> None:
        self.optimizer = optimizer
        self.schedule = dict(schedule)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def factor(self, step: int) -> float:
        return lr_factor(step, **self.schedule)

    def set(self, step: int) -> float:
        """Apply the learning rate of ``step``; returns the first group's value."""
        f = self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> Dict[str, Any]:
        return {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in self.schedule.items()}

    def lrs(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]
