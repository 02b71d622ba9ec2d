"""Figures of the analysis (matplotlib, Agg backend: no display needed).

* :func:`plot_gamma_boxplot` - gamma distribution per GCT layer along depth, coloured by stage (the
  paper's figure);
* :func:`plot_gamma_positive` - share of channels with gamma > 0 per layer;
* :func:`plot_gate_mean` - mean gate per layer with its spread and the share of amplified channels;
* :func:`plot_accuracy_curves`, :func:`plot_final_per_seed` - the figures of ``gctnet compare``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from ..fileio import atomic_write
from .stats import GateStats, LayerStats

__all__ = [
    "plot_gamma_boxplot",
    "plot_gamma_positive",
    "plot_gate_mean",
    "plot_accuracy_curves",
    "plot_final_per_seed",
    "plot_cost_vs_accuracy",
    "stage_colors",
    "model_colors",
    "gate_ylim",
]

PathLike = Union[str, Path]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)  # no-op when a non-interactive backend is already active
    import matplotlib.pyplot as plt

    return plt


def _stage_rank(stage: str) -> int:
    """Fixed palette slot of a stage: ``stem`` 0, ``layerN``/``stageN``/... N, ``head`` 9; so a stage has
    the same colour in every model's figures, whether or not the model has a stem GCT."""
    if stage == "stem":
        return 0
    if stage == "head":
        return 9
    digits = re.search(r"(\d+)$", stage)
    return int(digits.group(1)) % 10 if digits else -1


def stage_colors(stages: Sequence[str]) -> dict[str, Any]:
    """One colour per stage from one fixed map for every model (tab10 slot by stage number, see
    :func:`_stage_rank`); names without a number, or whose slot is taken, get the free slots in order of
    first appearance (two names never share a colour while slots are left)."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    unique = list(dict.fromkeys(stages))
    slots: dict[str, int] = {}
    for s in unique:
        r = _stage_rank(s)
        if r >= 0 and r not in slots.values():
            slots[s] = r
    for s in unique:
        if s not in slots:
            free = [i for i in range(10) if i not in slots.values()]
            slots[s] = free[0] if free else len(slots) % 10
    return {s: cmap(slots[s]) for s in unique}


def model_colors(models: Sequence[str]) -> dict[str, Any]:
    """One colour per model, in the given order (tab10, then tab20)."""
    plt = _pyplot()
    unique = list(dict.fromkeys(models))
    cmap = plt.get_cmap("tab10" if len(unique) <= 10 else "tab20")
    return {s: cmap(i % cmap.N) for i, s in enumerate(unique)}


def gate_ylim(gates: Sequence[GateStats]) -> tuple[float, float]:
    """y-limits of the gate plot that fit its data (mean +- std of every layer and the neutral 1), padded
    by 8% of the range, within the gate's range (0, 2)."""
    lows = [g.mean - g.std for g in gates] + [1.0]
    highs = [g.mean + g.std for g in gates] + [1.0]
    lo, hi = min(lows), max(highs)
    pad = max(0.08 * (hi - lo), 1e-3)
    return max(0.0, lo - pad), min(2.0, hi + pad)


def _figure(n_layers: int, height: float = 3.8) -> tuple[Any, Any]:
    plt = _pyplot()
    width = min(max(6.0, 0.22 * n_layers + 2.5), 24.0)
    return plt.subplots(figsize=(width, height), dpi=110)


def _save(fig: Any, path: PathLike) -> Path:
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda fh: fig.savefig(fh, format=out.suffix.lstrip(".") or "png"))
    _pyplot().close(fig)
    return out


