"""gctnet compare: a tiny real comparison (2 models x 2 seeds x 1 epoch on 256 images), its files,
its numbers against the per-run results, skipping/resuming, and the CLI."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

import gctnet
from gctnet import compare
from helpers import read_csv, requires_fashion_mnist

pytestmark = requires_fashion_mnist

MODELS = ["resnet20", "gct_resnet20"]
SEEDS = [0, 1]
# half-width ResNet-20s on 128 images: the machinery is under test, not the accuracy
OPTIONS = {"epochs": 1, "subset": 128, "val_subset": 128, "batch_size": 64, "model_kwargs": {"width": 0.5},
           "quiet": True, "workers": 0}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    lines: list[str] = []
    result = compare.run(MODELS, SEEDS, out, preset="demo", train_options=OPTIONS, log=lines.append,
                         analysis_images=64, cost_repeats=2)
    return out, result, lines


# ------------------------------------------------------------------------------------------------ argument helpers
def test_parse_seeds():
    assert compare.parse_seeds("0,1,2") == [0, 1, 2]
    assert compare.parse_seeds("3") == [0, 1, 2]
    assert compare.parse_seeds(2) == [0, 1]
    assert compare.parse_seeds("5,") == [5]
    for bad, msg in (("0", ">= 1.*write '0,'"), ("a,b", "integers"), ("1,1", "distinct"), ("x", "comma list")):
        with pytest.raises(compare.CompareError, match=msg):
            compare.parse_seeds(bad)


def test_t_interval95_matches_students_t():
    from gctnet.experiments.stats import format_interval, t_interval95

    lo, hi = t_interval95([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, sd 1.5811, t(4) = 2.776
    assert (lo, hi) == pytest.approx((3 - 1.9631, 3 + 1.9631), abs=1e-3)
    lo, hi = t_interval95([0.5] * 3 + [float("nan")])  # NaN ignored, zero spread
    assert lo == hi == pytest.approx(0.5)
    assert t_interval95([1.0]) is None and t_interval95([]) is None
    many = t_interval95([float(i % 7) for i in range(61)])  # beyond the table: t(60) = 2.000
    sd = statistics.stdev([float(i % 7) for i in range(61)])
    assert many[1] - many[0] == pytest.approx(2 * 2.000 * sd / 61 ** 0.5, rel=2e-3)
    assert format_interval((-0.5, 0.25)) == "[-0.50, +0.25]" and format_interval(None) == "-"


def test_parse_models_and_baseline():
    assert compare.parse_models("resnet20, gct_resnet20") == ["resnet20", "gct_resnet20"]
    with pytest.raises(compare.CompareError, match="Did you mean: .*resnet20"):
        compare.parse_models("resnet2O")
    assert compare.baseline_model(["gct_resnet20", "se_resnet20", "resnet20"]) == "resnet20"
    assert compare.baseline_model(["gct_resnet20", "se_resnet20"]) == "gct_resnet20"
    assert compare.baseline_model(["eca_resnet20", "cbam_resnet20", "resnet20"]) == "resnet20"


def test_presets_are_defined_once_and_valid():
    from gctnet.train import TrainConfig

    assert set(compare.PRESETS) == {"demo", "full", "field"}
    for p in compare.PRESETS.values():
        TrainConfig(**p.train).validate()
    assert len(compare.PRESETS["full"].seeds) == 5 and compare.PRESETS["full"].train["subset"] is None


def test_bad_settings_fail_before_training(tmp_path):
    with pytest.raises(compare.CompareError, match="unknown training option"):
        compare.run(MODELS, SEEDS, tmp_path, train_options={"epoch": 1}, log=None)
    with pytest.raises(compare.CompareError, match="compare sets them"):
        compare.run(MODELS, SEEDS, tmp_path, train_options={"seed": 3}, log=None)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------ one real comparison
def test_files_exist_and_plots_are_pngs(finished):
    from PIL import Image

    out, result, _ = finished
    for name in ("report.md", "summary.md", "summary.csv", "runs.csv", "compare.json",
                 "val_top1_vs_epoch.png", "final_top1_per_seed.png", "analysis/gct_resnet20/analysis.md",
                 "analysis/gct_resnet20/gamma_per_layer.png"):
        assert (out / name).stat().st_size > 0, name
    for m in MODELS:
        for s in SEEDS:
            assert json.loads((out / "runs" / m / f"seed{s}" / "summary.json").read_text())["finished"]
    assert not (out / "analysis" / "resnet20").exists(), "plain models have nothing to analyze"
    for png in list(out.glob("*.png")) + list((out / "analysis").rglob("*.png")):
        with Image.open(png) as im:
            im.verify()
            assert im.format == "PNG"
    assert result.report == out / "report.md"
    report = result.report.read_text()
    assert "val_top1_vs_epoch.png" in report and "analysis/gct_resnet20/gamma_per_layer.png" in report
    assert "analysis/gct_resnet20/analysis.md" in (out / "summary.md").read_text()


def test_table_numbers_equal_the_per_run_results(finished):
    out, result, _ = finished
    per_run = {
        (m, s): json.loads((out / "runs" / m / f"seed{s}" / "summary.json").read_text()) for m in MODELS for s in SEEDS
    }
    rows = {r["model"]: r for r in read_csv(out / "summary.csv")}
    assert list(rows) == MODELS
    for m in MODELS:
        top1 = [per_run[m, s]["final_top1"] for s in SEEDS]
        top5 = [per_run[m, s]["final_top5"] for s in SEEDS]
        r = rows[m]
        assert float(r["top1_mean"]) == pytest.approx(statistics.fmean(top1))
        assert float(r["top1_std"]) == pytest.approx(statistics.stdev(top1))
        assert float(r["top5_mean"]) == pytest.approx(statistics.fmean(top5))
        assert [float(v) for v in r["top1_per_seed"].split()] == pytest.approx(top1)
        assert float(r["train_seconds"]) == pytest.approx(statistics.fmean(per_run[m, s]["train_seconds"] for s in SEEDS))
        info = gctnet.model_info(gctnet.create_model(m, num_classes=10, in_chans=1, width=0.5), (1, 28, 28), batch_size=2)
        assert int(r["params"]) == info.params == per_run[m, 0]["params"]
        assert int(r["gct_params"]) == info.gct_params and int(r["macs"]) == info.macs
    deltas = [per_run["gct_resnet20", s]["final_top1"] - per_run["resnet20", s]["final_top1"] for s in SEEDS]
    assert float(rows["gct_resnet20"]["delta_top1_mean"]) == pytest.approx(statistics.fmean(deltas))
    assert float(rows["gct_resnet20"]["delta_top1_std"]) == pytest.approx(statistics.stdev(deltas))
    assert rows["resnet20"]["delta_top1_mean"] == ""
    half = 12.706 * statistics.stdev(deltas) / len(deltas) ** 0.5  # Student's t, 1 degree of freedom
    assert float(rows["gct_resnet20"]["delta_top1_ci95_low"]) == pytest.approx(statistics.fmean(deltas) - half)
    assert float(rows["gct_resnet20"]["delta_top1_ci95_high"]) == pytest.approx(statistics.fmean(deltas) + half)
    assert int(rows["gct_resnet20"]["delta_wins"]) == sum(d > 0 for d in deltas)
    # per-run rows and the markdown table carry the same numbers
    runs = read_csv(out / "runs.csv")
    assert len(runs) == 4
    for r in runs:
        assert float(r["final_top1"]) == pytest.approx(per_run[r["model"], int(r["seed"])]["final_top1"])
    md = (out / "summary.md").read_text()
    mean, std = statistics.fmean(per_run["resnet20", s]["final_top1"] for s in SEEDS), statistics.stdev(
        per_run["resnet20", s]["final_top1"] for s in SEEDS)
    assert f"{mean:.2f} +- {std:.2f}" in md


def test_analysis_pools_the_seeds_parameters(finished):
    from gctnet.surgery import gct_modules
    from gctnet.train import load_checkpoint_model

    out, _, _ = finished
    data = json.loads((out / "analysis" / "gct_resnet20" / "analysis.json").read_text())
    models = [load_checkpoint_model(out / "runs" / "gct_resnet20" / f"seed{s}")[0] for s in SEEDS]
    per_model = [gct_modules(m) for m in models]
    assert data["models"] == 2 and data["gct_layers"] == len(per_model[0])
    for j, layer in enumerate(data["layers"]):
        gamma = torch.cat([pm[j][1].gamma.detach().double() for pm in per_model])
        assert layer["name"] == per_model[0][j][0]
        assert layer["gamma"]["mean"] == pytest.approx(gamma.mean().item())
        assert layer["gamma_positive"] == pytest.approx((gamma > 0).double().mean().item())
    assert len(data["gates"]) == data["gct_layers"]


def test_progress_lines(finished):
    _, _, lines = finished
    assert any(line.startswith("run 1/4: resnet20 seed 0 (training)") for line in lines)
    assert any(line.startswith("run 4/4: gct_resnet20 seed 1") and "ETA" in line for line in lines)


def test_second_call_skips_finished_runs(finished, monkeypatch):
    out, _, _ = finished
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("last.pt")}

    def no_training(config):
        raise AssertionError(f"finished run retrained: {config.model} seed {config.seed}")

    monkeypatch.setattr(gctnet.train, "run", no_training)
    lines: list[str] = []
    result = compare.run(MODELS, SEEDS, out, train_options=OPTIONS, log=lines.append, analysis_images=64,
                         cost_repeats=2)  # the fixture's: the cost step is up to date too
    assert result.trained == 0 and result.skipped == 4
    assert sum("already finished, skipped" in line for line in lines) == 4
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("last.pt")}


def test_a_call_for_part_of_the_folder_reports_all_of_it(finished, tmp_path):
    import shutil

    out = shutil.copytree(finished[0], tmp_path / "copy")
    part = compare.run(["gct_resnet20"], "1,", out, train_options=OPTIONS, log=None, analyze=False)
    assert [s.model for s in part.summaries] == ["gct_resnet20", "resnet20"] and part.trained == 0
    assert "summarised (every finished run in the folder): gct_resnet20 0, 1; resnet20 0, 1" in part.report.read_text()


def test_a_folder_of_small_files_only_is_summarised(finished, tmp_path):
    """Run folders as committed in results/ (no weights, no model_info.json cache): the report still has
    each model's params and MACs, built from summary.json."""
    import shutil

    out = shutil.copytree(finished[0], tmp_path / "small", ignore=shutil.ignore_patterns(
        "*.pt", "*.safetensors", "model_info.json", "cost.json", "analysis"))
    result = compare.run(MODELS, SEEDS, out, train_options=OPTIONS, log=None, analyze=False, cost_repeats=0)
    assert result.trained == 0
    rows = {r["model"]: r for r in read_csv(out / "summary.csv")}
    for m in MODELS:
        info = gctnet.model_info(gctnet.create_model(m, num_classes=10, in_chans=1, width=0.5), (1, 28, 28), batch_size=2)
        assert int(rows[m]["params"]) == info.params and int(rows[m]["macs"]) == info.macs
        assert json.loads((out / "runs" / m / "model_info.json").read_text())["costs"]["params"] == info.params
    summary = json.loads((out / "runs" / "resnet20" / "seed0" / "summary.json").read_text())
    del summary["model_kwargs"]
    (out / "runs" / "resnet20" / "seed0" / "summary.json").write_text(json.dumps(summary))
    (out / "runs" / "resnet20" / "model_info.json").unlink()
    with pytest.raises(compare.CompareError, match="does not name its model and builder arguments"):
        compare.run(MODELS, SEEDS, out, train_options=OPTIONS, log=None, analyze=False, cost_repeats=0)


