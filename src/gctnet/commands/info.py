"""Costs of registered models: parameters, GCT parameters and modules, MACs with GCT counted (2 MACs per
GCT input element: sum of squares + scaling), activation elements GCT touches and saved-for-backward bytes
per image (train-mode forward).  Several MODELs are compared in one table (percentages vs the first).

Example: gctnet info resnet50 se_resnet50 gct_resnet50 gct_resnet50_block --markdown
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from dataclasses import replace

from . import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL", help="registered model names (see --list)")
    parser.add_argument(
        "--list", nargs="?", const="*", default=None, metavar="PATTERN",
        help="list registered model names matching PATTERN (shell-style, default '*') and exit",
    )  # fmt: skip
    parser.add_argument(
        "--input-size", default=None, metavar="C,H,W",
        help="input size of one image, e.g. 3,224,224 or 1,28,28 (default: each model's configured size); "
        "C sets the model's in_chans",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images per forward (results are per image; default 1)"
    )
    parser.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the model's default)")
    parser.add_argument(
        "--no-gct-checkpoint", dest="gct_checkpoint", action="store_false",
        help="build gct_ models with apply_gct(checkpoint=False): each conv keeps the GCT output for backward "
        "(default: the lean-memory path that recomputes it)",
    )  # fmt: skip
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="print a Markdown table")
    fmt.add_argument("--json", action="store_true", help="print JSON (one object per model)")


def run(args: argparse.Namespace) -> int:
    from ..bench.accounting import format_table, model_info, parse_input_size
    from ..models import get_model_entry, list_models

    if args.list is not None:
        if args.models:
            raise UsageError("--list takes a pattern, not model names; use one or the other")
        names = list_models(args.list)
        if not names:
            raise UsageError(f"no registered model matches {args.list!r}")
        print("\n".join(names))
        return 0
    if not args.models:
        raise UsageError("give at least one MODEL (gctnet info --list shows the registered names)")
    try:
        input_size = parse_input_size(args.input_size) if args.input_size is not None else None
    except ValueError as exc:
        raise UsageError(f"--input-size: {exc}") from None
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_classes is not None and args.num_classes < 1:
        raise UsageError(f"--num-classes must be >= 1, got {args.num_classes}")
    model_kwargs = {}
    for name in args.models:  # fail on a typo before spending time on the other models
        entry = get_model_entry(name)  # SettingsError naming close matches
        if not args.gct_checkpoint and name.startswith("gct_"):
            if "gct_kwargs" not in inspect.signature(entry.fn).parameters:
                raise UsageError(f"--no-gct-checkpoint: model {name!r} does not take gct_kwargs")
            model_kwargs[name] = {"gct_kwargs": {"checkpoint": False}}

    rows = []
    for name in args.models:
        try:
            info = model_info(
                name,
                input_size,
                batch_size=args.batch_size,
                num_classes=args.num_classes,
                model_kwargs=model_kwargs.get(name),
            )
        except (ValueError, RuntimeError) as exc:
            if args.input_size is None:  # the model's own input size: a failure is a bug, keep its traceback
                raise
            first = str(exc).strip().splitlines()[0]  # e.g. an input too small for the model
            raise UsageError(f"{name} cannot run on --input-size {args.input_size}: {first}") from None
        rows.append(replace(info, name=f"{name} (no ckpt)") if name in model_kwargs else info)
    if args.json:
        json.dump([r.to_dict() for r in rows], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(rows, markdown=args.markdown))
    return 0
