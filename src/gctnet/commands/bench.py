"""Benchmarks, side by side in one process (interleaved repetitions, medians, paired ratios with 95% CIs).

  gctnet bench layer [--shape 16,256,56,56] [--dtype float32] [--channels-last] [--mode l2]
      GCT implementations (reference formula, gctnet eager, Triton on CUDA, torch.compile) against a
      per-channel multiply x * w; forward and forward+backward; saved-for-backward bytes.
  gctnet bench model [--models resnet20,se_resnet20,gct_resnet20,gct_resnet20:checkpoint=false]
                     [--input-size 1,28,28] [--compile]
      train-step time, inference time and saved activations per image; ratios to the first model.
      gct_ models use apply_gct's default lean-memory path; ':checkpoint=false' is the plain
      conv(gct(x)) composition (the conv keeps the GCT output for backward).
  gctnet bench all [--markdown BENCHMARKS.md] [--no-compile]
      the standard configurations of both (plus saved activations of ResNet-50 variants) and a
      markdown report with the machine description and this command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from . import UsageError, check_output_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="bench", metavar="{layer,model,all}")
    sub.required = True

    layer = sub.add_parser("layer", help="GCT layer implementations vs a per-channel multiply")
    layer.add_argument("--shape", default="16,256,56,56", help="N,C,*spatial (1-3 spatial dims; default 16,256,56,56)")
    layer.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16 | float64 (default float32)")
    layer.add_argument("--mode", default="l2", choices=("l2", "l1"), help="GCT mode (default l2)")
    layer.add_argument("--triton", action=argparse.BooleanOptionalAction, default=None,
                       help="include the Triton kernels (default: on CUDA only; CPU needs TRITON_INTERPRET=1)")
    layer.add_argument("--cpp", action=argparse.BooleanOptionalAction, default=True,
                       help="include the C++ CPU kernels (CPU inputs; default on)")
    _common(layer, repeats=20)

    from ..bench.model import DEFAULT_MODELS

    default_models = ",".join(DEFAULT_MODELS)
    model = sub.add_parser("model", help="train/inference time and saved activations of several models")
    model.add_argument("--models", default=default_models,
                       help="comma-separated registry names, ratios to the first; GCT options (passed to apply_gct) "
                       "after ':' joined by '+', e.g. gct_resnet20:checkpoint=false (conv keeps the GCT output; "
                       f"gct_ models default to the lean-memory path) or gct_resnet20:mode=l1; backend=eager|cpp|triton|auto runs "
                       f"that model under a GCT backend, e.g. gct_resnet20:backend=eager (default {default_models})")
    model.add_argument("--input-size", default="1,28,28", help="C,H,W of one image (default 1,28,28)")
    model.add_argument("--batch-size", type=int, default=128, help="default 128")
    model.add_argument("--num-classes", type=int, default=10, help="default 10")
    model.add_argument("--amp", action="store_true", help="autocast (bfloat16 on CPU, float16 + GradScaler on CUDA)")
    _common(model, repeats=10, compile_default=False)

    all_ = sub.add_parser("all", help="standard layer + model benchmarks, optionally written as markdown")
    all_.add_argument("--markdown", metavar="PATH", default=None, help="write the report to PATH (e.g. BENCHMARKS.md)")
    all_.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    all_.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                      help="include torch.compile runs (default on; compiling costs ~1 min per small model on CPU)")
    all_.add_argument("--layer-repeats", type=int, default=20, help="default 20")
    all_.add_argument("--model-repeats", type=int, default=20, help="default 20")
    all_.add_argument("--threads", default=None, metavar="N[,N...]",
                      help="torch thread counts, one pass each (default: 1 and all of torch's threads)")


def _common(p: argparse.ArgumentParser, *, repeats: int, compile_default: bool = True) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed repetitions (default {repeats})")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=compile_default,
                   help=f"include torch.compile (default {'on' if compile_default else 'off'})")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    _threads(p)


def _threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op CPU threads (default: torch's choice; 1 gives steadier figures on a busy machine)")


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")


def _command_line() -> str:
    return "gctnet " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run(args: argparse.Namespace) -> int:
    _check_device(args.device)
    if args.bench == "all":
        return _run_all(args)
    if args.threads is not None:
        import torch

        _positive("--threads", args.threads)
        torch.set_num_threads(args.threads)
    _positive("--repeats", args.repeats)
    _positive("--warmup", args.warmup, 0)
    if args.bench == "layer":
        from ..bench.layer import bench_layer, parse_dtype, parse_shape

        try:
            shape, dtype = parse_shape(args.shape), parse_dtype(args.dtype)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        result = bench_layer(
            shape, dtype, args.device, channels_last=args.channels_last, mode=args.mode, repeats=args.repeats,
            warmup=args.warmup, compile=args.compile, triton=args.triton, cpp=args.cpp,
        )
    else:
        from ..bench.accounting import parse_input_size
        from ..bench.model import bench_model, parse_model_specs

        try:
            parse_model_specs(args.models)
            size = parse_input_size(args.input_size)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        _positive("--batch-size", args.batch_size)
        _positive("--num-classes", args.num_classes)
        if args.channels_last and len(size) != 3:
            raise UsageError(f"--channels-last needs a C,H,W input size, got {args.input_size}")
        result = bench_model(
            args.models, size, args.batch_size, num_classes=args.num_classes, device=args.device,
            compile=args.compile, amp=args.amp, channels_last=args.channels_last, repeats=args.repeats,
            warmup=args.warmup, progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
    print(json.dumps(result.to_dict(), indent=2, default=str) if args.json else result.format())
    return 0


def _run_all(args: argparse.Namespace) -> int:
    from ..bench.report import bench_all

    _positive("--layer-repeats", args.layer_repeats)
    _positive("--model-repeats", args.model_repeats)
    threads = None
    if args.threads is not None:
        try:
            threads = [int(t) for t in args.threads.split(",") if t.strip()]
        except ValueError:
            raise UsageError(f"--threads must be comma-separated thread counts like 1,2, got {args.threads!r}") from None
        if not threads or min(threads) < 1:
            raise UsageError(f"--threads must be thread counts >= 1, got {args.threads!r}")
    if args.markdown:
        check_output_file("--markdown", args.markdown)
    result = bench_all(
        device=args.device, compile=args.compile, layer_repeats=args.layer_repeats,
        model_repeats=args.model_repeats, command=_command_line(), threads=threads,
        progress=lambda m: print(f"[{m}]", file=sys.stderr, flush=True),
    )
    if args.markdown:
        from ..fileio import atomic_write_text

        atomic_write_text(args.markdown, result.markdown + "\n")
        print(f"wrote {args.markdown} ({result.seconds / 60:.1f} min)")
    else:
        print(result.markdown)
    for t in result.targets:
        status = {True: "met", False: "NOT met"}.get(t.met, "not measured" if t.measured is None else "reference")
        if t.within_noise:
            status += " (within noise: the 95% CI spans the limit)"
        print(f"target {t.what}: {t.measured or '-'} (limit {t.limit}): {status}")
    return 0
