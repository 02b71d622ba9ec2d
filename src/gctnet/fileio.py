"""Crash-safe file writes: a file gctnet writes is either the old one or the complete new one.

Every writer goes through :func:`atomic_write`: the content goes to a temporary file in the target's
folder (same file system), is flushed and ``fsync``-ed, then renamed over the target with ``os.replace``
(atomic on POSIX and Windows); the folder is ``fsync``-ed after the rename where the OS allows it.  An
error or interrupt mid-write removes the temporary file and leaves the previous file untouched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

__all__ = ["atomic_write", "atomic_write_text", "atomic_save"]

PathLike = Union[str, "os.PathLike[str]"]


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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8 (newlines written as given)."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` through :func:`atomic_write`: a crash mid-save leaves the previous file."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))