def test_other_settings_on_the_same_folder_are_refused(finished):
    out, _, _ = finished
    with pytest.raises(compare.CompareError, match="epochs=1 \\(now 2\\)"):
        compare.run(MODELS, SEEDS, out, train_options={**OPTIONS, "epochs": 2}, log=None)


def test_cli_continues_the_comparison(finished, capsys, monkeypatch):
    from gctnet.cli import main

    out, _, _ = finished
    monkeypatch.setattr(gctnet.train, "run", lambda config: pytest.fail("nothing should be trained"))
    argv = ["compare", "--models", ",".join(MODELS), "--seeds", "2", "--out", str(out), "--epochs", "1",
            "--subset", "128", "--val-subset", "128", "--batch-size", "64", "--model-kwargs", "width=0.5", "--quiet",
            "--workers", "0", "--analysis-images", "64", "--cost-repeats", "2"]
    assert main(argv) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--seeds", "x", "--out", str(out)])
    assert exc.value.code == 2


def test_a_deleted_run_is_trained_again(finished, tmp_path):
    import shutil

    out, _, _ = finished
    copy = tmp_path / "cmp"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "runs" / "resnet20" / "seed1")
    lines: list[str] = []
    result = compare.run(MODELS, SEEDS, copy, train_options=OPTIONS, log=lines.append, analyze=False)
    assert result.trained == 1 and result.skipped == 3
    assert any(line.startswith("run 2/4: resnet20 seed 1 (training)") for line in lines)
    assert json.loads((copy / "runs" / "resnet20" / "seed1" / "summary.json").read_text())["finished"]


