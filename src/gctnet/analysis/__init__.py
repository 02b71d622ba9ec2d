"""What GCT learned: per-layer alpha/gamma/beta statistics, gate statistics on real data, figures.

>>> from gctnet.analysis import analyze
>>> result = analyze("runs/demo/runs/gct_resnet20/seed0", out="analysis")   # or a model / a list of runs
>>> print(result.conclusion)

* :func:`analyze` - loads models (run folders, checkpoints, the official checkpoint, or modules), computes
  everything and optionally writes the files;
* :func:`gct_statistics`, :func:`gate_statistics` - the numbers, for models you hold;
* :func:`write_analysis` - ``analysis.json``, ``analysis.md`` and the figures.
"""

from .core import Analysis, analyze, load_source
from .report import FIGURES, conclusion, write_analysis
from .stats import (
    GateStats,
    LayerStats,
    Summary,
    collect_batches,
    depth_trend,
    find_gct_modules,
    gate_statistics,
    gct_statistics,
    stage_and_block,
    stage_summary,
)

__all__ = [
    "analyze",
    "gct_statistics",
    "gate_statistics",
    "write_analysis",
    "Analysis",
    "LayerStats",
    "GateStats",
    "Summary",
    "collect_batches",
    "conclusion",
    "depth_trend",
    "find_gct_modules",
    "load_source",
    "stage_and_block",
    "stage_summary",
    "FIGURES",
]
