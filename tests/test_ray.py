"""gctnet compare --ray ADDRESS on a real local Ray cluster (2 CPUs, 127.0.0.1 only): the same weights as
the local sequential runs, skipping of finished runs, a run that keeps failing is retried, reported and
does not stop the others.  Skipped when Ray is not installed (pip install 'gctnet[ray]')."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gctnet import compare
from gctnet.experiments.ray_launcher import LOOPBACK_ENV
from helpers import requires_fashion_mnist

# Ray reads this once, at import: without it a Linux driver swaps 127.0.0.1 for the machine's address
os.environ[LOOPBACK_ENV] = "0"
# token authentication, as docs/compare.md asks of a real cluster, with a token of this test session's own
# (in the environment, inherited by the cluster and the CLI processes: nothing is written to ~/.ray)
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'gctnet[ray]'); make test installs it")
pytestmark = [requires_fashion_mnist, pytest.mark.timeout(600)]

#: Ray's own HTTP calls sent to a closed loopback port (discard, 9).  Even with usage stats off, Ray 2.60's
#: dashboard process asks the cloud metadata address 169.254.169.254 once at start, and a `ray start`
#: cluster tells usage-stats.ray.io that usage stats are off; gRPC between Ray's processes bypasses the
#: proxy (no_proxy).  docs/compare.md gives the same variables for a cluster that must stay on the machine.
OFFLINE = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
           **{k: "http://127.0.0.1:9" for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")},
           **{k: "127.0.0.1,localhost" for k in ("no_proxy", "NO_PROXY")}}

SRC = str(Path(compare.__file__).resolve().parents[1])
MODELS = ["resnet20", "gct_resnet20"]
OPTIONS = {"epochs": 1, "subset": 128, "val_subset": 128, "batch_size": 64, "model_kwargs": {"width": 0.5},
           "quiet": True, "workers": 0, "deterministic": True}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == sid:  # field 6 of stat: the session id
                pids.add(int(entry))
    return pids


def _sockets(pids: set[int], listening: bool) -> list[tuple[str, str]]:
    """(local, peer) addresses of the TCP sockets of the processes ``pids`` (``ss -ltnp``: listening ones;
    ``ss -tnp``: connections)."""
    out = subprocess.run(["ss", "-ltnpH" if listening else "-tnpH"], capture_output=True, text=True).stdout
    return [(line.split()[3], line.split()[4]) for line in out.splitlines()
            if any(int(p) in pids for p in re.findall(r"pid=(\d+)", line))]


def _off_loopback(sockets: list[tuple[str, str]], listening: bool) -> list[tuple[str, str]]:
    """The sockets whose address (or, for a connection, either end) is not IPv4 loopback (also as an
    IPv4-mapped IPv6 address: gRPC's dual-stack sockets)."""
    def loopback(address: str) -> bool:
        return address.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))

    return [s for s in sockets if not (loopback(s[0]) and (listening or loopback(s[1])))]


