"""``evaluate``: loss, top-1, top-5 and per-class accuracy of a model on a dataset (DDP-aware)."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data import make_batches
from ..errors import RunError, SettingsError
from .distributed import DistContext, shard

__all__ = ["evaluate", "format_eval_table"]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: "torch.device | str" = "cpu",
    batch_size: int = 256,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    classes: Optional[Sequence[str]] = None,
    num_classes: Optional[int] = None,
    ctx: Optional[DistContext] = None,
    workers: int = 0,
) -> Dict[str, Any]:
    """Evaluate ``model`` (put in eval mode) on every sample of ``dataset``.

    Returns ``{"loss", "top1", "top5", "n", "skipped", "per_class": [{"class", "correct", "total",
    "acc"}]}`` with accuracies in percent (top-5 is top-k with k = min(5, classes)).  Under DDP pass
    ``ctx``: each rank evaluates a disjoint shard (no padding, so no sample counts twice) and the sums
    are all-reduced, so every rank returns the numbers of the whole dataset.
    """
    ctx = ctx or DistContext(device=torch.device(device))
    device = torch.device(device)
    n_cls = num_classes or (len(classes) if classes else None)
    indices = shard(torch.arange(len(dataset)), ctx.rank, ctx.world_size)
    batches = make_batches(dataset, indices, batch_size, workers=workers, pin_memory=device.type == "cuda")
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct1, correctk, n
    per_correct: Optional[torch.Tensor] = None
    per_total: Optional[torch.Tensor] = None
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(x)
        logits = logits.float()
        if n_cls is None:
            n_cls = logits.shape[1]
        if per_correct is None:
            per_correct = torch.zeros(max(n_cls, logits.shape[1]), dtype=torch.float64, device=device)
            per_total = torch.zeros_like(per_correct)
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hit1 = topk[:, 0] == y
        hitk = (topk == y[:, None]).any(dim=1)
        sums += torch.stack([
            F.cross_entropy(logits, y, reduction="sum").double(),
            hit1.sum().double(), hitk.sum().double(), torch.tensor(float(len(y)), device=device, dtype=torch.float64),
        ])
        per_total.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        per_correct.index_add_(0, y, hit1.double())
    n_cls = n_cls or 0
    if per_correct is None:  # this rank had no samples: still join the reductions
        per_correct = torch.zeros(n_cls, dtype=torch.float64, device=device)
        per_total = torch.zeros_like(per_correct)
    assert per_total is not None
    if ctx.distributed:  # per-class vectors have the same length on every rank (num_classes)
        ctx.all_reduce(sums)
        ctx.all_reduce(per_correct)
        ctx.all_reduce(per_total)
    loss_sum, c1, ck, n = sums.tolist()
    names = list(classes) if classes else [str(i) for i in range(len(per_total))]
    per_class: List[Dict[str, Any]] = []
    for i, (c, t) in enumerate(zip(per_correct.tolist(), per_total.tolist())):
        per_class.append({"class": names[i] if i < len(names) else str(i), "correct": int(c), "total": int(t),
                          "acc": 100.0 * c / t if t else float("nan")})
    skipped = int(getattr(batches, "skipped", 0))
    if n == 0:
        raise RunError("evaluation dataset is empty (or every image was skipped)")
    return {"loss": loss_sum / n, "top1": 100.0 * c1 / n, "top5": 100.0 * ck / n, "n": int(n),
            "skipped": skipped, "per_class": per_class}


def format_eval_table(result: Dict[str, Any]) -> str:
    """A plain-text report: overall numbers then one row per class."""
    width = max([5] + [len(r["class"]) for r in result["per_class"]])
    lines = [
        f"samples {result['n']}  loss {result['loss']:.4f}  top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%"
        + (f"  (skipped {result['skipped']} unreadable images)" if result.get("skipped") else ""),
        "",
        f"{'class':<{width}}  {'correct':>7}  {'total':>6}  {'acc %':>6}",
    ]
    for r in result["per_class"]:
        if r["total"] == 0:
            continue
        lines.append(f"{r['class']:<{width}}  {r['correct']:>7}  {r['total']:>6}  {r['acc']:>6.2f}")
    return "\n".join(lines)


def evaluate_path(
    path: str,
    *,
    which: str = "last",
    data: Optional[str] = None,
    data_dir: Optional[str] = None,
    split: str = "val",
    subset: Optional[int] = None,
    image_size: Optional[int] = None,
    skip_bad_images: bool = False,
    num_classes: Optional[int] = None,
    batch_size: Optional[int] = None,
    workers: int = 0,
    device: str = "auto",
    amp: Optional[str] = None,
) -> Dict[str, Any]:
    """Load a model from ``path`` (see :func:`gctnet.train.checkpoint.load_model_any`) and evaluate it.

    Settings not given come from the run's saved config when there is one: the data (and its
    ``val_subset``, so the numbers match the run's metrics), image size, eval batch, AMP and memory
    format.  Returns :func:`evaluate`'s dict plus ``model``, ``data``, ``split``, ``checkpoint``, ``epoch``.
    """
    from ..data import dataset_info, load_dataset, parse_data_spec
    from .checkpoint import load_model_any
    from .distributed import resolve_device
    from .engine import resolve_amp

    model, meta = load_model_any(path, which=which, num_classes=num_classes)
    if data is None and meta["kind"] == "official":
        raise SettingsError(f"{path} is not a gctnet run (an official checkpoint) and has no dataset of its own: "
                            "pass --data imagefolder:PATH")
    cfg: Dict[str, Any] = dict(meta.get("config") or {})
    if data is None:
        data = cfg.get("data") or "fashion_mnist"
    own_data = bool(cfg) and parse_data_spec(data) == parse_data_spec(cfg.get("data", ""))
    if own_data:
        data_dir = data_dir or cfg.get("data_dir")
        image_size = image_size or cfg.get("image_size")
        if subset is None and split == "val":
            subset = cfg.get("val_subset")
    dev = resolve_device(device)
    amp_dtype, _ = resolve_amp(amp or cfg.get("amp") or "none", dev)
    info = dataset_info(data, data_dir, image_size=image_size)
    dataset = load_dataset(data, split, data_dir, augment=False, subset=subset, subset_seed=0,
                           skip_bad_images=skip_bad_images, image_size=image_size)
    out_features = (meta.get("model_kwargs") or {}).get("num_classes") or num_classes
    if out_features is not None and info.num_classes > out_features:
        raise SettingsError(f"the data has {info.num_classes} classes but the model predicts {out_features}")
    channels_last = bool(cfg.get("channels_last", False))
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    result = evaluate(model, dataset, device=dev, batch_size=batch_size or cfg.get("eval_batch_size") or 256,
                      amp_dtype=amp_dtype, channels_last=channels_last, classes=info.classes,
                      num_classes=max(info.num_classes, out_features or 0), workers=workers)
    result.update(model=meta.get("model_name"), data=str(data), split=split, checkpoint=str(path),
                  epoch=meta.get("epoch"))
    return result
