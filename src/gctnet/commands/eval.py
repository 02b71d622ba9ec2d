"""Evaluate a model: top-1, top-5, loss and a per-class accuracy table.

PATH is a run folder (its last.pt, or best.pt with --which best), a gctnet checkpoint, a gctnet
model.safetensors, or an official GCT-ResNet-50 checkpoint (give --data imagefolder:PATH for it).
By default a gctnet run is evaluated on the data it was trained with (same val subset).

Examples:
  gctnet eval runs/gct20
  gctnet eval runs/gct20/best.pt --data fashion_mnist --json -
  gctnet eval gct_resnet50.pth --data imagefolder:/data/imagenet --num-classes 1000
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict

from . import UsageError, check_output_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("path", metavar="PATH", help="run folder, checkpoint (.pt/.pth) or model.safetensors")
    parser.add_argument("--which", choices=["last", "best"], default="last", help="checkpoint of a run folder")
    parser.add_argument("--data", "--dataset", dest="data", help="data spec (default: the run's)")
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: the run's, $GCTNET_DATA, system path)")
    parser.add_argument("--split", choices=["val", "train"], default="val")
    parser.add_argument("--subset", type=int, metavar="N", help="evaluate a fixed random N-sample subset "
                        "(default for a run's own data: its --val-subset)")
    parser.add_argument("--image-size", type=int, help="ImageFolder evaluation size")
    parser.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images (counted)")
    parser.add_argument("--num-classes", type=int, help="classes of an official checkpoint (default: its classifier's size)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch (default: the run's, else 256)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for ImageFolder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, metavar="N", help="torch intra-op CPU threads (default: as for "
                        "gctnet train: one less than the cores, at least 1; OMP_NUM_THREADS wins when set)")
    parser.add_argument("--amp", nargs="?", const="auto", choices=["auto", "bf16", "fp16", "none"],
                        help="autocast dtype (default: the run's)")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE ('-' = stdout only)")


def run(args: argparse.Namespace) -> int:
    from ..train import evaluate_path, format_eval_table

    for name in ("subset", "batch_size", "num_classes", "image_size", "threads"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.json and args.json != "-":
        check_output_file("--json", args.json)
    import torch

    from ..train.distributed import resolve_threads

    torch.set_num_threads(resolve_threads(args.threads))
    result: Dict[str, Any] = evaluate_path(
        args.path, which=args.which, data=args.data, data_dir=args.data_dir, split=args.split,
        subset=args.subset, image_size=args.image_size, skip_bad_images=args.skip_bad_images,
        num_classes=args.num_classes, batch_size=args.batch_size, workers=args.workers,
        device=args.device, amp=args.amp,
    )
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']} on {result['data']} ({args.split}):")
    print(format_eval_table(result))
    if args.json:
        from ..fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0
