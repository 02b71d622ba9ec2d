"""The main job: train plain, SE and GCT variants under one recipe and several seeds, then report.

>>> import gctnet.compare
>>> result = gctnet.compare.run(["resnet20", "gct_resnet20"], seeds=[0, 1], out="runs/cmp", preset="demo")
>>> print(result.report)          # runs/cmp/report.md

Every (model, seed) is trained by :func:`gctnet.train.run` into ``OUT/runs/<model>/seed<k>/`` with the
same training options; finished runs are skipped and interrupted ones resumed, so calling ``run`` again
on the same folder continues a comparison.  Written to ``OUT``:

* ``runs.csv`` - one row per run (final/best top-1, top-5, params, MACs, train time, images/s);
* ``summary.csv``, ``summary.md`` - one row per model: mean +- std over seeds, per-seed accuracies,
  parameters, GCT parameters, MACs, train time, images/s and the paired difference to the plain model;
* ``val_top1_vs_epoch.png`` (mean and +-1 std band per model), ``final_top1_per_seed.png`` (strip plot);
* ``analysis/<model>/`` - :func:`gctnet.analysis.analyze` of every GCT model, pooled over its seeds;
* ``report.md`` - all of the above on one page; ``compare.json`` - the settings and the numbers.

Presets (:data:`PRESETS`) hold the only place where the demo and full study settings are defined;
explicit training options override them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..errors import CompareError
from ..fileio import FolderLock, atomic_write_text
from ..train import TrainConfig
from . import launchers, runner
from .runner import PER_RUN, config_fields, read_json, read_metrics
from .stats import (
    describe_options,
    finite_mean,
    finite_std,
    format_interval,
    format_seconds,
    json_safe,
    plus_minus,
    t_interval95,
    write_csv,
)

__all__ = [
    "CompareError",
    "Preset",
    "PRESETS",
    "DEFAULT_MODELS",
    "CompareResult",
    "parse_seeds",
    "parse_models",
    "baseline_model",
    "run",
    "summarize",
    "finished_runs",
    "run_dir",
    "write_outputs",
]

PathLike = Union[str, "os.PathLike[str]"]



DEFAULT_MODELS: tuple[str, ...] = ("resnet20", "se_resnet20", "gct_resnet20", "gct_resnet20_block")
#: the field: plain, GCT on every conv and once per block, and every supported light attention module
#: (gctnet.attention.ATTENTION_KEYS) on the same ResNet-20
FIELD_MODELS: tuple[str, ...] = (
    "resnet20", "gct_resnet20", "gct_resnet20_block", "se_resnet20", "eca_resnet20", "cbam_resnet20",
    "ge_resnet20", "gc_resnet20", "ecam_resnet20", "ceca_resnet20", "gca_resnet20", "lcbam_resnet20",
    "ese_resnet20", "coord_resnet20", "scoord_resnet20", "ela_resnet20", "strip_resnet20",
)


def _variant_prefixes() -> tuple[str, ...]:
    """Name prefixes of attention variants (``gct_``, ``se_``, ``eca_``, ...): a model without one is plain."""
    from ..attention import ATTENTION_KEYS

    return tuple(f"{k}_" for k in ("gct", "ese", *ATTENTION_KEYS))


# --------------------------------------------------------------------------------------------------
# presets: the one place where the demo and the study settings live
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """Seeds and training options (:class:`gctnet.train.TrainConfig` fields) of a comparison."""

    name: str
    seeds: tuple[int, ...]
    train: Mapping[str, Any]
    description: str
    models: Optional[tuple[str, ...]] = None  # default models of the preset (None: DEFAULT_MODELS)


def _paper_recipe(epochs: int) -> dict[str, Any]:
    """The paper's SGD recipe (gctnet.train.RECIPES["paper"]) scaled to ``epochs``: batch 256, lr 0.1,
    Nesterov 0.9, weight decay 1e-4 except GCT beta, first epoch at 0.1x lr, x0.1 at 30/60/90 %."""
    from ..train import RECIPES

    recipe = {k: v for k, v in RECIPES["paper"].items() if k != "milestones"}  # default: 30/60/90 % of epochs
    recipe["epochs"] = epochs
    return recipe


PRESETS: dict[str, Preset] = {
    "demo": Preset(
        name="demo",
        seeds=(0, 1),
        # sized from measured per-image costs; its timing is stated once, in docs/compare.md (Presets)
        train={"epochs": 4, "subset": 12288},
        description="a quick look: 4 epochs on 12,288 Fashion-MNIST training images (engine's default cosine "
        "recipe), full validation set, 2 seeds (timing: docs/compare.md, Presets)",
    ),
    "full": Preset(
        name="full",
        seeds=(0, 1, 2, 3, 4),
        train={**_paper_recipe(10), "subset": None},
        description="the study setting: the full training set, the paper's SGD recipe scaled to 10 epochs "
        "(batch 256, lr 0.1, x0.1 at epochs 3/6/9, first epoch at 0.1x lr, no weight decay on GCT beta), 5 seeds",
    ),
    # the full preset's recipe, so finished runs of a `full` study folder are reused as they are
    "field": Preset(
        name="field",
        seeds=(0, 1, 2),
        train={**_paper_recipe(10), "subset": None},
        models=FIELD_MODELS,
        description="ranks a field: plain, GCT (every conv and per block), SE, ECA, CBAM, GE, GC and the other "
        "supported light attention modules on ResNet-20, under the full preset's recipe, 3 seeds (add seeds 3,4 "
        "of plain and GCT with a second call: docs/compare.md)",
    ),
}


# --------------------------------------------------------------------------------------------------
# argument helpers
# --------------------------------------------------------------------------------------------------
def parse_seeds(value: Union[str, int, Sequence[int]]) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; a single integer ``n`` (``"3"`` or 3) -> seeds ``0..n-1``; ``"5,"`` -> [5]."""
    if isinstance(value, bool):
        raise TypeError(f"seeds must be an int, a comma list or a sequence of ints, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise CompareError(f"a number of seeds must be >= 1, got {value} (for the single seed {value}, write '{value},')")
        return list(range(value))
    if isinstance(value, str):
        text = value.strip()
        if "," not in text:
            try:
                count = int(text)
            except ValueError as exc:
                raise CompareError(f"seeds must be a comma list such as 0,1,2 or a count such as 3, got {value!r}") from exc
            return parse_seeds(count)
        try:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        except ValueError as exc:
            raise CompareError(f"seeds must be a comma list of integers such as 0,1,2, got {value!r}") from exc
    else:
        seeds = [int(s) for s in value]
    if not seeds:
        raise CompareError("at least one seed is needed")
    if len(set(seeds)) != len(seeds):
        raise CompareError(f"seeds must be distinct, got {seeds}")
    if any(s < 0 for s in seeds):
        raise CompareError(f"seeds must be >= 0, got {seeds}")
    return seeds


def parse_models(value: Union[str, Sequence[str]]) -> list[str]:
    """``"a,b,c"`` or a sequence -> a list of registered model names (clear error for unknown ones)."""
    from ..models.registry import get_model_entry

    names = [m.strip() for m in (value.split(",") if isinstance(value, str) else value) if m and m.strip()]
    if not names:
        raise CompareError("at least one model is needed")
    if len(set(names)) != len(names):
        raise CompareError(f"models must be distinct, got {names}")
    for name in names:
        try:
            get_model_entry(name)
        except ValueError as exc:  # the registry's message names close matches
            raise CompareError(str(exc)) from None
    return names


def baseline_model(models: Sequence[str]) -> str:
    """The plain model the others are compared with: the first without an attention prefix (``gct_``,
    ``se_``, ``eca_``, ... of :data:`gctnet.attention.ATTENTION_KEYS`) and without a ``_block`` suffix,
    else the first listed."""
    prefixes = _variant_prefixes()
    for m in models:
        if not m.startswith(prefixes) and not m.endswith("_block"):
            return m
    return models[0]


def run_dir(out: PathLike, model: str, seed: int) -> Path:
    """Folder of one run: ``OUT/runs/<model>/seed<k>``."""
    return Path(out) / "runs" / model / f"seed{seed}"


# --------------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------------
@dataclass
class ModelSummary:
    """Aggregates of one model over its finished seeds (accuracies in %, from each run's last epoch)."""

    model: str
    seeds: list[int]
    top1: list[float]
    top5: list[float]
    best_top1: list[float]
    top1_mean: float
    top1_std: float
    top5_mean: float
    top5_std: float
    params: Optional[int]
    gct_params: Optional[int]
    macs: Optional[int]
    train_seconds: float  # mean per run
    images_per_sec: float  # mean per run
    delta_top1_mean: Optional[float] = None  # paired (same seed) difference to the plain model
    delta_top1_std: Optional[float] = None
    delta_seeds: int = 0
    delta_top1_ci95: Optional[tuple[float, float]] = None  # 95% t-interval of the paired difference
    delta_wins: int = 0  # seeds where this model beat the plain model
    is_baseline: bool = False
    analysis: Optional[str] = None  # path of analysis.md, relative to the output folder
    conclusion: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CompareResult:
    """What :func:`run` produced: paths, per-run rows and per-model summaries."""

    out: Path
    models: list[str]
    seeds: list[int]
    baseline: str
    runs: list[dict[str, Any]]
    summaries: list[ModelSummary]
    paths: dict[str, Path] = field(default_factory=dict)
    cost: Optional[dict[str, Any]] = None  # the side-by-side cost measurement (cost.json), None when skipped
    trained: int = 0  # runs trained (or resumed) by this call
    skipped: int = 0  # runs found finished
    not_trained: list[tuple[str, int]] = field(default_factory=list)  # unfinished (model, seed) left alone

    @property
    def report(self) -> Path:
        return self.paths["report"]


def _model_costs(path: Path) -> dict[str, Any]:
    """params, GCT params/modules and MACs of a finished run's model at its dataset's input size.

    Built from the run's ``summary.json`` (model name and builder arguments), not its weights, so a run
    folder holding only its small files (as committed in results/) is summarised too.  Cached in
    ``<model folder>/model_info.json`` (keyed by the builder arguments and input size), so summarising a
    folder again does not rebuild and trace the model.
    """
    from ..bench.accounting import model_info
    from ..data import dataset_info
    from ..models import create_model

    summary = read_json(path / "summary.json") or {}
    config = read_json(path / "config.json") or {}
    info = dataset_info(config.get("data") or "fashion_mnist", config.get("data_dir"), image_size=config.get("image_size"))
    key = {"model_kwargs": summary.get("model_kwargs"), "input_size": [info.in_chans, info.image_size, info.image_size]}
    cache = path.parent / "model_info.json"
    cached = read_json(cache)
    if cached and cached.get("key") == key and key["model_kwargs"] is not None:
        return cached["costs"]
    if key["model_kwargs"] is None or not summary.get("model"):
        raise CompareError(f"{path / 'summary.json'} does not name its model and builder arguments "
                           "(written by an older gctnet?); expected keys 'model' and 'model_kwargs'")
    model = create_model(summary["model"], **summary["model_kwargs"]).eval()
    mi = model_info(model, tuple(key["input_size"]), batch_size=2)
    costs = {"params": mi.params, "gct_params": mi.gct_params, "gct_modules": mi.gct_modules, "macs": mi.macs}
    atomic_write_text(cache, json.dumps({"key": key, "costs": costs}, indent=2) + "\n")
    return costs


def finished_runs(out: PathLike) -> dict[str, list[int]]:
    """Model -> seeds of the finished runs in ``out/runs`` (sorted)."""
    found: dict[str, list[int]] = {}
    for summary in sorted(Path(out).glob("runs/*/seed*/summary.json")):
        seed_dir = summary.parent
        suffix = seed_dir.name[len("seed"):]
        data = read_json(summary)
        if suffix.isdigit() and data and data.get("finished"):
            found.setdefault(seed_dir.parent.name, []).append(int(suffix))
    return {m: sorted(seeds) for m, seeds in found.items()}


def _collect_runs(out: Path, plan: Mapping[str, Sequence[int]]) -> list[dict[str, Any]]:
    rows = []
    for model, seeds in plan.items():
        costs: Optional[dict[str, Any]] = None
        for seed in seeds:
            path = run_dir(out, model, seed)
            summary = read_json(path / "summary.json")
            if not summary or not summary.get("finished"):
                continue
            costs = costs or _model_costs(path)
            metrics = read_metrics(path)
            rows.append(
                {
                    "model": model,
                    "seed": seed,
                    "final_top1": summary.get("final_top1"),
                    "final_top5": summary.get("final_top5"),
                    "best_top1": summary.get("best_top1"),
                    "epochs": summary.get("epochs", len(metrics)),
                    **costs,
                    "train_seconds": summary.get("train_seconds"),
                    "images_per_sec": summary.get("images_per_sec"),
                    "run_dir": path.relative_to(out).as_posix(),
                    "val_top1_curve": [m.get("val_top1") for m in metrics],
                }
            )
    return rows


def summarize(
    out: PathLike, models: Optional[Sequence[str]] = None, baseline: Optional[str] = None
) -> tuple[list[dict[str, Any]], list[ModelSummary]]:
    """Per-run rows and per-model summaries of **every** finished run in ``out`` (nothing is trained).

    ``models`` only sets the order (listed models first, then the others found, sorted), so a study
    run in parts (say 3 seeds of every model, then seeds 3-4 of two of them) is summarised as a whole.
    """
    found = finished_runs(out)
    order = [m for m in (models or []) if m in found] + sorted(m for m in found if m not in (models or []))
    plan = {m: found[m] for m in order}
    if not plan:
        return [], []
    models = order
    out = Path(out)
    baseline = baseline or baseline_model(models)
    runs = _collect_runs(out, plan)
    by_model: dict[str, list[dict[str, Any]]] = {m: [r for r in runs if r["model"] == m] for m in models}
    base = {r["seed"]: r["final_top1"] for r in by_model.get(baseline, [])}
    summaries = []
    for model in models:
        rs = by_model[model]
        if not rs:
            continue
        top1 = [r["final_top1"] for r in rs]
        top5 = [r["final_top5"] for r in rs]
        s = ModelSummary(
            model=model,
            seeds=[r["seed"] for r in rs],
            top1=top1,
            top5=top5,
            best_top1=[r["best_top1"] for r in rs],
            top1_mean=finite_mean(top1),
            top1_std=finite_std(top1),
            top5_mean=finite_mean(top5),
            top5_std=finite_std(top5),
            params=rs[0]["params"],
            gct_params=rs[0]["gct_params"],
            macs=rs[0]["macs"],
            train_seconds=finite_mean([r["train_seconds"] for r in rs]),
            images_per_sec=finite_mean([r["images_per_sec"] for r in rs]),
            is_baseline=model == baseline,
        )
        if model != baseline:
            deltas = [r["final_top1"] - base[r["seed"]] for r in rs if r["seed"] in base]
            if deltas:
                s.delta_top1_mean, s.delta_top1_std, s.delta_seeds = finite_mean(deltas), finite_std(deltas), len(deltas)
                s.delta_top1_ci95 = t_interval95(deltas)
                s.delta_wins = sum(d > 0 for d in deltas)
        summaries.append(s)
    return runs, summaries


# --------------------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------------------
def run(
    models: Union[str, Sequence[str], None] = None,
    seeds: Union[str, int, Sequence[int], None] = None,
    out: PathLike = "runs/compare",
    *,
    preset: str = "demo",
    train_options: Optional[Mapping[str, Any]] = None,
    baseline: Optional[str] = None,
    analyze: bool = True,
    analysis_images: int = 256,
    cost_repeats: int = 10,
    log: Optional[Callable[[str], None]] = print,
    jobs: int = 1,
    ray: Optional[str] = None,
    ray_options: Optional[Mapping[str, Any]] = None,
    train: bool = True,
) -> CompareResult:
    """Train every (model, seed) with the same options, skip finished runs, write tables, plots, report.

    Args:
        models: registered model names (list or comma string); default :data:`DEFAULT_MODELS`.
        seeds: list, comma string or a count ``n`` (seeds ``0..n-1``); default: the preset's seeds.
        out: output folder (created; an existing one continues the comparison).
        preset: ``"demo"`` or ``"full"`` (:data:`PRESETS`): default seeds and training options.
        train_options: :class:`gctnet.train.TrainConfig` fields applied to every run; they override the
            preset's.  ``model``, ``seed`` and the output folder are set per run.
        baseline: the plain model for the differences (default: :func:`baseline_model`).
        analyze: run :func:`gctnet.analysis.analyze` on every GCT model (pooled over its seeds).
        analysis_images: validation images (a seeded random sample) for the gate statistics.
        cost_repeats: interleaved repetitions of the side-by-side cost measurement at the end
            (:mod:`gctnet.experiments.cost`, ``cost.json``); 0 skips it (no cost columns).
        log: where progress lines go (``None``: silent).
        jobs: runs at once on this machine, each in its own process with its share of the CPU threads
            (or its own GPU where several exist); see :mod:`gctnet.experiments.launchers`.
        ray: run every (model, seed) as a Ray task on the cluster at this address (``"auto"``: an
            existing cluster; ``""``: a local one started for the call); ``None``: no Ray.
        ray_options: for Ray: ``cpus_per_run``, ``gpus_per_run``, ``max_retries``.
        train: ``False``: train nothing, report the finished runs and name the unfinished ones (a look at a
            comparison that is still under way, e.g. a study made in parts).
    """
    if preset not in PRESETS:
        raise CompareError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    model_list = parse_models((p.models or DEFAULT_MODELS) if models is None else models)
    seed_list = parse_seeds(p.seeds if seeds is None else seeds)
    base = baseline or baseline_model(model_list)
    if base not in model_list:
        raise CompareError(f"baseline {base!r} is not among the models {model_list}")
    fields = config_fields()
    options: dict[str, Any] = {k: v for k, v in p.train.items() if k in fields}
    user = runner.check_train_options(train_options or {}, PER_RUN, name="train_options", setter="compare",
                                      kind="training")
    options.update(user)
    say = log or (lambda _msg: None)
    if "subset" not in user and options.get("subset") and options.get("data", "fashion_mnist") != "fashion_mnist":
        # the presets' subsets are sized for Fashion-MNIST's 60,000 images, not for the data given here
        say(f"compare: preset {preset}'s subset of {options['subset']} Fashion-MNIST images does not apply to "
            f"{options['data']}: training on all of it (pass --subset N to choose)")
        options["subset"] = None
    out = Path(out)
    with FolderLock(out, "comparison folder"):  # one compare per folder at a time; created if needed
        launcher = launchers.make_launcher(jobs, ray, log_dir=out / "jobs", out=out, **(ray_options or {})) if train \
            else None
        return _compare(out, model_list, seed_list, base, options, user, p, analyze, analysis_images, say,
                        cost_repeats, launcher=launcher, train=train)


def _compare(out: Path, model_list: list[str], seed_list: list[int], base: str, options: dict[str, Any],
             user: dict[str, Any], preset: Preset, analyze: bool, analysis_images: int,
             say: Callable[[str], None], cost_repeats: int = 10,
             launcher: Optional[launchers.Launcher] = None, train: bool = True) -> CompareResult:
    def intended(model: str, seed: int) -> TrainConfig:
        return TrainConfig(**{**options, "model": model, "seed": seed, "out": str(run_dir(out, model, seed))}).validate()

    # plan every run first: a folder made with other settings fails before anything is trained
    jobs = [(m, s, intended(m, s)) for m in model_list for s in seed_list]
    status = {config.out: runner.plan_run(config) for _, _, config in jobs}
    # one folder, one recipe: every finished run (also of models not in this call) must match it
    for model, seeds in finished_runs(out).items():
        for seed in seeds:
            runner.check_recipe(run_dir(out, model, seed), intended(model, seed).to_dict())
    todo = sum(st != "done" for st in status.values())
    say(
        f"compare: {len(model_list)} models x {len(seed_list)} seeds = {len(jobs)} runs "
        f"({len(jobs) - todo} already finished), preset {preset.name}, options {describe_options(options)}; output {out}"
    )
    started = time.perf_counter()
    planned = [launchers.PlannedRun(m, s, c, status[c.out], i, len(jobs))
               for i, (m, s, c) in enumerate(jobs, start=1) if status[c.out] != "done"]
    for i, (model, seed, config) in enumerate(jobs, start=1):
        if status[config.out] == "done":
            say(f"run {i}/{len(jobs)}: {model} seed {seed} already finished, skipped")
    not_trained = [] if train else [(run.model, run.seed) for run in planned]
    if not_trained:
        say(f"compare: report only: {len(not_trained)} unfinished run(s) not trained: {_runs_text(not_trained)}")
        planned = []
    launched = (launcher or launchers.Sequential()).launch(planned, say) if planned else launchers.LaunchResult()
    trained = launched.trained
    launched.raise_failures()

    runs, summaries = summarize(out, model_list, base)
    if not summaries and not train:
        raise CompareError(f"nothing to report: no finished run in {out} (a report-only call trains nothing; "
                           "run the same command without it to train)")
    result = CompareResult(out, model_list, seed_list, base, runs, summaries, trained=trained, skipped=len(jobs) - todo,
                           not_trained=not_trained)
    if analyze:
        _analyze_models(result, analysis_images, say)
    # after every run: the cost of every summarised model, measured side by side in this process
    result.cost = _cost_step(result, options, cost_repeats, say)
    settings = {
        "preset": preset.name,
        "preset_description": preset.description,
        "train_options": options,
        "options_given": user,
        "wall_seconds_this_call": round(time.perf_counter() - started, 1),
        **environment(options.get("threads")),
    }
    result.paths = write_outputs(result, settings)
    say(f"compare: done ({trained} trained, {len(jobs) - todo} skipped); report: {result.paths['report']}")
    return result


def _cost_step(result: CompareResult, options: Mapping[str, Any], repeats: int,
               say: Callable[[str], None]) -> Optional[dict[str, Any]]:
    from .cost import cost_step

    models = [s.model for s in result.summaries]
    if not models:
        return None
    reference = result.baseline if result.baseline in models else models[0]
    return cost_step(result.out, models, reference, options, repeats=repeats, say=say)


def _analyze_models(result: CompareResult, images: int, say: Callable[[str], None]) -> None:
    from ..analysis import analyze

    for s in result.summaries:
        row = next(r for r in result.runs if r["model"] == s.model)
        if not row.get("gct_modules"):
            continue
        dirs = [str(result.out / r["run_dir"]) for r in result.runs if r["model"] == s.model]
        target = result.out / "analysis" / s.model
        say(f"analyze: {s.model} ({len(dirs)} seed(s) pooled) -> {target}")
        seeds = ", ".join(str(r["seed"]) for r in result.runs if r["model"] == s.model)
        a = analyze(dirs, batches=1, batch_size=images, out=target,
                    name=f"{s.model}, seed{'s' if len(dirs) > 1 else ''} {seeds}" + (" pooled" if len(dirs) > 1 else ""))
        s.analysis = str(target.relative_to(result.out) / "analysis.md")
        s.conclusion = a.conclusion


def environment(threads: Optional[int] = None) -> dict[str, Any]:
    """Where the numbers were measured (for the report); ``threads``: the runs' ``TrainConfig.threads``."""
    from ..train.distributed import resolve_threads

    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": resolve_threads(threads),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# --------------------------------------------------------------------------------------------------
# output files
# --------------------------------------------------------------------------------------------------
_RUN_COLUMNS = (
    "model", "seed", "final_top1", "final_top5", "best_top1", "epochs", "params", "gct_params", "macs",
    "train_seconds", "images_per_sec", "run_dir",
)
_SUMMARY_COLUMNS = (
    "model", "seeds", "top1_mean", "top1_std", "top5_mean", "top5_std", "delta_top1_mean", "delta_top1_std",
    "delta_seeds", "delta_top1_ci95_low", "delta_top1_ci95_high", "delta_wins", "params", "gct_params", "macs", "train_seconds", "images_per_sec", "top1_per_seed",
    "top5_per_seed", "analysis",
    # measured side by side in one process at the end of the comparison (cost.json); ratios to the reference
    "cost_params", "cost_attn_params", "cost_macs", "cost_train_images_per_s", "cost_infer_images_per_s",
    "cost_saved_bytes_per_image", "cost_train_time_ratio", "cost_infer_time_ratio", "cost_params_ratio",
    "cost_attn_params_ratio", "cost_macs_ratio", "cost_train_images_per_s_ratio", "cost_infer_images_per_s_ratio",
    "cost_saved_bytes_per_image_ratio",
)


def _si(n: Optional[float], unit: str = "") -> str:
    if n is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}".rstrip()
    return f"{n:g} {unit}".rstrip()


