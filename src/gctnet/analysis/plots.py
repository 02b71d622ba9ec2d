"""Figures of the analysis (matplotlib, Agg backend: no display needed).

* :func:`plot_gamma_boxplot` - gamma distribution per GCT layer along depth, coloured by stage (the
  paper's figure);
* :func:`plot_gamma_positive` - share of channels with gamma > 0 per layer;
* :func:`plot_gate_mean` - mean gate per layer with its spread and the share of amplified channels;
* :func:`plot_accuracy_curves`, :func:`plot_final_per_seed` - the figures of ``gctnet compare``.
"""

from __future__ import annotations

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
    "stage_colors",
]

PathLike = Union[str, Path]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)  # no-op when a non-interactive backend is already active
    import matplotlib.pyplot as plt

    return plt


def stage_colors(stages: Sequence[str]) -> dict[str, Any]:
    """One colour per stage, in order of first appearance (tab10, then tab20)."""
    plt = _pyplot()
    unique = list(dict.fromkeys(stages))
    cmap = plt.get_cmap("tab10" if len(unique) <= 10 else "tab20")
    return {s: cmap(i % cmap.N) for i, s in enumerate(unique)}


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


def plot_gamma_boxplot(layers: Sequence[LayerStats], path: PathLike, *, title: str = "") -> Path:
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
    ax.set_title(title or "GCT gamma per layer (< 0: channels cooperate, > 0: channels compete)", fontsize=10)
    return _finish(fig, ax, layers, colors, path)


def plot_gamma_positive(layers: Sequence[LayerStats], path: PathLike, *, title: str = "") -> Path:
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
    ax.set_title(title or "Share of channels with gamma > 0 per GCT layer", fontsize=10)
    return _finish(fig, ax, layers, colors, path)


def plot_gate_mean(gates: Sequence[GateStats], path: PathLike, *, title: str = "") -> Path:
    """Mean gate per layer with +-1 std error bars (left axis) and the share of amplified (gate > 1)
    channel values as a line (right axis); the neutral gate 1 is marked."""
    colors = stage_colors([g.stage for g in gates])
    fig, ax = _figure(len(gates))
    xs = list(range(1, len(gates) + 1))
    for x, g in zip(xs, gates):
        ax.errorbar(x, g.mean, yerr=g.std, fmt="o", color=colors[g.stage], markersize=4, capsize=2, linewidth=1)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_ylim(0, 2)
    ax.set_ylabel("gate 1 + tanh(z)  (mean +- std)")
    ax2 = ax.twinx()
    ax2.plot(xs, [g.amplified for g in gates], color="gray", linewidth=1, marker=".", label="share amplified (gate > 1)")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("share amplified (gate > 1)", color="gray")
    ax2.legend(loc="lower right", fontsize=8, framealpha=0.8)
    ax.set_title(title or "GCT gate per layer on real data", fontsize=10)
    return _finish(fig, ax, gates, colors, path)


# --------------------------------------------------------------------------------------------------
# comparison figures (used by gctnet.compare)
# --------------------------------------------------------------------------------------------------
def plot_accuracy_curves(
    curves: dict[str, list[list[float]]], path: PathLike, *, ylabel: str = "validation top-1 (%)", title: str = ""
) -> Path:
    """Mean (line) and +-1 std band over seeds of a per-epoch metric, one colour per model.

    ``curves`` maps a model name to its seeds' per-epoch values; seeds with fewer epochs are averaged
    over the epochs they have.
    """
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colors = stage_colors(list(curves))
    for model, seeds in curves.items():
        n = max((len(c) for c in seeds), default=0)
        if n == 0:
            continue
        grid = np.full((len(seeds), n), np.nan)
        for i, c in enumerate(seeds):
            grid[i, : len(c)] = [np.nan if v is None else v for v in c]
        epochs = np.arange(1, n + 1)
        columns = [col[~np.isnan(col)] for col in grid.T]
        mean = np.array([col.mean() if col.size else np.nan for col in columns])
        std = np.array([col.std(ddof=1) if col.size > 1 else 0.0 for col in columns])
        ax.plot(epochs, mean, marker="o", markersize=3, color=colors[model], label=f"{model} (n={len(seeds)})")
        ax.fill_between(epochs, mean - std, mean + std, color=colors[model], alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Validation accuracy per epoch (mean +- 1 std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if curves and max(len(c) for seeds in curves.values() for c in seeds) <= 20:
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    return _save(fig, path)


def plot_final_per_seed(
    values: dict[str, dict[int, float]], path: PathLike, *, ylabel: str = "final validation top-1 (%)", title: str = ""
) -> Path:
    """Strip plot: one point per seed (labelled with the seed) and a bar for the mean, per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(values) + 2), 4.2), dpi=110)
    colors = stage_colors(list(values))
    for x, (model, per_seed) in enumerate(values.items()):
        seeds = sorted(per_seed)
        k = len(seeds)
        offsets = [(i - (k - 1) / 2) * min(0.08, 0.5 / max(k, 1)) for i in range(k)]
        ys = [per_seed[s] for s in seeds]
        ax.scatter([x + o for o in offsets], ys, color=colors[model], s=28, zorder=3, edgecolor="black", linewidth=0.4)
        for o, y, s in zip(offsets, ys, seeds):
            ax.annotate(str(s), (x + o, y), textcoords="offset points", xytext=(4, 0), fontsize=6, color="gray")
        if ys:
            mean = sum(ys) / len(ys)
            ax.hlines(mean, x - 0.3, x + 0.3, color="black", linewidth=1.2, zorder=4)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels(list(values), rotation=15, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(values) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "Final accuracy per seed (points, labelled by seed) and mean (bar)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
