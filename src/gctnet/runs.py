"""Run folders of the experiments (:mod:`gctnet.compare`, :mod:`gctnet.finetune`).

Each run is one :func:`gctnet.train.run` into its own folder.  Here: a folder's status (done, resume,
restart, new), the TrainConfig that trains or resumes it, the check that an existing run was made with
the settings asked for now, reading its metrics and summary, and writing the CSV/JSON reports
(mean +- std over seeds, NaN-free JSON).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any, Optional

from .fileio import atomic_write_text

__all__ = [
    "read_json",
    "is_finished",
    "run_status",
    "train_api",
    "config_fields",
    "make_config",
    "check_train_options",
    "check_recipe",
    "format_seconds",
    "read_metrics",
    "finite_mean",
    "finite_std",
    "describe_options",
    "write_csv",
    "plus_minus",
    "json_safe",
]


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_finished(path: Path) -> bool:
    """Whether the run folder ``path`` holds a ``summary.json`` marked finished."""
    summary = read_json(path / "summary.json")
    return bool(summary and summary.get("finished"))


def run_status(path: Path, epochs: int) -> str:
    """``done`` (finished), ``resume`` (an interrupted run: continue from last.pt; also one killed after
    its last checkpoint but before its summary, which resuming finishes), ``restart`` (a run that died
    before its first checkpoint) or ``new``."""
    if is_finished(path):
        return "done"
    if (path / "last.pt").is_file():
        return "resume"
    return "restart" if path.exists() and any(path.iterdir()) else "new"


def train_api() -> Any:
    """:mod:`gctnet.train`, imported on first use (it pulls in the data and model packages)."""
    from . import train

    return train


def config_fields() -> set[str]:
    """The field names of :class:`gctnet.train.TrainConfig`."""
    return {f.name for f in dataclasses.fields(train_api().TrainConfig)}


def _non_recipe_fields() -> set[str]:
    """TrainConfig fields that do not change what a run computes (or that compare sets per run)."""
    from .train.config import RESUME_OVERRIDABLE

    return (set(RESUME_OVERRIDABLE) - {"epochs"}) | {"model", "seed", "out", "resume", "overwrite"}


def make_config(model: str, seed: int, path: Path, options: Mapping[str, Any], status: str) -> Any:
    """The TrainConfig of one run (a resumed run continues from its saved config)."""
    TrainConfig = train_api().TrainConfig
    if status == "resume":
        from .train.config import RESUME_OVERRIDABLE

        keep = RESUME_OVERRIDABLE - {"out", "resume", "overwrite"}
        return TrainConfig.for_resume(path, **{k: v for k, v in options.items() if k in keep})
    return TrainConfig(**{**options, "model": model, "seed": seed, "out": str(path), "overwrite": status == "restart"})


def check_train_options(
    options: Mapping[str, Any],
    reserved: Set[str],
    *,
    name: str,
    setter: str,
    kind: str,
    error: type[Exception] = ValueError,
) -> dict[str, Any]:
    """``options`` as a dict once they are TrainConfig fields and set none of ``reserved``.

    ``name`` (the argument), ``setter`` (who sets the reserved fields) and ``kind`` (of option) word the
    ``error`` raised otherwise.
    """
    user = dict(options)
    bad = sorted(reserved & set(user))
    if bad:
        raise error(f"{name} may not set {bad}: {setter} sets them for every run")
    fields = config_fields()
    unknown = sorted(set(user) - fields)
    if unknown:
        raise error(f"unknown {kind} option(s) {unknown}; TrainConfig fields are {sorted(fields)}")
    return user


def check_recipe(path: Path, intended: Mapping[str, Any], error: type[Exception] = ValueError) -> None:
    """A finished or interrupted run must have been made with the settings asked for now (``error`` otherwise)."""
    saved = read_json(path / "config.json")
    if not saved:
        return
    skip = _non_recipe_fields()
    diffs = [
        f"{k}={saved[k]!r} (now {v!r})"
        for k, v in intended.items()
        if k not in skip and k in saved and _normal(saved[k], k) != _normal(v, k)
    ]
    if diffs:
        raise error(
            f"{path} was trained with other settings: {', '.join(diffs)}. Use another output folder, or "
            "delete that run to train it again with the new settings"
        )


_PATH_FIELDS = frozenset({"init_from"})  # recipe fields holding a path: the same file however it is spelled


def _normal(value: Any, key: str = "") -> Any:
    if isinstance(value, (tuple, list)):
        return [_normal(v) for v in value]
    if key in _PATH_FIELDS and isinstance(value, (str, Path)) and str(value):
        return os.path.realpath(value)
    if isinstance(value, Path):
        return str(value)
    return value


def format_seconds(s: float) -> str:
    """``42s``, ``3m07s`` or ``2h05m``."""
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


# --------------------------------------------------------------------------------------------------
# reading results
# --------------------------------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of ``path/metrics.csv`` with numbers parsed (an empty list when it cannot be read)."""
    rows = []
    try:
        with open(path / "metrics.csv", newline="") as f:
            for row in csv.DictReader(f):
                rows.append({k: _num(v) for k, v in row.items()})
    except OSError:
        pass
    return rows


def _num(v: Any) -> Any:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return int(x) if x.is_integer() and "." not in str(v) and "e" not in str(v).lower() else x


def finite_mean(xs: Sequence[float]) -> float:
    """Mean of the values that are not None or NaN; NaN when there are none."""
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.fmean(xs) if xs else float("nan")


def finite_std(xs: Sequence[float]) -> float:
    """Sample standard deviation over seeds (n - 1); NaN for fewer than 2 values."""
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_interval95(xs: Sequence[float]) -> Optional[tuple[float, float]]:
    """95% confidence interval of the mean (Student's t, sample std); None for fewer than 2 finite values.

    For paired seed differences this is the interval a reader needs to judge whether a mean gain is
    distinguishable from seed noise (it contains 0 when it is not, at the 5% level).
    """
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if len(xs) < 2:
        return None
    df = len(xs) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.960 + 2.5 / df  # within 0.002 of the exact quantile beyond 30
    half = t * statistics.stdev(xs) / math.sqrt(len(xs))
    m = statistics.fmean(xs)
    return (m - half, m + half)


def format_interval(ci: Optional[Sequence[float]], digits: int = 2) -> str:
    """``[lo, hi]`` with signs, or ``-``."""
    if ci is None:
        return "-"
    return f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def describe_options(options: Mapping[str, Any]) -> str:
    """``k=v, ...`` for a report line."""
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "engine defaults"


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    if v is None:
        return ""
    return v


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (missing cells and NaN empty) atomically to ``path``; returns ``path``."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return atomic_write_text(path, buf.getvalue())


def plus_minus(mean: Optional[float], std: Optional[float], digits: int = 2, sign: bool = False) -> str:
    """``mean +- std`` (``-`` when the mean is missing; the mean alone when the std is)."""
    if mean is None or math.isnan(mean):
        return "-"
    m = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return m if std is None or math.isnan(std) else f"{m} +- {std:.{digits}f}"


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
