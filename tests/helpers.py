"""Helpers shared by several test modules (``from helpers import ...``; shared fixtures are in conftest.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gctnet.data import DatasetNotFoundError, find_fashion_mnist

__all__ = ["FASHION_MNIST_MISSING", "have_fashion_mnist", "requires_fashion_mnist", "read_csv", "make_image_folder",
           "WarmPython"]

FASHION_MNIST_MISSING = "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist; see README: Data)"


def have_fashion_mnist() -> bool:
    """Whether the Fashion-MNIST files are found where :func:`gctnet.data.find_fashion_mnist` looks."""
    try:
        find_fashion_mnist()
    except DatasetNotFoundError:
        return False
    return True


#: module or test mark: skip when Fashion-MNIST is not installed
requires_fashion_mnist = pytest.mark.skipif(not have_fashion_mnist(), reason=FASHION_MNIST_MISSING)


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header line, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def make_image_folder(root: Path, size: int = 16, per_class: int = 4, corrupt: bool = False) -> Path:
    """A tiny ImageFolder tree ``root/{train,val}/{cat,dog}/i.png`` (RGB and grayscale, uneven heights);
    with ``corrupt`` one unreadable ``train/dog/broken.png`` too."""
    from PIL import Image

    colours = {"cat": (200, 30, 30), "dog": (30, 30, 200)}
    for split in ("train", "val"):
        for name, colour in colours.items():
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = Image.new("RGB" if i % 2 == 0 else "L", (size, size + i % 3), colour if i % 2 == 0 else 128)
                img.save(d / f"{i}.png")
    if corrupt:
        (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return root


def to_channels_last(x):
    """channels_last (4-D), channels_last_3d (5-D) or (N, L, C) storage seen as (N, C, L) (3-D)."""
    import torch

    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def run_gct(backend, x, params, dy, mode="l2", after_relu=False, grad_x=True):
    """``gctnet.functional.gct`` forward and gradients under ``backend`` (restored afterwards)."""
    import torch

    from gctnet import functional as F
    from gctnet import kernels

    with kernels.use_backend(backend):
        xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(grad_x)
        y = F.gct(xg, *params, mode=mode, after_relu=after_relu)
        inputs = ([xg] if grad_x else []) + list(params)
        grads = torch.autograd.grad(y, inputs, dy)
    return y, grads


# ------------------------------------------------------------------------- commands in a warm interpreter
_WARM_SERVER = r"""
import atexit, json, os, sys, traceback
import gctnet.cli, gctnet.models, torchvision  # warm: these imports are most of a short command's time

def child(req):
    os.chdir(req["cwd"])
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    sys.argv = ["-c", *req["args"]]
    try:
        exec(compile(req["code"], "<string>", "exec"), {"__name__": "__main__"})
        code = 0
    except SystemExit as exc:  # what the interpreter does with it at the top level
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)

for line in sys.stdin:
    req = json.loads(line)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        child(req)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class WarmPython:
    """``python -c CODE ARGS`` run in a child forked from one interpreter that has already imported torch,
    torchvision and gctnet (a fork server), instead of a fresh interpreter each time.

    Each command still runs in a process of its own: its own exit status, stdout and stderr (files, not a
    terminal), working directory and module state; what it changes (a patched function, an open lock)
    ends with it. Only the interpreter start and those imports (about 8 s of a 9 s bad-input case on the
    2-core CI machine) are shared. What needs a fresh interpreter (output at import time, the interpreter's
    own shutdown) is tested with ``subprocess`` directly.
    """

    def __init__(self, env: dict[str, str]) -> None:
        import subprocess
        import sys

        self._proc = subprocess.Popen([sys.executable, "-c", _WARM_SERVER], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=env, text=True)

    def run(self, code: str, args: list[str], cwd: Path, timeout: float = 300):
        import json
        import os
        import signal
        import subprocess
        import tempfile
        import threading

        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            request = {"code": code, "args": args, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            pid = json.loads(self._proc.stdout.readline())["pid"]
            fired: list[bool] = []

            def kill() -> None:
                fired.append(True)
                os.kill(pid, signal.SIGKILL)

            timer = threading.Timer(timeout, kill)
            timer.start()
            try:
                code = json.loads(self._proc.stdout.readline())["returncode"]
            finally:
                timer.cancel()
            if fired:
                raise subprocess.TimeoutExpired(["python", "-c", "...", *args], timeout)
            return subprocess.CompletedProcess(args, code, out.read_text(), err.read_text())

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=30)
