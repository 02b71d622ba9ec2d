"""The one runner of the experiments: make sure a run exists, made with the settings asked for.

Every run of :mod:`gctnet.experiments.compare` and :mod:`gctnet.experiments.finetune` is one
:func:`gctnet.train.run` into its own folder, and both go through the same two steps:

1. :func:`plan_run` - the folder's status (``done``, ``resume``, ``restart``, ``new``) and, for a run
   that exists, the check that it was made with the recipe asked for now (an experiment folder holds
   one recipe; only how-to-run settings such as ``workers`` may differ);
2. :func:`ensure_run` - train, resume or finish the run as its status says, then check that it
   finished (``summary.json``).

Calling an experiment again therefore continues it from wherever it stopped: finished runs are
skipped, interrupted ones resumed (also one killed after its last checkpoint, which resuming finishes).
Here too: reading a run's results and checking user-given training options.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Mapping, Set
from pathlib import Path
from typing import Any, Optional

from .. import train
from ..errors import CompareError, RunError
from ..train import TrainConfig
from ..train.config import RESUME_OVERRIDABLE
from ..train.engine import is_finished

__all__ = [
    "read_json",
    "read_metrics",
    "is_finished",
    "run_status",
    "plan_run",
    "ensure_run",
    "check_recipe",
    "check_train_options",
    "config_fields",
    "PER_RUN",
]

#: TrainConfig fields an experiment sets for each of its runs
PER_RUN = frozenset({"model", "seed", "out", "resume", "overwrite"})
# TrainConfig fields that do not change what a run computes (or that the experiment sets per run)
_NOT_RECIPE = (RESUME_OVERRIDABLE - {"epochs"}) | PER_RUN
_PATH_FIELDS = frozenset({"init_from"})  # recipe fields holding a path: the same file however it is spelled


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of ``path/metrics.csv`` with numbers parsed (an empty list when it cannot be read)."""
    try:
        with open(path / "metrics.csv", newline="") as f:
            return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except OSError:
        return []


def _num(v: Any) -> Any:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return int(x) if x.is_integer() and "." not in str(v) and "e" not in str(v).lower() else x


def run_status(path: Path) -> str:
    """``done`` (finished), ``resume`` (continue from last.pt; a run killed after its last checkpoint but
    before its summary is finished by resuming), ``restart`` (a run that died before its first
    checkpoint) or ``new``."""
    if is_finished(path):
        return "done"
    if (path / "last.pt").is_file():
        return "resume"
    return "restart" if path.exists() and any(path.iterdir()) else "new"


def config_fields() -> set[str]:
    """The field names of :class:`gctnet.train.TrainConfig`."""
    return {f.name for f in dataclasses.fields(TrainConfig)}


def _normal(value: Any, key: str = "") -> Any:
    if isinstance(value, (tuple, list)):
        return [_normal(v) for v in value]
    if key in _PATH_FIELDS and isinstance(value, (str, Path)) and str(value):
        return os.path.realpath(value)
    if isinstance(value, Path):
        return str(value)
    return value


def check_recipe(path: Path, intended: Mapping[str, Any], error: type[Exception] = CompareError) -> None:
    """A finished or interrupted run must have been made with the settings asked for now (``error`` otherwise)."""
    saved = read_json(path / "config.json")
    if not saved:
        return
    diffs = [
        f"{k}={saved[k]!r} (now {v!r})"
        for k, v in intended.items()
        if k not in _NOT_RECIPE and k in saved and _normal(saved[k], k) != _normal(v, k)
    ]
    if diffs:
        raise error(
            f"{path} was trained with other settings: {', '.join(diffs)}. Use another output folder, or "
            "delete that run to train it again with the new settings"
        )


def check_train_options(options: Mapping[str, Any], reserved: Set[str], *, name: str, setter: str, kind: str,
                        error: type[Exception] = CompareError) -> dict[str, Any]:
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


def plan_run(config: TrainConfig, error: type[Exception] = CompareError) -> str:
    """Step 1: the status of the run folder ``config.out`` (see :func:`run_status`), after checking that
    an existing run there was made with ``config``'s recipe (``error`` otherwise)."""
    path = Path(config.out)
    status = run_status(path)
    if status in ("done", "resume"):
        check_recipe(path, config.to_dict(), error)
    return status


def ensure_run(config: TrainConfig, status: str) -> bool:
    """Step 2: train (``new``), train again (``restart``), resume or finish (``resume``) the run
    ``config`` describes; nothing for ``done``.  Returns whether anything was trained.

    Raises :class:`gctnet.errors.RunError` if training returned without a finished ``summary.json``.
    """
    path = Path(config.out)
    if status == "done":
        return False
    if status == "resume":  # the saved config, with what may change between calls (epochs, workers, ...)
        keep = RESUME_OVERRIDABLE - {"out", "resume", "overwrite"}
        config = TrainConfig.for_resume(path, **{k: getattr(config, k) for k in keep})
    else:
        config = dataclasses.replace(config, overwrite=status == "restart")
    train.run(config)
    if not is_finished(path):
        raise RunError(f"training {config.model} seed {config.seed} ended without a finished summary.json in {path}")
    return True
