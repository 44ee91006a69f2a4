"""Checks on user-given paths, made before anything is opened or written.

Input files must be regular files: opening a FIFO blocks until a writer appears and a character device such
as ``/dev/urandom`` never ends, so both would hang a command instead of failing. ``os.stat`` follows symbolic
links, so a link is judged by what it points to. Output locations are checked up front (a file where a folder
is expected and the reverse, a read-only folder) so that a command fails before it spends minutes computing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from memprune.errors import MempruneError

_KINDS = (
    (stat.S_ISFIFO, "named pipe (FIFO)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def shown(path: str | os.PathLike) -> str:
    """A path as it can be printed: bytes that are not UTF-8 in a file name appear as ``\\xNN`` escapes."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def check_input_file(path: str | os.PathLike, what: str = "input file") -> Path:
    """Return ``path`` if it is an existing regular file (or a link to one); raise otherwise.

    Raises:
        MempruneError: missing, a folder, a FIFO, a device or socket, or not accessible.
    """
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise MempruneError(f"{what} {shown(p)} does not exist: check the path") from None
    except OSError as exc:
        raise MempruneError(f"cannot access {what} {shown(p)} ({exc.strerror}): check the path and its permissions") from None
    if stat.S_ISDIR(mode):
        raise MempruneError(f"{what} {shown(p)} is a folder: give the file itself")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "special file")
        raise MempruneError(
            f"{what} {shown(p)} is a {kind}, not a regular file: memprune reads regular files only "
            "(reading it could block forever); copy the data into a file first"
        )
    return p


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check that ``path`` is, or can be created as, a writable folder (nothing is created here).

    Raises:
        MempruneError: ``path`` (or a parent) is an existing file, or the folder that would hold it is not writable.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise MempruneError(f"{what} {shown(p)} is a file: give a folder (it is created if missing)")
    _check_writable_folder(_nearest_existing(p), p, what)
    return p


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Check that ``path`` can be written as a file: not a folder, and its folder exists and is writable.

    Raises:
        MempruneError: naming the problem and the fix.
    """
    p = Path(path)
    if p.is_dir():
        raise MempruneError(f"{what} {shown(p)} is a folder: give a file path inside it")
    parent = p.parent
    if not parent.exists():
        raise MempruneError(f"the folder of {what} {shown(p)} does not exist: create {shown(parent)} first or choose another path")
    if not parent.is_dir():
        raise MempruneError(f"{what} {shown(p)} lies under {shown(parent)}, which is a file: choose a path inside a folder")
    _check_writable_folder(parent, p, what)
    return p


def _nearest_existing(p: Path) -> Path:
    for candidate in (p, *p.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _check_writable_folder(folder: Path, target: Path, what: str) -> None:
    if not folder.is_dir():
        raise MempruneError(f"{what} {shown(target)} cannot be created: {shown(folder)} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MempruneError(
            f"{what} {shown(target)} cannot be written: folder {shown(folder)} is read-only for you; "
            "choose another path or fix its permissions"
        )
