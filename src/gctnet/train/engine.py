"""The training loop behind ``gctnet train`` and :func:`gctnet.train.run`.

One call of :func:`run` is one self-contained run: it seeds everything from ``config.seed``, restores
the global torch settings it touched (determinism flags, RNG states, signal handlers) when it returns,
and joins/leaves the torchrun process group itself, so callers such as ``gctnet compare`` can call it
many times in one process.

Reproducibility: the sample order of epoch ``e`` comes from a ``DistributedSampler`` seeded with
``seed`` (also for one process), batch ``b``'s augmentation from a generator seeded with
``(seed, e, rank, b)``, and the global torch RNG is reseeded from the same key before every step.
Nothing random therefore depends on how the run got to a step, which is what makes an interrupted
and resumed run (at an epoch boundary or, after Ctrl-C, mid-epoch) bit-identical to an uninterrupted
one on CPU with ``deterministic=True``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import shutil
import signal
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from ..data import TensorImageDataset, dataset_info, load_dataset, make_batches
from ..data.loaders import batch_seed
from ..errors import (
    ConfigError,
    DistributedFailure,
    KeyMismatchError,
    NonFiniteLossError,
    RunDirExistsError,
    TrainingInterrupted,
)
from ..experiments.stats import format_seconds
from ..fileio import FolderLock, remove_stale_temp_files
from ..optim import optimizer_step
from . import distributed
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    atomic_save,
    atomic_write_text,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_safetensors,
)
from .config import TrainConfig
from .distributed import DistContext
from .evaluation import evaluate
from .progress import EpochProgress, RunLogger

__all__ = [
    "run",
    "TrainingInterrupted",
    "NonFiniteLossError",
    "RunDirExistsError",
    "DistributedFailure",
    "METRICS_COLUMNS",
    "RUN_FILES",
    "resolve_amp",
    "load_init_weights",
    "is_finished",
]

METRICS_COLUMNS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5", "lr", "epoch_seconds", "images_per_sec",
)
RUN_FILES = ("config.json", "metrics.csv", "last.pt", "best.pt", "summary.json", "model.safetensors", "log.txt")


def _is_comm_failure(exc: BaseException) -> bool:
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(exc)
    return isinstance(exc, dist_error) or any(
        k in text for k in ("gloo", "NCCL", "Connection reset", "Connection closed", "timed out", "Timeout"))


def resolve_amp(amp: str, device: torch.device) -> Tuple[Optional[torch.dtype], bool]:
    """``(autocast dtype or None, needs GradScaler)`` for ``--amp`` on ``device``."""
    if amp == "none":
        return None, False
    if device.type == "cpu":
        if amp == "fp16":
            raise ConfigError("--amp fp16 is for CUDA; on CPU use --amp bf16 (or --amp auto)")
        return torch.bfloat16, False
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if amp == "bf16" else (torch.float16, True)


@contextlib.contextmanager
def _isolated_global_state(deterministic: bool, threads: int) -> Iterator[None]:
    """Apply the run's determinism settings and thread count; restore them and every RNG state afterwards."""
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    saved_rng = capture_rng()
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        if deterministic:
            import os

            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic = saved[2]
        torch.backends.cudnn.benchmark = saved[3]
        restore_rng(saved_rng)
        torch.set_num_threads(saved_threads)


