"""gctnet.train: runs, outputs, resume, interruption, NaN guard, schedules, config, CLI, eval."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import pytest
import torch
from torch import nn

from gctnet import GCT, list_models, register_model
from gctnet.cli import main as cli_main
from gctnet.data import load_dataset
from gctnet.train import (
    METRICS_COLUMNS,
    ConfigError,
    NonFiniteLossError,
    RunDirExistsError,
    TrainConfig,
    TrainingInterrupted,
    atomic_save,
    evaluate,
    evaluate_path,
    load_checkpoint_model,
    run,
)
from gctnet.train import engine
from gctnet.train.schedule import lr_factor
from helpers import make_image_folder, read_csv

# ---------------------------------------------------------------- a tiny model with a test hook

# called with the logits of every training-mode forward when set (to inject NaNs or signals)
TRAIN_HOOK: Dict[str, Optional[Callable[[torch.Tensor], torch.Tensor]]] = {"fn": None}


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 8) -> None:
        super().__init__()
        self.gct = GCT(in_chans)
        self.conv = nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.conv(self.gct(x)))))
        out = self.fc(x.flatten(1))
        if self.training and TRAIN_HOOK["fn"] is not None:
            out = TRAIN_HOOK["fn"](out)
        return out


if not list_models("_test_tiny"):
    register_model("_test_tiny", TinyNet, defaults={"num_classes": 10, "in_chans": 1})


@pytest.fixture(autouse=True)
def _clear_hook():
    TRAIN_HOOK["fn"] = None
    yield
    TRAIN_HOOK["fn"] = None


def tiny_config(out: Path, **kw: Any) -> TrainConfig:
    base = dict(model="_test_tiny", epochs=2, subset=256, val_subset=256, batch_size=64, lr=0.2,
                warmup_epochs=0.25, deterministic=True, device="cpu", quiet=True, out=str(out))
    base.update(kw)
    return TrainConfig(**base)


def load_pt(path: Path) -> Dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def assert_same_optimizer(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, value in a["state"][k].items():
            other = b["state"][k][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


# ---------------------------------------------------------------- a full run


def test_run_writes_all_outputs(tmp_path, fashion):
    out = tmp_path / "run"
    rng_before = torch.get_rng_state()
    sigint_before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when started in the background
    summary = run(tiny_config(out, subset=512))
    assert torch.equal(torch.get_rng_state(), rng_before)  # global state restored
    assert not torch.are_deterministic_algorithms_enabled()
    assert signal.getsignal(signal.SIGINT) is sigint_before

    for name in ("config.json", "metrics.csv", "last.pt", "best.pt", "summary.json", "model.safetensors", "log.txt"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    rows = read_csv(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and tuple(rows[0]) == METRICS_COLUMNS
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])

    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert saved["finished"] is True and saved["epochs"] == 2 and saved["model"] == "_test_tiny"
    assert saved["final_top1"] > 40.0  # chance is 10 %
    assert saved["final_top1"] == pytest.approx(float(rows[1]["val_top1"]))
    assert saved["params"] == sum(p.numel() for p in TinyNet().parameters()) and saved["gct_params"] == 3
    from gctnet.train.distributed import resolve_threads

    assert saved["torch_threads"] == resolve_threads() and saved["device"] == "cpu"  # gctnet's default

    ckpt = load_pt(out / "last.pt")  # weights_only-safe
    assert ckpt["epoch"] == 2 and ckpt["model_name"] == "_test_tiny" and ckpt["config"]["seed"] == 0
    assert ckpt["model_kwargs"] == {"num_classes": 10, "in_chans": 1}
    assert load_pt(out / "best.pt")["metrics"]["best_top1"] == saved["best_top1"]

    # evaluating the saved model reproduces the run's final numbers
    model, ck = load_checkpoint_model(out)
    val = load_dataset("fashion_mnist", "val", subset=256)
    result = evaluate(model, val, classes=val.classes)
    assert result["n"] == 256 and result["top1"] == saved["final_top1"]
    assert sum(r["total"] for r in result["per_class"]) == 256
    assert evaluate_path(str(out))["top1"] == saved["final_top1"]

    from safetensors.torch import load_file

    assert_same_state(load_file(str(out / "model.safetensors")), model.state_dict())
    assert evaluate_path(str(out / "model.safetensors"), subset=256)["top1"] == saved["final_top1"]

    # the folder is not overwritten silently
    with pytest.raises(RunDirExistsError, match="--resume"):
        run(tiny_config(out, epochs=1))
    again = run(tiny_config(out, epochs=1, overwrite=True))
    assert again["epochs"] == 1 and len((out / "metrics.csv").read_text().splitlines()) == 2


def test_resume_after_crash_is_bit_identical(tmp_path, fashion, monkeypatch):
    straight = tmp_path / "straight"
    run(tiny_config(straight))

    class Crash(Exception):
        pass

    original = engine._Trainer._end_epoch

    def crash_after_first_epoch(self, epoch, row):
        original(self, epoch, row)
        if epoch == 0:
            raise Crash

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(engine._Trainer, "_end_epoch", crash_after_first_epoch)
    with pytest.raises(Crash):
        run(tiny_config(crashed))
    monkeypatch.setattr(engine._Trainer, "_end_epoch", original)
    assert load_pt(crashed / "last.pt")["epoch"] == 1 and not (crashed / "summary.json").exists()

    summary = run(TrainConfig.for_resume(crashed))
    a, b = load_pt(straight / "last.pt"), load_pt(crashed / "last.pt")
    assert_same_state(a["model"], b["model"])
    assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert a["global_step"] == b["global_step"] == 8
    assert summary["final_top1"] == json.loads((straight / "summary.json").read_text())["final_top1"]


def test_sigint_mid_epoch_saves_and_resumes_exactly(tmp_path, fashion):
    straight = tmp_path / "straight"
    run(tiny_config(straight))

    calls = {"n": 0}

    def raise_sigint(out: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2, second batch
            signal.raise_signal(signal.SIGINT)
        return out

    TRAIN_HOOK["fn"] = raise_sigint
    sigint_before = signal.getsignal(signal.SIGINT)
    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted, match=r"SIGINT received.*epoch 2, batch 2/4.*--resume") as info:
        run(tiny_config(stopped))
    TRAIN_HOOK["fn"] = None
    assert info.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is sigint_before  # handler restored
    ckpt = load_pt(stopped / "last.pt")
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["global_step"]) == (1, 2, 6)

    run(TrainConfig.for_resume(stopped))
    a, b = load_pt(straight / "last.pt"), load_pt(stopped / "last.pt")
    assert_same_state(a["model"], b["model"])
    assert_same_optimizer(a["optimizer"], b["optimizer"])
    rows = [read_csv(d / "metrics.csv") for d in (straight, stopped)]
    for key in ("train_loss", "train_acc", "val_top1", "val_loss"):
        assert [r[key] for r in rows[0]] == [r[key] for r in rows[1]]


def test_nan_loss_stops_with_clear_message(tmp_path, fashion):
    calls = {"n": 0}

    def nan_in_epoch_two(out: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return out * float("nan") if calls["n"] == 7 else out

    TRAIN_HOOK["fn"] = nan_in_epoch_two
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 3 of 4.*last good checkpoint.*epoch 1"):
        run(tiny_config(out))
    assert load_pt(out / "last.pt")["epoch"] == 1  # the good checkpoint is kept
    assert not (out / "summary.json").exists()


def test_absurd_lr_hits_the_guard(tmp_path, fashion):
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        run(tiny_config(tmp_path / "lr", lr=1e30, epochs=1, warmup_epochs=0))


def test_sigint_subprocess(tmp_path, fashion):
    """A real Ctrl-C to ``gctnet train``: exit status 130, a clear message, a loadable last.pt."""
    out = tmp_path / "sub"
    cmd = [sys.executable, "-m", "gctnet", "train", "--model", "resnet20", "--model-kwargs", "width=0.25",
           "--subset", "4096", "--val-subset", "64", "--batch-size", "32", "--epochs", "1", "--device", "cpu",
           "--log-interval", "1", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:  # wait until training steps are running
            if "step 1/" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "SIGINT received" in err and f"--resume {out}" in err and "Traceback" not in err
    ckpt = load_pt(out / "last.pt")
    assert ckpt["epoch"] == 0 and ckpt["batch_in_epoch"] >= 1


# ---------------------------------------------------------------- checkpoints


def test_atomic_save_keeps_previous_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"a": torch.ones(2)}, path)

    def broken_save(obj, fh):
        fh.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(load_pt(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_checkpoint_model_rejects_foreign_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a gctnet checkpoint"):
        load_checkpoint_model(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="last.pt"):
        load_checkpoint_model(tmp_path)
    for name, data in (("empty.pt", b""), ("cut.pt", (tmp_path / "x.pt").read_bytes()[:100]), ("junk.pt", b"junk" * 9)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"cannot read .*{name}.*empty, truncated or not a PyTorch"):
            load_checkpoint_model(tmp_path / name)


# ---------------------------------------------------------------- schedules and config


def test_paper_schedule():
    cfg = TrainConfig.from_recipe("paper")
    kw = dict(steps_per_epoch=10, epochs=cfg.epochs, sched=cfg.sched, milestones=cfg.resolved_milestones(),
              gamma=cfg.lr_gamma, warmup_epochs=cfg.warmup_epochs, warmup_factor=cfg.warmup_factor,
              warmup_mode=cfg.warmup_mode)
    assert [lr_factor(s, **kw) for s in (0, 9)] == [0.1, 0.1]  # first epoch at 0.1x
    assert lr_factor(10, **kw) == 1.0 and lr_factor(299, **kw) == 1.0
    assert lr_factor(300, **kw) == pytest.approx(0.1)
    assert lr_factor(600, **kw) == pytest.approx(0.01)
    assert lr_factor(999, **kw) == pytest.approx(0.001)
    assert cfg.effective_lr == pytest.approx(0.1) and cfg.batch_size == 256 and cfg.nesterov


def test_cosine_schedule_with_linear_warmup():
    kw = dict(steps_per_epoch=10, epochs=3, sched="cosine", warmup_epochs=1, warmup_factor=0.1, min_factor=0.0)
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(5, **kw) == pytest.approx(0.55)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(29, **kw) == pytest.approx(0.0, abs=1e-12)
    values = [lr_factor(s, **kw) for s in range(10, 30)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lr_scaling_and_validation():
    assert TrainConfig(batch_size=128).effective_lr == pytest.approx(0.05)
    assert TrainConfig(batch_size=128, lr=0.3).effective_lr == 0.3
    assert TrainConfig(opt="adamw", batch_size=256).effective_lr == pytest.approx(1e-3)
    bad = [dict(epochs=0), dict(batch_size=-1), dict(opt="rmsprop"), dict(amp="fp8"), dict(lr=-1.0),
           dict(milestones=[5, 2], sched="step"), dict(milestones=[1]), dict(model="no_such_net"),
           dict(momentum=0.0), dict(model_kwargs={"f": object()}), dict(label_smoothing=1.0),
           dict(warmup_epochs=5, epochs=2), dict(device="tpu")]
    for kw in bad:
        with pytest.raises(ConfigError):
            TrainConfig(**kw).validate()
    with pytest.raises(ConfigError, match="unknown recipe"):
        TrainConfig.from_recipe("fast")


def test_for_resume_limits_changes(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({**TrainConfig(lr=0.1).to_dict(), "_resolved": {}}))
    cfg = TrainConfig.for_resume(d, epochs=5, workers=2)
    assert (cfg.epochs, cfg.workers, cfg.lr, cfg.resume, cfg.out) == (5, 2, 0.1, str(d), str(d))
    assert TrainConfig.for_resume(d, lr=0.1).lr == 0.1  # unchanged value is fine
    with pytest.raises(ConfigError, match="cannot change lr"):
        TrainConfig.for_resume(d, lr=0.2)
    with pytest.raises(ConfigError, match="config.json not found"):
        TrainConfig.for_resume(tmp_path / "missing")


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-size", "0"], "batch_size must be a positive integer"),
        (["--amp", "fp16", "--device", "cpu"], "on CPU use --amp bf16"),
        (["--model", "resnet_20"], "unknown model"),
        (["--recipe", "paper", "--resume", "x"], "--recipe cannot be combined"),
        (["--milestones", "3", "--sched", "cosine"], "milestones only apply"),
        (["--model-kwargs", "width"], "KEY=VALUE"),
    ],
)
def test_cli_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli_main(["train", "--out", str(tmp_path / "x"), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_train_resume_and_eval(tmp_path, capsys, fashion):
    out = tmp_path / "cli"
    common = ["--model", "_test_tiny", "--subset", "256", "--val-subset", "128", "--batch-size", "64",
              "--lr", "0.2", "--device", "cpu", "--quiet"]
    assert cli_main(["train", *common, "--epochs", "1", "--out", str(out)]) == 0
    assert "epoch 1/1" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # existing run folder
        cli_main(["train", *common, "--epochs", "1", "--out", str(out)])
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["train", "--resume", str(out), "--lr", "1.0"])
    assert "cannot change lr" in capsys.readouterr().err
    assert cli_main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert load_pt(out / "last.pt")["epoch"] == 2

    assert cli_main(["eval", str(out)]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "Ankle boot" in text and "samples 128" in text
    assert cli_main(["eval", str(out), "--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert result["top1"] == summary["final_top1"] and result["n"] == 128 and len(result["per_class"]) == 10
    assert math.isclose(result["loss"], summary["final_loss"], rel_tol=1e-6)


def test_eval_official_checkpoint_on_imagefolder(tmp_path, capsys):
    official = pytest.importorskip("gctnet.models.official")
    if not hasattr(official, "save_official_checkpoint"):
        pytest.skip("official checkpoint support not available")
    from gctnet import create_model

    torch.manual_seed(0)
    model = create_model("gct_resnet50_official", num_classes=2).eval()
    path = tmp_path / "official.pth"
    official.save_official_checkpoint(model, path)
    root = make_image_folder(tmp_path / "imgs", per_class=2)
    result = evaluate_path(str(path), data=f"imagefolder:{root}", num_classes=2, image_size=32)
    ds = load_dataset(f"imagefolder:{root}", "val", image_size=32)
    assert result["n"] == 4 and result["model"] == "gct_resnet50_official"
    assert result["top1"] == evaluate(model, ds, classes=["cat", "dog"])["top1"]
    with pytest.raises(SystemExit):  # no dataset of its own
        cli_main(["eval", str(path)])
    assert "--data imagefolder:PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # checked before evaluating, not after
        cli_main(["eval", str(path), "--json", str(tmp_path / "missing" / "r.json")])
    assert exc.value.code == 2 and "does not exist; create it first" in capsys.readouterr().err


def test_progress_bars_on_a_terminal(tmp_path, capsys, monkeypatch, fashion):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    # redraw on every step, however fast the steps are (tqdm reads TQDM_* variables only when imported)
    import tqdm

    class EveryStep(tqdm.tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "mininterval": 0, "miniters": 1})

    monkeypatch.setattr(tqdm, "tqdm", EveryStep)
    run(tiny_config(tmp_path / "tty", epochs=1, quiet=False, tensorboard=True))
    captured = capsys.readouterr()
    assert "epoch 1/1 " in captured.out and "done: final top-1" in captured.out
    assert "batch" in captured.err and "img_s" in captured.err  # the tqdm bar with its postfix
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "TensorBoard is not installed" in (tmp_path / "tty" / "log.txt").read_text()
    else:
        assert (tmp_path / "tty" / "tensorboard").is_dir()


def test_bf16_autocast_and_channels_last_on_cpu(tmp_path, fashion):
    summary = run(tiny_config(tmp_path / "bf16", epochs=1, amp="auto", channels_last=True))
    assert math.isfinite(summary["final_loss"]) and summary["final_top1"] > 10.0
    ckpt = load_pt(tmp_path / "bf16" / "last.pt")
    assert ckpt["config"]["amp"] == "auto" and ckpt["scaler"] is None  # bf16 needs no grad scaler
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["_resolved"]["amp_dtype"] == "bfloat16"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_grad_scaler_on_cuda(tmp_path, fashion):
    summary = run(tiny_config(tmp_path / "fp16", epochs=1, amp="fp16", device="cuda", deterministic=False))
    assert summary["device"].startswith("cuda") and math.isfinite(summary["final_loss"])
    ckpt = load_pt(tmp_path / "fp16" / "last.pt")
    assert ckpt["scaler"] and ckpt["scaler"]["scale"] > 0
    assert evaluate_path(str(tmp_path / "fp16"), device="cuda")["top1"] == summary["final_top1"]


# ---------------------------------------------------------------- killed, interrupted, crashed: every resume works


def test_a_run_killed_after_its_last_checkpoint_is_finished_by_resume(tmp_path, fashion, monkeypatch):
    """Killed after writing last.pt but before best.pt, summary.json and model.safetensors."""
    straight = tmp_path / "straight"
    run(tiny_config(straight))
    killed = tmp_path / "killed"

    def killed_before_the_summary(self, wall_seconds):
        raise KeyboardInterrupt  # stands for the kill: nothing after the last checkpoint is written

    monkeypatch.setattr(engine._Trainer, "_finish", killed_before_the_summary)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(killed))
    monkeypatch.undo()
    last = load_pt(killed / "last.pt")
    assert last["epoch"] == 2 and not (killed / "summary.json").exists()
    best_epoch = last["metrics"]["best_epoch"]
    assert best_epoch == 2  # (this recipe's last epoch is its best)
    old = load_pt(killed / "last.pt")  # as if killed between last.pt and best.pt: best.pt is epoch 1's
    old["epoch"] = 1
    atomic_save(old, killed / "best.pt")
    (killed / ".last.pt.tmp-4242").write_bytes(b"half a checkpoint")  # left by a killed writer

    summary = run(TrainConfig.for_resume(killed))
    assert summary == {**json.loads((straight / "summary.json").read_text()), "run_dir": str(killed),
                       **{k: summary[k] for k in ("train_seconds", "wall_seconds", "images_per_sec", "torch_threads")}}
    assert (killed / "model.safetensors").is_file()
    assert load_pt(killed / "best.pt")["epoch"] == best_epoch  # agrees with what last.pt records
    assert load_pt(killed / "last.pt")["global_step"] == last["global_step"]  # nothing trained again
    assert not list(killed.glob(".*.tmp-*"))
    with pytest.raises(ConfigError, match="already finished 2 epochs"):
        run(TrainConfig.for_resume(killed))


def test_resume_after_ctrl_c_in_the_first_epoch(tmp_path, fashion):
    """best_top1 is None before the first validation; the printed resume command must still work."""
    calls = {"n": 0}

    def raise_sigint(out: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGINT)
        return out

    TRAIN_HOOK["fn"] = raise_sigint
    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted, match=r"epoch 1, batch 2/4.*--resume"):
        run(tiny_config(stopped))
    TRAIN_HOOK["fn"] = None
    assert load_pt(stopped / "last.pt")["metrics"]["best_top1"] is None
    summary = run(TrainConfig.for_resume(stopped))
    straight = run(tiny_config(tmp_path / "straight"))
    assert summary["final_top1"] == straight["final_top1"] and summary["best_epoch"] == straight["best_epoch"]


def test_a_start_that_fails_leaves_nothing_behind(tmp_path, fashion):
    out = tmp_path / "a" / "b" / "run"
    with pytest.raises(ValueError, match="subset 100000 is larger than the train split of fashion_mnist"):
        run(tiny_config(out, subset=100000))
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "keep"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="larger than"):
        run(tiny_config(existing, subset=100000))
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]


def test_overwrite_changes_nothing_when_the_start_fails(tmp_path, fashion):
    out = tmp_path / "run"
    run(tiny_config(out, epochs=1))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match="larger than"):
        run(tiny_config(out, epochs=1, subset=100000, overwrite=True))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, fashion, monkeypatch):
    import errno

    from gctnet import fileio
    from gctnet.errors import WriteError

    out = tmp_path / "run"
    run(tiny_config(out, epochs=1))
    before = (out / "last.pt").read_bytes()
    real_fsync = os.fsync

    def fsync(fd):
        if "last.pt" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    with pytest.raises(WriteError, match=rf"^cannot write {out}/last.pt: No space left on device"):
        run(TrainConfig.for_resume(out, epochs=2))
    monkeypatch.undo()
    assert (out / "last.pt").read_bytes() == before and not list(out.glob(".*.tmp-*"))
    assert run(TrainConfig.for_resume(out, epochs=2))["epochs"] == 2  # and it resumes from there


def test_cli_options_come_from_train_config():
    """Every TrainConfig field is an option of gctnet train with its choices and default; compare and
    finetune offer the same options (minus what they set per run) through the same function."""
    import argparse
    import dataclasses

    from gctnet.commands import compare as compare_command
    from gctnet.commands import finetune as finetune_command
    from gctnet.commands import train as train_command
    from gctnet.train.config import AMP_CHOICES, OPT_CHOICES

    def options(module, title=None) -> dict:
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        return {a.dest: a for group in parser._action_groups for a in group._group_actions
                if title is None or group.title == title}

    train_opts = options(train_command)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(fields) <= set(train_opts)
    assert tuple(train_opts["opt"].choices) == OPT_CHOICES and tuple(train_opts["amp"].choices) == AMP_CHOICES
    assert "default: 128" in train_opts["batch_size"].help and train_opts["augment"].option_strings == ["--no-augment"]
    for command in (compare_command, finetune_command):
        given = options(command, command._TRAIN_GROUP)
        assert set(given) == set(fields) - set(command.PER_RUN)
        assert "default:" not in given["batch_size"].help  # there the preset's value applies, not TrainConfig's
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    args = parser.parse_args(["--epochs", "3", "--no-augment", "--amp", "--model-kwargs", "width=0.5", "--wd", "0"])
    assert train_command.config_options(args) == {"epochs": 3, "augment": False, "amp": "auto",
                                                 "model_kwargs": {"width": 0.5}, "weight_decay": 0.0}


def test_threads_default_and_option(tmp_path, fashion, monkeypatch):
    from gctnet.train.distributed import resolve_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert resolve_threads() == max(1, cores - 1)  # one core left for the rest of a shared machine
    assert resolve_threads(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
    assert resolve_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert resolve_threads() == torch.get_num_threads()  # the user's (or torchrun's) choice wins
    before = torch.get_num_threads()
    summary = run(tiny_config(tmp_path / "t", epochs=1, threads=2))
    assert summary["torch_threads"] == 2 and torch.get_num_threads() == before  # restored afterwards
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        TrainConfig(threads=0).validate()
