"""The paper's fine-tuning experiment: insert GCT into a trained plain network and fine-tune it.

>>> import gctnet.finetune
>>> result = gctnet.finetune.run(None, model="resnet20", seeds=[0, 1], out="runs/ft",
...                              finetune_epochs=3)                    # doctest: +SKIP
>>> print(result.paths["md"])                                          # runs/ft/finetune.md

For every seed ``k``:

1. a trained plain network: the one given (a run folder or gctnet checkpoint of a plain model, used
   for every seed), else one trained by :func:`gctnet.train.run` into ``OUT/pretrain/seed<k>`` with the
   preset's and ``pretrain_options``' settings;
2. its validation accuracy, and that of the same weights in the GCT variant (``gct_<model>``: the plain
   builder passed through :func:`gctnet.apply_gct`, loaded with :func:`gctnet.load_plain_weights`).  A
   fresh GCT is the identity, so both must be **exactly** equal; :class:`gctnet.errors.RunError` otherwise;
3. two fine-tuning runs with the same recipe and seed, both started from those weights
   (``TrainConfig.init_from``): the plain network in ``OUT/finetune/<model>/seed<k>`` and the GCT
   variant in ``OUT/finetune/<gct_model>/seed<k>``.  The recipe is the pretraining's data and
   optimiser settings with ``epochs=finetune_epochs``, ``lr = lr_factor x`` the pretraining lr, no
   warm-up and cosine decay (:func:`finetune_recipe`); ``finetune_options`` overrides any of it.

Finished runs are skipped and interrupted ones resumed (:mod:`gctnet.experiments.runner`), so
calling ``run`` again on the same folder continues the experiment.  Written to ``OUT``:
``finetune.csv`` (one row per seed), ``finetune.md`` (the table with mean +- std over seeds),
``finetune.json`` (settings and numbers) and ``finetune_top1_vs_epoch.png`` (validation top-1 against
fine-tuning epoch, epoch 0 being the accuracy before fine-tuning).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import FinetuneError, RunError
from ..fileio import FolderLock, atomic_write_text
from ..train import TrainConfig
from ..train.config import RESUME_OVERRIDABLE
from . import runner
from .compare import PRESETS, environment, parse_seeds
from .runner import config_fields, read_json, read_metrics
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
    "FinetuneError",
    "FinetuneResult",
    "CSV_COLUMNS",
    "run",
    "finetune_recipe",
    "evaluate_before",
    "pretrain_dir",
    "finetune_dir",
]

PathLike = Union[str, "os.PathLike[str]"]

CSV_COLUMNS = (
    "seed", "before_plain_top1", "before_gct_top1", "plain_top1", "gct_top1", "delta_top1",
    "plain_gain", "gct_gain", "plain_top5", "gct_top5", "pretrained", "plain_run", "gct_run",
)
# TrainConfig fields a fine-tuning run never inherits from the pretraining config
_NOT_INHERITED = {"model", "seed", "out", "resume", "overwrite", "init_from", "epochs", "lr", "lr_base",
                  "lr_base_size", "sched", "milestones", "warmup_epochs"}


#: TrainConfig fields the experiment sets for every run
_PER_RUN = runner.PER_RUN | {"init_from"}
# TrainConfig fields that change how a run executes, not what it computes (valid next to a given plain network)
EXECUTION_OPTIONS = RESUME_OVERRIDABLE - {"epochs", "resume", "out", "overwrite"}


def pretrain_dir(out: PathLike, seed: int) -> Path:
    """Folder of a pretraining run: ``OUT/pretrain/seed<k>``."""
    return Path(out) / "pretrain" / f"seed{seed}"


def finetune_dir(out: PathLike, model: str, seed: int) -> Path:
    """Folder of a fine-tuning run: ``OUT/finetune/<model>/seed<k>``."""
    return Path(out) / "finetune" / model / f"seed{seed}"


def finetune_recipe(pretrain_config: Mapping[str, Any], epochs: int, lr_factor: float = 0.1,
                     overrides: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The fine-tuning recipe derived from a pretraining config (``TrainConfig`` fields).

    Keeps the data, batch size, optimiser, weight decay and execution settings; sets ``epochs``, ``lr``
    to ``lr_factor`` times the pretraining's effective lr, no warm-up and a cosine schedule.
    ``overrides`` (TrainConfig fields) win over all of it.
    """
    if not (isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > 0):
        raise FinetuneError(f"finetune_epochs must be a positive integer, got {epochs!r}")
    if not (isinstance(lr_factor, (int, float)) and math.isfinite(lr_factor) and lr_factor > 0):
        raise FinetuneError(f"lr_factor must be a positive number, got {lr_factor!r}")
    fields = config_fields()
    base = TrainConfig.from_dict({k: v for k, v in pretrain_config.items() if k in fields}, strict=False)
    options = {k: v for k, v in base.to_dict().items() if k not in _NOT_INHERITED}
    options.update(epochs=epochs, lr=base.effective_lr * float(lr_factor), sched="cosine", warmup_epochs=0.0,
                   milestones=None)
    options.update(runner.check_train_options(overrides or {}, _PER_RUN,
                                       name="finetune_options", setter="the fine-tuning", kind="fine-tuning",
                                       error=FinetuneError))
    return options


