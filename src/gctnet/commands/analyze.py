"""What GCT learned: alpha/gamma/beta statistics of every GCT layer in network order, the gate each
layer applies to real data, figures (gamma per layer along depth, coloured by stage; share of gamma > 0;
mean gate) and a one-line conclusion on the paper's finding (gamma < 0 shallow, > 0 deep).

SOURCE is a gctnet run folder, a gctnet checkpoint (last.pt / best.pt) or the official GCT-ResNet-50
checkpoint; several SOURCEs of one architecture (e.g. the seeds of a comparison) are pooled.
Writes analysis.json, analysis.md and PNG figures to --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="run folder or checkpoint file (several: pooled)")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output folder (default: <run folder>/analysis, or <checkpoint's folder>/analysis)",
    )
    parser.add_argument(
        "--data", default=None,
        help="dataset for the gate statistics: fashion_mnist or imagefolder:PATH (its validation split); "
        "default: the dataset the run was trained on; none for the official checkpoint",
    )
    parser.add_argument("--data-dir", default=None, help="where the dataset named by --data lives")
    parser.add_argument("--no-data", action="store_true", help="parameter statistics only, no gate statistics")
    parser.add_argument("--batches", type=int, default=1, help="batches of images for the gate statistics (default 1)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    parser.add_argument("--device", default=None, help="device for the gate statistics (default: cpu)")


def run(args: argparse.Namespace) -> int:
    from ..analysis import analyze

    if args.no_data and args.data:
        raise UsageError("--no-data and --data exclude each other")
    if args.batches < 1 or args.batch_size < 1:
        raise UsageError(f"--batches and --batch-size must be >= 1, got {args.batches} and {args.batch_size}")
    sources = [Path(s) for s in args.sources]
    for s in sources:
        if not s.exists():
            raise UsageError(f"no such run folder or checkpoint: {s}")
    out = args.out
    if out is None:
        first = sources[0]
        out = (first if first.is_dir() else first.parent) / "analysis"
    data = False if args.no_data else args.data
    result = analyze(
        [str(s) for s in sources],
        data=data,
        data_dir=args.data_dir,
        batches=args.batches,
        batch_size=args.batch_size,
        device=args.device,
        out=out,
    )
    print(f"{len(result.layers)} GCT layers; gate statistics: {result.gate_note}")
    print(result.conclusion)
    print(f"report: {Path(out) / 'analysis.md'}")
    return 0
