"""torchrun / DDP on CPU (gloo): a 2-process run, eval parity, rank-0-only output, a dead rank."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gctnet.train import evaluate_path
from gctnet.train.distributed import DistContext, setup, shard

TRAIN = ["train", "--model", "resnet20", "--model-kwargs", "width=0.25", "--device", "cpu", "--quiet"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_shard_covers_every_index_once():
    for n, world in [(201, 2), (10, 3), (2, 4)]:
        parts = [shard(range(n), r, world) for r in range(world)]
        assert sorted(torch.cat(parts).tolist()) == list(range(n))


def test_single_process_setup_is_a_no_op():
    ctx = setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed, ctx.owns_group) == (0, 1, True, False, False)
    t = torch.ones(2)
    assert torch.equal(ctx.all_reduce(t), torch.ones(2))
    assert ctx.main_first(lambda: 7) == 7
    assert isinstance(ctx, DistContext)


def test_torchrun_two_processes_matches_single_process_eval(tmp_path, fashion):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gctnet",
           *TRAIN, "--subset", "256", "--val-subset", "201", "--batch-size", "64", "--epochs", "1",
           "--dist-timeout", "60", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # only rank 0 logs and writes files
    assert proc.stdout.count("epoch 1/1 ") == 1 and "x 2 processes" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["best.pt", "config.json", "last.pt", "log.txt", "metrics.csv", "model.safetensors", "summary.json"])
    assert not (tmp_path / "runs").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"]
    # 201 val images over 2 ranks (101 + 100): each counted exactly once
    assert summary["val_evaluated"] == 201
    # the reported accuracy equals a single-process evaluation of the saved checkpoint
    single = evaluate_path(str(out))
    assert single["n"] == 201
    assert single["top1"] == summary["final_top1"] and single["top5"] == summary["final_top5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_rank_makes_the_other_fail_in_bounded_time(tmp_path, fashion):
    """Rank 1 is killed mid-training; rank 0 must exit with an error instead of hanging."""
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "RANK": str(rank), "LOCAL_RANK": str(rank)}
        cmd = [sys.executable, "-m", "gctnet", *TRAIN, "--subset", "8192", "--val-subset", "64", "--batch-size",
               "32", "--epochs", "1", "--dist-timeout", "20", "--log-interval", "1", "--out", str(tmp_path / "dead")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    rank0, rank1 = procs
    try:
        for line in rank0.stdout:  # training has started on both ranks
            if "step 2/" in line:
                break
        rank1.send_signal(signal.SIGKILL)
        start = time.monotonic()
        _, err = rank0.communicate(timeout=120)
        elapsed = time.monotonic() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert rank0.returncode not in (0, None)
    assert elapsed < 90
    assert "gctnet train: error: rank 0: a collective operation" in err and "Traceback" not in err, err[-2000:]