# --------------------------------------------------------------------------------------------------
# before fine-tuning: plain == GCT
# --------------------------------------------------------------------------------------------------
def evaluate_before(checkpoint: PathLike, gct_model: str, config: Mapping[str, Any], *,
                    device: str = "auto") -> dict[str, Any]:
    """Validation accuracy of a plain checkpoint and of the same weights in ``gct_model``.

    The GCT model is built and loaded exactly as a fine-tuning run starts (registry builder + the
    engine's :func:`~gctnet.train.engine.load_init_weights`); the data come from ``config`` (its
    ``data``, ``data_dir``, ``image_size``, ``val_subset``, ``eval_batch_size``).  Returns
    ``{"plain": {...}, "gct": {...}, "equal": bool}`` with ``loss``, ``top1``, ``top5``, ``n`` each.
    """
    import torch

    from ..data import load_dataset
    from ..models import create_model
    from ..train import evaluate, load_checkpoint_model
    from ..train.distributed import resolve_device
    from ..train.engine import load_init_weights

    plain, ckpt = load_checkpoint_model(checkpoint)
    gct = create_model(gct_model, **dict(ckpt.get("model_kwargs") or {}))
    load_init_weights(gct, checkpoint)
    dev = resolve_device(device)
    val = load_dataset(config.get("data") or "fashion_mnist", "val", config.get("data_dir"),
                       subset=config.get("val_subset"), subset_seed=0, image_size=config.get("image_size"))
    batch = int(config.get("eval_batch_size") or 256)
    results = {}
    with torch.no_grad():
        for name, model in (("plain", plain), ("gct", gct)):
            r = evaluate(model.to(dev), val, device=dev, batch_size=batch)
            results[name] = {k: r[k] for k in ("loss", "top1", "top5", "n")}
    p, g = results["plain"], results["gct"]
    return {**results, "equal": (p["top1"], p["top5"], p["n"]) == (g["top1"], g["top5"], g["n"])}


def _before(out: Path, seed: int, checkpoint: Path, gct_model: str, config: Mapping[str, Any],
            say: Callable[[str], None]) -> dict[str, Any]:
    """:func:`evaluate_before`, cached in ``OUT/before/seed<k>.json`` (keyed by the checkpoint file)."""
    from ..train.checkpoint import resolve_checkpoint

    ckpt_file = resolve_checkpoint(checkpoint, "last")
    stat = ckpt_file.stat()
    key = {"checkpoint": str(ckpt_file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
           "gct_model": gct_model, "val": [config.get(k) for k in ("data", "val_subset", "image_size")]}
    cache = out / "before" / f"seed{seed}.json"
    cached = read_json(cache)
    if cached and cached.get("key") == key:
        return cached["result"]
    say(f"seed {seed}: evaluating the pretrained network and its GCT variant before fine-tuning")
    result = evaluate_before(ckpt_file, gct_model, config, device=str(config.get("device") or "auto"))
    if not result["equal"]:  # gctnet's promise broken: a run error, not the user's settings
        raise RunError(
            f"seed {seed}: the GCT variant {gct_model} of {ckpt_file} does not start at the plain network's "
            f"accuracy (plain top-1 {result['plain']['top1']!r}, GCT top-1 {result['gct']['top1']!r}); a fresh "
            "GCT must be the identity")
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps(json_safe({"key": key, "result": result}), indent=2) + "\n")
    return result


# --------------------------------------------------------------------------------------------------
# the experiment
# --------------------------------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    """What :func:`run` produced."""

    out: Path
    model: str
    gct_model: str
    seeds: list[int]
    rows: list[dict[str, Any]]  # one per seed (CSV_COLUMNS plus the per-epoch curves)
    summary: dict[str, Any]  # mean / std over seeds of every numeric column
    paths: dict[str, Path] = field(default_factory=dict)
    trained: int = 0  # runs trained or resumed by this call (pretraining and fine-tuning)
    skipped: int = 0  # runs found finished