class LoopbackWatch:
    """Samples, in a thread, every TCP socket of the cluster's session and of this process until
    stopped; ``seen`` counts the sockets, ``off`` collects those not on 127.0.0.1."""

    def __init__(self, sid: int) -> None:
        self.sid, self.seen, self.off = sid, 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            pids = _session_pids(self.sid) | {os.getpid()}
            for listening in (True, False):
                sockets = _sockets(pids, listening)
                self.seen += len(sockets)
                self.off.update(_off_loopback(sockets, listening))
            self._stop.wait(0.3)

    def __enter__(self) -> "LoopbackWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``ray start --head`` on 127.0.0.1 with 2 CPUs and 2 declared GPUs (for the torchrun-in-a-task path,
    run on CPU) (its own session, ended by killing that session)."""
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, **OFFLINE, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--num-gpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True, text=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert head.poll() is None, head.communicate()[0]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        while time.monotonic() < deadline:  # the raylet (node manager, object manager) comes up after the GCS
            if len(_sockets(_session_pids(head.pid), listening=True)) >= 3:
                break
            assert head.poll() is None, head.communicate()[0]
            time.sleep(0.5)
        else:
            pytest.fail(f"the Ray head did not open its ports within 120 s: {_sockets(_session_pids(head.pid), True)}")
        yield address, head.pid
    finally:
        if ray.is_initialized():
            ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        for pid in _session_pids(head.pid):  # workers that outlived the head
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_cluster_listens_on_loopback_only(cluster):
    _, sid = cluster
    sockets = _sockets(_session_pids(sid), listening=True)
    assert len(sockets) >= 3, f"expected the GCS, raylet and object manager ports, found {sockets}"
    assert not _off_loopback(sockets, listening=True), sockets


def test_loopback_check_sees_other_addresses():
    # the check itself: a port on every interface, or a connection to another host, is caught
    assert _off_loopback([("0.0.0.0:6379", "0.0.0.0:*"), ("127.0.0.1:1", "0.0.0.0:*")], listening=True) == [
        ("0.0.0.0:6379", "0.0.0.0:*")]
    assert _off_loopback([("127.0.0.1:5", "192.0.2.2:6379"), ("[::ffff:127.0.0.1]:5", "127.0.0.1:9")],
                         listening=False) == [("127.0.0.1:5", "192.0.2.2:6379")]


def test_ray_comparison_gives_the_local_weights(cluster, tmp_path):
    from test_launchers import same_weights

    local, remote = tmp_path / "local", tmp_path / "ray"
    compare.run(MODELS, "0,", local, train_options=OPTIONS, log=None, analyze=False)
    lines: list[str] = []
    address, sid = cluster
    with LoopbackWatch(sid) as watch:  # the driver (this process), GCS, raylet and workers
        result = compare.run(MODELS, "0,", remote, train_options=OPTIONS, log=lines.append, analyze=False,
                             ray=address, ray_options={"cpus_per_run": 1})
    assert watch.seen > 0 and not watch.off, f"Ray sockets off 127.0.0.1: {sorted(watch.off)}"
    assert result.trained == 2 and result.report.is_file()
    for model in MODELS:
        assert same_weights(local, remote, model, 0), model
    assert any("2 node(s)" in line or "1 node(s)" in line for line in lines)
    assert any(line.startswith("[2/2 done, 0 running, 0 queued") and "finished on" in line for line in lines), lines
    assert not list(remote.glob(".gctnet-ray-probe-*"))
    again = compare.run(MODELS, "0,", remote, train_options=OPTIONS, log=None, analyze=False, ray=address)
    assert again.trained == 0 and again.skipped == 2


def test_a_run_that_keeps_failing_is_retried_and_reported(cluster, tmp_path):
    from gctnet.errors import RunError

    address, _ = cluster
    out = tmp_path / "cmp"
    bad = compare.run_dir(out, "gct_resnet20", 0)
    bad.mkdir(parents=True)
    (bad / "config.json").write_text("{not json")  # resuming this broken attempt fails on every node
    (bad / "last.pt").write_text("garbage")
    lines: list[str] = []
    with pytest.raises(RunError, match="gct_resnet20 seed 0: failed 2 time\\(s\\), last: ConfigError: .*\\(node .*127\\.0\\.0\\.1\\)"):
        compare.run(MODELS, "0,", out, train_options=OPTIONS, log=lines.append, analyze=False, ray=address,
                    ray_options={"cpus_per_run": 1, "max_retries": 1})
    assert any("gct_resnet20 seed 0: attempt 1 failed" in line and "retrying" in line for line in lines), lines
    assert (compare.run_dir(out, "resnet20", 0) / "summary.json").is_file()  # the other run finished


def test_a_local_cluster_started_for_the_call_stays_on_loopback(tmp_path, monkeypatch):
    # no address: the launcher starts a cluster of its own (never the fixture's) and stops it afterwards
    for key, value in OFFLINE.items():  # inherited by the cluster processes ray.init starts
        monkeypatch.setenv(key, value)
    lines: list[str] = []
    with LoopbackWatch(os.getsid(0)) as watch:  # this process and the cluster processes it starts
        result = compare.run(MODELS[:1], "0,", tmp_path, train_options=OPTIONS, log=lines.append, analyze=False,
                             ray="", cost_repeats=0)
    assert result.trained == 1
    assert any(line.startswith("ray: started a local cluster: 1 node(s)") for line in lines), lines
    assert watch.seen > 0 and not watch.off, f"Ray sockets off 127.0.0.1: {sorted(watch.off)}"
    assert not ray.is_initialized()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_or_kill_cancels_the_tasks_and_a_rerun_resumes(cluster, tmp_path, signum):
    from gctnet.experiments.runner import run_status

    address, _ = cluster
    out = tmp_path / "cmp"
    run = compare.run_dir(out, "resnet20", 0)
    cmd = [sys.executable, "-m", "gctnet", "compare", "--models", "resnet20", "--seeds", "0,", "--out", str(out),
           "--ray", address, "--epochs", "30", "--subset", "256", "--val-subset", "128", "--batch-size", "64",
           "--model-kwargs", "width=0.5", "--workers", "0", "--deterministic", "--quiet", "--no-analyze",
           "--cost-repeats", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:  # until the first epoch is written
        metrics = run / "metrics.csv"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signum)
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 128 + signum, output
    assert "cancelling 1 task(s)" in output and "interrupted" in output, output
    assert run_status(run) == "resume" and not (run / "summary.json").exists()
    if signum == signal.SIGTERM:
        return  # the rerun is the same for both
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == 30
    assert "resum" in (run / "log.txt").read_text()


def test_a_client_without_the_token_gets_a_one_line_error(cluster, tmp_path):
    address, _ = cluster
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_NUM_REDIS_GET_RETRIES": "2"}  # Ray's ~20 s of retries
    env.pop("RAY_AUTH_TOKEN")
    proc = subprocess.run([sys.executable, "-m", "gctnet", "compare", "--models", "resnet20", "--seeds", "0,",
                           "--out", str(tmp_path), "--ray", address, "--epochs", "1", "--subset", "64"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"gctnet compare: error: cannot connect to the Ray cluster at {address}: ") and \
        "RAY_AUTH_TOKEN" in last, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_several_gpus_per_run_train_one_run_with_ddp_inside_the_task(cluster, tmp_path):
    # the cluster declares 2 GPUs it does not have: the task gets them and starts torchrun with 2
    # processes, which train on the CPU here (gloo) as they would on the GPUs of a real node
    address, _ = cluster
    result = compare.run(MODELS[:1], "0,", tmp_path, train_options={**OPTIONS, "device": "cpu"}, log=None,
                         analyze=False, ray=address, ray_options={"cpus_per_run": 1, "gpus_per_run": 2}, cost_repeats=0)
    assert result.trained == 1
    summary = json.loads((compare.run_dir(tmp_path, "resnet20", 0) / "summary.json").read_text())
    assert summary["finished"] and summary["world_size"] == 2


def _task_pids(name: str) -> list[int]:
    """Processes whose title is Ray's for the running task ``name`` (``ray::<task name>``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith(f"ray::{name}"):
                pids.append(int(entry))
    return pids


