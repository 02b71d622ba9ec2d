"""The cost of every model of a comparison, measured side by side in one process at its end.

Per-run wall time and images/s in the training logs measure the load of the machine while each run
trained (other runs, other users), not the cost of the model: under load a plain ResNet-20 once
showed 60 images/s and a GCT one 576.  So the cost columns of a comparison come only from here:

* ``params``, ``attn_params``, ``macs`` (attention counted, :func:`gctnet.bench.model_info`),
  ``saved_bytes_per_image`` (autograd's saved tensors of a train-mode forward);
* train step (forward, loss, backward, SGD step) and inference (no-grad forward) time of one batch,
  every model built in this process and timed with interleaved repetitions (the machinery of
  :func:`gctnet.bench.model.bench_model`: each repetition runs every model once, in turn), so a slow
  spell of the machine hits every model alike; ratios to the reference model are medians of the
  per-repetition ratios with a distribution-free 95% interval (>= 6 repetitions).

The reference is the comparison's plain model; without one, the first model (the table says so).
The result is ``OUT/cost.json``; a later call reuses it when the models, input and settings are the
same (like finished runs), and measures again otherwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from ..fileio import atomic_write_text
from .runner import read_json
from .stats import json_safe

__all__ = ["COST_FILE", "measure_costs", "cost_step", "pareto_front", "cost_ratio"]

COST_FILE = "cost.json"
#: columns whose ratio to the reference the table shows
RATIO_KEYS = ("params", "attn_params", "macs", "train_images_per_s", "infer_images_per_s", "saved_bytes_per_image")


def cost_ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    """``value / reference`` (None when either is missing or the reference is 0)."""
    if value is None or reference is None or not reference:
        return None
    return value / reference


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when the first coordinate (cost) is minimised and the
    second (gain) maximised: no other point is at most as costly and at least as good, and strictly
    better in one.  Points with a NaN/None coordinate are never on the front.  Sorted by cost."""
    ok = [i for i, (c, g) in enumerate(points)
          if c is not None and g is not None and math.isfinite(c) and math.isfinite(g)]
    front = []
    for i in ok:
        ci, gi = points[i]
        dominated = any(
            points[j][0] <= ci and points[j][1] >= gi and (points[j][0] < ci or points[j][1] > gi)
            for j in ok if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def measure_costs(
    models: Sequence[str],
    reference: str,
    *,
    input_size: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    model_kwargs: Optional[Mapping[str, Any]] = None,
    batch_size: int = 32,
    repeats: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    seed: int = 0,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Measure every model side by side (see the module docstring); ``reference`` is timed first and is
    the denominator of every ratio.  Returns the JSON-ready result (rows in the order of ``models``)."""
    from ..bench.accounting import model_info
    from ..bench.model import _Runner
    from ..bench.report import interleaved_times, paired_ratio
    from ..models import create_model

    if reference not in models:
        raise ValueError(f"reference {reference!r} is not among the models {list(models)}")
    size = tuple(int(v) for v in input_size)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, *size), generator=gen).to(dev)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(dev)
    order = [reference] + [m for m in models if m != reference]
    runners, infos = {}, {}
    for name in order:
        say(f"cost: building {name}")
        torch.manual_seed(seed)
        model = create_model(name, num_classes=num_classes, in_chans=size[0], **dict(model_kwargs or {})).to(dev)
        infos[name] = model_info(model, size, batch_size=min(batch_size, 8))
        runners[name] = _Runner(model, x, y, dev, amp=False, compile=False)
    say(f"cost: timing {len(order)} models side by side ({repeats} interleaved repetitions, batch {batch_size})")
    t_train = interleaved_times({k: r.train_step for k, r in runners.items()}, repeats=repeats, warmup=warmup, device=dev)
    t_infer = interleaved_times({k: r.infer for k, r in runners.items()}, repeats=repeats, warmup=warmup, device=dev)
    ref = infos[reference]
    rows = []
    for name in models:
        mi = infos[name]
        tr, ti = paired_ratio(t_train[name], t_train[reference]), paired_ratio(t_infer[name], t_infer[reference])
        row: dict[str, Any] = {
            "model": name,
            "params": mi.params,
            "attn_params": mi.attn_params,
            "macs": mi.macs,
            "attn_macs": mi.attn_macs,
            "saved_bytes_per_image": mi.saved_bytes_per_image,
            "train_ms": t_train[name].median * 1e3,
            "infer_ms": t_infer[name].median * 1e3,
            "train_images_per_s": batch_size / t_train[name].median,
            "infer_images_per_s": batch_size / t_infer[name].median,
            # paired (per repetition) time ratios to the reference, with 95% intervals (None below 6 repeats)
            "train_time_ratio": tr.value,
            "train_time_ratio_ci95": tr.interval,
            "infer_time_ratio": ti.value,
            "infer_time_ratio_ci95": ti.interval,
        }
        ref_row = {"params": ref.params, "attn_params": ref.attn_params, "macs": ref.macs,
                   "saved_bytes_per_image": ref.saved_bytes_per_image}
        for k in ("params", "attn_params", "macs", "saved_bytes_per_image"):
            row[f"{k}_ratio"] = cost_ratio(row[k], ref_row[k])
        rows.append(row)
    return {
        "reference": reference,
        "rows": rows,
        "settings": {"input_size": list(size), "batch_size": batch_size, "repeats": repeats, "warmup": warmup,
                     "device": str(dev), "num_classes": num_classes, "torch_threads": torch.get_num_threads()},
    }


def cost_step(
    out: Path,
    models: Sequence[str],
    reference: str,
    options: Mapping[str, Any],
    *,
    repeats: int = 10,
    batch_size: Optional[int] = None,
    say: Callable[[str], None] = lambda _m: None,
) -> Optional[dict[str, Any]]:
    """The comparison's cost step: ``OUT/cost.json`` for ``models`` (reused when present with the same
    key), measured otherwise.  ``options``: the comparison's training options (data, image size, model
    builder arguments, device, batch size: the models are timed at the batch they trained with, unless
    ``batch_size`` says otherwise).  ``repeats=0`` skips the step (returns None)."""
    if repeats <= 0 or not models:
        return None
    if not batch_size:
        import dataclasses

        from ..train import TrainConfig

        default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "batch_size")
        batch_size = int(options.get("batch_size") or default)
    from ..data import dataset_info

    info = dataset_info(options.get("data") or "fashion_mnist", options.get("data_dir"),
                        image_size=options.get("image_size"))
    device = str(options.get("device") or "cpu")
    if device == "auto" or (device.startswith("cuda") and not torch.cuda.is_available()):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    key = {
        "models": list(models),
        "reference": reference,
        "input_size": [info.in_chans, info.image_size, info.image_size],
        "num_classes": info.num_classes,
        "model_kwargs": dict(options.get("model_kwargs") or {}),
        "batch_size": batch_size,
        "repeats": repeats,
        "device": device,
    }
    path = Path(out) / COST_FILE
    cached = read_json(path)
    if cached and cached.get("key") == json_safe(key):
        say(f"cost: {path} is up to date (same models and settings), reused")
        cached["reused"] = True
        return cached
    result = measure_costs(models, reference, input_size=key["input_size"], num_classes=info.num_classes,
                           model_kwargs=key["model_kwargs"], batch_size=batch_size, repeats=repeats,
                           device=device, say=say)
    result["key"] = key
    from .compare import environment

    result["environment"] = environment(options.get("threads"))
    atomic_write_text(path, json.dumps(json_safe(result), indent=2) + "\n")
    say(f"cost: written {path}")
    result = json.loads(json.dumps(json_safe(result)))  # the same form as when read back
    result["reused"] = False
    return result