def _plain_source(plain: PathLike) -> tuple[Path, dict[str, Any], str]:
    """(checkpoint path, its training config, model name) of a given plain network."""
    from ..surgery import gct_modules
    from ..train import load_checkpoint_model

    path = Path(plain).expanduser()
    model, ckpt = load_checkpoint_model(path)  # CheckpointError naming the file when it is not usable
    if gct_modules(model):
        raise FinetuneError(f"{path} holds {ckpt['model_name']!r}, which already has GCT layers; give a plain network")
    return path, dict(ckpt.get("config") or {}), str(ckpt["model_name"])


def _ensure(config: TrainConfig, what: str, say: Callable[[str], None]) -> bool:
    """One run through the experiments' runner; True when it trained (or resumed) in this call."""
    status = runner.plan_run(config, FinetuneError)
    if status == "done":
        say(f"{what}: {config.model} seed {config.seed} already finished, skipped")
        return False
    say(f"{what}: {config.model} seed {config.seed} ({'resuming' if status == 'resume' else 'training'}) -> {config.out}")
    try:
        return runner.ensure_run(config, status)
    except KeyboardInterrupt:
        say(f"finetune: interrupted during {what} of {config.model} seed {config.seed}; calling finetune again continues it")
        raise


def run(
    plain: Optional[PathLike] = None,
    *,
    model: str = "resnet20",
    gct_model: Optional[str] = None,
    seeds: Union[str, int, Sequence[int], None] = None,
    out: PathLike = "runs/finetune",
    preset: str = "demo",
    pretrain_options: Optional[Mapping[str, Any]] = None,
    finetune_epochs: int = 3,
    lr_factor: float = 0.1,
    finetune_options: Optional[Mapping[str, Any]] = None,
    log: Optional[Callable[[str], None]] = print,
) -> FinetuneResult:
    """Fine-tune a trained plain network with and without GCT inserted, for every seed; write the table.

    Args:
        plain: a gctnet run folder or checkpoint of a trained plain network (used for every seed), or
            ``None`` to train one per seed into ``OUT/pretrain/seed<k>``.
        model: the plain model to pretrain (ignored when ``plain`` is given: its checkpoint names it).
        gct_model: the GCT variant to fine-tune (default ``gct_<model>``; e.g. ``gct_resnet20_block``).
        seeds: list, comma string or a count ``n``; default: the preset's seeds.
        out: output folder (an existing one continues the experiment).
        preset: :data:`gctnet.compare.PRESETS` name giving the default seeds and pretraining options.
        pretrain_options: TrainConfig fields for the pretraining (override the preset's).
        finetune_epochs: epochs of each fine-tuning run.
        lr_factor: fine-tuning lr as a fraction of the pretraining lr.
        finetune_options: TrainConfig fields overriding the derived fine-tuning recipe.
        log: where progress lines go (``None``: silent).
    """
    from ..models.registry import get_model_entry

    if preset not in PRESETS:
        raise FinetuneError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    say = log or (lambda _msg: None)
    seed_list = parse_seeds(PRESETS[preset].seeds if seeds is None else seeds)
    out = Path(out)
    fields = config_fields()

    if plain is not None:
        if pretrain_options:
            raise FinetuneError("pretrain_options apply only when the plain network is trained here (plain=None)")
        given_ckpt, pre_config, model = _plain_source(plain)
        pre_options: dict[str, Any] = {k: v for k, v in pre_config.items() if k in fields}
    else:
        user = runner.check_train_options(pretrain_options or {}, _PER_RUN, name="pretrain_options",
                                          setter="finetune", kind="pretraining", error=FinetuneError)
        pre_options = {**{k: v for k, v in PRESETS[preset].train.items() if k in fields}, **user}
        given_ckpt = None
    gct_name = gct_model or f"gct_{model}"
    for name in (model, gct_name):
        get_model_entry(name)  # SettingsError naming close matches
    TrainConfig(**{**pre_options, "model": model, "out": None, "resume": None, "overwrite": False}).validate()
    ft_options = finetune_recipe(pre_options, finetune_epochs, lr_factor, finetune_options)
    ft_options.update(model_kwargs=dict(pre_options.get("model_kwargs") or {}))

    with FolderLock(out, "fine-tuning folder"):  # one finetune per folder at a time; created if needed
        say(f"finetune: {model} -> {gct_name}, seeds {seed_list}, {finetune_epochs} fine-tuning epoch(s) at lr "
            f"{ft_options['lr']:g}; output {out}")
        started = time.perf_counter()
        done = []  # whether each run trained in this call

        def ensure(path: Path, name: str, seed: int, options: Mapping[str, Any], what: str) -> None:
            config = TrainConfig(**{**options, "model": name, "seed": seed, "out": str(path)}).validate()
            done.append(_ensure(config, what, say))

        rows = []
        for seed in seed_list:
            if given_ckpt is None:
                source = pretrain_dir(out, seed)
                ensure(source, model, seed, pre_options, "pretraining")
            else:
                source = given_ckpt
            before = _before(out, seed, source, gct_name, {**pre_options, **ft_options}, say)
            init = {**ft_options, "init_from": str(source)}
            runs = {}
            for name in (model, gct_name):
                runs[name] = finetune_dir(out, name, seed)
                ensure(runs[name], name, seed, init, "fine-tuning")
            rows.append(_row(out, seed, source, before, runs[model], runs[gct_name]))
    trained, skipped = sum(done), len(done) - sum(done)

    summary = {c: {"mean": finite_mean([r[c] for r in rows]), "std": finite_std([r[c] for r in rows])}
               for c in CSV_COLUMNS if c != "seed" and all(isinstance(r[c], (int, float)) for r in rows)}
    result = FinetuneResult(out=out, model=model, gct_model=gct_name, seeds=seed_list, rows=rows, summary=summary,
                            trained=trained, skipped=skipped)
    settings = {
        **environment(ft_options.get("threads")), "plain": str(plain) if plain is not None else None, "preset": preset,
        "pretrain_options": pre_options, "finetune_epochs": finetune_epochs, "lr_factor": lr_factor,
        "finetune_options": ft_options, "wall_seconds_this_call": time.perf_counter() - started,
    }
    result.paths = write_outputs(result, settings)
    say(f"finetune: done ({trained} trained, {skipped} skipped); table: {result.paths['md']}")
    return result


