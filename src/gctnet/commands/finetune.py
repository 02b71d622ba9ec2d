"""The paper's fine-tuning experiment: insert GCT into a trained plain network (it starts as the
identity, so the accuracy is unchanged: checked exactly) and fine-tune it, against fine-tuning the
plain network with the same recipe and seed.

Without --plain a plain network is trained per seed into OUT/pretrain/seed<k> (the preset's settings
plus any `gctnet train` option given here).  Fine-tuning runs go to OUT/finetune/<model>/seed<k>/;
finished runs are skipped and interrupted ones resumed, so the same command continues.  OUT/finetune.md
holds the table (before/after accuracy per seed, differences, mean +- std) and the plot.

Examples:
  gctnet finetune --seeds 3 --finetune-epochs 2 --out runs/ft                 # pretrain + fine-tune
  gctnet finetune --plain runs/resnet20 --seeds 0,1 --out runs/ft-given      # start from a trained run
  gctnet finetune --gct-model gct_resnet20_block --finetune-option sched=constant --out runs/ft-block
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import UsageError
from .train import add_config_arguments, config_options, key_value

#: TrainConfig fields finetune sets per run (its own --model, --seeds, --out; init_from: the pretrained weights)
PER_RUN = ("model", "seed", "out", "resume", "overwrite", "init_from")

_TRAIN_GROUP = ("pretraining options (override the preset; with --plain only the execution options "
                "--workers/--device/--quiet/--log-interval/--tensorboard/--compile/--deterministic/--data-dir/"
                "--dist-timeout, which then apply to the fine-tuning runs)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..compare import PRESETS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--plain", default=None, metavar="RUN_OR_CHECKPOINT",
                        help="a trained plain network (gctnet run folder or checkpoint), used for every seed; "
                             "default: train one per seed into OUT/pretrain/seed<k>")
    parser.add_argument("--model", default="resnet20", help="plain model to pretrain (default resnet20; "
                        "with --plain the checkpoint names it)")
    parser.add_argument("--gct-model", default=None, help="GCT variant to fine-tune (default gct_<model>)")
    parser.add_argument("--seeds", default=None,
                        help="comma list of seeds (0,1,2) or a count N meaning 0..N-1 (default: the preset's)")
    parser.add_argument("--out", type=Path, default=Path("runs/finetune"), help="output folder (default runs/finetune)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                        help="default seeds and pretraining settings (see gctnet compare --help)")
    parser.add_argument("--finetune-epochs", type=int, default=3, metavar="N", help="fine-tuning epochs (default 3)")
    parser.add_argument("--lr-factor", type=float, default=0.1,
                        help="fine-tuning lr as a fraction of the pretraining lr (default 0.1)")
    parser.add_argument("--finetune-option", dest="finetune_options", nargs="+", type=key_value, default=[],
                        metavar="KEY=VALUE", help="TrainConfig fields overriding the fine-tuning recipe, "
                        "e.g. sched=constant batch_size=64 (values parsed as Python literals)")
    add_config_arguments(parser, exclude=PER_RUN, group=_TRAIN_GROUP, show_defaults=False)


def run(args: argparse.Namespace) -> int:
    from .. import finetune
    from ..compare import parse_seeds
    from .compare import run_experiment

    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    pretrain = config_options(args, exclude=PER_RUN)
    finetune_options = dict(args.finetune_options)
    if args.plain is not None:
        # how to run (not what to compute) still applies: to the fine-tuning runs
        recipe = sorted(k for k in pretrain if k not in finetune.EXECUTION_OPTIONS)
        if recipe:
            raise UsageError(f"pretraining options ({', '.join(recipe)}) cannot be combined with --plain (the given "
                             "network is already trained; use --finetune-option to change the fine-tuning)")
        finetune_options = {**pretrain, **finetune_options}
        pretrain = {}
    return run_experiment("finetune", lambda: finetune.run(
        args.plain, model=args.model, gct_model=args.gct_model, seeds=seeds, out=args.out, preset=args.preset,
        pretrain_options=pretrain or None, finetune_epochs=args.finetune_epochs, lr_factor=args.lr_factor,
        finetune_options=finetune_options,
    ), lambda result: f"table: {result.paths['md']}")
