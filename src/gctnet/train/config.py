"""``TrainConfig``: every knob of a training run, validated, JSON-round-trippable, with recipes.

``lr`` is the learning rate actually used; when it is ``None`` it is derived from ``lr_base`` with the
linear scaling rule ``lr = lr_base * batch_size / lr_base_size`` (``lr_base`` defaults to 0.1 for SGD
and 1e-3 for AdamW; 0.1 at batch 256 is the paper's setting).  ``batch_size`` is the global batch:
under torchrun every process gets ``batch_size / world_size`` samples per step, so a recipe means the
same thing on one process or many.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..errors import ConfigError

__all__ = ["TrainConfig", "ConfigError", "RECIPES", "RESUME_OVERRIDABLE"]


AMP_CHOICES = ("auto", "bf16", "fp16", "none")
OPT_CHOICES = ("sgd", "adamw")
SCHED_CHOICES = ("cosine", "step", "constant")
WD_POLICIES = ("paper", "none", "all")
WARMUP_MODES = ("linear", "constant")

# Fields that may change when a run is resumed (they do not change what is computed).
RESUME_OVERRIDABLE = frozenset(
    {"epochs", "workers", "threads", "device", "quiet", "log_interval", "tensorboard", "dist_timeout", "compile",
     "deterministic", "data_dir", "resume", "out", "overwrite"}
)


def _opt(default: Any = None, help: str = "", *, group: str, flags: tuple = (), choices: Optional[tuple] = None,
         metavar: Optional[str] = None, nargs: Optional[str] = None, const: Any = None, factory: Any = None) -> Any:
    """A TrainConfig field with what the command line needs to offer it (``gctnet train --help``).

    ``flags`` are the option strings (default ``--field-name``; ``--no-field-name`` for a bool that
    defaults to True, which ``help`` then describes); the type comes from the annotation.
    """
    meta = {"help": help, "group": group, "flags": flags, "choices": choices, "metavar": metavar, "nargs": nargs,
            "const": const}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


#: the command line's option groups, in the order ``--help`` shows them
GROUPS = ("model and data", "recipe", "execution", "output")
_M, _R, _E, _O = GROUPS


@dataclass
class TrainConfig:
    """Configuration of :func:`gctnet.train.run`, and the single source of ``gctnet train``'s options
    (their flags, choices, defaults and help come from the field metadata; see :func:`cli_fields`)."""

    # model
    model: str = _opt("resnet20", "registered model name (see gctnet info --list)", group=_M)
    model_kwargs: Dict[str, Any] = _opt(
        help="extra builder arguments, e.g. width=2 (values parsed as Python literals)", group=_M, nargs="+",
        metavar="KEY=VALUE", factory=dict)
    init_from: Optional[str] = _opt(
        None, "start from these weights: a run folder, checkpoint, state_dict or .safetensors file (a plain network's "
        "weights load into its gct_ variant; ignored when resuming)", group=_M, metavar="PATH")
    # data
    data: str = _opt("fashion_mnist", "fashion_mnist or imagefolder:PATH (PATH/train/<class>/..., PATH/val/<class>/...)",
                     group=_M, flags=("--data", "--dataset"))
    data_dir: Optional[str] = _opt(None, "folder with the Fashion-MNIST files (else $GCTNET_DATA, system path)", group=_M)
    download: bool = _opt(False, "let torchvision download Fashion-MNIST if missing", group=_M)
    image_size: Optional[int] = _opt(None, "ImageFolder training size (default: by image size)", group=_M)
    skip_bad_images: bool = _opt(False, "skip unreadable images (counted)", group=_M)
    subset: Optional[int] = _opt(None, "train on a random N-sample subset (per seed; default: all)", group=_M, metavar="N")
    val_subset: Optional[int] = _opt(None, "evaluate on a fixed N-sample subset (default: all)", group=_M, metavar="N")
    augment: bool = _opt(True, "no training augmentation", group=_M)
    # schedule and optimisation
    epochs: int = _opt(2, "", group=_R)
    batch_size: int = _opt(128, "global batch (split over torchrun processes)", group=_R)
    eval_batch_size: int = _opt(256, "", group=_R)
    opt: str = _opt("sgd", "sgd: Nesterov momentum 0.9 (paper)", group=_R, choices=OPT_CHOICES)
    lr: Optional[float] = _opt(None, "learning rate (default: lr-base * batch / lr-base-size)", group=_R)
    lr_base: Optional[float] = _opt(None, "base lr for the scaling rule (default: 0.1 SGD, 1e-3 AdamW)", group=_R)
    lr_base_size: int = _opt(256, "batch size of --lr-base", group=_R)
    momentum: float = _opt(0.9, "", group=_R)
    nesterov: bool = _opt(True, "plain SGD momentum instead of Nesterov's", group=_R)
    weight_decay: float = _opt(1e-4, "", group=_R, flags=("--weight-decay", "--wd"))
    wd_policy: str = _opt("paper", "paper: no weight decay on GCT beta; none/all: alternatives", group=_R,
                          choices=WD_POLICIES)
    sched: str = _opt("cosine", "", group=_R, choices=SCHED_CHOICES)
    milestones: Optional[List[float]] = _opt(None, "step schedule epochs (default: 30/60/90 %% of the epochs)",
                                              group=_R, nargs="+", metavar="EPOCH")
    lr_gamma: float = _opt(0.1, "step schedule factor", group=_R)
    warmup_epochs: float = _opt(0.2, "", group=_R)
    warmup_factor: float = _opt(0.1, "", group=_R)
    warmup_mode: str = _opt("linear", "", group=_R, choices=WARMUP_MODES)
    min_lr_factor: float = _opt(0.0, "cosine floor as a fraction of the lr", group=_R)
    label_smoothing: float = _opt(0.0, "", group=_R)
    # execution
    amp: str = _opt("none", "mixed precision (bare --amp: auto = bf16 on CPU, bf16 or fp16+GradScaler on CUDA)",
                    group=_E, choices=AMP_CHOICES, nargs="?", const="auto")
    channels_last: bool = _opt(False, "channels_last memory format", group=_E)
    compile: bool = _opt(False, "torch.compile the model", group=_E)
    seed: int = _opt(0, "", group=_E)
    deterministic: bool = _opt(False, "deterministic algorithms (bit-exact resume)", group=_E)
    workers: Optional[int] = _opt(None, "DataLoader workers (ImageFolder; in-memory data needs none)", group=_E)
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N", group=_E)
    threads: Optional[int] = _opt(
        None, "torch intra-op CPU threads (default: one less than the cores this process may use, at least 1, "
        "per torchrun process; OMP_NUM_THREADS wins when set): on a machine shared with other work, as many "
        "threads as cores collapses throughput", group=_E, metavar="N")
    sync_bn: bool = _opt(False, "SyncBatchNorm under torchrun", group=_E)
    dist_timeout: float = _opt(300.0, "torchrun: fail instead of waiting longer than this for another rank",
                               group=_E, metavar="SECONDS")
    # output
    out: Optional[str] = _opt(None, "run folder (default: runs/<model>-<timestamp>)", group=_O)
    overwrite: bool = _opt(False, "replace an existing run in --out", group=_O)
    resume: Optional[str] = _opt(None, "continue RUN_DIR from its last.pt", group=_O, metavar="RUN_DIR")
    quiet: bool = _opt(False, "no progress bars, one line per epoch", group=_O)
    log_interval: int = _opt(0, "plain progress line every N steps (0: none)", group=_O, metavar="STEPS")
    tensorboard: bool = _opt(False, "also log to RUN/tensorboard (if installed)", group=_O)

    # ------------------------------------------------------------------ derived values
    @property
    def effective_lr(self) -> float:
        if self.lr is not None:
            return float(self.lr)
        base = self.lr_base if self.lr_base is not None else (0.1 if self.opt == "sgd" else 1e-3)
        return float(base) * self.batch_size / self.lr_base_size

    def resolved_milestones(self) -> List[float]:
        """Step-schedule milestones in epochs (default: 30 %, 60 %, 90 % of the run, as in the paper)."""
        if self.milestones is not None:
            return [float(m) for m in self.milestones]
        return [round(self.epochs * f) for f in (0.3, 0.6, 0.9)]

    # ------------------------------------------------------------------ validation
    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` naming the first invalid field; returns ``self``."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        def positive_int(name: str, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, f"{name} must be a positive integer, got {v!r}")

        need(isinstance(self.model, str) and bool(self.model), f"model must be a registered model name, got {self.model!r}")
        from ..models import get_model_entry

        try:
            get_model_entry(self.model)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        need(isinstance(self.model_kwargs, dict), f"model_kwargs must be a dict, got {type(self.model_kwargs).__name__}")
        try:
            json.dumps(self.model_kwargs)
        except TypeError as exc:
            raise ConfigError(f"model_kwargs must hold plain values (str, numbers, lists, dicts): {exc}") from None
        for name in ("epochs", "batch_size", "eval_batch_size", "lr_base_size"):
            positive_int(name)
        for name in ("subset", "val_subset", "image_size"):
            positive_int(name, allow_none=True)
        positive_int("threads", allow_none=True)
        need(self.workers is None or (isinstance(self.workers, int) and self.workers >= 0),
             f"workers must be >= 0, got {self.workers!r}")
        need(self.opt in OPT_CHOICES, f"opt must be one of {OPT_CHOICES}, got {self.opt!r}")
        need(self.sched in SCHED_CHOICES, f"sched must be one of {SCHED_CHOICES}, got {self.sched!r}")
        need(self.wd_policy in WD_POLICIES, f"wd_policy must be one of {WD_POLICIES}, got {self.wd_policy!r}")
        need(self.amp in AMP_CHOICES, f"amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        need(self.warmup_mode in WARMUP_MODES, f"warmup_mode must be one of {WARMUP_MODES}, got {self.warmup_mode!r}")
        for name in ("lr", "lr_base"):
            v = getattr(self, name)
            need(v is None or (math.isfinite(v) and v > 0), f"{name} must be a positive number, got {v!r}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(not (self.opt == "sgd" and self.nesterov and self.momentum == 0),
             "Nesterov momentum needs momentum > 0 (pass --no-nesterov for plain SGD)")
        need(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        need(0 < self.lr_gamma <= 1, f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        need(0 <= self.warmup_epochs <= self.epochs,
             f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        need(0 < self.warmup_factor <= 1, f"warmup_factor must be in (0, 1], got {self.warmup_factor}")
        need(0 <= self.min_lr_factor <= 1, f"min_lr_factor must be in [0, 1], got {self.min_lr_factor}")
        if self.milestones is not None:
            need(self.sched == "step", "milestones only apply to the step schedule (sched='step')")
            ms = [float(m) for m in self.milestones]
            need(ms == sorted(ms) and all(0 < m for m in ms), f"milestones must be increasing positive epochs, got {self.milestones}")
        need(self.dist_timeout > 0, f"dist_timeout must be positive seconds, got {self.dist_timeout}")
        need(self.log_interval >= 0, f"log_interval must be >= 0, got {self.log_interval}")
        need(not (self.overwrite and self.resume), "overwrite and resume exclude each other")
        need(self.init_from is None or (isinstance(self.init_from, str) and bool(self.init_from)),
             f"init_from must be a path (run folder, checkpoint or weights file), got {self.init_from!r}")
        need(self.init_from is None or bool(self.resume) or Path(self.init_from).expanduser().exists(),
             f"init_from {self.init_from!r} does not exist (expected a run folder, a checkpoint or a weights file)")
        from ..data import parse_data_spec

        parse_data_spec(self.data)  # SettingsError naming the accepted specs
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        return self

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, strict: bool = True) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown and strict:
            raise ConfigError(f"unknown TrainConfig fields: {unknown}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_recipe(cls, recipe: str, **overrides: Any) -> "TrainConfig":
        """A config from a named recipe (``"quick"`` = the defaults, ``"paper"``) plus overrides."""
        if recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {recipe!r}; choose from {sorted(RECIPES)}")
        return cls.from_dict({**RECIPES[recipe], **overrides})

    @classmethod
    def for_resume(cls, run_dir: "str | Path", **overrides: Any) -> "TrainConfig":
        """The saved config of ``run_dir`` with ``overrides`` limited to :data:`RESUME_OVERRIDABLE`."""
        path = Path(run_dir) / "config.json"
        if not path.is_file():
            raise ConfigError(f"cannot resume: {path} not found (is {run_dir} a gctnet run folder?)")
        try:
            saved = cls.from_dict(json.loads(path.read_text()), strict=False)
        except ValueError:  # not JSON (cut short by hand?): gctnet writes it atomically
            raise ConfigError(f"cannot resume: {path} is not a valid gctnet config.json") from None
        bad = sorted(k for k, v in overrides.items() if k not in RESUME_OVERRIDABLE and getattr(saved, k) != v)
        if bad:
            raise ConfigError(
                f"cannot change {', '.join(bad)} when resuming (the run was started with "
                + ", ".join(f"{k}={getattr(saved, k)!r}" for k in bad)
                + "); start a new run instead"
            )
        return replace(saved, **{**overrides, "resume": str(run_dir), "out": str(run_dir), "overwrite": False})


RECIPES: Dict[str, Dict[str, Any]] = {
    # a few minutes on a laptop CPU: 2 epochs of cosine decay after a short linear warm-up
    "quick": {},
    # the paper's ImageNet recipe (Yang et al., 2020, section 4): 100 epochs, batch 256, SGD Nesterov
    # 0.9, lr 0.1 with x0.1 at epochs 30/60/90 and the first epoch at 0.1x, weight decay 1e-4 not on beta
    "paper": dict(
        epochs=100, batch_size=256, opt="sgd", lr=None, lr_base=0.1, lr_base_size=256, momentum=0.9,
        nesterov=True, weight_decay=1e-4, wd_policy="paper", sched="step", milestones=[30, 60, 90],
        lr_gamma=0.1, warmup_epochs=1, warmup_mode="constant", warmup_factor=0.1, label_smoothing=0.0,
    ),
}