def test_report_only_trains_nothing_and_names_the_unfinished_runs(finished, tmp_path, monkeypatch, capsys):
    """A look at a study under way: the finished runs are reported, the unfinished ones (deleted, resumable
    or not started) named and left alone."""
    import shutil

    from gctnet.cli import main

    out, _, _ = finished
    copy = shutil.copytree(out, tmp_path / "cmp")
    (copy / "runs" / "gct_resnet20" / "seed1" / "summary.json").unlink()  # a run stopped mid-way
    shutil.rmtree(copy / "runs" / "resnet20" / "seed1")  # a run not started
    monkeypatch.setattr(gctnet.train, "run", lambda config: pytest.fail("nothing should be trained"))
    lines: list[str] = []
    result = compare.run(MODELS, SEEDS, copy, train_options=OPTIONS, log=lines.append, analyze=False,
                         cost_repeats=0, train=False)
    assert result.trained == 0 and result.skipped == 2
    assert result.not_trained == [("resnet20", 1), ("gct_resnet20", 1)]
    assert any("report only: 2 unfinished run(s) not trained: resnet20 seed 1; gct_resnet20 seed 1" in x for x in lines)
    assert [(s.model, s.seeds) for s in result.summaries] == [("resnet20", [0]), ("gct_resnet20", [0])]
    report = result.report.read_text()
    assert ("**partial report**: 2 of the 4 runs asked for are not finished and were not trained by this call "
            "(report only): resnet20 seed 1; gct_resnet20 seed 1") in report
    assert not (copy / "runs" / "resnet20" / "seed1").exists()
    # the command line's flag; an empty folder has nothing to report
    argv = ["compare", "--models", ",".join(MODELS), "--seeds", "2", "--epochs", "1", "--subset", "128",
            "--val-subset", "128", "--batch-size", "64", "--model-kwargs", "width=0.5", "--quiet", "--workers", "0",
            "--no-analyze", "--cost-repeats", "0", "--report-only"]
    assert main(argv + ["--out", str(copy)]) == 0
    assert f"report: {copy / 'report.md'}" in capsys.readouterr().out
    with pytest.raises(compare.CompareError, match="nothing to report: no finished run in"):
        compare.run(MODELS, SEEDS, tmp_path / "empty", train_options=OPTIONS, log=None, analyze=False, train=False)


