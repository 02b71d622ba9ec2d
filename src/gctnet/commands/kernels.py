"""Which GCT implementation runs where (the backend, Triton, the C++ CPU kernels); --build compiles the
C++ CPU kernels now (once per machine and torch version; otherwise they are built on first CPU use);
--check compares the device's accelerated kernels with the PyTorch ops for every dtype and layout.

Examples: gctnet kernels;  gctnet kernels --build;  gctnet kernels --check --device cuda;
GCTNET_BACKEND=eager gctnet kernels --json
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--build", action="store_true",
                        help="load the C++ CPU kernels, compiling them first if there is no cached build; "
                             "exit status 1 if that fails")
    parser.add_argument("--verbose", action="store_true", help="with --build: show the compiler's output")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--check", action="store_true",
                        help="run the accelerated kernels' self-check for every dtype, number of dims and layout "
                             "and print a table; exit status 1 if a kernel is wrong")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="with --check: the device (default cpu)")


def _check(args: argparse.Namespace) -> int:
    import torch

    from . import UsageError
    from ..kernels import check, ops

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available here")
    kernels = ops.accelerated(args.device)
    if kernels is None:
        print(f"no accelerated GCT kernels for {args.device} tensors under this backend: they run on PyTorch ops")
        return 0
    device = torch.device(args.device)
    rows = check.check_table(kernels, device)
    if args.json:
        print(json.dumps({"kernels": kernels.name, "device": str(device), "rows": rows}, indent=2))
    else:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"{kernels.name} kernels vs PyTorch ops on {device} ({name}): forward, scale, backward; l2, l1, l1 after ReLU")
        print(f"{'dtype':<10} {'dims':>4}  {'layout':<14} result")
        for r in rows:
            print(f"{r['dtype']:<10} {r['dims']:>4}  {r['layout']:<14} {'ok' if r['ok'] else 'WRONG: ' + r['problem']}")
        bad = sum(not r["ok"] for r in rows)
        print(f"{len(rows) - bad} of {len(rows)} agree" + (f"; {bad} wrong" if bad else ""))
    return 0 if all(r["ok"] for r in rows) else 1


def run(args: argparse.Namespace) -> int:
    from ..kernels import report

    if args.check:
        return _check(args)

    rep = report(build=args.build, verbose=args.verbose)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        cpp = rep["cpp_kernels"]
        lines = [
            f"backend        {rep['backend']} (from {rep['backend_source']}; GCTNET_BACKEND=auto|triton|cpp|eager)",
            f"CPU tensors    {rep['cpu_path']}",
            f"CUDA tensors   {rep['cuda_path']} (CUDA {'available' if rep['cuda_available'] else 'not available'}, "
            f"Triton {'installed' if rep['triton_available'] else 'not installed'})",
            f"C++ kernels    {cpp['state']}",
            *([f"instructions   {cpp['isa']} (AVX2+FMA where the CPU has it), "
               f"{cpp['vector_tanh']} tanh"] if cpp.get("isa") else []),
            f"cache          {cpp['cache_dir']}",
            f"torch          {rep['torch']}, {rep['cpu_threads']} CPU threads",
        ]
        print("\n".join(lines))
    return 1 if args.build and rep["cpp_kernels"].get("available") is False else 0
