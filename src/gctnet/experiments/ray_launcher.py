"""``gctnet compare --ray [ADDRESS]``: every (model, seed) run is a Ray task on a cluster.

Each task runs the one runner (:func:`gctnet.experiments.runner.ensure_run`) with the resources it
asks for (``cpus_per_run`` CPUs, also its torch threads unless the options set ``threads``;
``gpus_per_run`` GPUs, several of them by DDP inside the task through ``torchrun``).  Run folders are
written under the comparison folder, which must be storage every node sees: before submitting
anything a probe task on every alive node checks that it can read a file the caller wrote there, and
the comparison is refused naming the nodes that cannot.  Finished runs are skipped and interrupted
ones resumed by the caller's plan, exactly as in a local comparison; the caller writes the report.

Faults: a task that fails or whose worker dies is resubmitted up to ``max_retries`` times, each failure
reported (run, node, why); a run that keeps failing does not stop the others.  Ctrl-C cancels every
task (a running one gets KeyboardInterrupt, which the training engine turns into saving ``last.pt``)
and leaves every run folder resumable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from ..errors import RunError, SettingsError, TrainingInterrupted
from .launchers import Launcher, LaunchResult, PlannedRun, Say, _epochs_left, _signals_as_interrupt, eta
from .stats import format_seconds

__all__ = ["RayLauncher", "PROBE_PREFIX"]

PROBE_PREFIX = ".gctnet-ray-probe-"


#: Ray's switch that, set to 0, keeps a Linux cluster on 127.0.0.1 (otherwise Ray swaps 127.0.0.1 for
#: the machine's network address and its processes listen on every interface)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_loopback(address: Optional[str]) -> bool:
    """Whether a Ray address (``host:port``, ``ray://host:port``) names this machine's loopback interface."""
    if not address:
        return False
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _import_ray(address: Optional[str]) -> Any:
    """Ray, kept on loopback for a local cluster started for the call (``address`` None or "") or a loopback
    address, unless the caller set :data:`LOOPBACK_ENV` otherwise.

    Ray reads the switch once, at import: it is set in the environment before the first import (the
    cluster processes a local ``ray.init`` starts inherit it) and, when Ray was imported earlier, also
    in Ray's constant that holds it.
    """
    loopback = not address or is_loopback(address)
    if loopback:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
        from ray._private import ray_constants
    except ImportError:
        raise SettingsError("--ray needs Ray: pip install 'gctnet[ray]'") from None
    if loopback and os.environ[LOOPBACK_ENV] == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False
    return ray


def _node() -> str:
    return f"{socket.gethostname()} ({_node_ip()})"


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # pragma: no cover
        return "?"


def _probe(path: str, token: str) -> tuple[str, bool]:
    """On one node: can it read the probe file the caller wrote into the comparison folder?"""
    try:
        return _node(), Path(path).read_text() == token
    except OSError:
        return _node(), False


class TaskFailed(RunError):
    """A run's task raised on a worker: the error's first line and the node it ran on."""


def _train_task(payload: str, gpus: int, node_log: str) -> dict[str, Any]:
    """On a worker: ensure one run exists (train, resume or finish it); returns where it ran and how long.

    It first appends its node to ``node_log`` (``OUT/jobs/<model>-seed<k>.ray.log``): the caller reads it
    to count running tasks and to name the node of a worker that died.  An error comes back as
    :class:`TaskFailed` naming the node.
    """
    try:
        log = Path(node_log)
        if log.parent.parent.is_dir():
            log.parent.mkdir(exist_ok=True)
            with open(log, "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} started on {_node()}\n")
        return _train(payload, gpus)
    except Exception as exc:
        raise TaskFailed(f"{_first_line(exc)} (node {_node()})") from None


def _train(payload: str, gpus: int) -> dict[str, Any]:
    from ..train import TrainConfig
    from .runner import ensure_run

    data = json.loads(payload)
    config = TrainConfig.from_dict(data["config"])
    out = Path(config.out).parent.parent.parent  # OUT/runs/<model>/seed<k>
    if not out.is_dir():
        raise SettingsError(f"node {_node()} cannot see the comparison folder {out}: --out must be shared storage")
    t0 = time.perf_counter()
    if gpus > 1:  # DDP inside the task: one process per GPU
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "gctnet.experiments._job", payload]
        proc = subprocess.Popen(cmd)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
            raise
        if code != 0:
            raise RuntimeError(f"torchrun with {gpus} GPUs exited with code {code} (see {config.out}/log.txt)")
    else:
        ensure_run(config, data["status"])
    return {"node": _node(), "seconds": time.perf_counter() - t0}


