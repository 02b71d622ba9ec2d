"""Which GCT implementation runs where (the backend, Triton, the C++ CPU kernels); --build compiles the
C++ CPU kernels now (once per machine and torch version; otherwise they are built on first CPU use).

Examples: gctnet kernels;  gctnet kernels --build;  GCTNET_BACKEND=eager gctnet kernels --json
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


def run(args: argparse.Namespace) -> int:
    from ..kernels import report

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
            *([f"instructions   {cpp['isa']} (GCTNET_CPU_ISA=baseline forces the SSE2 build), "
               f"{cpp['vector_tanh']} tanh"] if cpp.get("isa") else []),
            f"cache          {cpp['cache_dir']}",
            f"torch          {rep['torch']}, {rep['cpu_threads']} CPU threads",
        ]
        print("\n".join(lines))
    return 1 if args.build and rep["cpp_kernels"].get("available") is False else 0
