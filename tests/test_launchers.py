"""gctnet compare --jobs N: the same weights as one run at a time (deterministic mode), progress lines,
a failing run that does not stop the others, Ctrl-C or kill that leaves resumable run folders, a job stopped
from outside that stops the launching."""

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
    started = [line for line in lines if ": started" in line]
    assert len(started) == 2 and not any("ETA" in line for line in started)  # no epoch timed yet
    first_epoch = next(line for line in lines if "epoch 1/1 done" in line)
    assert ", ETA " in first_epoch, lines  # one epoch timed, one of the other run left
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


def compare_argv(out: Path, seeds: str = "0,") -> list[str]:
    return [sys.executable, "-m", "gctnet", "compare", "--models", ",".join(MODELS), "--seeds", seeds, "--out", str(out),
            "--epochs", "2", "--subset", "2048", "--val-subset", "128", "--batch-size", "32", "--model-kwargs",
            "width=0.5", "--workers", "0", "--quiet", "--deterministic", "--no-analyze", "--jobs", "2"]


ENV = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def wait_until_training(proc: subprocess.Popen, out: Path, runs: list[tuple[str, int]]) -> None:
    logs = [compare.run_dir(out, m, seed) / "log.txt" for m, seed in runs]
    deadline = time.monotonic() + 90
    while not all(p.is_file() for p in logs) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    time.sleep(1.0)  # the jobs are training


def job_pids(parent: int) -> dict[tuple[str, int], int]:
    """The --jobs processes of ``parent``, by (model, seed), read from their command lines."""
    pids = {}
    for pid in map(int, Path(f"/proc/{parent}/task/{parent}/children").read_text().split()):
        payload = json.loads(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[3])
        pids[payload["config"]["model"], payload["config"]["seed"]] = pid
    return pids


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_or_kill_stops_every_job_and_a_rerun_finishes_them(tmp_path, signum):
    out = tmp_path / "cmp"
    argv = compare_argv(out)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    wait_until_training(proc, out, [(m, 0) for m in MODELS])
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, output
    assert "stopping 2 running job(s)" in output and "Run the same gctnet compare command again" in output
    from gctnet.experiments.runner import run_status

    assert [run_status(compare.run_dir(out, m, 0)) for m in MODELS] == ["resume", "resume"], output
    assert not list(out.glob("runs/*/seed0/summary.json"))
    if signum == signal.SIGTERM:
        return  # the rerun is the same for both
    rerun = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, timeout=300)
    assert rerun.returncode == 0, rerun.stdout
    assert rerun.stdout.count("started (resuming)") == 2, rerun.stdout
    for m in MODELS:
        assert json.loads((compare.run_dir(out, m, 0) / "summary.json").read_text())["finished"]


def test_a_stopped_job_says_whether_it_saved_anything():
    assert launchers._stopped_how(launchers.EXIT_INTERRUPTED) == "progress saved"
    assert launchers._stopped_how(-signal.SIGTERM) == "killed by SIGTERM before saving anything; it starts afresh"


def test_a_job_stopped_from_outside_starts_no_further_run(tmp_path):
    """SIGTERM to one job (a shutdown, a user freeing the machine): its run saves its progress and is not a
    failure, the queued runs do not start, the other running job finishes, and the experiment ends interrupted."""
    out = tmp_path / "cmp"
    proc = subprocess.Popen(compare_argv(out, "0,1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)
    wait_until_training(proc, out, [("resnet20", 0), ("resnet20", 1)])  # runs go model by model
    os.kill(job_pids(proc.pid)["resnet20", 1], signal.SIGTERM)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert ("resnet20 seed 1: stopped by a signal from outside, progress saved (interrupted: SIGTERM received"
            in output), output
    assert "starting no further run (2 not started)" in output and "FAILED" not in output, output
    assert ("stopped by a signal from outside: resnet20 seed 1 (progress saved); 2 run(s) not started" in output), output
    from gctnet.experiments.runner import run_status

    assert run_status(compare.run_dir(out, "resnet20", 1)) == "resume", output
    assert json.loads((compare.run_dir(out, "resnet20", 0) / "summary.json").read_text())["finished"], output
    assert not compare.run_dir(out, "gct_resnet20", 0).exists() and not compare.run_dir(out, "gct_resnet20", 1).exists()


def test_eta_counts_the_epochs_left_not_the_runs(tmp_path, monkeypatch):
    """A resumed run has only its epochs left to train; the ETA is the mean epoch time times the epochs left,
    so a run resumed near its end neither shortens nor lengthens the estimate."""
    from gctnet.train import TrainConfig

    clock = [0.0]
    monkeypatch.setattr(launchers.time, "perf_counter", lambda: clock[0])

    def fake_run(config, status):  # 10 s per epoch, writes the metrics rows as the engine does
        done = launchers._epochs_done(Path(config.out)) if status == "resume" else 0
        clock[0] += 10.0 * (config.epochs - done)
        Path(config.out).mkdir(parents=True, exist_ok=True)
        (Path(config.out) / "metrics.csv").write_text("epoch\n" + "".join(f"{e}\n" for e in range(1, config.epochs + 1)))

    monkeypatch.setattr(launchers.runner, "ensure_run", fake_run)
    resumed = tmp_path / "b"
    resumed.mkdir()
    (resumed / "metrics.csv").write_text("epoch\n1\n2\n3\n")  # 3 of 4 epochs done
    runs = [launchers.PlannedRun(name, 0, TrainConfig(model="resnet20", epochs=4, out=str(tmp_path / name)), status)
            for name, status in (("a", "new"), ("b", "resume"), ("c", "new"))]
    assert [launchers._epochs_left(r) for r in runs] == [4, 1, 4]
    lines: list[str] = []
    launchers.Sequential().launch(runs, lines.append)
    assert lines == ["run 1/3: a seed 0 (training), 3 to go, ETA after the first run",
                     "run 2/3: b seed 0 (resuming), 2 to go, ETA 50s",  # 10 s x (1 + 4) epochs
                     "run 3/3: c seed 0 (training), 1 to go, ETA 40s"]
    # the one formula of every launcher (--jobs and Ray share the slots)
    assert launchers.eta([10.0, 20.0], 6, 2) == "ETA 45s" and launchers.eta([10.0], 7, 0) == "ETA 1m10s"
    assert launchers.eta([], 6, 2) == "" and launchers.eta([10.0], 0, 2) == ""


def test_launcher_choice_and_bad_jobs():
    assert isinstance(launchers.make_launcher(1), launchers.Sequential)
    assert isinstance(launchers.make_launcher(3, log_dir=Path("x")), launchers.Jobs)
    from gctnet.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["compare", "--jobs", "0", "--out", "unused"])
    assert exc.value.code == 2
