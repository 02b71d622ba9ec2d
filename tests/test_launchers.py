"""gctnet compare --jobs N: the same weights as one run at a time (deterministic mode), progress lines,
a failing run that does not stop the others, Ctrl-C that leaves resumable run folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gctnet import compare
from gctnet.experiments import launchers
from helpers import requires_fashion_mnist

pytestmark = requires_fashion_mnist

SRC = str(Path(compare.__file__).resolve().parents[1])
MODELS = ["resnet20", "gct_resnet20"]
OPTIONS = {"epochs": 1, "subset": 128, "val_subset": 128, "batch_size": 64, "model_kwargs": {"width": 0.5},
           "quiet": True, "workers": 0, "deterministic": True}


def weights(out: Path, model: str, seed: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(compare.run_dir(out, model, seed) / "model.safetensors"))


def same_weights(a: Path, b: Path, model: str, seed: int) -> bool:
    wa, wb = weights(a, model, seed), weights(b, model, seed)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_jobs_give_the_weights_of_one_run_at_a_time(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    compare.run(MODELS, "0,", one, train_options=OPTIONS, log=None, analyze=False, jobs=1)
    lines: list[str] = []
    result = compare.run(MODELS, "0,", two, train_options=OPTIONS, log=lines.append, analyze=False, jobs=2)
    assert result.trained == 2 and len(result.runs) == 2
    for model in MODELS:
        assert same_weights(one, two, model, 0), model
    threads = max(1, launchers.cores() // 2)
    assert any(f"2 job(s) at once, {threads} CPU thread(s) each" in line for line in lines)
    assert any("resnet20 seed 0: started" in line and "running" in line and "queued" in line for line in lines)
    assert any("epoch 1/1 done" in line for line in lines)
    assert sum(": finished in" in line for line in lines) == 2
    assert any(line.startswith("[2/2 done, 0 running, 0 queued") for line in lines)
    saved = json.loads((compare.run_dir(two, "resnet20", 0) / "config.json").read_text())
    assert saved["threads"] == threads  # its share of the cores


def test_a_failing_run_does_not_stop_the_others(tmp_path):
    out = tmp_path / "cmp"
    bad = compare.run_dir(out, "gct_resnet20", 0)
    bad.mkdir(parents=True)
    (bad / "config.json").write_text("{not json")  # a broken earlier attempt: resuming it fails in its job
    (bad / "last.pt").write_text("garbage")
    from gctnet.errors import RunError

    with pytest.raises(RunError, match="1 run\\(s\\) failed .*gct_resnet20 seed 0: .*log: "):
        compare.run(MODELS, "0,", out, train_options=OPTIONS, log=None, analyze=False, jobs=2)
    assert (compare.run_dir(out, "resnet20", 0) / "summary.json").is_file()


def test_ctrl_c_stops_every_job_and_a_rerun_finishes_them(tmp_path):
    out = tmp_path / "cmp"
    argv = [sys.executable, "-m", "gctnet", "compare", "--models", ",".join(MODELS), "--seeds", "0,", "--out", str(out),
            "--epochs", "2", "--subset", "2048", "--val-subset", "128", "--batch-size", "32", "--model-kwargs",
            "width=0.5", "--workers", "0", "--quiet", "--deterministic", "--no-analyze", "--jobs", "2"]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    logs = [compare.run_dir(out, m, 0) / "log.txt" for m in MODELS]
    deadline = time.monotonic() + 90
    while not all(p.is_file() for p in logs) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    time.sleep(1.0)  # both jobs are training
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "stopping 2 running job(s)" in output and "Run the same gctnet compare command again" in output
    from gctnet.experiments.runner import run_status

    assert [run_status(compare.run_dir(out, m, 0)) for m in MODELS] == ["resume", "resume"], output
    assert not list(out.glob("runs/*/seed0/summary.json"))
    rerun = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stdout
    assert rerun.stdout.count("started (resuming)") == 2, rerun.stdout
    for m in MODELS:
        assert json.loads((compare.run_dir(out, m, 0) / "summary.json").read_text())["finished"]


def test_launcher_choice_and_bad_jobs():
    assert isinstance(launchers.make_launcher(1), launchers.Sequential)
    assert isinstance(launchers.make_launcher(3, log_dir=Path("x")), launchers.Jobs)
    from gctnet.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["compare", "--jobs", "0", "--out", "unused"])
    assert exc.value.code == 2