def test_an_interrupted_run_is_resumed(tmp_path, monkeypatch):
    """Ctrl-C during the first epoch's evaluation: the engine saves last.pt in epoch 2; the next call
    resumes it (epoch 1 is not trained again) instead of starting over."""
    import signal

    import gctnet.train.engine as engine

    options = {**OPTIONS, "epochs": 2}
    real_evaluate = engine.evaluate
    calls = []

    def evaluate_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        result = real_evaluate(*args, **kwargs)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # recorded by the engine, acted on at the next step
        return result

    monkeypatch.setattr(engine, "evaluate", evaluate_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        compare.run(["resnet20"], [0], tmp_path, train_options=options, log=None, analyze=False)
    path = tmp_path / "runs" / "resnet20" / "seed0"
    assert (path / "last.pt").is_file() and not (path / "summary.json").exists()
    first_epoch = read_csv(path / "metrics.csv")
    assert len(first_epoch) == 1

    lines: list[str] = []
    result = compare.run(["resnet20"], [0], tmp_path, train_options=options, log=lines.append, analyze=False)
    assert result.trained == 1
    assert any("resnet20 seed 0 (resuming)" in line for line in lines)
    metrics = read_csv(path / "metrics.csv")
    assert [r["epoch"] for r in metrics] == ["1", "2"]
    assert metrics[0] == first_epoch[0], "epoch 1 must not be trained again"
    assert json.loads((path / "summary.json").read_text())["epochs"] == 2


def test_analyze_cli_on_a_run_folder(finished, tmp_path, capsys):
    from gctnet.cli import main
    from gctnet.surgery import gct_modules
    from gctnet.train import load_checkpoint_model

    out, _, _ = finished
    run = out / "runs" / "gct_resnet20" / "seed1"
    assert main(["analyze", str(run), "--out", str(tmp_path), "--batch-size", "32"]) == 0
    assert "measured on 32 images (validation split of fashion_mnist)" in capsys.readouterr().out
    data = json.loads((tmp_path / "analysis.json").read_text())
    model, _ = load_checkpoint_model(run)
    for entry, (name, g) in zip(data["layers"], gct_modules(model)):
        assert entry["name"] == name
        assert entry["alpha"]["mean"] == pytest.approx(g.alpha.double().mean().item())
        assert entry["beta"]["max"] == pytest.approx(g.beta.double().max().item())
    assert [g["samples"] for g in data["gates"]] == [32] * data["gct_layers"]


def test_check_recipe_compares_paths_by_the_file_they_name(tmp_path, monkeypatch):
    from gctnet.experiments.runner import check_recipe

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"init_from": str(tmp_path / "plain" / "best.pt"), "lr": 0.1}))
    monkeypatch.chdir(tmp_path)
    check_recipe(run, {"init_from": "plain/best.pt", "lr": 0.1})  # relative spelling of the same file: fine
    check_recipe(run, {"init_from": "./plain/../plain/best.pt", "lr": 0.1})
    with pytest.raises(ValueError, match=r"init_from=.*other/best.pt"):
        check_recipe(run, {"init_from": "other/best.pt", "lr": 0.1})
    with pytest.raises(ValueError, match=r"lr=0.1 \(now 0.2\)"):
        check_recipe(run, {"init_from": "plain/best.pt", "lr": 0.2})