def test_a_worker_that_dies_is_retried_and_the_run_resumes(cluster, tmp_path):
    address, _ = cluster
    out = tmp_path / "cmp"
    run = compare.run_dir(out, "resnet20", 0)
    lines: list[str] = []
    options = {**OPTIONS, "epochs": 30, "subset": 256}
    killed: list[int] = []

    def kill_the_worker() -> None:  # once the first epoch's checkpoint is saved, SIGKILL the task's worker process
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            # metrics.csv gets the epoch's row before last.pt is saved (atomically): wait for both, or a kill
            # between the two (seen under load) leaves nothing to resume and the retry rightly starts afresh
            metrics = run / "metrics.csv"
            if (run / "last.pt").is_file() and metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                for pid in _task_pids("gctnet resnet20 seed 0"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    result = compare.run(["resnet20"], "0,", out, train_options=options, log=lines.append, analyze=False,
                         ray=address, ray_options={"cpus_per_run": 1, "max_retries": 1}, cost_repeats=0)
    killer.join()
    assert killed, "the task's worker process was not found"
    assert result.trained == 1
    failed = [line for line in lines if "resnet20 seed 0: attempt 1 failed" in line]
    assert failed and "retrying" in failed[0] and "WorkerCrashedError" in failed[0], lines
    assert "(node " in failed[0] and "127.0.0.1" in failed[0], failed  # from the task's OUT/jobs/*.ray.log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == 30
    assert "resum" in (run / "log.txt").read_text()  # the retry continued from the last checkpoint
