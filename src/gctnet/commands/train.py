"""Train a model from the registry (single process, or one process per GPU/CPU rank under torchrun).

Examples:
  gctnet train --model gct_resnet20 --epochs 2 --out runs/gct20          # Fashion-MNIST, a few CPU minutes
  gctnet train --model resnet20 --subset 2048 --epochs 1 --out runs/quick
  gctnet train --resume runs/gct20 --epochs 4                            # continue / extend a run
  gctnet train --recipe paper --model gct_resnet50 --data imagefolder:/data/imagenet --amp
  torchrun --nproc_per_node=2 -m gctnet train --model gct_resnet20 --out runs/ddp
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import typing
from typing import Any, Dict, Iterable, Optional

from . import UsageError


def key_value(text: str) -> tuple:
    """``KEY=VALUE`` -> ``(key, value)`` with the value parsed as a Python literal when it is one."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _scalar(annotation: Any) -> Any:
    """``int`` for ``Optional[int]``, ``float`` for ``List[float]``, ... (the type one value parses to)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return _scalar(args[0]) if args else annotation


def add_config_arguments(parser: argparse.ArgumentParser, *, exclude: Iterable[str] = (),
                         group: Optional[str] = None, show_defaults: bool = True) -> None:
    """One option per :class:`~gctnet.train.TrainConfig` field (flags, choices, help and default from the
    field and its metadata), each under its group or all under ``group``.  Options not given stay out of
    the namespace (``argparse.SUPPRESS``), so a recipe's, a preset's or a saved run's values apply;
    ``show_defaults=False`` where those, not TrainConfig's defaults, are what an absent option means."""
    from ..train.config import GROUPS, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    if group is not None:
        groups = dict.fromkeys(GROUPS, parser.add_argument_group(group))
    else:
        groups = {g: parser.add_argument_group(g) for g in GROUPS}
    skip = set(exclude)
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind = _scalar(hints[f.name])
        kwargs: Dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if kind is bool:
            flags = (f"--no-{flag[2:]}",) if default else (meta["flags"] or (flag,))
            kwargs["action"] = "store_false" if default else "store_true"
            help_text = meta["help"]
        else:
            flags = meta["flags"] or (flag,)
            kwargs.update(type=key_value if kind is dict or f.name == "model_kwargs" else kind,
                          **{k: meta[k] for k in ("choices", "metavar", "nargs", "const") if meta[k] is not None})
            shown = "" if default in (None, {}, "") or not show_defaults else f"default: {default}"
            help_text = "; ".join(x for x in (meta["help"], shown) if x)
            help_text = f"({shown})" if not meta["help"] and shown else help_text
        groups[meta["group"]].add_argument(*flags, help=help_text or None, **kwargs)


def config_options(args: argparse.Namespace, exclude: Iterable[str] = ()) -> Dict[str, Any]:
    """The TrainConfig fields given on the command line (``KEY=VALUE`` pairs made a dict)."""
    from ..train.config import TrainConfig

    skip = set(exclude)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if f.name not in skip and hasattr(args, f.name)}
    if "model_kwargs" in given:
        given["model_kwargs"] = dict(given["model_kwargs"])
    return given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--recipe", choices=["quick", "paper"], default="quick",
                        help="defaults to start from: quick (2 epochs, cosine) or paper (100 epochs, step 30/60/90)")
    add_config_arguments(parser)


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`~gctnet.train.TrainConfig` for the parsed options (settings errors for bad values)."""
    from ..train import TrainConfig

    given = config_options(args)
    if "resume" in given:
        if args.recipe != "quick":
            raise UsageError("--recipe cannot be combined with --resume (the run keeps its recipe)")
        resume = given.pop("resume")
        return TrainConfig.for_resume(resume, **given).validate()
    return TrainConfig.from_recipe(args.recipe, **given).validate()


def run(args: argparse.Namespace) -> int:
    from ..train import run as train_run

    train_run(build_config(args))
    return 0

