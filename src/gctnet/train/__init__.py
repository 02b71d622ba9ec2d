"""Training and evaluation: ``run(TrainConfig) -> summary``, ``evaluate``, checkpoints, torchrun DDP.

>>> from gctnet.train import TrainConfig, run
>>> summary = run(TrainConfig(model="gct_resnet20", epochs=2, out="runs/gct20"))  # doctest: +SKIP

See ``docs/training.md`` for the run-folder layout, resuming, torchrun and the CLI.
"""

from .checkpoint import atomic_save, load_checkpoint, load_checkpoint_model, load_model_any
from .config import RECIPES, ConfigError, TrainConfig
from .engine import METRICS_COLUMNS, DistributedFailure, NonFiniteLossError, RunDirExistsError, TrainingInterrupted, run
from .evaluation import evaluate, evaluate_path, format_eval_table

__all__ = [
    "TrainConfig",
    "RECIPES",
    "ConfigError",
    "run",
    "evaluate",
    "evaluate_path",
    "format_eval_table",
    "load_checkpoint",
    "load_checkpoint_model",
    "load_model_any",
    "atomic_save",
    "TrainingInterrupted",
    "NonFiniteLossError",
    "RunDirExistsError",
    "DistributedFailure",
    "METRICS_COLUMNS",
]