class _StopRequest:
    """SIGINT/SIGTERM handlers that only record the signal; the loop stops at the next step boundary.

    A second Ctrl-C raises ``KeyboardInterrupt`` at once.  Handlers are installed only from the main
    thread and the previous ones are restored afterwards.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def run(config: TrainConfig) -> Dict[str, Any]:
    """Train as ``config`` says; returns the summary (also written to ``summary.json``).

    Raises :class:`ConfigError` for invalid settings (before any work), :class:`RunDirExistsError`,
    :class:`NonFiniteLossError` if the loss diverges and :class:`TrainingInterrupted` after saving
    ``last.pt`` on SIGINT/SIGTERM.
    """
    config = replace(config).validate()
    with _isolated_global_state(config.deterministic, distributed.resolve_threads(config.threads)), \
            warnings.catch_warnings():
        # DDP's note about 1x1-conv gradient strides on CPU is harmless and would repeat on every rank
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ctx = distributed.setup(config.device, config.dist_timeout)
        try:
            trainer = _Trainer(config, ctx)  # holds the run folder's lock until release()
            try:
                return trainer.fit()
            finally:
                trainer.release(started=True)
        except RuntimeError as exc:
            if ctx.distributed and not isinstance(exc, (NonFiniteLossError, DistributedFailure)) and _is_comm_failure(exc):
                raise DistributedFailure(
                    f"rank {ctx.rank}: a collective operation between the torchrun processes failed (another "
                    f"process died, or did not answer within dist_timeout={config.dist_timeout:g} s): {exc}"
                ) from exc
            raise
        finally:
            distributed.teardown(ctx)


def load_init_weights(model: nn.Module, source: "str | Path") -> Any:
    """Load the starting weights ``source`` (``TrainConfig.init_from``) into ``model``.

    ``source`` is a run folder or gctnet checkpoint (its ``last.pt``/``model`` weights), a state_dict
    file (read with ``torch.load(weights_only=True)``) or a ``.safetensors`` file.  Loading goes through
    :func:`gctnet.surgery.load_plain_weights`, so a plain network's weights load into its ``gct_``
    variant (its fresh GCTs stay the identity); any other missing, unexpected or mis-shaped key is a
    :class:`KeyMismatchError`, a file that cannot be read a :class:`CheckpointError` (both exit 2).
    Returns the :class:`gctnet.surgery.LoadResult`.
    """
    from ..surgery import load_plain_weights
    from .checkpoint import resolve_checkpoint

    path = resolve_checkpoint(source, "last")  # a run folder's last.pt; a gctnet checkpoint unwraps to its model
    try:
        return load_plain_weights(model, path, strict=True)
    except KeyMismatchError as exc:
        raise KeyMismatchError(f"cannot initialise the model from init_from={str(source)!r}: {exc}") from None


def is_finished(run_dir: "str | Path") -> bool:
    """Whether the run folder holds a ``summary.json`` marked finished (the last file a run writes)."""
    try:
        return bool(json.loads((Path(run_dir) / "summary.json").read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _count_params(model: nn.Module) -> Tuple[int, int]:
    from ..layers import GCT

    total = sum(p.numel() for p in model.parameters())
    gct = sum(p.numel() for m in model.modules() if isinstance(m, GCT) for p in m.parameters(recurse=False))
    return total, gct


class _Trainer:
    def __init__(self, cfg: TrainConfig, ctx: DistContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device
        if cfg.batch_size % ctx.world_size:
            raise ConfigError(f"batch_size {cfg.batch_size} (global) must be divisible by the {ctx.world_size} processes")
        self.rank_batch = cfg.batch_size // ctx.world_size
        self.amp_dtype, self.use_scaler = resolve_amp(cfg.amp, self.device)
        if cfg.sync_bn and ctx.distributed and self.device.type != "cuda":
            raise ConfigError("--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on CPU)")
        self.lock: Optional[FolderLock] = None
        self.out = Path(ctx.main_first(self._claim_out_dir))
        try:
            self._setup()
        except BaseException:
            self.release(started=False)
            raise

    def _setup(self) -> None:
        """Everything that can still fail (data, model, checkpoint) before the run folder is changed."""
        cfg, ctx = self.cfg, self.ctx
        use_scaler = self.use_scaler
        self.logger = RunLogger(
            enabled=ctx.is_main, quiet=cfg.quiet, log_file=self.out / "log.txt",
            tensorboard_dir=self.out / "tensorboard" if cfg.tensorboard else None,
        )
        _seed_all(cfg.seed)

        # ---- data
        self.info = dataset_info(cfg.data, cfg.data_dir, image_size=cfg.image_size)
        if cfg.download:  # only rank 0 downloads; the others wait and then read the files
            ctx.main_first(lambda: len(load_dataset(cfg.data, "val", cfg.data_dir, download=True)))
        common = dict(data_dir=cfg.data_dir, skip_bad_images=cfg.skip_bad_images, image_size=cfg.image_size)
        self.train_set = load_dataset(cfg.data, "train", augment=cfg.augment, subset=cfg.subset,
                                      subset_seed=cfg.seed, **common)
        self.val_set = load_dataset(cfg.data, "val", subset=cfg.val_subset, subset_seed=0, **common)
        if self.device.type == "cuda":  # in-memory data: keep it on the GPU, augment there
            if isinstance(self.train_set, TensorImageDataset):
                self.train_set = self.train_set.to(self.device)
            if isinstance(self.val_set, TensorImageDataset):
                self.val_set = self.val_set.to(self.device)
        in_memory = isinstance(self.train_set, TensorImageDataset)
        import os

        self.workers = cfg.workers if cfg.workers is not None else (
            0 if in_memory else min(8, max(1, (os.cpu_count() or 1) // ctx.world_size))
        )
        self.sampler = DistributedSampler(self.train_set, num_replicas=ctx.world_size, rank=ctx.rank,
                                          shuffle=True, seed=cfg.seed, drop_last=False)
        per_rank = len(self.sampler)
        self.drop_last = per_rank >= self.rank_batch
        self.steps_per_epoch = per_rank // self.rank_batch if self.drop_last else -(-per_rank // self.rank_batch)

        # ---- model, optimiser, schedule
        from ..models import create_model
        from ..optim import param_groups

        self.model_kwargs = {"num_classes": self.info.num_classes, "in_chans": self.info.in_chans, **cfg.model_kwargs}
        try:
            self.model = create_model(cfg.model, **self.model_kwargs).to(self.device)
        except TypeError as exc:  # a builder argument it does not take: the user's --model-kwargs
            if not cfg.model_kwargs:
                raise
            raise ConfigError(f"--model-kwargs {' '.join(f'{k}={v!r}' for k, v in cfg.model_kwargs.items())}: "
                              f"{cfg.model} does not take them ({exc})") from None
        if cfg.init_from and not cfg.resume:  # a resumed run takes its weights from last.pt
            load_init_weights(self.model, cfg.init_from)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.sync_bn and ctx.distributed:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.params, self.gct_params = _count_params(self.model)
        groups = param_groups(self.model, cfg.weight_decay, policy=cfg.wd_policy)
        self.lr = cfg.effective_lr
        if cfg.opt == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=self.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=cfg.weight_decay)
        from .schedule import StepLR

        self.scheduler = StepLR(
            self.optimizer, steps_per_epoch=self.steps_per_epoch, epochs=cfg.epochs, sched=cfg.sched,
            milestones=cfg.resolved_milestones() if cfg.sched == "step" else [], gamma=cfg.lr_gamma,
            warmup_epochs=cfg.warmup_epochs, warmup_factor=cfg.warmup_factor, warmup_mode=cfg.warmup_mode,
            min_factor=cfg.min_lr_factor,
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

        # ---- state (possibly from a checkpoint)
        self.start_epoch = 0
        self.start_batch = 0
        self.global_step = 0
        self.best_top1 = -math.inf
        self.best_epoch = 0
        self.partial: Optional[Dict[str, float]] = None
        self.history: List[Dict[str, float]] = []
        self.last_val: Optional[Dict[str, Any]] = None
        if cfg.resume:
            self._load_resume()

        self.train_model: nn.Module = self.model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                                   gradient_as_bucket_view=True)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.sync_every = 1 if self.device.type == "cpu" else 20
        if ctx.is_main:
            self._commit_out_dir()

    # ------------------------------------------------------------------ run folder
    def _claim_out_dir(self) -> str:
        """Create (if needed) and lock the run folder; refuse a folder that is a file, not writable, in
        use by another process, or holding a run that was not asked to be resumed or overwritten."""
        cfg = self.cfg
        out = Path(cfg.resume or cfg.out or Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}")
        if cfg.resume and not (out / "last.pt").is_file():
            raise ConfigError(f"cannot resume: {out / 'last.pt'} not found")
        self.lock = FolderLock(out, "run folder").acquire()  # SettingsError: a file, not writable, in use
        try:
            existing = [f for f in RUN_FILES if (out / f).exists()]
            if existing and not cfg.resume and not cfg.overwrite:
                hint = (f"pass --resume {out} to continue it, --overwrite to replace it, or choose another --out"
                        if (out / "last.pt").is_file() else
                        "it has no checkpoint to resume from (stopped before its first one): pass --overwrite to "
                        "start it again, or choose another --out")
                raise RunDirExistsError(f"output folder {out} already holds a run ({', '.join(existing)}); {hint}")
        except BaseException:
            self.release(started=False)
            raise
        return str(out)

    def _commit_out_dir(self) -> None:
        """The start succeeded: tidy the folder (a killed writer's temp files, the replaced run, a
        best.pt older than what last.pt records) and write config.json."""
        out = self.out
        remove_stale_temp_files(out)
        if self.cfg.overwrite:
            for name in RUN_FILES:
                (out / name).unlink(missing_ok=True)
            if (out / "tensorboard").is_dir():
                shutil.rmtree(out / "tensorboard")
        resumed = getattr(self, "_resumed", None)
        if resumed is not None:  # killed between writing last.pt and best.pt: last.pt says it is the best
            best = out / "best.pt"
            if self.best_epoch == self.start_epoch > 0 and not self.start_batch and (
                    not best.is_file() or int(load_checkpoint(best).get("epoch", -1)) != self.best_epoch):
                atomic_save(resumed, best)
            self._resumed = None
        self._write_config()

    def release(self, started: bool) -> None:
        """Unlock the run folder; after a failed start also remove the folders this run created."""
        if self.lock is not None:
            self.lock.release(remove_created=not started)
            self.lock = None

    def _write_config(self) -> None:
        d = self.cfg.to_dict()
        d["out"] = str(self.out)
        d["_resolved"] = {
            "lr": self.lr, "world_size": self.ctx.world_size, "device": str(self.device),
            "amp_dtype": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
            "steps_per_epoch": self.steps_per_epoch, "train_samples": len(self.train_set),
            "val_samples": len(self.val_set), "params": self.params, "gct_params": self.gct_params,
            "torch": str(torch.__version__),
        }
        atomic_write_text(self.out / "config.json", json.dumps(d, indent=2) + "\n")

    def _load_resume(self) -> None:
        ckpt = load_checkpoint(self.out, which="last")
        if ckpt["model_name"] != self.cfg.model:
            raise ConfigError(f"checkpoint is for model {ckpt['model_name']!r}, config says {self.cfg.model!r}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.start_batch = int(ckpt.get("batch_in_epoch", 0))
        self.global_step = int(ckpt["global_step"])
        if self.start_batch and int(ckpt.get("world_size", 1)) != self.ctx.world_size:
            raise ConfigError(
                f"last.pt was saved mid-epoch by {ckpt.get('world_size')} process(es); resume it with the same "
                f"number of processes (now {self.ctx.world_size})")
        metrics = ckpt.get("metrics") or {}
        best = metrics.get("best_top1")  # None until the first validation (a Ctrl-C in the first epoch)
        self.best_top1 = -math.inf if best is None else float(best)
        self.best_epoch = int(metrics.get("best_epoch", 0))
        self.history = list(metrics.get("history", []))
        self.partial = ckpt.get("partial")
        restore_rng(ckpt.get("rng"))
        done = self.start_epoch >= self.cfg.epochs and not self.start_batch
        if done and is_finished(self.out):
            raise ConfigError(
                f"{self.out} already finished {self.start_epoch} epochs; pass --epochs N (> {self.start_epoch}) to train longer")
        self._resumed = ckpt
        if self.ctx.is_main:
            self._truncate_metrics(self.start_epoch)
            self.logger.info(f"finishing {self.out}: its last epoch was saved, writing summary.json and model.safetensors"
                             if done else f"resuming {self.out} at epoch {self.start_epoch + 1}"
                             + (f", batch {self.start_batch + 1}" if self.start_batch else ""))

    def _truncate_metrics(self, epochs_done: int) -> None:
        """Drop metric rows of epochs the checkpoint does not include (a crash between the two writes)."""
        path = self.out / "metrics.csv"
        if not path.is_file():
            return
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= epochs_done]
        self._write_metrics(rows)

    def _write_metrics(self, rows: List[Dict[str, Any]]) -> None:
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(METRICS_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.out / "metrics.csv", buf.getvalue())

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, epoch: int, batch_in_epoch: int, partial: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
        from .. import __version__

        info = self.info
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "model_name": self.cfg.model,
            "model_kwargs": dict(self.model_kwargs),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "global_step": self.global_step,
            "world_size": self.ctx.world_size,
            "config": {**self.cfg.to_dict(), "out": str(self.out)},
            "data": {"spec": self.cfg.data, "classes": list(info.classes), "mean": list(info.mean),
                     "std": list(info.std), "image_size": info.image_size, "in_chans": info.in_chans,
                     "num_classes": info.num_classes},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {**self.scheduler.state_dict(), "step": self.global_step},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": capture_rng(),
            "metrics": {"best_top1": self.best_top1 if math.isfinite(self.best_top1) else None,
                        "best_epoch": self.best_epoch, "history": list(self.history)},
            "partial": partial,
            "gctnet_version": __version__,
            "torch_version": str(torch.__version__),
        }

    # ------------------------------------------------------------------ training
    def fit(self) -> Dict[str, Any]:
        cfg, log = self.cfg, self.logger
        log.info(
            f"gctnet train: {cfg.model} ({self.params:,} params, {self.gct_params:,} in GCT) on {cfg.data} "
            f"[{len(self.train_set)} train / {len(self.val_set)} val], {cfg.epochs} epochs x {self.steps_per_epoch} steps, "
            f"batch {cfg.batch_size}, {cfg.opt} lr {self.lr:g} ({cfg.sched}), device {self.device}"
            + (f" ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"
               if self.device.type == "cpu" else "")
            + (f" x {self.ctx.world_size} processes" if self.ctx.distributed else "")
            + (f", amp {self.amp_dtype}" if self.amp_dtype else "") + f" -> {self.out}"
        )
        t_start = time.perf_counter()
        try:
            with _StopRequest() as stop:
                self.stop = stop
                for epoch in range(self.start_epoch, cfg.epochs):
                    row = self._train_epoch(epoch)
                    self._end_epoch(epoch, row)
                    self.start_batch, self.partial = 0, None
            return self._finish(time.perf_counter() - t_start)
        finally:
            log.close()

    def _train_epoch(self, epoch: int) -> Dict[str, float]:
        cfg, ctx, dev = self.cfg, self.ctx, self.device
        self.sampler.set_epoch(epoch)
        indices = list(self.sampler)
        start = self.start_batch if epoch == self.start_epoch else 0
        partial = self.partial if start else None
        batches = make_batches(
            self.train_set, indices, self.rank_batch, drop_last=self.drop_last,
            seed_key=(cfg.seed, epoch, ctx.rank), start_batch=start, workers=self.workers,
            pin_memory=dev.type == "cuda",
        )
        sums = torch.zeros(3, dtype=torch.float64, device=dev)  # loss * n, correct, n
        nonfinite = torch.zeros((), dtype=torch.int32, device=dev)
        seconds_before = 0.0
        if partial:
            sums += torch.tensor([partial["loss_sum"], partial["correct"], partial["seen"]], dtype=torch.float64, device=dev)
            seconds_before = float(partial["seconds"])
        progress = EpochProgress(self.logger, total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                                 log_interval=cfg.log_interval, initial=start)
        self.train_model.train()
        autocast = (torch.autocast(dev.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        step = start
        t0 = time.perf_counter()
        lr = self.scheduler.set(self.global_step)
        try:
            for x, y in batches:
                torch.manual_seed(batch_seed((cfg.seed, epoch, ctx.rank, 1), step))
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = self.scheduler.set(self.global_step)
                with autocast:
                    logits = self.train_model(x)
                    loss = self.criterion(logits, y)
                optimizer_step(loss, self.optimizer, self.scaler)
                with torch.no_grad():
                    loss_d = loss.detach().float()
                    nonfinite += (~torch.isfinite(loss_d)).int()
                    sums += torch.stack([loss_d.double() * len(y), (logits.argmax(1) == y).sum().double(),
                                         torch.tensor(float(len(y)), dtype=torch.float64, device=dev)])
                step += 1
                self.global_step += 1
                if step % self.sync_every == 0 or step == self.steps_per_epoch:
                    self._sync_point(epoch, step, sums, nonfinite, progress, t0, seconds_before)
        finally:
            progress.close()
        seconds = seconds_before + time.perf_counter() - t0
        if getattr(batches, "skipped", 0):
            self.logger.info(f"epoch {epoch + 1}: skipped {batches.skipped} unreadable images")
        ctx.all_reduce(sums)
        loss_sum, correct, seen = sums.tolist()
        seen = max(seen, 1.0)
        return {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                "lr": lr, "epoch_seconds": seconds, "images_per_sec": seen / max(seconds, 1e-9)}

    def _sync_point(self, epoch: int, step: int, sums: torch.Tensor, nonfinite: torch.Tensor,
                    progress: EpochProgress, t0: float, seconds_before: float) -> None:
        """Every rank agrees whether to stop (signal or non-finite loss); progress is updated."""
        flags = torch.stack([nonfinite.to(torch.float64),
                             torch.tensor(float(self.stop.signum), dtype=torch.float64, device=self.device)])
        self.ctx.all_reduce(flags, op="max")
        bad, signum = int(flags[0].item()), int(flags[1].item())
        if bad:
            last = self.out / "last.pt"
            kept = (f"the last good checkpoint {last} (epoch {self.start_epoch if epoch == self.start_epoch else epoch}) is kept"
                    if last.is_file() else "no checkpoint had been written yet")
            where = (f"step {step}" if self.sync_every == 1 else f"a step in {step - self.sync_every + 1}..{step}")
            raise NonFiniteLossError(
                f"training loss became non-finite (NaN/inf) in epoch {epoch + 1}, {where} of {self.steps_per_epoch} "
                f"(global step {self.global_step}); stopping. {kept}. Try a lower --lr, --amp bf16 instead of "
                "fp16, or check the input data.")
        loss_sum, correct, seen = sums.tolist()
        elapsed = time.perf_counter() - t0
        progress.update(step, loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1),
                        seen * self.ctx.world_size / max(elapsed + seconds_before, 1e-9))
        if signum:
            partial = {"loss_sum": loss_sum, "correct": correct, "seen": seen, "seconds": seconds_before + elapsed}
            # every rank's running sums are its own; rank 0 saves its own (the metrics row is approximate
            # after a multi-process interruption, the weights and optimiser state are exact)
            if self.ctx.is_main:
                atomic_save(self._checkpoint(epoch, step, partial), self.out / "last.pt")
            self.ctx.barrier()
            name = signal.Signals(signum).name
            raise TrainingInterrupted(
                f"{name} received: saved {self.out / 'last.pt'} at epoch {epoch + 1}, batch {step}/{self.steps_per_epoch}. "
                f"Continue with: gctnet train --resume {self.out}", signum, str(self.out))

    def _validate(self) -> Dict[str, Any]:
        cfg = self.cfg
        self.last_val = evaluate(self.model, self.val_set, device=self.device, batch_size=cfg.eval_batch_size,
                                 amp_dtype=self.amp_dtype, channels_last=cfg.channels_last, classes=self.info.classes,
                                 num_classes=self.info.num_classes, ctx=self.ctx, workers=self.workers)
        return self.last_val

    def _end_epoch(self, epoch: int, row: Dict[str, float]) -> None:
        cfg, ctx = self.cfg, self.ctx
        ctx.broadcast_buffers(self.model)  # BN statistics differ per rank after the last step: use rank 0's
        val = self._validate()
        row = {**row, "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]}
        row = {k: row[k] for k in METRICS_COLUMNS}
        self.history.append(row)
        is_best = val["top1"] > self.best_top1
        if is_best:
            self.best_top1, self.best_epoch = val["top1"], epoch + 1
        if ctx.is_main:
            path = self.out / "metrics.csv"
            rows: List[Dict[str, Any]] = []
            if path.is_file():
                with open(path, newline="") as fh:
                    rows = list(csv.DictReader(fh))
            self._write_metrics(rows + [row])
            ckpt = self._checkpoint(epoch + 1, 0)
            atomic_save(ckpt, self.out / "last.pt")
            if is_best:
                atomic_save(ckpt, self.out / "best.pt")
            self.logger.scalars(epoch + 1, {f"train/{k}": row[k] for k in ("train_loss", "train_acc", "lr")}
                                | {f"val/{k}": row[k] for k in ("val_loss", "val_top1", "val_top5")})
        self.logger.info(
            f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%  "
            f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}%  "
            f"lr {row['lr']:.4g}  {format_seconds(row['epoch_seconds'])} ({row['images_per_sec']:.0f} img/s)"
        )

    def _finish(self, wall_seconds: float) -> Dict[str, Any]:
        cfg = self.cfg
        last = self.history[-1]
        if self.last_val is None:  # finishing a run killed after its last checkpoint: the same numbers again
            self._validate()
        train_seconds = sum(float(r["epoch_seconds"]) for r in self.history)
        images = sum(float(r["images_per_sec"]) * float(r["epoch_seconds"]) for r in self.history)
        summary = {
            "model": cfg.model,
            "model_kwargs": dict(self.model_kwargs),
            "data": cfg.data,
            "seed": cfg.seed,
            "epochs": int(last["epoch"]),
            "final_top1": float(last["val_top1"]),
            "final_top5": float(last["val_top5"]),
            "final_loss": float(last["val_loss"]),
            "best_top1": float(self.best_top1),
            "best_epoch": self.best_epoch,
            "final_per_class": [{k: r[k] for k in ("class", "acc", "total")} for r in self.last_val["per_class"]],
            "params": self.params,
            "gct_params": self.gct_params,
            "train_seconds": train_seconds,
            "wall_seconds": wall_seconds,
            "images_per_sec": images / max(train_seconds, 1e-9),
            "lr": self.lr,
            "batch_size": cfg.batch_size,
            "world_size": self.ctx.world_size,
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),  # CPU runs: what the timings above were measured with
            "train_samples": len(self.train_set),
            "val_samples": len(self.val_set),
            "val_evaluated": self.last_val["n"],
            "run_dir": str(self.out),
            "finished": True,
        }
        if self.ctx.is_main:
            save_safetensors(self.model, self.out / "model.safetensors",
                             {"format": "gctnet", "model_name": cfg.model, "model_kwargs": self.model_kwargs,
                              "classes": list(self.info.classes)})
            atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
            self.logger.info(
                f"done: final top-1 {summary['final_top1']:.2f}% (best {summary['best_top1']:.2f}% at epoch "
                f"{self.best_epoch}), {format_seconds(train_seconds)} training -> {self.out}")
        return summary
