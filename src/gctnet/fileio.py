"""Crash-safe file writes: a file gctnet writes is either the old one or the complete new one.

Every writer goes through :func:`atomic_write`: the content goes to a temporary file in the target's
folder (same file system), is flushed and ``fsync``-ed, then renamed over the target with ``os.replace``
(atomic on POSIX and Windows); the folder is ``fsync``-ed after the rename where the OS allows it.  An
error or interrupt mid-write removes the temporary file and leaves the previous file untouched; an
``OSError`` of the storage (disk full, read-only file system, no permission, ...) becomes a one-line
:class:`gctnet.errors.WriteError` naming the file.
"""

from __future__ import annotations

import errno
import os
import shlex
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

from .errors import WriteError

__all__ = ["atomic_write", "atomic_write_path", "atomic_write_text", "atomic_save", "temp_path", "remove_stale_temp_files",
           "FolderLock"]

PathLike = Union[str, "os.PathLike[str]"]
# what the storage can refuse: full, over quota, read-only, no permission, too large, failing
_STORAGE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO})


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fh)`` on a temporary binary file, then rename it over ``path``; returns ``path``.

    The temporary file is ``.<name>.tmp-<pid>`` next to ``path`` (the folder must exist) and gets the
    permissions a plainly created file would have.
    """

    def write_file(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    return atomic_write_path(path, write_file)


def atomic_write_path(path: PathLike, write: Callable[[Path], Any]) -> Path:
    """:func:`atomic_write` for writers that only take a file name (e.g. ONNX export): ``write(tmp)``
    creates the temporary file, which is then ``fsync``-ed and renamed over ``path``."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno not in _STORAGE_ERRORS:  # e.g. a missing folder: the caller's bug, keep the traceback
            raise
        raise WriteError(f"cannot write {path}: {exc.strerror}; the previous file, if any, is kept") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def temp_path(path: PathLike) -> Path:
    """The temporary file :func:`atomic_write` writes before renaming it to ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temp_files(folder: PathLike) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (``.<name>.tmp-<pid>``); returns them.

    Call it only while holding the folder (see :class:`FolderLock`): a live writer's file would go too.
    """
    removed = []
    for p in Path(folder).glob(".*.tmp-*"):
        if p.is_file() and p.name.rsplit("-", 1)[-1].isdigit():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_text(path: PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8 (newlines written as given)."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` through :func:`atomic_write`: a crash mid-save leaves the previous file."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


class FolderLock:
    """An OS file lock on ``FOLDER/.gctnet.lock``: one process at a time per run or experiment folder.

    ``acquire`` creates the folder (and missing parents) if needed, then takes the lock at once or raises
    :class:`gctnet.errors.RunInUseError` naming the process that holds it (its pid and command line are
    written in the lock file).  The lock is the kernel's (``flock``): it goes away with its process
    however that ends, so a lock file left by a killed process never blocks.  ``release`` deletes the
    file and, with ``remove_created``, the folders ``acquire`` created if they are empty again; leaving
    a ``with`` block by an exception does that, so a start that fails leaves no empty folder behind.
    A folder that cannot be created or written is a one-line :class:`gctnet.errors.SettingsError`.
    Where the OS has no ``flock`` (Windows) the folder is created but not locked.
    """

    NAME = ".gctnet.lock"

    def __init__(self, folder: PathLike, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.what = what
        self.fd: Optional[int] = None
        self.created: list[Path] = []  # leaf first

    def acquire(self) -> "FolderLock":
        from .errors import RunInUseError, SettingsError

        if self.folder.exists() and not self.folder.is_dir():
            raise SettingsError(f"{self.what} {self.folder} is a file; expected a folder")
        missing = []
        for folder in (self.folder, *self.folder.parents):
            if folder.exists():
                break
            missing.append(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a path inside a file, a read-only file system, no permission
            raise SettingsError(f"cannot create the {self.what} {self.folder}: {exc.strerror}") from None
        self.created = missing
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                self.release(remove_created=True)
                raise SettingsError(f"cannot write to the {self.what} {self.folder}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                self.release(remove_created=True)
                raise RunInUseError(f"{self.what} {self.folder} is in use by {owner}; wait for it to finish "
                                    "or stop it") from None
            try:  # the previous holder may have deleted the file between our open and flock: lock the new one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        command = shlex.join(["gctnet", *sys.argv[1:]] if Path(sys.argv[0]).name in ("gctnet", "__main__.py") else sys.argv)
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} ({command})".encode())
        self.fd = fd
        return self

    def release(self, remove_created: bool = False) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: nobody locks a file about to go
            os.close(self.fd)
            self.fd = None
        if remove_created:
            for folder in self.created:
                try:
                    folder.rmdir()
                except OSError:  # not empty: something was made there after all; keep it
                    break
        self.created = []

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.release(remove_created=exc_type is not None)
