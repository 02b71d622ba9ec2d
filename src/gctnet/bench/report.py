"""Measuring and reporting for the benchmarks: machine description, interleaved timing, tables.

* :func:`machine_info` describes where numbers came from (CPU model, cores, GPU, torch version, date).
* :func:`interleaved_times` times several candidates *side by side*: every repetition runs each
  candidate once, in turn, so slow drifts of a shared machine hit all of them alike; the medians of
  the repetitions are what the benchmarks report.
* :func:`format_table` / :func:`markdown_table` render rows for the terminal and for BENCHMARKS.md.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

__all__ = [
    "machine_info",
    "machine_markdown",
    "synchronize",
    "Timing",
    "interleaved_times",
    "format_table",
    "markdown_table",
]


# --------------------------------------------------------------------------------------------------
# machine description
# --------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def machine_info() -> Dict[str, Any]:
    """A description of this machine and software stack for recording next to benchmark figures."""
    info: Dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": _usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": None,
        "cuda": torch.version.cuda,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
        info["gpu_count"] = torch.cuda.device_count()
    return info


def machine_markdown(info: Optional[Mapping[str, Any]] = None) -> str:
    """The machine description as a markdown bullet list."""
    info = dict(info or machine_info())
    lines = [
        f"- date: {info['date']}",
        f"- CPU: {info['cpu']}, {info['cores']} usable cores, torch threads {info['torch_threads']}",
        f"- GPU: {info['gpu'] or 'none'}",
        f"- torch {info['torch']} (CUDA {info['cuda'] or 'n/a'}), triton {info.get('triton') or 'n/a'}, "
        f"Python {info['python']}",
        f"- platform: {info['platform']}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------
def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu" and hasattr(torch, "xpu"):  # pragma: no cover
        torch.xpu.synchronize(device)


@dataclass
class Timing:
    """Seconds per call of one candidate: all repetitions and their median."""

    samples: List[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (a noise indicator; 0 for < 4 samples)."""
        if len(self.samples) < 4 or not self.median:
            return 0.0
        q = statistics.quantiles(self.samples, n=4)
        return (q[2] - q[0]) / self.median


def interleaved_times(
    candidates: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
) -> Dict[str, Timing]:
    """Time each zero-argument callable ``repeats`` times, interleaved; returns name -> :class:`Timing`.

    Each candidate first runs ``warmup`` times (also in turn).  The garbage collector is paused while
    timing so a collection does not land on one candidate only.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    synchronize(device)
    samples: Dict[str, List[float]] = {name: [] for name in names}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name in names:
                synchronize(device)
                t0 = time.perf_counter()
                candidates[name]()
                synchronize(device)
                samples[name].append(time.perf_counter() - t0)
    finally:
        if was_enabled:
            gc.enable()
    return {name: Timing(s) for name, s in samples.items()}


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns (first column left-aligned, the rest right-aligned)."""
    cells = [[_cell(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    head = "| " + " | ".join(_cell(h) for h in headers) + " |"
    sep = "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join([head, sep, *body])
