"""gctnet finetune: a tiny real experiment (2 seeds, 1 pretraining + 1 fine-tuning epoch on 128 images),
its files and numbers, exact plain == GCT accuracy before fine-tuning, skipping, the CLI, and the
engine's ``init_from``."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from gctnet import finetune
from gctnet.cli import main as cli_main
from gctnet.commands import UsageError
from gctnet.errors import CheckpointError, KeyMismatchError
from gctnet.train import ConfigError, TrainConfig, load_checkpoint
from gctnet.train.engine import load_init_weights
from helpers import read_csv, requires_fashion_mnist

pytestmark = requires_fashion_mnist

SEEDS = [0, 1]
# quarter-width ResNet-20s on 128 images: the machinery is under test, not the accuracy
OPTIONS = {"epochs": 1, "subset": 128, "val_subset": 128, "batch_size": 64, "model_kwargs": {"width": 0.25},
           "quiet": True, "workers": 0}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft")
    lines: list[str] = []
    result = finetune.run(None, model="resnet20", seeds=SEEDS, out=out, pretrain_options=OPTIONS, finetune_epochs=1,
                          log=lines.append)
    return out, result, lines


def test_files_exist(finished):
    out, result, _ = finished
    for name in ("finetune.csv", "finetune.md", "finetune.json", "finetune_top1_vs_epoch.png"):
        assert (out / name).is_file(), name
    assert (out / "finetune_top1_vs_epoch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for seed in SEEDS:
        for run_dir in (finetune.pretrain_dir(out, seed), finetune.finetune_dir(out, "resnet20", seed),
                        finetune.finetune_dir(out, "gct_resnet20", seed)):
            assert json.loads((run_dir / "summary.json").read_text())["finished"]
    assert result.trained == 3 * len(SEEDS) and result.skipped == 0
    md = (out / "finetune.md").read_text()
    assert "mean +- std" in md and "gct_resnet20" in md and "finetune_top1_vs_epoch.png" in md


def test_before_accuracies_are_exactly_equal(finished):
    out, result, _ = finished
    for row in read_csv(out / "finetune.csv"):
        assert row["before_plain_top1"] == row["before_gct_top1"]
    for seed in SEEDS:
        cached = json.loads((out / "before" / f"seed{seed}.json").read_text())["result"]
        assert cached["equal"] and cached["plain"] == cached["gct"]  # loss too: the GCT is exactly the identity
    # independently of the cache: the same checkpoint, evaluated again
    again = finetune.evaluate_before(finetune.pretrain_dir(out, 0), "gct_resnet20", OPTIONS)
    assert again["plain"]["top1"] == again["gct"]["top1"] == result.rows[0]["before_plain_top1"]


def test_table_numbers_equal_the_per_run_metrics(finished):
    out, result, _ = finished
    rows = read_csv(out / "finetune.csv")
    assert [int(r["seed"]) for r in rows] == SEEDS
    for row in rows:
        seed = int(row["seed"])
        plain = json.loads((finetune.finetune_dir(out, "resnet20", seed) / "summary.json").read_text())
        gct = json.loads((finetune.finetune_dir(out, "gct_resnet20", seed) / "summary.json").read_text())
        assert float(row["plain_top1"]) == plain["final_top1"] and float(row["gct_top1"]) == gct["final_top1"]
        assert float(row["plain_top5"]) == plain["final_top5"] and float(row["gct_top5"]) == gct["final_top5"]
        assert float(row["delta_top1"]) == pytest.approx(gct["final_top1"] - plain["final_top1"])
        assert float(row["gct_gain"]) == pytest.approx(gct["final_top1"] - float(row["before_gct_top1"]))
        last = read_csv(finetune.finetune_dir(out, "gct_resnet20", seed) / "metrics.csv")[-1]
        assert float(last["val_top1"]) == gct["final_top1"]
    deltas = [float(r["delta_top1"]) for r in rows]
    assert result.summary["delta_top1"]["mean"] == pytest.approx(statistics.fmean(deltas))
    assert result.summary["delta_top1"]["std"] == pytest.approx(statistics.stdev(deltas))
    half = 12.706 * statistics.stdev(deltas) / len(deltas) ** 0.5  # Student's t, 1 degree of freedom
    ci_row = next(line for line in (out / "finetune.md").read_text().splitlines() if line.startswith("| **95% CI**"))
    assert f"[{statistics.fmean(deltas) - half:+.2f}, {statistics.fmean(deltas) + half:+.2f}]" in ci_row
    data = json.loads((out / "finetune.json").read_text())
    assert data["summary"]["plain_top1"]["mean"] == pytest.approx(statistics.fmean(float(r["plain_top1"]) for r in rows))
    assert len(data["rows"][0]["gct_curve"]) == 2  # epoch 0 (before) + 1 fine-tuning epoch


def test_finetuning_starts_from_the_pretrained_weights(finished):
    out, _, _ = finished
    pre = load_checkpoint(finetune.pretrain_dir(out, 0))
    ft_cfg = json.loads((finetune.finetune_dir(out, "gct_resnet20", 0) / "config.json").read_text())
    assert ft_cfg["init_from"] == str(finetune.pretrain_dir(out, 0))
    pre_lr = json.loads((finetune.pretrain_dir(out, 0) / "config.json").read_text())["_resolved"]["lr"]
    assert ft_cfg["lr"] == pytest.approx(0.1 * pre_lr) and ft_cfg["warmup_epochs"] == 0
    tuned = load_checkpoint(finetune.finetune_dir(out, "gct_resnet20", 0))["model"]
    fresh = load_checkpoint(finetune.finetune_dir(out, "resnet20", 1))["model"]  # another seed's network
    key = "conv1.weight" if "conv1.weight" in tuned else next(k for k in tuned if k.endswith("conv.weight"))
    moved = (tuned[key] - pre["model"][key]).abs().max()
    other = (fresh[key] - pre["model"][key]).abs().max()
    assert moved < 0.1 * other  # a small step away from the pretrained weights, not a new network
    assert any(k.endswith("gct.gamma") for k in tuned) and not any(k.endswith("gct.gamma") for k in pre["model"])


def test_second_call_skips_finished_runs(finished, monkeypatch):
    out, first, _ = finished
    import gctnet.train

    def fail(config):  # pragma: no cover - reached only if the skip is broken
        raise AssertionError(f"trained {config.out} again")

    monkeypatch.setattr(gctnet.train, "run", fail)
    monkeypatch.setattr(finetune, "evaluate_before", lambda *a, **k: pytest.fail("before-accuracies not cached"))
    lines: list[str] = []
    again = finetune.run(None, model="resnet20", seeds=SEEDS, out=out, pretrain_options=OPTIONS, finetune_epochs=1,
                         log=lines.append)
    assert again.trained == 0 and again.skipped == 3 * len(SEEDS)
    assert sum("already finished, skipped" in line for line in lines) == 3 * len(SEEDS)
    assert [r["gct_top1"] for r in again.rows] == [r["gct_top1"] for r in first.rows]
    with pytest.raises(finetune.FinetuneError, match="other settings"):
        finetune.run(None, model="resnet20", seeds=SEEDS, out=out, pretrain_options={**OPTIONS, "subset": 64},
                     finetune_epochs=1, log=None)


def test_bad_settings_fail_before_training(tmp_path, finished):
    out, _, _ = finished
    with pytest.raises(finetune.FinetuneError, match="may not set"):
        finetune.run(None, out=tmp_path, pretrain_options={"init_from": "x"}, log=None)
    with pytest.raises(finetune.FinetuneError, match="unknown fine-tuning option"):
        finetune.run(None, out=tmp_path, finetune_options={"lrr": 1}, log=None)
    with pytest.raises(finetune.FinetuneError, match="finetune_epochs"):
        finetune.run(None, out=tmp_path, finetune_epochs=0, log=None)
    with pytest.raises(finetune.FinetuneError, match="already has GCT"):
        finetune.run(finetune.finetune_dir(out, "gct_resnet20", 0), out=tmp_path, log=None)
    with pytest.raises(CheckpointError, match="does not exist"):
        finetune.run(tmp_path / "missing", out=tmp_path, log=None)
    assert not any(tmp_path.iterdir())


def cli_finetune(argv: list[str]) -> int:
    """``gctnet finetune ...`` through the command module (also before cli.py registers it)."""
    import argparse

    from gctnet.commands import finetune as command

    try:
        return cli_main(argv)
    except SystemExit as exc:
        if exc.code != 2:
            raise
    parser = argparse.ArgumentParser(prog="gctnet finetune")
    command.add_arguments(parser)
    return command.run(parser.parse_args(argv[1:]))


def test_cli_with_a_given_plain_network(finished, tmp_path, capsys):
    out, _, _ = finished
    target = tmp_path / "given"
    args = ["finetune", "--plain", str(finetune.pretrain_dir(out, 0)), "--seeds", "3,", "--out", str(target),
            "--finetune-epochs", "1", "--lr-factor", "0.5"]
    with pytest.raises(UsageError, match=r"pretraining options \(lr, weight_decay\) cannot be combined with --plain"):
        cli_finetune(args + ["--lr", "0.3", "--weight-decay", "0", "--quiet"])
    assert not target.exists()
    code = cli_finetune(args + ["--quiet", "--workers", "0"])  # how to run: applies to the fine-tuning runs
    assert code == 0
    row = read_csv(target / "finetune.csv")[0]
    assert row["seed"] == "3" and row["before_plain_top1"] == row["before_gct_top1"]
    cfg = json.loads((finetune.finetune_dir(target, "resnet20", 3) / "config.json").read_text())
    pre_lr = json.loads((finetune.pretrain_dir(out, 0) / "config.json").read_text())["_resolved"]["lr"]
    assert cfg["lr"] == pytest.approx(0.5 * pre_lr) and cfg["subset"] == 128
    assert cfg["quiet"] is True and cfg["workers"] == 0
    assert not (target / "pretrain").exists()
    assert "finetune.md" in capsys.readouterr().out


# ---------------------------------------------------------------- the engine's init_from
def test_init_from_loads_plain_weights_into_the_gct_variant(finished):
    from gctnet.models import create_model

    out, _, _ = finished
    pre = load_checkpoint(finetune.pretrain_dir(out, 0))["model"]
    model = create_model("gct_resnet20", num_classes=10, in_chans=1, width=0.25)
    result = load_init_weights(model, finetune.pretrain_dir(out, 0))
    assert result.missing_gct_keys and not result.missing_keys and not result.unexpected_keys
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in pre.items())
    # the other way round, and a mismatching width, are clear errors
    with pytest.raises(KeyMismatchError, match="init_from.*unexpected key"):
        load_init_weights(create_model("resnet20", num_classes=10, in_chans=1, width=0.25),
                          finetune.finetune_dir(out, "gct_resnet20", 0))
    with pytest.raises(KeyMismatchError, match="init_from.*shape mismatch"):
        load_init_weights(create_model("resnet20", num_classes=10, in_chans=1), finetune.pretrain_dir(out, 0))


def test_init_from_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig(init_from=str(tmp_path / "nope")).validate()
    with pytest.raises(ConfigError, match="must be a path"):
        TrainConfig(init_from="").validate()
    assert TrainConfig(init_from=str(tmp_path)).validate().init_from == str(tmp_path)