def _finish(fig: Any, ax: Any, layers: Sequence[Any], colors: dict[str, Any], path: PathLike) -> Path:
    from matplotlib.patches import Patch

    n = len(layers)
    step = max(1, n // 25)
    ax.set_xticks(range(1, n + 1, step))
    ax.set_xlim(0.3, n + 0.7)
    ax.set_xlabel("GCT layer (network order, 1 = first)")
    handles = [Patch(facecolor=c, edgecolor="black", linewidth=0.5, label=s) for s, c in colors.items()]
    ax.legend(handles=handles, title="stage", fontsize=8, title_fontsize=8, loc="best", framealpha=0.8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _set_title(target: Any, text: str, fontsize: float = 10, suptitle: bool = False) -> None:
    """Title wrapped to the figure's width (a comparison's title names every model's seeds)."""
    import textwrap

    fig = target if suptitle else target.figure
    inches = fig.get_figwidth() * (0.95 if suptitle else target.get_position().width)
    width = max(40, int(inches * 72 / (0.6 * fontsize)))  # ~0.6 em per character of DejaVu Sans
    wrapped = textwrap.fill(text, width)
    if suptitle:
        target.suptitle(wrapped, fontsize=fontsize)
    else:
        target.set_title(wrapped, fontsize=fontsize)


def _titled(title: str, default: str, subject: str) -> str:
    return title or (f"{subject}: {default}" if subject else default)


def plot_gamma_boxplot(layers: Sequence[LayerStats], path: PathLike, *, title: str = "", subject: str = "") -> Path:
    """Box plot of gamma per GCT layer along depth, boxes coloured by stage; a line marks gamma = 0."""
    colors = stage_colors([l.stage for l in layers])
    fig, ax = _figure(len(layers))
    data = [l.values["gamma"].reshape(-1).numpy() for l in layers]
    boxes = ax.boxplot(
        data,
        positions=range(1, len(layers) + 1),
        widths=0.6,
        patch_artist=True,
        showfliers=True,
        flierprops={"markersize": 1.5, "alpha": 0.4},
        medianprops={"color": "black", "linewidth": 1},
    )
    for patch, layer in zip(boxes["boxes"], layers):
        patch.set_facecolor(colors[layer.stage])
        patch.set_linewidth(0.6)
    ax.axhline(0.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylabel("gamma")
    _set_title(ax, _titled(title, "GCT gamma per layer (< 0: channels cooperate, > 0: channels compete)", subject))
    return _finish(fig, ax, layers, colors, path)


def plot_gamma_positive(layers: Sequence[LayerStats], path: PathLike, *, title: str = "", subject: str = "") -> Path:
    """Bar chart of the share of channels with gamma > 0 per layer, coloured by stage."""
    colors = stage_colors([l.stage for l in layers])
    fig, ax = _figure(len(layers))
    ax.bar(
        range(1, len(layers) + 1),
        [l.gamma_positive for l in layers],
        color=[colors[l.stage] for l in layers],
        edgecolor="black",
        linewidth=0.4,
    )
    ax.axhline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of channels with gamma > 0")
    _set_title(ax, _titled(title, "share of channels with gamma > 0 per GCT layer", subject))
    return _finish(fig, ax, layers, colors, path)


def plot_gate_mean(gates: Sequence[GateStats], path: PathLike, *, title: str = "", subject: str = "") -> Path:
    """Mean gate per layer with +-1 std error bars (left axis) and the share of amplified (gate > 1)
    channel values as a line (right axis); the neutral gate 1 is marked."""
    colors = stage_colors([g.stage for g in gates])
    fig, ax = _figure(len(gates))
    xs = list(range(1, len(gates) + 1))
    for x, g in zip(xs, gates):
        ax.errorbar(x, g.mean, yerr=g.std, fmt="o", color=colors[g.stage], markersize=4, capsize=2, linewidth=1)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylim(*gate_ylim(gates))
    ax.set_ylabel("gate 1 + tanh(z)  (mean +- std)")
    ax2 = ax.twinx()
    ax2.plot(xs, [g.amplified for g in gates], color="gray", linewidth=1, marker=".", label="share amplified (gate > 1)")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("share amplified (gate > 1)", color="gray")
    ax2.legend(loc="lower right", fontsize=8, framealpha=0.8)
    _set_title(ax, _titled(title, "GCT gate per layer on real data", subject))
    return _finish(fig, ax, gates, colors, path)


# --------------------------------------------------------------------------------------------------
# comparison figures (used by gctnet.compare)
# --------------------------------------------------------------------------------------------------
#: above this many models the accuracy curves go into one small panel per model (17 lines in one panel
#: cannot be told apart)
CURVES_IN_ONE_PANEL = 6


def _mean_std_per_epoch(seeds: list[list[float]]) -> tuple[Any, Any, Any]:
    """Epochs, mean and std over seeds (seeds with fewer epochs count for the epochs they have)."""
    import numpy as np

    n = max((len(c) for c in seeds), default=0)
    grid = np.full((len(seeds), n), np.nan)
    for i, c in enumerate(seeds):
        grid[i, : len(c)] = [np.nan if v is None else v for v in c]
    columns = [col[~np.isnan(col)] for col in grid.T]
    mean = np.array([col.mean() if col.size else np.nan for col in columns])
    std = np.array([col.std(ddof=1) if col.size > 1 else 0.0 for col in columns])
    return np.arange(1, n + 1), mean, std


def plot_accuracy_curves(
    curves: dict[str, list[list[float]]], path: PathLike, *, ylabel: str = "validation top-1 (%)", title: str = "",
    reference: str = "",
) -> Path:
    """Mean (line) and +-1 std band over seeds of a per-epoch metric, one colour per model.

    ``curves`` maps a model name to its seeds' per-epoch values; seeds with fewer epochs are averaged
    over the epochs they have. Up to :data:`CURVES_IN_ONE_PANEL` models share one panel; a larger field
    gets one small panel per model, each with the ``reference`` model (the plain one) in grey behind it.
    """
    plt = _pyplot()
    colors = model_colors(list(curves))
    drawn = {m: _mean_std_per_epoch(seeds) for m, seeds in curves.items() if any(seeds)}
    longest = max((len(e) for e, _, _ in drawn.values()), default=0)

    def draw(ax: Any, model: str, color: Any, **kw: Any) -> None:
        epochs, mean, std = drawn[model]
        ax.plot(epochs, mean, marker="o", markersize=3, color=color, label=f"{model} (n={len(curves[model])})", **kw)
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)

    def finish(ax: Any) -> None:
        ax.grid(alpha=0.3)
        if 0 < longest <= 20:
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))

    text = title or "Validation accuracy per epoch (mean +- 1 std over seeds)"
    if len(drawn) <= CURVES_IN_ONE_PANEL:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for model in drawn:
            draw(ax, model, colors[model])
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        _set_title(ax, text)
        finish(ax)
        ax.legend(fontsize=8)
        return _save(fig, path)
    panels = [m for m in drawn if m != reference]
    ncols = 4
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols + 0.6, 2.1 * nrows + 0.9), dpi=110, sharex=True,
                             sharey=True, squeeze=False)
    for ax, model in zip(axes.flat, panels):
        if reference in drawn:
            draw(ax, reference, "0.55", linewidth=1)
        draw(ax, model, "tab:blue")  # one model per panel: one strong colour against the grey reference
        ax.set_title(f"{model} (n={len(curves[model])})", fontsize=8)
        ax.tick_params(labelsize=7)
        finish(ax)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for col in range(ncols):  # the lowest visible panel of each column carries the epoch axis
        visible = [ax for ax in axes[:, col] if ax.get_visible()]
        if visible:
            visible[-1].xaxis.set_tick_params(labelbottom=True)
            visible[-1].set_xlabel("epoch", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    if reference in drawn:
        text += f"; grey: {reference} (n={len(curves[reference])}) in every panel"
    _set_title(fig, text, suptitle=True)
    return _save(fig, path)


def plot_final_per_seed(
    values: dict[str, dict[int, float]], path: PathLike, *, xlabel: str = "final validation top-1 (%)", title: str = ""
) -> Path:
    """Strip plot, one row per model (first on top): one point per seed (labelled with the seed) and a bar
    for the mean; rows keep a field of 17 models readable."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, max(2.6, 0.42 * len(values) + 1.4)), dpi=110)
    colors = model_colors(list(values))
    for y, (model, per_seed) in enumerate(values.items()):
        seeds = sorted(per_seed)
        k = len(seeds)
        offsets = [(i - (k - 1) / 2) * min(0.08, 0.5 / max(k, 1)) for i in range(k)]
        xs = [per_seed[s] for s in seeds]
        ax.scatter(xs, [y + o for o in offsets], color=colors[model], s=28, zorder=3, edgecolor="black",
                   linewidth=0.4)
        for o, x, s in zip(offsets, xs, seeds):
            ax.annotate(str(s), (x, y + o), textcoords="offset points", xytext=(3, 2), fontsize=6, color="gray")
        if xs:
            ax.vlines(sum(xs) / len(xs), y - 0.3, y + 0.3, color="black", linewidth=1.2, zorder=4)
    ax.set_yticks(range(len(values)))
    ax.set_yticklabels(list(values), fontsize=8)
    ax.set_ylim(len(values) - 0.4, -0.6)  # first model on top
    ax.set_ylabel("model")
    ax.set_xlabel(xlabel)
    _set_title(ax, title or "Final accuracy per seed (points, labelled by seed) and mean (bar)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_cost_vs_accuracy(
    points: Sequence[dict[str, Any]],
    front: Sequence[int],
    path: PathLike,
    *,
    xlabel: str = "train step time ratio to the plain model (side by side)",
    ylabel: str = "top-1 difference to the plain model (percentage points)",
    title: str = "",
) -> Path:
    """One point per model: ``cost`` (x, e.g. the side-by-side train-time ratio) against ``gain`` (y, the
    paired difference to the plain model) with its 95% interval ``ci`` as a vertical bar; the points of
    ``front`` (indices, see :func:`gctnet.experiments.cost.pareto_front`) are ringed and joined. Each point
    carries a number (its ``rank``, e.g. in the report's ranking table; else its position) that the legend
    beside the plot names, since model names next to 17 close points overlap."""
    import math

    from matplotlib.lines import Line2D

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 5.0), dpi=110)
    colors = model_colors([p["model"] for p in points])
    on_front = set(front)
    handles = []
    for i, p in enumerate(points):
        x, y = p.get("cost"), p.get("gain")
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            continue
        color, number = colors[p["model"]], p.get("rank", i + 1)
        ci = p.get("ci")
        if ci:
            ax.errorbar(x, y, yerr=[[y - ci[0]], [ci[1] - y]], fmt="none", ecolor=color, capsize=3, linewidth=1,
                        alpha=0.8)
        ax.scatter([x], [y], color=color, s=60 if i in on_front else 30, zorder=3, edgecolor="black",
                   linewidth=1.2 if i in on_front else 0.4)
        ax.annotate(str(number), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7,
                    fontweight="bold" if i in on_front else "normal")
        handles.append((number, Line2D([], [], marker="o", linestyle="none", color=color, markeredgecolor="black",
                                       markeredgewidth=1.2 if i in on_front else 0.4, label=f"{number}  {p['model']}")))
    handles = [h for _, h in sorted(handles, key=lambda nh: nh[0])]
    if front:
        ax.plot([points[i]["cost"] for i in front], [points[i]["gain"] for i in front], color="black",
                linewidth=1, linestyle="--", zorder=2)
        handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1,
                              label="Pareto front (ringed):\nno other model is\nboth cheaper and better"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              frameon=False)
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.axvline(1.0, color="gray", linewidth=0.8, linestyle=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _set_title(ax, title or "Accuracy gain against training cost (Pareto front joined)", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)