def _row(out: Path, seed: int, source: Path, before: Mapping[str, Any], plain_dir: Path, gct_dir: Path) -> dict[str, Any]:
    """One seed's numbers, read back from the runs' summary.json / metrics.csv."""
    p_sum, g_sum = read_json(plain_dir / "summary.json") or {}, read_json(gct_dir / "summary.json") or {}
    b_plain, b_gct = float(before["plain"]["top1"]), float(before["gct"]["top1"])

    def rel(path: Path) -> str:
        try:
            return path.relative_to(out).as_posix()
        except ValueError:
            return str(path)

    return {
        "seed": seed,
        "before_plain_top1": b_plain,
        "before_gct_top1": b_gct,
        "plain_top1": float(p_sum["final_top1"]),
        "gct_top1": float(g_sum["final_top1"]),
        "delta_top1": float(g_sum["final_top1"]) - float(p_sum["final_top1"]),
        "plain_gain": float(p_sum["final_top1"]) - b_plain,
        "gct_gain": float(g_sum["final_top1"]) - b_gct,
        "plain_top5": float(p_sum["final_top5"]),
        "gct_top5": float(g_sum["final_top5"]),
        "pretrained": rel(source),
        "plain_run": rel(plain_dir),
        "gct_run": rel(gct_dir),
        "plain_curve": [b_plain] + [float(m["val_top1"]) for m in read_metrics(plain_dir)],
        "gct_curve": [b_gct] + [float(m["val_top1"]) for m in read_metrics(gct_dir)],
    }


