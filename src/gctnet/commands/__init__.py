"""One module per ``gctnet`` sub-command: ``add_arguments(parser)`` and ``run(args) -> int``.

Command modules only parse and call library functions.  They raise :class:`UsageError` for invalid
argument combinations; the CLI prints it as a usage error (exit status 2) instead of a traceback.
"""


class UsageError(Exception):
    """Invalid command-line arguments (printed as ``gctnet CMD: error: ...``, exit 2)."""
