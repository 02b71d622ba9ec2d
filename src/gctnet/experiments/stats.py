"""Numbers over seeds and how gctnet writes them: means, sample standard deviations, Student-t intervals,
``mean +- std`` cells, durations, NaN-free JSON and CSV files.

The one place for these: the comparison, the fine-tuning experiment and the training engine's progress
lines all format through here, so a duration or an interval reads the same everywhere.  Standard
library only (the engine imports it).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

__all__ = [
    "finite_mean",
    "finite_std",
    "t_interval95",
    "t_quantile975",
    "two_sample_t_interval95",
    "format_interval",
    "plus_minus",
    "format_seconds",
    "describe_options",
    "json_safe",
    "write_csv",
]


def _finite(xs: Sequence[Optional[float]]) -> list[float]:
    return [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]


def finite_mean(xs: Sequence[Optional[float]]) -> float:
    """Mean of the values that are not None or NaN; NaN when there are none."""
    xs = _finite(xs)
    return statistics.fmean(xs) if xs else float("nan")


def finite_std(xs: Sequence[Optional[float]]) -> float:
    """Sample standard deviation over seeds (n - 1); NaN for fewer than 2 values."""
    xs = _finite(xs)
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile975(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.960 + 2.5 / df


def two_sample_t_interval95(a: Sequence[Optional[float]], b: Sequence[Optional[float]]) -> Optional[tuple[float, float]]:
    """95% interval of ``mean(a) - mean(b)`` (Student's t, pooled variance, df = len(a) + len(b) - 2);
    None when that leaves no degree of freedom or a group is empty."""
    a, b = _finite(a), _finite(b)
    df = len(a) + len(b) - 2
    if not a or not b or df < 1:
        return None
    ss = sum((x - statistics.fmean(a)) ** 2 for x in a) + sum((x - statistics.fmean(b)) ** 2 for x in b)
    half = t_quantile975(df) * math.sqrt(ss / df) * math.sqrt(1 / len(a) + 1 / len(b))
    m = statistics.fmean(a) - statistics.fmean(b)
    return (m - half, m + half)


def t_interval95(xs: Sequence[Optional[float]]) -> Optional[tuple[float, float]]:
    """95% confidence interval of the mean (Student's t, sample std); None for fewer than 2 finite values.

    For paired seed differences this is the interval a reader needs to judge whether a mean gain is
    distinguishable from seed noise (it contains 0 when it is not, at the 5% level).
    """
    xs = _finite(xs)
    if len(xs) < 2:
        return None
    t = t_quantile975(len(xs) - 1)  # beyond 30 df within 0.002 of the exact quantile
    half = t * statistics.stdev(xs) / math.sqrt(len(xs))
    m = statistics.fmean(xs)
    return (m - half, m + half)


def format_interval(ci: Optional[Sequence[float]], digits: int = 2) -> str:
    """``[lo, hi]`` with signs, or ``-``."""
    if ci is None:
        return "-"
    return f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def plus_minus(mean: Optional[float], std: Optional[float], digits: int = 2, sign: bool = False) -> str:
    """``mean +- std`` (``-`` when the mean is missing; the mean alone when the std is)."""
    if mean is None or math.isnan(mean):
        return "-"
    m = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return m if std is None or math.isnan(std) else f"{m} +- {std:.{digits}f}"


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m07s`` or ``2h05m`` (``-`` for NaN): every duration gctnet prints or reports."""
    if seconds is None or math.isnan(seconds):
        return "-"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def describe_options(options: Mapping[str, Any]) -> str:
    """``k=v, ...`` for a report line."""
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "engine defaults"


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as None and paths as strings, for :func:`json.dumps`."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    if v is None:
        return ""
    return v


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (missing cells and NaN empty) atomically to ``path``; returns ``path``."""
    from ..fileio import atomic_write_text

    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return atomic_write_text(path, buf.getvalue())
