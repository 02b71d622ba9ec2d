"""Progress output: tqdm bars on a terminal, plain log lines otherwise, optional TensorBoard.

Only rank 0 prints.  Every message also goes to ``log.txt`` in the run folder.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, TextIO

from ..experiments.stats import format_seconds

__all__ = ["RunLogger", "EpochProgress"]


class RunLogger:
    """Prints messages (rank 0 only) and appends them to ``log_file``; owns the TensorBoard writer."""

    def __init__(
        self,
        *,
        enabled: bool = True,
        quiet: bool = False,
        log_file: Optional[Path] = None,
        stream: Optional[TextIO] = None,
        tensorboard_dir: Optional[Path] = None,
    ) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self.bars = enabled and not quiet and sys.stderr.isatty()
        self.log_file = log_file if enabled else None
        self.tb: Any = None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.info("note: TensorBoard is not installed (pip install tensorboard); continuing without it")
            else:
                self.tb = SummaryWriter(str(tensorboard_dir))

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bars:
            from tqdm import tqdm

            tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)
        if self.log_file is not None:
            with open(self.log_file, "a", encoding="utf-8") as fh:
                fh.write(message + "\n")

    def warn(self, message: str) -> None:
        if self.enabled:
            warnings.warn(message, stacklevel=2)
            if self.log_file is not None:
                with open(self.log_file, "a", encoding="utf-8") as fh:
                    fh.write("warning: " + message + "\n")

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class EpochProgress:
    """One epoch's progress: a tqdm bar, or a log line every ``log_interval`` steps (0: none)."""

    def __init__(self, logger: RunLogger, *, total: int, desc: str, log_interval: int = 0, initial: int = 0) -> None:
        self.logger = logger
        self.total = total
        self.desc = desc
        self.log_interval = log_interval
        self.start = time.perf_counter()
        self.initial = initial
        self.bar: Any = None
        if logger.enabled and logger.bars:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False,
                            dynamic_ncols=True, file=sys.stderr)

    def update(self, step: int, loss: float, acc: float, images_per_sec: float) -> None:
        """``step`` = batches done in this epoch (absolute, including skipped-over ones on resume)."""
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.2f}%", img_s=f"{images_per_sec:.0f}", refresh=False)
            self.bar.update(step - self.bar.n)  # refreshes (postfix included) at tqdm's own pace
        elif self.log_interval and self.logger.enabled and (step % self.log_interval == 0 or step == self.total):
            done = step - self.initial
            elapsed = time.perf_counter() - self.start
            eta = elapsed / max(1, done) * (self.total - step)
            self.logger.info(
                f"{self.desc} step {step}/{self.total} loss {loss:.4f} acc {acc:.2f}% "
                f"{images_per_sec:.0f} img/s eta {format_seconds(eta)}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
