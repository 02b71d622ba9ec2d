"""The main job: train plain, SE and GCT variants under the same recipe and seeds, then write a
report (table with mean +- std over seeds, paired differences to the plain model, plots, and what the
GCT layers learned).

Runs go to OUT/runs/<model>/seed<k>/; finished runs are skipped and interrupted ones resumed, so the
same command continues an interrupted comparison.  OUT/report.md holds everything on one page.
Every `gctnet train` option (e.g. --epochs, --subset, --batch-size, --lr, --workers, --quiet) is
accepted and applied identically to every run; it overrides the preset.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from . import UsageError
from .train import add_config_arguments, config_options

#: TrainConfig fields compare sets per run (its own --models, --seeds, --out)
PER_RUN = ("model", "seed", "out", "resume", "overwrite")
_TRAIN_GROUP = "training options (applied to every run; override the preset)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..compare import DEFAULT_MODELS, PRESETS

    presets = "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values())
    parser.add_argument(
        "--models", default=None,
        help=f"comma list of registered models (default: the preset's; demo and full: {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--seeds", default=None,
        help="comma list of seeds (0,1,2) or a count N meaning seeds 0..N-1 (default: the preset's)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default runs/compare)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo", help=f"settings ({presets})")
    parser.add_argument("--baseline", default=None, help="the plain model for differences (default: first without se_/gct_)")
    parser.add_argument("--no-analyze", action="store_true", help="skip the GCT analysis of the trained models")
    parser.add_argument(
        "--report-only", action="store_true",
        help="train nothing: report the finished runs and name the unfinished ones (a look at a comparison "
        "still under way)",
    )
    parser.add_argument(
        "--analysis-images", type=int, default=256, metavar="N",
        help="validation images for the gate statistics of the analysis (default 256)",
    )
    parser.add_argument(
        "--cost-repeats", type=int, default=10, metavar="N",
        help="interleaved repetitions of the side-by-side cost measurement at the end (default 10; 0 skips it)",
    )
    launch = parser.add_argument_group("where the runs execute (results are the same: bit-identical with --deterministic)")
    launch.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="N runs at once on this machine, each in its own process with cores/N CPU threads "
        "(or its own GPU where several exist); Ctrl-C stops them all, a rerun resumes them (default 1)",
    )
    launch.add_argument(
        "--ray", nargs="?", const="", default=None, metavar="ADDRESS",
        help="run every (model, seed) as a Ray task: on the cluster at ADDRESS ('auto': the existing one), "
        "or on a local cluster started for the call when no ADDRESS is given; --out must be storage every "
        "node sees (pip install 'gctnet[ray]')",
    )
    launch.add_argument("--cpus-per-run", type=float, default=1, metavar="N", help="Ray: CPUs each run asks for (default 1)")
    launch.add_argument("--gpus-per-run", type=float, default=0, metavar="N",
                        help="Ray: GPUs each run asks for (default 0; several: DDP inside the task)")
    launch.add_argument("--max-retries", type=int, default=2, metavar="N",
                        help="Ray: retries of a run whose task failed or whose worker died (default 2)")
    add_config_arguments(parser, exclude=PER_RUN, group=_TRAIN_GROUP, show_defaults=False)


def run(args: argparse.Namespace) -> int:
    from .. import compare

    models = compare.parse_models(args.models) if args.models is not None else None
    seeds = compare.parse_seeds(args.seeds) if args.seeds is not None else None
    if args.analysis_images < 1:
        raise UsageError(f"--analysis-images must be >= 1, got {args.analysis_images}")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.ray is not None and args.jobs != 1:
        raise UsageError("--jobs and --ray exclude each other (with Ray, the cluster decides how many runs execute at once)")
    if args.cpus_per_run <= 0 or args.gpus_per_run < 0 or args.max_retries < 0:
        raise UsageError("--cpus-per-run must be > 0, --gpus-per-run and --max-retries >= 0")
    options = config_options(args, exclude=PER_RUN)
    return run_experiment("compare", lambda: compare.run(
        models,
        seeds,
        args.out,
        preset=args.preset,
        train_options=options,
        baseline=args.baseline,
        analyze=not args.no_analyze,
        analysis_images=args.analysis_images,
        cost_repeats=args.cost_repeats,
        jobs=args.jobs,
        ray=args.ray,
        ray_options={"cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run,
                     "max_retries": args.max_retries} if args.ray is not None else None,
        train=not args.report_only,
    ), lambda result: f"report: {result.report}")


def run_experiment(command: str, call: Callable[[], Any], report: Callable[[Any], str]) -> int:
    """Run an experiment for ``gctnet COMMAND``, print ``report(result)`` and return 0.

    An interruption keeps the engine's or launcher's message (what was saved, what did not start) but, in
    place of the engine's ``gctnet train --resume``, says to run the same command again (it resumes).
    """
    from ..train import TrainingInterrupted

    try:
        result = call()
    except TrainingInterrupted as exc:
        what = str(exc).split(". Continue with:")[0]
        raise TrainingInterrupted(f"{what}. Run the same gctnet {command} command again to continue.", exc.signum,
                                  exc.run_dir) from None
    print(report(result))
    return 0