class RayLauncher(Launcher):
    """Runs are Ray tasks on the cluster at ``address`` (``"auto"``: the existing one; None: a local
    cluster on 127.0.0.1 started for the call and stopped afterwards)."""

    def __init__(self, address: Optional[str] = None, *, out: Path, cpus_per_run: float = 1, gpus_per_run: float = 0,
                 max_retries: int = 2, poll: float = 1.0, cancel_timeout: float = 120.0) -> None:
        self.address = address
        self.out = Path(out)
        self.cpus = cpus_per_run
        self.gpus = gpus_per_run
        self.max_retries = max_retries
        self.poll = poll
        self.cancel_timeout = cancel_timeout

    # ---------------------------------------------------------------------------------------- cluster
    def _connect(self, ray: Any, say: Say) -> bool:
        """Connect (or start a local cluster); returns whether this call connected (and must disconnect)."""
        if ray.is_initialized():
            return False
        import gctnet

        src = str(Path(gctnet.__file__).resolve().parents[1])
        if self.address:
            try:
                ray.init(address=self.address, logging_level="WARNING", log_to_driver=False)
            except (ConnectionError, RuntimeError) as exc:
                raise SettingsError(_connect_error(self.address, exc)) from None
        else:
            env = {"PYTHONPATH": src + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}
            ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, logging_level="WARNING",
                     log_to_driver=False, runtime_env={"env_vars": env})
        res = ray.cluster_resources()
        say(f"ray: {'connected to ' + self.address if self.address else 'started a local cluster'}: "
            f"{len([n for n in ray.nodes() if n.get('Alive')])} node(s), {res.get('CPU', 0):g} CPUs, "
            f"{res.get('GPU', 0):g} GPUs; each run asks for {self.cpus:g} CPU(s), {self.gpus:g} GPU(s)")
        return True

    def _check_shared_storage(self, ray: Any) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        token = uuid.uuid4().hex
        probe = self.out.resolve() / f"{PROBE_PREFIX}{token}"
        probe.write_text(token)
        try:
            remote = ray.remote(_probe)
            refs = [remote.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                    .remote(str(probe), token) for n in ray.nodes() if n.get("Alive")]
            blind = [node for node, ok in ray.get(refs, timeout=300) if not ok]
        finally:
            probe.unlink(missing_ok=True)
        if blind:
            raise SettingsError(f"the comparison folder {self.out.resolve()} is not visible from Ray node(s) "
                                f"{', '.join(blind)}: --out must be shared storage (NFS, ...) mounted at the same "
                                "path on every node")

    # ---------------------------------------------------------------------------------------- launch
    def launch(self, runs: Sequence[PlannedRun], say: Say) -> LaunchResult:
        ray = _import_ray(self.address)
        connected_here = self._connect(ray, say)
        try:
            self._check_shared_storage(ray)
            return self._launch(ray, runs, say)
        finally:
            if connected_here:  # disconnects (and stops a local cluster started for the call)
                ray.shutdown()

    def _submit(self, ray: Any, run: PlannedRun) -> Any:
        threads = run.config.threads if run.config.threads is not None else max(1, int(self.cpus))
        config = dataclasses.replace(run.config, out=str(Path(run.config.out).resolve()), threads=threads, quiet=True)
        payload = json.dumps({"config": config.to_dict(), "status": run.status})
        task = ray.remote(_train_task).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0,
                                               name=f"gctnet {run.name}")
        return task.remote(payload, int(self.gpus) if self.gpus >= 1 else 0, str(self._node_log(run)))

    def _node_log(self, run: PlannedRun) -> Path:
        return self.out.resolve() / "jobs" / f"{run.model}-seed{run.seed}.ray.log"

    def _started_on(self, run: PlannedRun, submitted: float) -> Optional[str]:
        """The node the task submitted at ``submitted`` started on (None: not started yet)."""
        log = self._node_log(run)
        try:
            if log.stat().st_mtime < submitted - 1:
                return None
            lines = log.read_text().splitlines()
        except OSError:
            return None
        return lines[-1].partition(" started on ")[2] or None if lines else None

    def _launch(self, ray: Any, runs: Sequence[PlannedRun], say: Say) -> LaunchResult:
        result = LaunchResult()
        pending: dict[Any, tuple[PlannedRun, int, float]] = {}  # ref -> (run, attempt, submitted)
        todo = {run.name: _epochs_left(run) for run in runs}  # epochs each run has to train (a retry: its last todo)
        for run in runs:
            pending[self._submit(ray, run)] = (run, 0, time.time())
        epoch_seconds: list[float] = []  # seconds per epoch of each finished task (over the epochs it trained)
        total = len(runs)

        def counts() -> str:
            started = {ref: bool(self._started_on(run, t)) for ref, (run, _, t) in pending.items()}
            running = sum(started.values())
            done = result.trained + len(result.failures)
            epochs = sum(_epochs_left(run, started[ref]) for ref, (run, _, _) in pending.items())
            when = eta(epoch_seconds, epochs, running)
            return f"[{done}/{total} done, {running} running, {len(pending) - running} queued{', ' + when if when else ''}]"

        say(f"{counts()} {total} run(s) submitted")
        last_line = 0.0
        received = [signal.SIGINT]
        with _signals_as_interrupt(received):  # kill / a closed terminal cancel the tasks as Ctrl-C does
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll)
                    for ref in ready:
                        run, attempt, submitted = pending.pop(ref)
                        try:
                            info = ray.get(ref)
                        except Exception as exc:  # the task raised, or its worker / node died
                            why = _why(exc)
                            node = self._started_on(run, submitted)
                            if node and "(node " not in why:
                                why = f"{why} (node {node})"
                            if attempt < self.max_retries:
                                say(f"{counts()} {run.name}: attempt {attempt + 1} failed ({why}); retrying "
                                    f"({self.max_retries - attempt} retr{'y' if self.max_retries - attempt == 1 else 'ies'} left)")
                                retry = dataclasses.replace(run, status=_status(run))
                                todo[run.name] = _epochs_left(retry)
                                pending[self._submit(ray, retry)] = (retry, attempt + 1, time.time())
                            else:
                                result.failures[run.name] = f"failed {attempt + 1} time(s), last: {why}"
                                say(f"{counts()} {run.name}: FAILED: {result.failures[run.name]}")
                            continue
                        result.trained += 1
                        if todo[run.name]:
                            epoch_seconds.append(info["seconds"] / todo[run.name])
                        say(f"{counts()} {run.name}: finished on {info['node']} in {format_seconds(info['seconds'])}")
                    if not ready and time.monotonic() - last_line > 30:
                        last_line = time.monotonic()
                        say(counts())
            except KeyboardInterrupt:
                self._cancel(ray, pending, say)
                raise TrainingInterrupted(f"interrupted: cancelled {len(pending)} Ray task(s); their run folders keep "
                                          "their last checkpoints", received[-1], str(self.out)) from None
        return result

    def _cancel(self, ray: Any, pending: dict[Any, Any], say: Say) -> None:
        say(f"ray: cancelling {len(pending)} task(s) (running ones save last.pt)...")
        for ref in pending:
            ray.cancel(ref)
        try:
            ray.wait(list(pending), num_returns=len(pending), timeout=self.cancel_timeout)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)


def _status(run: PlannedRun) -> str:
    from .runner import run_status

    return run_status(Path(run.config.out))


def _connect_error(address: str, exc: BaseException) -> str:
    """One line for a failed ``ray.init(address)``: why, and what to check."""
    chain, inner = [str(exc)], exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
        chain.append(str(inner))
    if any("InvalidAuthToken" in text or "AuthenticationError" in text for text in chain):
        return (f"cannot connect to the Ray cluster at {address}: it uses token authentication and this process "
                "has no valid token; set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN or "
                "RAY_AUTH_TOKEN_PATH) here too (docs/compare.md)")
    return f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}; is it running there ('ray status')?"


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _why(exc: BaseException) -> str:
    """One line: the error a task raised (with its node) or why its worker or node died."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TaskFailed):
        return str(cause)
    line = _first_line(cause if cause is not None else exc)
    node = getattr(exc, "ip", None)
    return f"{line} (node {node})" if node else line
