"""The ``gctnet`` command line: parses arguments and calls library functions, nothing else.

Each sub-command lives in :mod:`gctnet.commands.<name>` with two functions:
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .commands import UsageError

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
    except UsageError as exc:
        parser.exit(2, f"gctnet {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        print("gctnet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
