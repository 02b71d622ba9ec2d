"""gctnet's exceptions: one base class, two kinds, each also the builtin it has always been.

* :class:`SettingsError` (a ``ValueError``): what was asked for cannot be done as asked -- a bad
  option, a file that is not a checkpoint, a folder in use.  Nothing was changed on disk.  ``gctnet``
  prints it as one line and exits with status 2 (a usage error, like argparse's own).
* :class:`RunError` (a ``RuntimeError``): a run that started could not finish -- the loss diverged, an
  image in the data is corrupt, another torchrun process died, the disk is full.  One line, exit 1.

The CLI maps them in one place (:func:`gctnet.cli.main`).  Anything else that escapes a command is a
bug in gctnet and keeps its traceback.  :class:`TrainingInterrupted` is the one exception outside the
base class: it is a ``KeyboardInterrupt`` so that ``except Exception`` never swallows a Ctrl-C.
"""

from __future__ import annotations

import signal
from typing import Optional

__all__ = [
    "GctnetError",
    "SettingsError",
    "RunError",
    "UsageError",
    "ConfigError",
    "RunDirExistsError",
    "RunInUseError",
    "CompareError",
    "FinetuneError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "UnsafeCheckpointError",
    "KeyMismatchError",
    "DatasetNotFoundError",
    "BadImageError",
    "NonFiniteLossError",
    "DistributedFailure",
    "ExportMismatchError",
    "WriteError",
    "TrainingInterrupted",
]


class GctnetError(Exception):
    """Base of every error gctnet raises on purpose; ``exit_code`` is what ``gctnet`` exits with."""

    exit_code = 1


class SettingsError(GctnetError, ValueError):
    """A foreseeable bad input: settings, arguments or files that cannot be used (exit status 2)."""

    exit_code = 2


class RunError(GctnetError, RuntimeError):
    """A started run that could not finish (exit status 1)."""

    exit_code = 1


# ------------------------------------------------------------------ settings (exit 2)
class UsageError(SettingsError):
    """Invalid command-line arguments or argument combinations."""


class ConfigError(SettingsError):
    """An invalid training configuration (:class:`gctnet.train.TrainConfig`)."""


class RunDirExistsError(ConfigError):
    """``--out`` already holds a run and neither resume nor overwrite was asked for."""


class RunInUseError(SettingsError):
    """Another live process holds the run or comparison folder (its lock names the process)."""


class CompareError(SettingsError):
    """Invalid comparison settings, or an output folder holding runs made with other settings."""


class FinetuneError(CompareError):
    """Invalid fine-tuning settings or a pretrained network that does not fit."""


class CheckpointError(SettingsError):
    """A weights file that cannot be read (missing, empty, truncated, not a checkpoint) or does not fit
    the model (missing/unexpected keys, shapes)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A run folder or weights file that does not exist."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file that could only be read by unpickling code from it (never done)."""


class KeyMismatchError(CheckpointError, RuntimeError):
    """Weights whose keys or shapes do not fit the model (a ``RuntimeError``, as torch's
    ``load_state_dict`` raises for the same thing)."""


class DatasetNotFoundError(SettingsError, FileNotFoundError):
    """The dataset files are not where gctnet looked; the message says where it looked and how to get them."""


# ------------------------------------------------------------------ runs (exit 1)
class BadImageError(RunError):
    """An image file could not be read or decoded (the message names the file)."""


class NonFiniteLossError(RunError):
    """The training loss became NaN/inf; the message names the epoch and step and the kept checkpoint."""


class DistributedFailure(RunError):
    """A collective between torchrun processes failed: another rank died or timed out."""


class ExportMismatchError(RunError, AssertionError):
    """An exported graph's output differs from PyTorch's beyond the tolerance."""


class WriteError(RunError, OSError):
    """A file could not be written (disk full, read-only, ...); the previous file, if any, is kept."""


# ------------------------------------------------------------------ interruption (exit 128 + signal)
class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped the run after saving ``last.pt``; ``signum`` and ``run_dir`` say which/where.

    The message ends with the command that continues the run.
    """

    def __init__(self, message: str, signum: int = signal.SIGINT, run_dir: Optional[str] = None) -> None:
        super().__init__(message)
        self.signum = signum
        self.run_dir = run_dir
