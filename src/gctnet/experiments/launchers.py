"""Launchers: how the planned (model, seed) runs of an experiment are executed.

Every launcher executes the same planned runs with the one runner (:func:`gctnet.experiments.runner.ensure_run`),
so a run gives the same result whichever launcher made it (bit-identical weights in deterministic mode):

* :class:`Sequential` - one run after the other in this process (the default, ``--jobs 1``);
* :class:`Jobs` - ``N`` runs at once on this machine (``--jobs N``), each in its own process with
  ``max(1, cores // N)`` CPU threads (or its own GPU where several exist);
* :class:`RayLauncher` - every run is a Ray task on a cluster (``--ray [ADDRESS]``), see
  :mod:`gctnet.experiments.ray_launcher`.

A launcher gets the runs still to do (:class:`PlannedRun`: model, seed, config, folder status) and
returns a :class:`LaunchResult`.  Run folders are locked by the training engine
(:class:`gctnet.fileio.FolderLock`), so two launchers can never write one run at the same time.  A run
that fails does not stop the others (``--jobs``, Ray); the failures are raised together at the end as a
:class:`gctnet.errors.RunError` naming each run and its log.  Ctrl-C stops every running job at its next
step boundary (each saves ``last.pt``) and raises :class:`gctnet.errors.TrainingInterrupted`; calling the
experiment again resumes them.  With ``--jobs``, SIGTERM or SIGHUP to the experiment's process does the same
(the jobs run in sessions of their own, so they would otherwise outlive it), and a job stopped by a signal from
outside (exit 130, its ``last.pt`` saved) is not a failure: no further run starts, the running ones finish, and
the experiment ends interrupted, to be resumed by calling it again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import RunError, TrainingInterrupted
from ..train import TrainConfig
from . import runner
from .stats import finite_mean, format_seconds

__all__ = ["PlannedRun", "LaunchResult", "Launcher", "Sequential", "Jobs", "make_launcher", "cores", "eta"]

Say = Callable[[str], None]

#: exit code of a job process stopped by a signal after saving its progress
EXIT_INTERRUPTED = 130
#: exit codes of a job stopped from outside: saved its progress (130), or killed by SIGTERM/SIGINT/SIGHUP before
#: its handlers were installed (nothing to save yet).  SIGKILL stays a failure: it is most often the OOM killer.
STOPPED_FROM_OUTSIDE = (EXIT_INTERRUPTED,) + tuple(-getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP")
                                                   if hasattr(signal, name))


def _stopped_how(code: int) -> str:
    """What a job stopped from outside (exit ``code`` in :data:`STOPPED_FROM_OUTSIDE`) left behind."""
    if code == EXIT_INTERRUPTED:
        return "progress saved"
    return f"killed by {_signal_name(-code)} before saving anything; it starts afresh"


@dataclass(frozen=True)
class PlannedRun:
    """One run of an experiment: what to train and the status of its folder (see :func:`runner.run_status`)."""

    model: str
    seed: int
    config: TrainConfig
    status: str
    index: int = 0  # position among all the experiment's runs (1-based; 0: unknown), for progress lines
    total: int = 0

    @property
    def name(self) -> str:
        return f"{self.model} seed {self.seed}"


@dataclass
class LaunchResult:
    """What a launcher did: runs trained (or resumed) and the failures (run name -> why)."""

    trained: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def raise_failures(self) -> None:
        if self.failures:
            lines = "; ".join(f"{name}: {why}" for name, why in self.failures.items())
            raise RunError(f"{len(self.failures)} run(s) failed (the others finished): {lines}")


class Launcher:
    """Executes planned runs; subclasses implement :meth:`launch`."""

    def launch(self, runs: Sequence[PlannedRun], say: Say) -> LaunchResult:  # pragma: no cover - interface
        raise NotImplementedError


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _what(status: str) -> str:
    return {"resume": "resuming", "restart": "training again: the previous attempt left no usable result"}.get(
        status, "training")


class Sequential(Launcher):
    """One run after the other, in this process (the first failure stops the experiment)."""

    def launch(self, runs: Sequence[PlannedRun], say: Say) -> LaunchResult:
        result = LaunchResult()
        epoch_seconds: list[float] = []  # seconds per epoch of each run trained so far (a resumed run: its epochs left)
        for i, run in enumerate(runs, start=1):
            remaining = len(runs) - result.trained
            left = eta(epoch_seconds, sum(map(_epochs_left, runs[i - 1:])), 1) or "ETA after the first run"
            where = f"{run.index}/{run.total}" if run.index else f"{i}/{len(runs)}"
            say(f"run {where}: {run.name} ({_what(run.status)}), {remaining} to go, {left}")
            todo = _epochs_left(run)
            t0 = time.perf_counter()
            try:
                runner.ensure_run(run.config, run.status)
            except KeyboardInterrupt:
                say(f"compare: interrupted during {run.name}; calling compare again continues it")
                raise
            if todo:  # (a run killed after its last checkpoint only writes its summary)
                epoch_seconds.append((time.perf_counter() - t0) / todo)
            result.trained += 1
        return result


# --------------------------------------------------------------------------------------------------
# --jobs N: one process per run, N at a time
# --------------------------------------------------------------------------------------------------
def _epochs_done(path: Path) -> int:
    try:
        with open(path / "metrics.csv") as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    except OSError:
        return 0


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


@dataclass
class _Job:
    run: PlannedRun
    proc: subprocess.Popen
    log: Path
    started: float
    epochs: int = 0  # epochs in the run's metrics.csv (a resumed run starts with those of its earlier attempt)
    gpu: Optional[int] = None
    epoch_at: float = 0.0  # when the last epoch ended (or the job started)
    partial: bool = False  # the next epoch is the one a resumed run started mid-way: not a full epoch's time


def _epochs_left(run: PlannedRun, started: bool = False) -> int:
    """Epochs ``run`` still has to train: all of them for a new run, those after its metrics.csv for a resumed
    one (or for any run once it has ``started``: its folder is its own then)."""
    done = _epochs_done(Path(run.config.out)) if started or run.status == "resume" else 0
    return max(0, run.config.epochs - done)


def eta(epoch_seconds: Sequence[float], epochs: int, slots: int) -> str:
    """``"ETA 1h02m"``: ``epochs`` still to train at the mean epoch time so far, ``slots`` at a time ("" before
    any epoch was timed or when nothing is left).  Counting epochs, not runs, keeps a resumed run's short time
    from shrinking the estimate."""
    if not epoch_seconds or epochs <= 0:
        return ""
    return f"ETA {format_seconds(finite_mean(epoch_seconds) * epochs / max(1, slots))}"


class Jobs(Launcher):
    """``jobs`` runs at once, each in its own process (``python -m gctnet.experiments._job``).

    Each job gets ``max(1, cores // jobs)`` torch threads unless the options set ``threads``, and, where
    several GPUs exist and the runs use CUDA (device ``auto`` or ``cuda``), a GPU of its own
    (``CUDA_VISIBLE_DEVICES``).  Job processes run in their own session, so Ctrl-C reaches this process
    only; it forwards one SIGTERM to every job, which saves ``last.pt`` and stops.  A job's output goes to
    ``log_dir/<model>-seed<k>.log`` (the run's own ``log.txt`` has the training log too).
    """

    def __init__(self, jobs: int, log_dir: Path, poll: float = 0.5, stop_timeout: float = 120.0) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs
        self.log_dir = Path(log_dir)
        self.poll = poll
        self.stop_timeout = stop_timeout

    def threads(self, config: TrainConfig) -> int:
        return config.threads if config.threads is not None else max(1, cores() // self.jobs)

    def _gpus(self, config: TrainConfig) -> int:
        if config.device not in ("auto", "cuda"):
            return 0
        try:
            import torch

            return torch.cuda.device_count()
        except Exception:  # pragma: no cover
            return 0

    def _start(self, run: PlannedRun, free_gpus: list[int]) -> _Job:
        import gctnet

        config = dataclasses.replace(run.config, threads=self.threads(run.config), quiet=True)
        env = dict(os.environ)
        src = str(Path(gctnet.__file__).resolve().parents[1])  # the job imports this very gctnet
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["OMP_NUM_THREADS"] = str(config.threads)
        gpu = None
        if free_gpus and self._gpus(run.config) > 1:
            gpu = free_gpus.pop(0)
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{run.model}-seed{run.seed}.log"
        payload = json.dumps({"config": config.to_dict(), "status": run.status})
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "gctnet.experiments._job", payload], stdout=fh,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        now = time.perf_counter()
        resumed = run.status == "resume"
        return _Job(run, proc, log, now, epochs=run.config.epochs - _epochs_left(run), gpu=gpu, epoch_at=now,
                    partial=resumed)

    def launch(self, runs: Sequence[PlannedRun], say: Say) -> LaunchResult:
        result = LaunchResult()
        queue = list(runs)
        running: list[_Job] = []
        stopped: list[_Job] = []  # jobs stopped by a signal from outside: resumable; no further run starts
        epoch_seconds: list[float] = []  # the time of each full epoch trained by any job (validation included)
        free_gpus = list(range(self._gpus(runs[0].config))) if runs else []
        total = len(runs)
        threads = self.threads(runs[0].config) if runs else 1
        say(f"launcher: {min(self.jobs, total)} job(s) at once, {threads} CPU thread(s) each; job output in {self.log_dir}")

        def counts() -> str:
            done = result.trained + len(result.failures) + len(stopped)
            left = len(queue) + len(running)
            epochs = sum(map(_epochs_left, queue)) + sum(max(0, j.run.config.epochs - j.epochs) for j in running)
            when = eta(epoch_seconds, epochs, min(self.jobs, left))
            return f"[{done}/{total} done, {len(running)} running, {len(queue)} queued{', ' + when if when else ''}]"

        received = [signal.SIGINT]
        with _signals_as_interrupt(received):
            try:
                while (queue and not stopped) or running:
                    while queue and not stopped and len(running) < self.jobs:
                        job = self._start(queue.pop(0), free_gpus)
                        running.append(job)
                        gpu = f" on GPU {job.gpu}" if job.gpu is not None else ""
                        say(f"{counts()} {job.run.name}: started ({_what(job.run.status)}){gpu}")
                    time.sleep(self.poll)
                    for job in list(running):
                        self._check(job, running, stopped, free_gpus, result, epoch_seconds, counts, say, len(queue))
            except KeyboardInterrupt:
                self._stop(running, say)
                raise TrainingInterrupted(
                    f"interrupted: {len(running)} running run(s) saved their progress, {len(queue)} not started",
                    received[-1], str(Path(running[0].run.config.out)) if running else None) from None
        if stopped:
            names = ", ".join(f"{job.run.name} ({_stopped_how(job.proc.returncode)})" for job in stopped)
            failed = f"; {len(result.failures)} run(s) failed: {'; '.join(result.failures)}" if result.failures else ""
            raise TrainingInterrupted(
                f"stopped by a signal from outside: {names}; {len(queue)} run(s) not started{failed}",
                signal.SIGTERM, str(Path(stopped[0].run.config.out)))
        return result

    def _check(self, job: _Job, running: list[_Job], stopped: list[_Job], free_gpus: list[int],
               result: LaunchResult, epoch_seconds: list[float], counts: Callable[[], str], say: Say,
               queued: int) -> None:
        """Report a running job's new epochs and, once it has exited, its outcome."""
        epochs = _epochs_done(Path(job.run.config.out))
        if epochs > job.epochs:
            now = time.perf_counter()
            if not job.partial:
                epoch_seconds.extend([(now - job.epoch_at) / (epochs - job.epochs)] * (epochs - job.epochs))
            job.epochs, job.epoch_at, job.partial = epochs, now, False
            say(f"{counts()} {job.run.name}: epoch {epochs}/{job.run.config.epochs} done")
        code = job.proc.poll()
        if code is None:
            return
        running.remove(job)
        if job.gpu is not None:
            free_gpus.append(job.gpu)
        if code == 0:
            result.trained += 1
            say(f"{counts()} {job.run.name}: finished in {format_seconds(time.perf_counter() - job.started)}")
        elif code in STOPPED_FROM_OUTSIDE:
            stopped.append(job)
            say(f"{counts()} {job.run.name}: stopped by a signal from outside, {_stopped_how(code)} "
                f"({_last_line(job.log)}); "
                f"starting no further run ({queued} not started), the running ones go on")
        else:
            how = f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}"
            result.failures[job.run.name] = f"{_last_line(job.log)} ({how}; log: {job.log})"
            say(f"{counts()} {job.run.name}: FAILED: {result.failures[job.run.name]}")

    def _stop(self, running: list[_Job], say: Say) -> None:
        say(f"launcher: stopping {len(running)} running job(s) (each saves last.pt)...")
        for job in running:
            if job.proc.poll() is None:
                job.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for job in running:
            while job.proc.poll() is None and time.monotonic() < deadline:
                try:
                    job.proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
                except KeyboardInterrupt:  # a second Ctrl-C: stop at once
                    deadline = 0.0
            if job.proc.poll() is None:
                job.proc.kill()
                job.proc.wait()
            say(f"launcher: {job.run.name} stopped ({_last_line(job.log)})")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _signals_as_interrupt:
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread while the block runs, so that ``kill`` or a
    closed terminal stops the jobs (``--jobs``: processes in sessions of their own; Ray: tasks that Ray's own
    SIGTERM exit would kill unsaved) as Ctrl-C does; ``received`` gets the signal's number appended."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

    def __init__(self, received: list[int]) -> None:
        self.received = received
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        raise KeyboardInterrupt

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup's ignored SIGHUP stays ignored
                    self.previous[sig] = signal.signal(sig, self._handle)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def make_launcher(jobs: int = 1, ray: Optional[str] = None, *, log_dir: Optional[Path] = None,
                  **ray_options: Any) -> Launcher:
    """The launcher for ``--jobs`` / ``--ray`` (``ray``: an address, ``"auto"``, or ``""`` for a local
    cluster started for the call; None: no Ray)."""
    if ray is not None:
        from .ray_launcher import RayLauncher

        return RayLauncher(ray or None, **ray_options)
    if jobs < 1:
        raise RunError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1:
        return Sequential()
    return Jobs(jobs, log_dir or Path("jobs"))
