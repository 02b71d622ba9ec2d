"""Files of an analysis: ``analysis.json`` (for tools), ``analysis.md`` (for people) and the figures."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..fileio import atomic_write_text
from .plots import plot_gamma_boxplot, plot_gamma_positive, plot_gate_mean
from .stats import stage_summary

if TYPE_CHECKING:
    from .core import Analysis

__all__ = ["write_analysis", "conclusion", "FIGURES"]

PathLike = Union[str, "os.PathLike[str]"]

# file names of the figures (the compare report links them)
FIGURES = {
    "gamma_boxplot": "gamma_per_layer.png",
    "gamma_positive": "gamma_positive_share.png",
    "gate_mean": "gate_per_layer.png",
}

PAPER = "the paper's finding (gamma < 0 in shallow layers: channels cooperate; gamma > 0 in deep layers: channels compete)"


def conclusion(trend: dict[str, Any]) -> str:
    """One sentence on the gamma-vs-depth trend computed by :func:`gctnet.analysis.stats.depth_trend`.

    It states the strength of the evidence, not the sign of a pooled mean: the difference (mean gamma of
    the last third of the layers) - (mean gamma of the first third) with its 95% interval (across seeds
    when several are pooled, across layers for one model).  Only an interval above 0 is called
    consistent with the paper; one containing 0 is "not distinguishable from 0".
    """
    verdict = trend.get("verdict")
    n = trend.get("layers", 0)
    if verdict == "too_few_layers":
        return f"Only {n} GCT layer(s): too few to compare shallow and deep layers."
    if verdict == "untrained":
        return "Every gamma is exactly 0 (the initial value): these GCT layers have not been trained."
    s, d = trend["shallow_mean_gamma"], trend["deep_mean_gamma"]
    (s0, s1), (d0, d1) = trend["shallow_layers"], trend["deep_layers"]
    head = (
        f"Mean gamma is {s:+.3g} in the first third of the {n} GCT layers ({s0}-{s1}) and {d:+.3g} in the "
        f"last third ({d0}-{d1}): "
    )
    if verdict == "negligible":
        return head + ("gamma has barely moved from its initial 0 (both means below 0.001 in magnitude): too "
                       "little training to compare with the paper's finding.")
    diff, ci = trend.get("difference"), trend.get("difference_ci95")
    k, basis = trend.get("difference_n", 0), trend.get("difference_basis", "seeds")
    unit = f"{k} seeds" if basis == "seeds" else f"across {k} layers of one model"
    if diff is None or ci is None:
        return head + (f"last minus first third is {diff:+.3g} with no interval ({unit}): not a test, so "
                       f"neither consistent with nor against {PAPER}.")
    strength = f"difference last - first third {diff:+.3g}, 95% CI [{ci[0]:+.3g}, {ci[1]:+.3g}], {unit}"
    if ci[0] > 0:
        signs = ("with the paper's signs" if s < 0 < d else
                 "gamma grows with depth, though the signs of the two means differ from the paper's")
        text = f"consistent with {PAPER} ({strength}; {signs})."
    elif ci[1] < 0:
        text = f"gamma falls with depth, opposite to {PAPER} ({strength})."
    else:
        text = (f"the difference is not distinguishable from 0 ({strength}): these runs neither support nor "
                f"contradict {PAPER}.")
    per_model = trend.get("per_model") or []
    if len(per_model) > 1:
        up = sum(1 for m in per_model if m.get("difference", m["deep_mean_gamma"] - m["shallow_mean_gamma"]) > 0)
        text += f" Gamma grows with depth in {up} of the {len(per_model)} seeds."
    return head + text


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _f(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:+.{digits}f}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _markdown(analysis: "Analysis", figures: dict[str, str]) -> str:
    lines = [
        "# GCT analysis",
        "",
        f"- source: `{analysis.source}`",
        f"- GCT layers: {len(analysis.layers)}, channels: {sum(l.channels for l in analysis.layers)}"
        + (f" (pooled over {analysis.models} models)" if analysis.models > 1 else ""),
        f"- gate statistics: {analysis.gate_note}",
        "",
        f"**Conclusion.** {analysis.conclusion}",
        "",
    ]
    captions = {
        "gamma_boxplot": "gamma per layer along depth (boxes coloured by stage)",
        "gamma_positive": "share of channels with gamma > 0 per layer",
        "gate_mean": "mean gate (+- std) per layer and share of amplified channel values",
    }
    for key, name in figures.items():
        lines += [f"![{captions[key]}]({name})", ""]
    lines += [
        "## Per stage",
        "",
        "| stage | layers | channels | mean gamma | gamma > 0 |",
        "|---|---|---:|---:|---:|",
    ]
    for st in stage_summary(analysis.layers):
        first, last = st["layers"]
        lines.append(
            f"| {st['stage']} | {first}-{last} | {st['channels']} | {_f(st['gamma_mean'])} | {_pct(st['gamma_positive'])} |"
        )
    lines.append("")
    gates = {g.index: g for g in analysis.gates}
    lines += [
        "## Per layer",
        "",
        "gamma: mean, median [q1, q3], share > 0; alpha, beta: mean; gate: mean +- std, "
        "share amplified (> 1) / suppressed (< 1).",
        "",
        "| # | layer | stage | C | gamma mean | gamma median [q1, q3] | gamma > 0 | alpha | beta | gate | amp / sup |",
        "|---:|---|---|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for l in analysis.layers:
        g = gates.get(l.index)
        gate = f"{g.mean:.3f} +- {g.std:.3f}" if g else "-"
        amp = f"{_pct(g.amplified)} / {_pct(g.suppressed)}" if g else "-"
        lines.append(
            f"| {l.index + 1} | `{l.name}` | {l.stage} | {l.channels} | {_f(l.gamma.mean)} | "
            f"{_f(l.gamma.median)} [{_f(l.gamma.q1)}, {_f(l.gamma.q3)}] | {_pct(l.gamma_positive)} | "
            f"{_f(l.alpha.mean)} | {_f(l.beta.mean)} | {gate} | {amp} |"
        )
    lines += ["", "Machine-readable: `analysis.json`.", ""]
    return "\n".join(lines)


def write_analysis(analysis: "Analysis", out_dir: PathLike, *, plots: bool = True) -> dict[str, Path]:
    """Write ``analysis.json``, ``analysis.md`` and (``plots=True``) the PNG figures into ``out_dir``.

    Returns the written paths by key (``json``, ``markdown`` and the keys of :data:`FIGURES`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    figures: dict[str, str] = {}
    if plots:
        subject = analysis.subject
        paths["gamma_boxplot"] = plot_gamma_boxplot(analysis.layers, out / FIGURES["gamma_boxplot"], subject=subject)
        paths["gamma_positive"] = plot_gamma_positive(analysis.layers, out / FIGURES["gamma_positive"],
                                                      subject=subject)
        if analysis.gates:
            paths["gate_mean"] = plot_gate_mean(analysis.gates, out / FIGURES["gate_mean"], subject=subject)
        figures = {k: FIGURES[k] for k in paths}
    data = analysis.to_dict()
    data["figures"] = figures
    paths["json"] = out / "analysis.json"
    atomic_write_text(paths["json"], json.dumps(_clean(data), indent=2) + "\n")
    paths["markdown"] = out / "analysis.md"
    atomic_write_text(paths["markdown"], _markdown(analysis, figures))
    return paths