# --------------------------------------------------------------------------------------------------
# output files
# --------------------------------------------------------------------------------------------------
def plot_finetune_curves(result: FinetuneResult, path: PathLike) -> Path:
    """Validation top-1 against fine-tuning epoch (0 = before), mean +- 1 std over seeds, thin lines per seed."""
    import numpy as np

    from ..analysis.plots import _pyplot, _save, stage_colors

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    names = {"plain_curve": result.model, "gct_curve": result.gct_model}
    colors = stage_colors(list(names.values()))
    for key, name in names.items():
        curves = [r[key] for r in result.rows]
        n = max(len(c) for c in curves)
        grid = np.full((len(curves), n), np.nan)
        for i, c in enumerate(curves):
            grid[i, : len(c)] = c
            ax.plot(range(len(c)), c, color=colors[name], alpha=0.25, linewidth=0.8)
        mean = np.nanmean(grid, axis=0)
        std = np.nanstd(grid, axis=0, ddof=1) if len(curves) > 1 else np.zeros(n)
        epochs = np.arange(n)
        ax.plot(epochs, mean, marker="o", markersize=3, color=colors[name], label=f"{name} (n={len(curves)})")
        ax.fill_between(epochs, mean - std, mean + std, color=colors[name], alpha=0.2, linewidth=0)
    ax.set_xlabel("fine-tuning epoch (0 = pretrained network, GCT inserted as the identity)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title("Fine-tuning with and without GCT (mean +- 1 std over seeds)", fontsize=10)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _table(result: FinetuneResult) -> list[str]:
    lines = ["| seed | before: plain | before: GCT | after: plain | after: GCT | GCT - plain | gain plain | gain GCT |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    cols = ("before_plain_top1", "before_gct_top1", "plain_top1", "gct_top1", "delta_top1", "plain_gain", "gct_gain")
    signed = {"delta_top1", "plain_gain", "gct_gain"}
    for r in result.rows:
        lines.append(f"| {r['seed']} | " + " | ".join(f"{r[c]:+.2f}" if c in signed else f"{r[c]:.2f}" for c in cols) + " |")
    s = result.summary
    lines.append("| **mean +- std** | " + " | ".join(plus_minus(s[c]["mean"], s[c]["std"], sign=c in signed) for c in cols) + " |")
    if len(result.rows) > 1:  # the paired differences' 95% t-intervals (contain 0: not distinguishable from seed noise)
        cis = [format_interval(t_interval95([r[c] for r in result.rows])) if c in signed else "" for c in cols]
        lines.append("| **95% CI** | " + " | ".join(cis) + " |")
    return lines


def write_outputs(result: FinetuneResult, settings: Mapping[str, Any]) -> dict[str, Path]:
    """``finetune.csv``, ``finetune.md``, ``finetune.json`` and ``finetune_top1_vs_epoch.png`` in ``result.out``."""
    out = result.out
    paths = {"csv": write_csv(out / "finetune.csv", CSV_COLUMNS, result.rows)}
    paths["png"] = plot_finetune_curves(result, out / "finetune_top1_vs_epoch.png")
    ft = settings["finetune_options"]
    d = result.summary.get("delta_top1", {})
    verdict = (f"GCT - plain after fine-tuning: {plus_minus(d.get('mean'), d.get('std'), sign=True)} points top-1 over "
               f"{len(result.rows)} seed(s)")
    md = [
        "# Fine-tuning a trained plain network with and without GCT", "",
        f"- plain network: {settings['plain'] or f'{result.model}, trained here per seed (pretrain/seed<k>)'}; "
        f"GCT variant: {result.gct_model} (GCT inserted as the identity, same weights)",
        f"- seeds: {', '.join(map(str, result.seeds))}",
        f"- pretraining options: {describe_options(settings['pretrain_options'])}",
        f"- fine-tuning: {settings['finetune_epochs']} epoch(s), lr {ft['lr']:g} ({settings['lr_factor']:g} x the "
        f"pretraining lr), schedule {ft['sched']}, warm-up {ft['warmup_epochs']:g} epochs; same recipe and seed "
        "for both variants",
        f"- written {settings['date']} with torch {settings['torch']} on {settings['cpus']} CPUs, "
        f"{settings['cuda'] or 'no GPU'}; this call trained {result.trained} run(s), skipped {result.skipped}, took "
        f"{format_seconds(float(settings['wall_seconds_this_call']))}",
        "", "## Validation top-1 (%)", "", *_table(result), "",
        "*before*: the pretrained weights, evaluated as the plain network and with GCT inserted (equal by "
        "construction: checked exactly); *after*: the last fine-tuning epoch; *gain*: after - before; +- is the "
        "sample standard deviation over seeds.", "", verdict + ".", "",
        "![validation top-1 per fine-tuning epoch](finetune_top1_vs_epoch.png)", "",
        "Machine-readable: `finetune.csv` (per seed), `finetune.json` (settings, per-seed curves, mean/std).", "",
    ]
    paths["md"] = out / "finetune.md"
    atomic_write_text(paths["md"], "\n".join(md))
    paths["json"] = out / "finetune.json"
    data = {"settings": dict(settings), "model": result.model, "gct_model": result.gct_model, "seeds": result.seeds,
            "rows": result.rows, "summary": result.summary}
    atomic_write_text(paths["json"], json.dumps(json_safe(data), indent=2) + "\n")
    return paths
