"""gctnet.errors: one base class, builtins kept, and the one mapping to exit statuses in gctnet.cli.main."""

from __future__ import annotations

import argparse

import pytest

from gctnet import cli, errors
from gctnet.commands import info as info_command


def test_every_error_has_the_base_and_its_builtin():
    settings = [errors.UsageError, errors.ConfigError, errors.RunDirExistsError, errors.RunInUseError,
                errors.CompareError, errors.FinetuneError, errors.CheckpointError, errors.UnsafeCheckpointError,
                errors.CheckpointNotFoundError, errors.KeyMismatchError,
                errors.DatasetNotFoundError]
    runs = [errors.BadImageError, errors.NonFiniteLossError, errors.DistributedFailure,
            errors.ExportMismatchError, errors.WriteError]
    for cls in settings:
        assert issubclass(cls, errors.SettingsError) and issubclass(cls, ValueError) and cls.exit_code == 2, cls
    for cls in runs:
        assert issubclass(cls, errors.RunError) and issubclass(cls, RuntimeError) and cls.exit_code == 1, cls
    # except FileNotFoundError / RuntimeError (torch's key-mismatch error) keep working
    assert issubclass(errors.DatasetNotFoundError, FileNotFoundError) and issubclass(errors.CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(errors.KeyMismatchError, RuntimeError)
    assert issubclass(errors.WriteError, OSError) and issubclass(errors.ExportMismatchError, AssertionError)
    # a Ctrl-C must never be swallowed by `except Exception`
    assert not issubclass(errors.TrainingInterrupted, Exception)


def test_old_import_paths_name_the_same_classes():
    from gctnet import compare, finetune
    from gctnet.commands import UsageError
    from gctnet.data import BadImageError, DatasetNotFoundError
    from gctnet.export import ExportMismatchError
    from gctnet.models.official import CheckpointError, UnsafeCheckpointError
    from gctnet.train import ConfigError, DistributedFailure, NonFiniteLossError, RunDirExistsError, TrainingInterrupted

    assert (UsageError, ConfigError, RunDirExistsError, CheckpointError, UnsafeCheckpointError) == (
        errors.UsageError, errors.ConfigError, errors.RunDirExistsError, errors.CheckpointError,
        errors.UnsafeCheckpointError)
    assert (compare.CompareError, finetune.FinetuneError, BadImageError, DatasetNotFoundError) == (
        errors.CompareError, errors.FinetuneError, errors.BadImageError, errors.DatasetNotFoundError)
    assert (NonFiniteLossError, DistributedFailure, TrainingInterrupted, ExportMismatchError) == (
        errors.NonFiniteLossError, errors.DistributedFailure, errors.TrainingInterrupted, errors.ExportMismatchError)


def _raising(exc: BaseException):
    """A stand-in for a sub-command's ``run`` that raises ``exc``."""

    def run(args: argparse.Namespace) -> int:
        raise exc

    return run


@pytest.mark.parametrize("exc, code", [
    (errors.ConfigError("epochs must be a positive integer, got 0"), 2),
    (errors.CheckpointError("x.pt is empty (0 bytes)"), 2),
    (errors.NonFiniteLossError("training loss became non-finite"), 1),
    (errors.WriteError("cannot write last.pt: No space left on device"), 1),
])
def test_cli_maps_gctnet_errors_to_one_line_and_exit_code(monkeypatch, capsys, exc, code):
    monkeypatch.setattr(info_command, "run", _raising(exc))
    with pytest.raises(SystemExit) as info:
        cli.main(["info"])
    assert info.value.code == code
    assert capsys.readouterr().err == f"gctnet info: error: {exc}\n"


def test_cli_keeps_the_traceback_of_unexpected_errors(monkeypatch):
    """A ValueError gctnet did not raise on purpose is a bug: it must not turn into a usage message."""
    monkeypatch.setattr(info_command, "run", _raising(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["info"])


def test_cli_interruption_exit_status(monkeypatch, capsys):
    exc = errors.TrainingInterrupted("SIGTERM received: saved x/last.pt. Continue with: gctnet train --resume x", 15, "x")
    monkeypatch.setattr(info_command, "run", _raising(exc))
    assert cli.main(["info"]) == 128 + 15
    assert capsys.readouterr().err == f"gctnet info: {exc}\n"


def test_gct_rejects_an_infinite_eps():
    import gctnet

    for eps in (float("inf"), float("nan")):
        with pytest.raises(ValueError) as info:
            gctnet.GCT(8, eps=eps)
        msg = str(info.value)
        assert "eps" in msg and "finite" in msg and "\n" not in msg