def _summary_table(summaries: Sequence[ModelSummary], baseline: str) -> list[str]:
    lines = [
        f"| model | top-1 % (mean +- std) | vs {baseline} (paired) | 95% CI of the difference | seeds better "
        "| top-5 % | top-1 per seed | params | GCT params | MACs | train time / run | images/s |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        ci, wins = "-", "-"
        if s.is_baseline:
            delta = "(plain)"
        elif s.delta_seeds:
            delta = plus_minus(s.delta_top1_mean, s.delta_top1_std, sign=True) + f" (n={s.delta_seeds})"
            ci, wins = format_interval(s.delta_top1_ci95), f"{s.delta_wins}/{s.delta_seeds}"
        else:
            delta = "-"
        per_seed = ", ".join(f"{seed}: {v:.2f}" for seed, v in zip(s.seeds, s.top1))
        lines.append(
            f"| {s.model} | {plus_minus(s.top1_mean, s.top1_std)} | {delta} | {ci} | {wins} | "
            f"{plus_minus(s.top5_mean, s.top5_std)} | {per_seed} | "
            f"{_si(s.params)} | {s.gct_params if s.gct_params is not None else '-'} | {_si(s.macs)} | "
            f"{format_seconds(s.train_seconds)} | "
            f"{s.images_per_sec:.0f} |"
        )
    return lines


def cost_rows(cost: Optional[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Model -> its row of ``cost.json`` with every ratio to the reference (``<key>_ratio``) filled in."""
    from .cost import RATIO_KEYS, cost_ratio

    if not cost:
        return {}
    rows = {r["model"]: dict(r) for r in cost.get("rows", [])}
    ref = rows.get(cost.get("reference"), {})
    for r in rows.values():
        for k in RATIO_KEYS:
            r[f"{k}_ratio"] = cost_ratio(r.get(k), ref.get(k))
    return rows


def _x(value: Optional[float]) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}x"


def ranking_table(summaries: Sequence[ModelSummary], baseline: str, cost: Optional[Mapping[str, Any]]) -> list[str]:
    """The field ranked by mean top-1 (best first): accuracy, the paired difference to the plain model
    with its 95% CI and seeds won, and the side-by-side cost with ratios to the cost reference."""
    rows = cost_rows(cost)
    ref = (cost or {}).get("reference", baseline)
    lines = [
        f"| rank | model | seeds | top-1 % (mean +- std) | vs {baseline} (paired) | 95% CI | seeds better "
        f"| params (x {ref}) | attn params | MACs (x) | train img/s (x) | train time x (95% CI) | infer img/s (x) "
        "| saved act. MiB/img (x) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rank, s in enumerate(_ranked(summaries), start=1):
        ci, wins = "-", "-"
        if s.is_baseline:
            delta = "(plain)"
        elif s.delta_seeds:
            delta = f"{s.delta_top1_mean:+.2f}"
            ci, wins = format_interval(s.delta_top1_ci95), f"{s.delta_wins}/{s.delta_seeds}"
        else:
            delta = "-"
        c = rows.get(s.model)
        if c:
            tci = c.get("train_time_ratio_ci95")
            cells = [
                f"{_si(c['params'])} ({_x(c['params_ratio'])})", f"{c['attn_params']:,}",
                f"{_si(c['macs'])} ({_x(c['macs_ratio'])})",
                f"{c['train_images_per_s']:.0f} ({_x(c['train_images_per_s_ratio'])})",
                _x(c["train_time_ratio"]) + (f" [{tci[0]:.2f}, {tci[1]:.2f}]" if tci else ""),
                f"{c['infer_images_per_s']:.0f} ({_x(c['infer_images_per_s_ratio'])})",
                f"{c['saved_bytes_per_image'] / 2**20:.3f} ({_x(c['saved_bytes_per_image_ratio'])})",
            ]
        else:
            cells = ["-"] * 7
        lines.append(f"| {rank} | {s.model} | {len(s.seeds)} | {plus_minus(s.top1_mean, s.top1_std)} | {delta} | {ci} "
                     f"| {wins} | " + " | ".join(cells) + " |")
    return lines


def _cost_notes(cost: Optional[Mapping[str, Any]], baseline: str, models: Sequence[str]) -> str:
    if not cost:
        return ("No side-by-side cost measurement (cost_repeats=0): the cost columns are empty. The per-run times "
                "in the training logs are not model costs (they measure the machine's load during each run).")
    st = cost.get("settings", {})
    ref = cost.get("reference")
    plain = ref == baseline and not str(ref).startswith(_variant_prefixes()) and not str(ref).endswith("_block")
    ref_note = (f"Ratios are to the plain model {ref}." if plain else
                f"The comparison has no plain model: ratios are to the first model, {ref}.")
    env = cost.get("environment") or {}
    return (
        "Cost columns are measured side by side in one process at the end of the comparison "
        f"(`cost.json`{', reused from an earlier call' if cost.get('reused') else ''}): every model built "
        f"at the data's input size {'x'.join(map(str, st.get('input_size', [])))}, batch {st.get('batch_size')}, "
        f"{st.get('repeats')} interleaved repetitions on {st.get('device')} ({st.get('torch_threads')} torch threads"
        f"{', ' + str(env.get('cpus')) + ' CPUs' if env.get('cpus') else ''}); train = forward + loss + backward + "
        "SGD step, infer = no-grad forward; img/s are batch / median time, the train time ratio is the median of "
        "per-repetition ratios with a distribution-free 95% interval (shown from 6 repetitions). Params, attention "
        "params, MACs (attention modules charged 2 MACs per input element) and saved activation bytes (autograd's "
        f"saved tensors per image in a train-mode forward) come from `gctnet.model_info`. {ref_note} "
        "Per-run train times and images/s from the training logs (tables below) measure the machine's load "
        "while each run trained, not the model's cost, and are labelled as such."
    )


_TABLE_NOTES = (
    "Accuracies are on the validation set after the last epoch (not the best epoch, which would select on "
    "the test data); +- is the sample standard deviation over seeds. The difference to the plain model is "
    "paired by seed (same data order and initial seed), mean +- std over the seeds both models have, with "
    "its 95% confidence interval (Student's t; an interval containing 0 means the difference is not "
    "distinguishable from seed noise) and the number of seeds where the model beat the plain one. "
    "MACs per image include GCT (2 per input element); train time and images/s are means per run "
    "(training only, from the engine's summary): per-run log times that measure the machine's load during "
    "each run, not the model's cost (the side-by-side cost columns of the ranking do)."
)


def _settings_lines(result: CompareResult, settings: Mapping[str, Any]) -> list[str]:
    opts = settings.get("train_options") or {}
    given = settings.get("options_given") or {}
    preset = f"- preset: **{settings.get('preset')}** ({settings.get('preset_description')})"
    if given:
        preset += f"; overridden here by {describe_options(given)}"
    return [
        preset,
        f"- models asked for in this call: {', '.join(result.models)}; plain model: {result.baseline}",
        f"- seeds asked for in this call: {', '.join(map(str, result.seeds))}; summarised (every finished run in the "
        f"folder): " + ("; ".join(f"{x.model} {', '.join(map(str, x.seeds))}" for x in result.summaries) or "none"),
        f"- training options used: {describe_options(opts)}; everything else is the gctnet.train default (each run's "
        "config.json has the full configuration)",
        f"- report written {settings.get('date')} with torch {settings.get('torch')} on {settings.get('cpus')} CPUs "
        f"({settings.get('cpu_threads')} torch threads), {settings.get('cuda') or 'no GPU'}; this call trained {result.trained} run(s), skipped "
        f"{result.skipped} finished one(s), took {format_seconds(float(settings.get('wall_seconds_this_call', 0)))}",
    ] + ([f"- **partial report**: {len(result.not_trained)} of the {len(result.models) * len(result.seeds)} runs asked "
          f"for are not finished and were not trained by this call (report only): {_runs_text(result.not_trained)}"]
         if result.not_trained else [])


def _seed_list(seeds: Sequence[int]) -> str:
    """``0-4`` for three or more consecutive seeds, else ``0, 1`` or ``0, 2, 5``."""
    seeds = list(seeds)
    if len(seeds) >= 3 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _runs_text(runs: Sequence[tuple[str, int]]) -> str:
    """``ge_resnet20 seeds 0-2; gc_resnet20 seed 1``: (model, seed) pairs grouped by model."""
    by_model: dict[str, list[int]] = {}
    for model, seed in runs:
        by_model.setdefault(model, []).append(seed)
    return "; ".join(f"{m} seed{'s' if len(seeds) > 1 else ''} {_seed_list(seeds)}" for m, seeds in by_model.items())


def _seeds_text(summaries: Sequence[ModelSummary]) -> str:
    """The seeds pooled, for the figure titles: ``seeds 0, 1 of every model``, or grouped by seed list with
    the largest group last (``seeds 0-4 of resnet20, gct_resnet20; 0-2 of every other model``)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for s in summaries:
        groups.setdefault(tuple(s.seeds), []).append(s.model)
    if len(groups) == 1:
        return f"seeds {_seed_list(next(iter(groups)))} of every model"
    ordered = sorted(groups.items(), key=lambda kv: len(kv[1]))
    parts = [f"{_seed_list(seeds)} of {', '.join(models)}" for seeds, models in ordered[:-1]]
    seeds, models = ordered[-1]
    parts.append(f"{_seed_list(seeds)} of " + ("every other model" if len(models) > 2 else ", ".join(models)))
    return "seeds " + "; ".join(parts)


def _ranked(summaries: Sequence[ModelSummary]) -> list[ModelSummary]:
    """The models by mean top-1, best first (the ranking table's order and its rank numbers)."""
    return sorted(summaries, key=lambda s: -s.top1_mean if math.isfinite(s.top1_mean) else math.inf)


def _cost_plot(result: CompareResult, path: Path, seeds_text: str) -> Optional[Path]:
    """Cost-vs-accuracy figure with the Pareto front, or None without a cost measurement."""
    from ..analysis.plots import plot_cost_vs_accuracy
    from .cost import pareto_front

    rows = cost_rows(result.cost)
    if not rows:
        return None
    points = []
    ranks = {s.model: rank for rank, s in enumerate(_ranked(result.summaries), start=1)}
    for s in result.summaries:  # the summaries' order: each model keeps its colour of the other figures
        rank = ranks[s.model]
        c = rows.get(s.model)
        if c is None:
            continue
        delta = 0.0 if s.is_baseline else s.delta_top1_mean
        points.append({"model": s.model, "rank": rank, "cost": c.get("train_time_ratio"), "gain": delta,
                       "ci": None if s.is_baseline else s.delta_top1_ci95, "n": s.delta_seeds or len(s.seeds)})
    front = pareto_front([(p["cost"], p["gain"]) for p in points])
    ref = (result.cost or {}).get("reference")
    return plot_cost_vs_accuracy(
        points, front, path,
        xlabel=f"train step time / {ref} (side by side, one process)",
        ylabel=f"top-1 difference to {result.baseline} (percentage points, paired)",
        title=f"Accuracy gain against training cost; points numbered by rank; Pareto front joined ({seeds_text})",
    )


def write_outputs(result: CompareResult, settings: Mapping[str, Any]) -> dict[str, Path]:
    """Write ``runs.csv``, ``summary.csv``, ``summary.md``, ``compare.json``, the figures and
    ``report.md`` into ``result.out``; returns the paths by key."""
    from ..analysis.plots import plot_accuracy_curves, plot_final_per_seed
    from ..analysis.report import FIGURES

    out = result.out
    paths: dict[str, Path] = {}
    paths["runs_csv"] = write_csv(out / "runs.csv", _RUN_COLUMNS, result.runs)
    crow = cost_rows(result.cost)
    summary_rows = []
    for s in result.summaries:
        row = s.to_dict()
        row["seeds"] = " ".join(map(str, s.seeds))
        row["top1_per_seed"] = " ".join(f"{v!r}" for v in s.top1)
        row["top5_per_seed"] = " ".join(f"{v!r}" for v in s.top5)
        row["delta_top1_ci95_low"], row["delta_top1_ci95_high"] = s.delta_top1_ci95 or (None, None)
        for k, v in crow.get(s.model, {}).items():
            if k != "model":
                row[f"cost_{k}"] = v
        summary_rows.append(row)
    paths["summary_csv"] = write_csv(out / "summary.csv", _SUMMARY_COLUMNS, summary_rows)

    figures: dict[str, str] = {}
    if result.runs:
        curves = {s.model: [r["val_top1_curve"] for r in result.runs if r["model"] == s.model] for s in result.summaries}
        finals = {s.model: dict(zip(s.seeds, s.top1)) for s in result.summaries}
        seeds_text = _seeds_text(result.summaries)
        paths["curves_png"] = plot_accuracy_curves(
            curves, out / "val_top1_vs_epoch.png",
            title=f"Validation top-1 per epoch, mean +- 1 std over seeds ({seeds_text})", reference=result.baseline)
        paths["seeds_png"] = plot_final_per_seed(
            finals, out / "final_top1_per_seed.png",
            title=f"Final top-1 per seed (points, labelled by seed) and mean (bar); {seeds_text}")
        figures = {"curves": "val_top1_vs_epoch.png", "seeds": "final_top1_per_seed.png"}
        pareto = _cost_plot(result, out / "cost_vs_accuracy.png", seeds_text)
        if pareto is not None:
            paths["cost_png"] = pareto
            figures["cost"] = "cost_vs_accuracy.png"

    table = _summary_table(result.summaries, result.baseline)
    per_run = ["| model | seed | top-1 % | top-5 % | best top-1 % | epochs | train time (log, machine load) "
               "| images/s (log, machine load) | run |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result.runs:
        per_run.append(
            f"| {r['model']} | {r['seed']} | {r['final_top1']:.2f} | {r['final_top5']:.2f} | {r['best_top1']:.2f} | "
            f"{r['epochs']} | {format_seconds(r['train_seconds'])} | {r['images_per_sec']:.0f} | [{r['run_dir']}]({r['run_dir']}) |"
        )
    analysis_lines = []
    for s in result.summaries:
        if s.analysis:
            analysis_lines.append(f"- **{s.model}** ([analysis]({s.analysis})): {s.conclusion}")

    summary_md = ["# Comparison summary", "", *_settings_lines(result, settings), "", "## Ranking", "",
                  *ranking_table(result.summaries, result.baseline, result.cost), "",
                  _cost_notes(result.cost, result.baseline, result.models), "", "## Accuracy", "",
                  *table, "", _TABLE_NOTES, ""]
    if analysis_lines:
        summary_md += ["## What GCT learned", "", *analysis_lines, ""]
    summary_md += ["## Per run", "", *per_run, "", "Machine-readable: `summary.csv` (per model), `runs.csv` (per run), "
                   "`compare.json`.", ""]
    paths["summary_md"] = out / "summary.md"
    atomic_write_text(paths["summary_md"], "\n".join(summary_md))

    ranking = ranking_table(result.summaries, result.baseline, result.cost)
    cost_note = _cost_notes(result.cost, result.baseline, result.models)
    report = ["# GCT comparison report", "", *_settings_lines(result, settings), "",
              "## Ranking: accuracy and cost side by side", "", *ranking, "", cost_note, ""]
    if "cost" in figures:
        report += [f"![difference to the plain model against train-time ratio]({figures['cost']})", "",
                   "Difference to the plain model (mean over paired seeds, bar: 95% CI) against the side-by-side "
                   "train-time ratio, each point numbered by its rank in the table above; the line joins the "
                   "Pareto front (no other model is both cheaper and better).",
                   ""]
    report += ["## Accuracy", "", *table, "", _TABLE_NOTES, ""]
    if "curves" in figures:
        report += [f"![validation top-1 per epoch]({figures['curves']})", "",
                   f"![final top-1 per seed]({figures['seeds']})", ""]
    if analysis_lines:
        report += ["## What GCT learned (gamma per layer, pooled over seeds)", ""]
        for s in result.summaries:
            if s.analysis:
                folder = Path(s.analysis).parent.as_posix()
                report += [f"### {s.model}", "", s.conclusion or "", "",
                           f"![{s.model}: gamma per layer]({folder}/{FIGURES['gamma_boxplot']})", "",
                           f"Details: [{s.analysis}]({s.analysis}) (per-layer table, gate statistics, figures).", ""]
    report += ["## Files", "", "- [summary.md](summary.md): the table with per-run details",
               "- `summary.csv`, `runs.csv`, `compare.json`: the numbers", "- `runs/<model>/seed<k>/`: each run "
               "(config.json, metrics.csv, checkpoints, summary.json)", ""]
    paths["report"] = out / "report.md"
    atomic_write_text(paths["report"], "\n".join(report))

    data = {
        "settings": dict(settings),
        "models": result.models,
        "seeds": result.seeds,
        "baseline": result.baseline,
        "summaries": [s.to_dict() for s in result.summaries],
        "runs": result.runs,
        "cost": result.cost,
    }
    paths["json"] = out / "compare.json"
    atomic_write_text(paths["json"], json.dumps(json_safe(data), indent=2) + "\n")
    return paths