def test_a_run_killed_after_its_last_checkpoint_counts_as_finished(finished, tmp_path):
    """No summary.json / model.safetensors yet: compare finishes it from last.pt instead of retraining it."""
    import shutil

    copy = shutil.copytree(finished[0], tmp_path / "cmp")
    run = copy / "runs" / "gct_resnet20" / "seed0"
    (run / "summary.json").unlink()
    (run / "model.safetensors").unlink()
    last = (run / "last.pt").read_bytes()
    result = compare.run(MODELS, SEEDS, copy, train_options=OPTIONS, log=None, analyze=False)
    assert result.skipped == 3 and len(result.runs) == 4
    assert (run / "last.pt").read_bytes() == last  # not trained again
    assert json.loads((run / "summary.json").read_text())["finished"] and (run / "model.safetensors").is_file()
    assert read_csv(copy / "runs.csv") == read_csv(finished[0] / "runs.csv")


def test_ctrl_c_in_the_first_epoch_then_the_same_command(tmp_path, monkeypatch, capsys):
    """compare's "run the same command again" must work from every point, also before any validation."""
    import signal

    import gctnet.train.engine as engine
    from gctnet.cli import main

    real_step = engine.optimizer_step
    steps = []

    def step_then_ctrl_c(*args, **kwargs):
        steps.append(1)
        if len(steps) == 1:
            signal.raise_signal(signal.SIGINT)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "optimizer_step", step_then_ctrl_c)
    argv = ["compare", "--models", "resnet20", "--seeds", "0,", "--out", str(tmp_path), "--epochs", "1", "--subset",
            "128", "--val-subset", "64", "--batch-size", "64", "--model-kwargs", "width=0.5", "--quiet", "--no-analyze"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "SIGINT received: saved " in err and "last.pt at epoch 1" in err, err
    assert "Run the same gctnet compare command again to continue." in err and "--resume" not in err, err
    assert torch.load(tmp_path / "runs" / "resnet20" / "seed0" / "last.pt", weights_only=True)["epoch"] == 0
    assert main(argv) == 0
    assert read_csv(tmp_path / "runs.csv")[0]["epochs"] == "1"


def test_imagefolder_data_does_not_keep_the_demo_subset(tmp_path):
    from helpers import make_image_folder

    root = make_image_folder(tmp_path / "imgs", per_class=4)
    lines: list[str] = []
    compare.run(["resnet20"], [0], tmp_path / "cmp", preset="demo", log=lines.append, analyze=False,
                train_options={"data": f"imagefolder:{root}", "epochs": 1, "batch_size": 4,
                               "model_kwargs": {"width": 0.25}, "quiet": True, "workers": 0})
    config = json.loads((tmp_path / "cmp" / "runs" / "resnet20" / "seed0" / "config.json").read_text())
    assert config["subset"] is None and config["_resolved"]["train_samples"] == 8
    assert any("subset of 12288 Fashion-MNIST images does not apply" in line for line in lines)


# ------------------------------------------------------------------------------------------------ ranking and side-by-side cost
def test_field_preset_is_the_full_recipe_with_every_light_module():
    from gctnet.attention import ATTENTION_KEYS

    field, full = compare.PRESETS["field"], compare.PRESETS["full"]
    assert dict(field.train) == dict(full.train)  # finished runs of a full study are reused as they are
    models = compare.parse_models(list(field.models))
    assert models[:3] == ["resnet20", "gct_resnet20", "gct_resnet20_block"]
    assert {f"{k}_resnet20" for k in ATTENTION_KEYS} <= set(models)
    assert compare.baseline_model(models) == "resnet20"


def test_pareto_front_on_hand_made_points():
    from gctnet.experiments.cost import pareto_front

    pts = [(1.0, 0.0), (1.2, 0.5), (1.1, -0.2), (1.5, 0.4), (2.0, 0.9), (1.2, 0.3), (0.9, float("nan"))]
    # (1.1, -0.2) is beaten by (1.0, 0.0); (1.5, 0.4) and (1.2, 0.3) by (1.2, 0.5); NaN is never on it
    assert pareto_front(pts) == [0, 1, 4]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # ties dominate nothing
    assert pareto_front([]) == []


def test_cost_json_and_the_ranking_table(finished):
    out, result, lines = finished
    cost = json.loads((out / "cost.json").read_text())
    assert cost["reference"] == "resnet20" and [r["model"] for r in cost["rows"]] == MODELS
    assert cost["key"]["models"] == MODELS and cost["key"]["repeats"] == 2 and cost["key"]["input_size"] == [1, 28, 28]
    assert cost["key"]["batch_size"] == cost["settings"]["batch_size"] == OPTIONS["batch_size"]  # the training batch
    rows = {r["model"]: r for r in cost["rows"]}
    for m in MODELS:
        info = gctnet.model_info(gctnet.create_model(m, num_classes=10, in_chans=1, width=0.5), (1, 28, 28), batch_size=8)
        assert rows[m]["params"] == info.params and rows[m]["macs"] == info.macs
        assert rows[m]["attn_params"] == info.attn_params
        assert rows[m]["train_images_per_s"] > 0 and rows[m]["infer_images_per_s"] > 0
    assert rows["resnet20"]["train_time_ratio"] == 1.0 and rows["resnet20"]["params_ratio"] == 1.0
    assert rows["gct_resnet20"]["params_ratio"] == pytest.approx(rows["gct_resnet20"]["params"] / rows["resnet20"]["params"])
    assert rows["gct_resnet20"]["train_time_ratio_ci95"] is None  # 2 repetitions: too few for an interval
    assert any(line.startswith("cost: written") for line in lines)
    # summary.csv carries the cost columns and the ratios
    csv_rows = {r["model"]: r for r in read_csv(out / "summary.csv")}
    g = csv_rows["gct_resnet20"]
    assert float(g["cost_params_ratio"]) == pytest.approx(rows["gct_resnet20"]["params_ratio"])
    assert float(g["cost_train_images_per_s_ratio"]) == pytest.approx(
        rows["gct_resnet20"]["train_images_per_s"] / rows["resnet20"]["train_images_per_s"])
    assert float(csv_rows["resnet20"]["cost_macs_ratio"]) == 1.0
    # the ranking table: columns, best mean first, ratios, CI and seeds won
    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| rank |"))
    for col in ("top-1 % (mean +- std)", "vs resnet20 (paired)", "95% CI", "seeds better", "params (x resnet20)",
                "attn params", "MACs (x)", "train img/s (x)", "train time x (95% CI)", "infer img/s (x)",
                "saved act. MiB/img (x)"):
        assert col in header, col
    table = [line for line in report.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    ranked = sorted(result.summaries, key=lambda s: -s.top1_mean)
    assert [line.split("|")[2].strip() for line in table] == [s.model for s in ranked]
    gct_line = next(line for line in table if "| gct_resnet20 |" in line)
    gs = next(s for s in result.summaries if s.model == "gct_resnet20")
    assert f"({rows['gct_resnet20']['params_ratio']:.2f}x)" in gct_line and f"{gs.delta_wins}/2" in gct_line
    assert "Ratios are to the plain model resnet20" in report and "machine's load" in report
    assert "cost_vs_accuracy.png" in report and (out / "cost_vs_accuracy.png").stat().st_size > 0
    assert json.loads((out / "compare.json").read_text())["cost"]["reference"] == "resnet20"


def test_cost_json_is_reused_and_remeasured_when_the_models_change(finished, tmp_path):
    import shutil

    from gctnet.experiments import cost as cost_mod

    out = shutil.copytree(finished[0], tmp_path / "copy")
    before = (out / "cost.json").read_text()
    calls = []
    real = cost_mod.measure_costs
    monkey = lambda *a, **k: calls.append(a) or real(*a, **k)  # noqa: E731
    cost_mod.measure_costs = monkey
    try:
        lines: list[str] = []
        compare.run(MODELS, SEEDS, out, train_options=OPTIONS, log=lines.append, analyze=False, cost_repeats=2)
        assert calls == [] and (out / "cost.json").read_text() == before
        assert any("cost.json is up to date" in line for line in lines)
        assert "reused from an earlier call" in (out / "report.md").read_text()
        # a model of the folder gone: the key changes, the cost is measured again for the models left
        shutil.rmtree(out / "runs" / "gct_resnet20")
        result = compare.run(["resnet20"], SEEDS, out, train_options=OPTIONS, log=None, analyze=False, cost_repeats=1)
        assert len(calls) == 1 and calls[0][0] == ["resnet20"]
        assert json.loads((out / "cost.json").read_text())["key"]["models"] == ["resnet20"]
        assert result.cost["reused"] is False
    finally:
        cost_mod.measure_costs = real


def test_no_plain_model_ratios_are_to_the_first_and_the_report_says_so(finished, tmp_path):
    import shutil

    out = shutil.copytree(finished[0], tmp_path / "copy2")
    shutil.rmtree(out / "runs" / "resnet20")
    (out / "cost.json").unlink()
    result = compare.run(["gct_resnet20"], SEEDS, out, train_options=OPTIONS, log=None, analyze=False, cost_repeats=1)
    assert result.cost["reference"] == "gct_resnet20"
    assert "no plain model: ratios are to the first model, gct_resnet20" in result.report.read_text()


def test_figure_titles_name_the_models_and_seeds(finished, monkeypatch):
    from gctnet.analysis import plots

    out, result, _ = finished
    seen = []
    real_save = plots._save

    def spy(fig, path):
        ax = fig.axes[0]  # the main axes (a twin axis has no title of its own)
        seen.append((str(path), ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), ax.get_ylim()))
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    compare.write_outputs(result, {"preset": "demo"})
    titles = {p.split("/")[-1]: " ".join(t.split()) for p, t, *_ in seen}  # titles are wrapped to the figure
    assert "seeds 0, 1 of every model" in titles["val_top1_vs_epoch.png"]
    assert "seeds 0, 1 of every model" in titles["final_top1_per_seed.png"]
    assert "seeds 0, 1 of every model" in titles["cost_vs_accuracy.png"]
    for path, title, xlabel, ylabel, _ in seen:
        assert title and xlabel and ylabel, (path, title)
    # the analysis figures name the model and the seeds pooled
    from gctnet.analysis import analyze

    seen.clear()
    dirs = [str(out / "runs" / "gct_resnet20" / f"seed{s}") for s in SEEDS]
    a = analyze(dirs, batch_size=32, out=out / "analysis_titles", name="gct_resnet20, seeds 0, 1 pooled")
    assert {p.split("/")[-1] for p, *_ in seen} >= {"gamma_per_layer.png", "gate_per_layer.png"}
    for path, title, xlabel, ylabel, _ in seen:
        assert " ".join(title.split()).startswith("gct_resnet20, seeds 0, 1 pooled: ") and xlabel and ylabel, path
    # the gate plot's y-axis fits its data (not the gate's whole range 0-2)
    lo, hi = next(ylim for p, *_, ylim in seen if p.endswith("gate_per_layer.png"))
    data_lo = min([g.mean - g.std for g in a.gates] + [1.0])
    data_hi = max([g.mean + g.std for g in a.gates] + [1.0])
    assert lo <= data_lo and hi >= data_hi
    assert (hi - lo) <= 1.2 * (data_hi - data_lo) + 0.01 and (lo, hi) != (0.0, 2.0)


def test_runs_text_groups_seeds_by_model():
    runs = [("ge_resnet20", 0), ("ge_resnet20", 1), ("ge_resnet20", 2), ("gc_resnet20", 1), ("x", 0), ("x", 2)]
    assert compare._runs_text(runs) == "ge_resnet20 seeds 0-2; gc_resnet20 seed 1; x seeds 0, 2"


def test_seeds_text_groups_models_by_their_seeds():
    from types import SimpleNamespace as S

    one = [S(model="a", seeds=[0, 1]), S(model="b", seeds=[0, 1])]
    assert compare._seeds_text(one) == "seeds 0, 1 of every model"
    field = [S(model="resnet20", seeds=[0, 1, 2, 3, 4]), S(model="gct_resnet20", seeds=[0, 1, 2, 3, 4])]
    field += [S(model=f"m{i}", seeds=[0, 1, 2]) for i in range(5)]
    assert compare._seeds_text(field) == "seeds 0-4 of resnet20, gct_resnet20; 0-2 of every other model"
    assert compare._seeds_text([S(model="a", seeds=[0, 2]), S(model="b", seeds=[1])]) == "seeds 0, 2 of a; 1 of b"


def test_a_field_of_many_models_gets_readable_figures(tmp_path, monkeypatch):
    """17 models: one small panel per model with the plain one in grey behind it, one row per model in the
    per-seed strip, and numbered points whose legend names the models in rank order."""
    from gctnet.analysis import plots
    from gctnet.experiments.cost import pareto_front

    models = ["resnet20"] + [f"attn{i}_resnet20" for i in range(1, 17)]
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.setdefault(Path(path).name, fig))
    curves = {m: [[80.0 + e + 0.1 * s for e in range(4)] for s in range(3)] for m in models}
    plots.plot_accuracy_curves(curves, tmp_path / "curves.png", title="t " * 200, reference="resnet20")
    fig = figures["curves.png"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [f"{m} (n=3)" for m in models[1:]]
    assert all(len(ax.get_lines()) == 2 for ax in panels)  # the model and the grey plain one
    # 7 panels in rows of 4: the last panel of each column carries the epoch axis, also above an empty slot
    plots.plot_accuracy_curves({m: curves[m] for m in models[:8]}, tmp_path / "seven.png", reference="resnet20")
    seven = [ax for ax in figures["seven.png"].axes if ax.get_visible()]
    bottom = {ax.get_subplotspec().colspan.start: ax for ax in seven}
    assert len(seven) == 7 and [ax.get_xlabel() for ax in bottom.values()] == ["epoch"] * 4
    assert bottom[3].get_subplotspec().rowspan.start == 0
    assert all(t.get_visible() for t in bottom[3].get_xticklabels())
    suptitle = fig._suptitle.get_text()
    assert "grey: resnet20 (n=3) in every panel" in " ".join(suptitle.split()) and "\n" in suptitle  # wrapped
    # up to CURVES_IN_ONE_PANEL models share one panel
    few = {m: curves[m] for m in models[: plots.CURVES_IN_ONE_PANEL]}
    plots.plot_accuracy_curves(few, tmp_path / "few.png", reference="resnet20")
    assert len(figures["few.png"].axes) == 1 and len(figures["few.png"].axes[0].get_lines()) == len(few)

    finals = {m: {s: c[-1] for s, c in enumerate(curves[m])} for m in models}
    plots.plot_final_per_seed(finals, tmp_path / "seeds.png")
    ax = figures["seeds.png"].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == models and ax.get_xlabel().startswith("final")

    points = [{"model": m, "rank": 17 - i, "cost": 1.0 + 0.05 * i, "gain": 0.01 * i, "ci": None} for i, m in
              enumerate(models)]
    plots.plot_cost_vs_accuracy(points, pareto_front([(p["cost"], p["gain"]) for p in points]), tmp_path / "c.png")
    labels = [t.get_text() for t in figures["c.png"].axes[0].get_legend().get_texts()]
    assert labels[:17] == [f"{17 - i}  {m}" for i, m in reversed(list(enumerate(models)))]
    assert labels[-1].startswith("Pareto front")
    numbers = {t.get_text() for t in figures["c.png"].axes[0].texts}
    assert numbers == {str(n) for n in range(1, 18)}


def test_cost_plot_numbers_points_by_the_ranking_tables_rank(finished, monkeypatch):
    from gctnet.analysis import plots

    out, result, _ = finished
    seen = {}
    real_save = plots._save

    def spy(fig, path):
        if Path(path).name == "cost_vs_accuracy.png":
            seen["labels"] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    compare.write_outputs(result, {"preset": "demo"})
    table = compare.ranking_table(result.summaries, result.baseline, result.cost)[2:]
    ranked = [row.split("|")[2].strip() for row in table]
    assert seen["labels"][: len(ranked)] == [f"{i}  {m}" for i, m in enumerate(ranked, start=1)]
