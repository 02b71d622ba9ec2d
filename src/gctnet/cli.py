"""The ``gctnet`` command line: parses arguments and calls library functions, nothing else.

Each sub-command lives in :mod:`gctnet.commands.<name>` with two functions:
``add_arguments(parser)`` and ``run(args) -> int``.  :func:`main` is the one place where errors
become exit statuses: a :class:`gctnet.errors.GctnetError` is one line ``gctnet CMD: error: ...``
and its ``exit_code`` (2 for settings, 1 for runs that failed), an interruption 128 + the signal,
anything else a traceback (a bug to fix, not a usage error).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from .errors import GctnetError, TrainingInterrupted

COMMANDS = {
    "train": "train a model (single process or under torchrun)",
    "eval": "evaluate a checkpoint: top-1/top-5, loss, per-class accuracy",
    "compare": "train plain/SE/GCT variants over seeds and write a report (the main job)",
    "analyze": "what GCT learned: alpha/gamma/beta and gate statistics per layer, plots",
    "bench": "benchmarks: layer, model, all",
    "info": "parameters, GCT parameters, MACs and activation memory of models",
    "kernels": "which GCT implementation runs where; --build compiles the C++ CPU kernels",
    "finetune": "insert GCT into a trained plain network and fine-tune it vs the plain network (paper's experiment)",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="gctnet", description="Gated Channel Transformation (GCT) for PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"gctnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, help_text in COMMANDS.items():
        module = _command_module(name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _command_module(name: str):
    return importlib.import_module(f"gctnet.commands.{name}")


def _check_environment() -> None:
    """GCTNET_BACKEND, read once by the library on the first GCT call, checked up front (ValueError says why)."""
    from .kernels import get_backend

    get_backend()


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_environment()
    except ValueError as exc:
        parser.exit(2, f"gctnet: error: {exc}\n")
    try:
        return int(args._module.run(args) or 0)
    except GctnetError as exc:
        # SystemExit, like argparse's own usage errors, so that callers and tests see one behaviour
        parser.exit(exc.exit_code, f"gctnet {args.command}: error: {exc}\n")
    except TrainingInterrupted as exc:  # the message says what was saved and how to continue
        print(f"gctnet {args.command}: {exc}", file=sys.stderr)
        return 128 + int(exc.signum)
    except KeyboardInterrupt:
        print("gctnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `gctnet eval --json - | head`: the reader left; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 128 + 13  # as if killed by SIGPIPE
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
