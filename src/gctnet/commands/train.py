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
from typing import Any, Dict

from . import UsageError

S = argparse.SUPPRESS  # options not given stay out of the namespace: recipe/saved-config values apply


def key_value(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    g = parser.add_argument_group("model and data")
    g.add_argument("--model", default=S, help="registered model name (default: resnet20; see gctnet info --list)")
    g.add_argument("--model-kwargs", nargs="+", type=key_value, metavar="KEY=VALUE", default=S,
                   help="extra builder arguments, e.g. width=2 (values parsed as Python literals)")
    g.add_argument("--init-from", default=S, metavar="PATH",
                   help="start from these weights: a run folder, checkpoint, state_dict or .safetensors file "
                        "(a plain network's weights load into its gct_ variant; ignored with --resume)")
    g.add_argument("--data", "--dataset", dest="data", default=S,
                   help="fashion_mnist (default) or imagefolder:PATH (PATH/train/<class>/..., PATH/val/<class>/...)")
    g.add_argument("--data-dir", default=S, help="folder with the Fashion-MNIST files (else $GCTNET_DATA, system path)")
    g.add_argument("--download", action="store_true", default=S, help="let torchvision download Fashion-MNIST if missing")
    g.add_argument("--image-size", type=int, default=S, help="ImageFolder training size (default: by image size)")
    g.add_argument("--skip-bad-images", action="store_true", default=S, help="skip unreadable images (counted)")
    g.add_argument("--subset", type=int, default=S, metavar="N", help="train on a random N-sample subset (per seed)")
    g.add_argument("--val-subset", type=int, default=S, metavar="N", help="evaluate on a fixed N-sample subset")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=S, help="no training augmentation")

    g = parser.add_argument_group("recipe")
    g.add_argument("--recipe", choices=["quick", "paper"], default="quick",
                   help="defaults to start from: quick (2 epochs, cosine) or paper (100 epochs, step 30/60/90)")
    g.add_argument("--epochs", type=int, default=S)
    g.add_argument("--batch-size", type=int, default=S, help="global batch (split over torchrun processes)")
    g.add_argument("--eval-batch-size", type=int, default=S)
    g.add_argument("--opt", choices=["sgd", "adamw"], default=S, help="sgd: Nesterov momentum 0.9 (paper)")
    g.add_argument("--lr", type=float, default=S, help="learning rate (default: lr-base * batch / lr-base-size)")
    g.add_argument("--lr-base", type=float, default=S, help="base lr for the scaling rule (0.1 SGD, 1e-3 AdamW)")
    g.add_argument("--lr-base-size", type=int, default=S, help="batch size of --lr-base (256)")
    g.add_argument("--momentum", type=float, default=S)
    g.add_argument("--no-nesterov", dest="nesterov", action="store_false", default=S)
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=S)
    g.add_argument("--wd-policy", choices=["paper", "none", "all"], default=S,
                   help="paper: no weight decay on GCT beta (default); none/all: alternatives")
    g.add_argument("--sched", choices=["cosine", "step", "constant"], default=S)
    g.add_argument("--milestones", nargs="+", type=float, default=S, metavar="EPOCH", help="step schedule epochs")
    g.add_argument("--lr-gamma", type=float, default=S, help="step schedule factor (0.1)")
    g.add_argument("--warmup-epochs", type=float, default=S)
    g.add_argument("--warmup-factor", type=float, default=S)
    g.add_argument("--warmup-mode", choices=["linear", "constant"], default=S)
    g.add_argument("--min-lr-factor", type=float, default=S, help="cosine floor as a fraction of the lr")
    g.add_argument("--label-smoothing", type=float, default=S)

    g = parser.add_argument_group("execution")
    g.add_argument("--amp", nargs="?", const="auto", choices=["auto", "bf16", "fp16", "none"], default=S,
                   help="mixed precision (bare --amp: bf16 on CPU, bf16 or fp16+GradScaler on CUDA)")
    g.add_argument("--channels-last", action="store_true", default=S)
    g.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    g.add_argument("--seed", type=int, default=S)
    g.add_argument("--deterministic", action="store_true", default=S, help="deterministic algorithms (bit-exact resume)")
    g.add_argument("--workers", type=int, default=S, help="DataLoader workers (ImageFolder; in-memory data needs none)")
    g.add_argument("--device", default=S, help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--sync-bn", action="store_true", default=S, help="SyncBatchNorm under torchrun")
    g.add_argument("--dist-timeout", type=float, default=S, metavar="SECONDS",
                   help="torchrun: fail instead of waiting longer than this for another rank (300)")

    g = parser.add_argument_group("output")
    g.add_argument("--out", default=S, help="run folder (default: runs/<model>-<timestamp>)")
    g.add_argument("--overwrite", action="store_true", default=S, help="replace an existing run in --out")
    g.add_argument("--resume", default=S, metavar="RUN_DIR", help="continue RUN_DIR from its last.pt")
    g.add_argument("--quiet", action="store_true", default=S, help="no progress bars, one line per epoch")
    g.add_argument("--log-interval", type=int, default=S, metavar="STEPS", help="plain progress line every N steps")
    g.add_argument("--tensorboard", action="store_true", default=S, help="also log to RUN/tensorboard (if installed)")


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`~gctnet.train.TrainConfig` for the parsed options (usage errors for bad values)."""
    from ..train import TrainConfig

    given: Dict[str, Any] = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command", "recipe")}
    if "model_kwargs" in given:
        given["model_kwargs"] = dict(given["model_kwargs"])
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

