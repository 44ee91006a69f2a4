"""The console-script entry point: the CLI behind a last-resort guard that never shows a traceback.

This module imports nothing heavy at module level, so a Ctrl-C while typer, rich and torch are still being
imported is caught here too (the ``memprune.cli`` module cannot catch an interrupt of its own import).
Every input problem is meant to raise a specific :class:`~memprune.errors.MempruneError` inside a command (exit
2); what reaches this guard is either an operating-system error (one line, exit 2) or a bug in memprune (one
line, exit 1; ``MEMPRUNE_DEBUG=1`` re-raises it with the traceback).
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space or write elsewhere",
    errno.EDQUOT: "the disk quota is exhausted: free space or write elsewhere",
    errno.EACCES: "permission denied: choose another path or fix its permissions",
    errno.EPERM: "operation not permitted: choose another path or fix its permissions",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.EISDIR: "a folder is where a file was expected: give a file path",
    errno.ENOTDIR: "a file is where a folder was expected: fix the path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or lower --workers",
}


def main() -> None:
    """``memprune`` console script."""
    sys.exit(guarded(_run))


def _run() -> None:
    from memprune.cli import main as cli_main  # heavy imports (typer, rich, torch) happen inside the guard

    cli_main()


def guarded(fn: Callable[[], object]) -> int:
    """Run ``fn``; return its exit status, turning anything it raises into one line on stderr."""
    try:
        fn()
    except SystemExit as exc:  # typer/click exit normally through SystemExit
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else _say(str(code), 1))
    except KeyboardInterrupt:
        return _say("interrupted", 130)
    except Exception as exc:  # noqa: BLE001 - the whole point: no input ever yields a traceback
        if os.environ.get("MEMPRUNE_DEBUG", "") not in ("", "0"):
            raise
        return _say(*describe(exc))
    return 0


def describe(exc: BaseException) -> tuple[str, int]:
    """The one line (and exit status) for an exception that escaped every command."""
    from memprune.errors import MempruneError

    if isinstance(exc, MempruneError):
        return f"error: {_one_line(str(exc))}", 2
    if isinstance(exc, OSError) and exc.errno in _OS_HINTS:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"error: {exc.strerror or type(exc).__name__}{where}: {_OS_HINTS[exc.errno]}", 2
    return (
        f"internal error: {type(exc).__name__}: {_one_line(str(exc))[:300]} — this is a bug in memprune; "
        "rerun with MEMPRUNE_DEBUG=1 for the traceback",
        1,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _say(message: str, code: int) -> int:
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001, S110 - stderr closed: the exit status still tells
        pass
    return code
