"""One module per ``gctnet`` sub-command: ``add_arguments(parser)`` and ``run(args) -> int``.

Command modules only parse and call library functions.  Errors are not caught here: gctnet's own
(:mod:`gctnet.errors`) become a one-line message and an exit status in :func:`gctnet.cli.main`.
"""

from ..errors import UsageError

__all__ = ["UsageError", "check_output_file"]


def check_output_file(option: str, path: str) -> None:
    """Raise :class:`UsageError` up front (before a long run) when ``path`` cannot be written: its
    folder is missing or not writable, or it names a folder."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a folder; expected a file path")
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path!r}: folder {folder!r} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{option} {path!r}: folder {folder!r} is not writable")
