"""Bad inputs through the real ``gctnet`` command, as a new user would type them.

Every case runs ``python -m gctnet ...`` in a subprocess and checks what the user sees: the exit status
(2: the settings or files given cannot be used; 1: a run that started could not finish), a single
``gctnet CMD: error: ...`` line saying what is wrong, no traceback, and the files that were there
before untouched (nothing created either, unless the case says what may appear).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import pytest
import torch

from helpers import WarmPython, make_image_folder, requires_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
RUN_ARGS = ["--model", "resnet20", "--model-kwargs", "width=0.25", "--subset", "128", "--val-subset", "64",
            "--batch-size", "64", "--device", "cpu", "--quiet"]


def _env() -> dict[str, str]:
    src = str(ROOT / "src")
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "GCTNET_NO_TIMM": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": src + (os.pathsep + path if path else "")}


_WARM: list[WarmPython] = []  # the module's warm interpreter, while its tests run


@pytest.fixture(scope="module", autouse=True)
def warm():
    _WARM.append(WarmPython(_env()))
    yield
    _WARM.pop().close()


def gctnet(args: Sequence[str], cwd: Path, prelude: str = "") -> subprocess.CompletedProcess:
    """``gctnet ARGS`` in a process of its own, forked from a warm interpreter (:class:`helpers.WarmPython`:
    its own exit status, stdout and stderr); ``prelude`` is Python run first in that process (to simulate
    a full disk or a read-only file system)."""
    code = f"{prelude}\nimport sys\nfrom gctnet.cli import main\nsys.exit(main())"
    return _WARM[0].run(code, [str(a) for a in args], cwd)


@pytest.mark.parametrize("code", [
    "import sys; print('out'); print('err', file=sys.stderr)",
    "import sys; sys.exit(2)",
    "import sys; sys.exit('gctnet x: error: a message')",
    "raise ValueError('boom')",
    "import atexit, sys; atexit.register(lambda: print('at exit')); print(sys.argv[1:])",
    "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
])
def test_the_warm_interpreter_behaves_as_a_fresh_one(tmp_path, code):
    """Exit status, stdout and stderr of ``python -c CODE a b`` are those of a fresh interpreter."""
    fresh = subprocess.run([sys.executable, "-c", code, "a", "b"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    warm = _WARM[0].run(code, ["a", "b"], tmp_path)
    assert (warm.returncode, warm.stdout) == (fresh.returncode, fresh.stdout)
    assert warm.stderr.splitlines()[-1:] == fresh.stderr.splitlines()[-1:]  # a traceback's last line


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its content."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, command: str, *needles: str) -> str:
    err = proc.stderr
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gctnet {command}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


# ---------------------------------------------------------------- fixtures: a finished run and broken files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """``good/`` (a finished run), broken weights files and a few image folders, in one folder."""
    from gctnet.train import TrainConfig, run

    root = tmp_path_factory.mktemp("bad_inputs")
    run(TrainConfig(model="resnet20", model_kwargs={"width": 0.25}, subset=128, val_subset=64, batch_size=64,
                    epochs=1, device="cpu", quiet=True, out=str(root / "good")))
    good = (root / "good" / "last.pt").read_bytes()
    (root / "truncated.pt").write_bytes(good[: len(good) // 2])
    (root / "empty.pt").write_bytes(b"")
    (root / "garbage.pt").write_bytes(b"these are not weights\n" * 20)
    (root / "garbage.safetensors").write_bytes(b"{not a safetensors header" * 8)
    torch.save({"model": {"w": torch.ones(1)}, "args": __import__("argparse").Namespace(lr=0.1)}, root / "pickled.pt")
    for name in ("truncated.pt", "empty.pt", "garbage.pt", "pickled.pt"):
        run_dir = root / f"run_{name.split('.')[0]}"
        shutil.copytree(root / "good", run_dir)
        (run_dir / "summary.json").unlink()  # an unfinished run whose last.pt is broken
        shutil.copy(root / name, run_dir / "last.pt")
    make_image_folder(root / "corrupt", corrupt=True)
    single = make_image_folder(root / "single")
    shutil.rmtree(single / "train" / "dog")
    shutil.rmtree(single / "val" / "dog")
    extra = make_image_folder(root / "extra_val_class")
    shutil.copytree(extra / "val" / "dog", extra / "val" / "fox")
    (root / "a_file").write_text("not a folder\n")
    return root


BROKEN = ["truncated.pt", "empty.pt", "garbage.safetensors"]
UNREADABLE = "empty, truncated or not a PyTorch or safetensors weights file"


def check(files: Path, args: Sequence[str], code: int, command: str, *needles: str, prelude: str = "",
          may_appear: Optional[str] = None) -> str:
    """Run the case; nothing under ``files`` may change (except new files under ``may_appear``)."""
    before = snapshot(files)
    line = assert_one_line_error(gctnet(args, files, prelude), code, command, *needles)
    after = snapshot(files)
    if may_appear:
        after = {k: v for k, v in after.items() if not (k == may_appear or k.startswith(may_appear + "/"))}
    assert after == before
    return line


pytestmark = requires_fashion_mnist


# ---------------------------------------------------------------- train


def test_unknown_dataset(files):
    check(files, ["train", "--data", "cifar10", "--out", "new"], 2, "train", "unknown dataset 'cifar10'",
          "imagefolder:PATH")


@pytest.mark.parametrize("out, needle", [("a_file", "is a file"), ("a_file/run", "Not a directory")])
def test_out_names_a_file(files, out, needle):
    check(files, ["train", *RUN_ARGS, "--out", out], 2, "train", needle)


def test_out_on_a_read_only_file_system(files):
    prelude = ("import errno, pathlib\n"
               "def refuse(self, *a, **k): raise OSError(errno.EROFS, 'Read-only file system', str(self))\n"
               "pathlib.Path.mkdir = refuse")
    check(files, ["train", *RUN_ARGS, "--out", "new/run"], 2, "train", "cannot create the run folder new/run",
          "Read-only file system", prelude=prelude)


def test_unknown_model_kwargs(files):
    check(files, ["train", *RUN_ARGS, "--model-kwargs", "bogus=1", "--out", "new"], 2, "train", "bogus=1",
          "does not take them")


@pytest.mark.parametrize("name", ["truncated", "empty", "garbage"])
def test_resume_with_an_unreadable_last_pt(files, name):
    check(files, ["train", "--resume", f"run_{name}"], 2, "train", f"cannot read run_{name}/last.pt", UNREADABLE)


def test_resume_with_a_last_pt_that_needs_unpickling(files):
    line = check(files, ["train", "--resume", "run_pickled"], 2, "train", "refusing to read run_pickled/last.pt",
                 "argparse.Namespace")
    assert "weights_only=False" not in line


@pytest.mark.parametrize("name", ["truncated.pt", "empty.pt", "garbage.pt", "pickled.pt"])
def test_init_from_a_broken_file(files, name):
    check(files, ["train", *RUN_ARGS, "--init-from", name, "--out", "new"], 2, "train", name)


def test_subset_larger_than_the_training_set(files):
    check(files, ["train", "--subset", "100000", "--out", "new"], 2, "train", "subset 100000",
          "60000 samples")


def test_image_folder_with_a_single_class(files):
    check(files, ["train", *RUN_ARGS[:4], "--data", "imagefolder:single", "--out", "new"], 2, "train",
          "single class folder (cat)", "at least 2")


def test_val_class_missing_from_train(files):
    check(files, ["train", *RUN_ARGS[:4], "--data", "imagefolder:extra_val_class", "--out", "new"], 2, "train",
          "class folders not present in train/: fox")


def test_corrupt_image_names_the_file_and_the_option(files):
    check(files, ["train", "--model", "resnet20", "--model-kwargs", "width=0.25", "--data", "imagefolder:corrupt",
                  "--batch-size", "4", "--epochs", "1", "--workers", "1", "--device", "cpu", "--quiet", "--out", "img"],
          1, "train", "corrupt/train/dog/broken.png", "--skip-bad-images", may_appear="img")


def test_existing_run_without_a_checkpoint_names_overwrite(files, tmp_path):
    """A run killed before its first checkpoint: --resume cannot continue it, so the hint is --overwrite."""
    (files / "killed_early").mkdir(exist_ok=True)
    shutil.copy(files / "good" / "config.json", files / "killed_early" / "config.json")
    line = check(files, ["train", *RUN_ARGS, "--out", "killed_early"], 2, "train", "--overwrite",
                 "no checkpoint to resume from")
    assert "--resume" not in line


def test_disk_full_while_writing_a_checkpoint(files):
    """One line naming the file, the previous last.pt kept, the temporary file removed."""
    run = files / "full_disk"
    shutil.copytree(files / "good", run)
    before = (run / "last.pt").read_bytes()
    prelude = ("import errno, os\n_fsync = os.fsync\n"
               "def fsync(fd):\n"
               "    if 'last.pt' in os.readlink(f'/proc/self/fd/{fd}'):\n"
               "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
               "    _fsync(fd)\n"
               "os.fsync = fsync")
    proc = gctnet(["train", "--resume", "full_disk", "--epochs", "2"], files, prelude)
    assert_one_line_error(proc, 1, "train", "cannot write full_disk/last.pt", "No space left on device",
                          "previous file")
    assert (run / "last.pt").read_bytes() == before
    assert not list(run.glob(".*.tmp-*"))


# ---------------------------------------------------------------- eval / analyze / finetune on broken files


@pytest.mark.parametrize("name", BROKEN)
def test_eval_a_broken_file(files, name):
    check(files, ["eval", name], 2, "eval", f"cannot read {name}", UNREADABLE)


@pytest.mark.parametrize("name", BROKEN)
def test_analyze_a_broken_file(files, name):
    check(files, ["analyze", name, "--no-data"], 2, "analyze", f"cannot read {name}", UNREADABLE)


@pytest.mark.parametrize("name", BROKEN)
def test_finetune_from_a_broken_file(files, name):
    check(files, ["finetune", "--plain", name, "--out", "ft"], 2, "finetune", f"cannot read {name}", UNREADABLE)


def test_eval_json_into_a_closed_pipe(files):
    """``gctnet eval --json - | head -1``: the reader leaving early is not an error of ours."""
    code = "import sys\nfrom gctnet.cli import main\nsys.exit(main())"
    cmd = f"{sys.executable} -c '{code}' eval good --json - | head -1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=files, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout == "{\n" and proc.stderr == "", proc.stderr


# ---------------------------------------------------------------- two processes on one folder


def test_a_second_process_on_a_run_folder_is_refused(files):
    from gctnet.fileio import FolderLock

    with FolderLock(files / "good"):  # this test process plays the first gctnet
        check(files, ["train", "--resume", "good", "--epochs", "2"], 2, "train", "run folder good is in use by",
              f"process {os.getpid()}")
    assert not (files / "good" / FolderLock.NAME).exists()


def test_a_second_process_on_a_compare_folder_is_refused(files):
    from gctnet.fileio import FolderLock

    (files / "cmp").mkdir(exist_ok=True)
    with FolderLock(files / "cmp"):
        check(files, ["compare", "--models", "resnet20", "--seeds", "0,", "--out", "cmp", "--epochs", "1"], 2,
              "compare", "is in use by", f"process {os.getpid()}")


def test_a_lock_left_by_a_dead_process_does_not_block(files):
    from gctnet.fileio import FolderLock

    run = files / "stale_lock"
    shutil.copytree(files / "good", run)
    (run / "summary.json").unlink()
    # a process that takes the lock and dies without releasing it (as after kill -9): the file stays
    code = "import os, sys\nfrom gctnet.fileio import FolderLock\nFolderLock(sys.argv[1]).acquire()\nos._exit(0)"
    subprocess.run([sys.executable, "-c", code, str(run)], env=_env(), check=True, timeout=120)
    assert (run / FolderLock.NAME).is_file()
    proc = gctnet(["train", "--resume", "stale_lock"], files)  # finishes the run (its last epoch was saved)
    assert proc.returncode == 0, proc.stderr
    assert (run / "summary.json").is_file() and not (run / FolderLock.NAME).exists()
