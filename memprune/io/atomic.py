"""Atomic files: a temporary beside the target, fsynced and renamed into place, cleaned up on every exit path.

Every file memprune writes passes through :func:`staged_file` (or :func:`atomic_write` on top of it): readers see
the old file or the new one, never a partial one; Ctrl-C, SIGTERM and SIGHUP remove the temporaries; temporaries
of killed runs are removed by the next write into the same folder; a full disk is one :class:`MempruneError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memprune.errors import MempruneError

__all__ = ["StagedFile", "staged_file", "atomic_write", "remove_stale_temps"]

# Temporary names carry a marker and the writer's pid, so a later run can tell its own leftovers from another
# program's files and remove those of processes that no longer exist (a kill -9 runs no cleanup).
_TMP_MARK = "memprune"
_TMP_RE = re.compile(rf"^\..+\.{_TMP_MARK}-(\d+)-[0-9a-f]+\.tmp$")
_LIVE: set[Path] = set()  # temporaries of this process, removed by the signal handler
_HANDLED: dict[int, Any] = {}
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@dataclass
class StagedFile:
    """A temporary file beside ``target`` that becomes ``target`` only on :meth:`commit`."""

    target: Path
    tmp: Path
    committed: bool = False

    def commit(self) -> None:
        """fsync the temporary, rename it onto the target (atomic on POSIX) and flush the folder entry."""
        with _write_errors(self.target):
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.target)
        self.committed = True
        _LIVE.discard(self.tmp)
        _fsync_dir(self.target.parent)

    def discard(self) -> None:
        if not self.committed:
            with contextlib.suppress(OSError):
                self.tmp.unlink()
        _LIVE.discard(self.tmp)


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[StagedFile]:
    """Create a temporary next to ``path``; the caller writes it and calls ``commit()`` when it is complete.

    Used when several files must be committed in a chosen order (``patch`` renames the weights, then the
    manifest). Leaving the block without ``commit()``, by an exception, Ctrl-C, SIGTERM or SIGHUP, removes the
    temporary; a full disk (ENOSPC, EDQUOT, EFBIG) becomes one :class:`MempruneError`. The file is created with
    mode ``0o666`` minus the umask, as ``open()`` would create it.
    """
    target = Path(path)
    remove_stale_temps(target.parent)
    _install_signal_handlers()
    staged = StagedFile(target, _create_temp(target))
    try:
        with _write_errors(target):
            yield staged
    finally:
        staged.discard()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it onto ``path``.

    On any exception (or KeyboardInterrupt, SIGTERM, SIGHUP) the temporary file is removed and ``path`` is
    untouched; a full disk is reported as one :class:`MempruneError`. The caller writes to the yielded path
    itself (open it, or hand it to a library).
    """
    with staged_file(path) as staged:
        yield staged.tmp
        staged.commit()


def _create_temp(target: Path) -> Path:
    # O_EXCL with mode 0o666: the kernel applies the umask (mkstemp would force 0600 on every output).
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{_TMP_MARK}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _as_error(exc, target) from None
        os.close(fd)
        _LIVE.add(tmp)
        return tmp
    raise MempruneError(f"could not create a temporary file in {target.parent}: remove stray .*.tmp files there")


@contextlib.contextmanager
def _write_errors(target: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            raise _as_error(exc, target) from None
        raise


def _as_error(exc: OSError, target: Path) -> MempruneError:
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _FULL:
        return MempruneError(
            f"cannot write {target.name}: {reason} in {target.parent}; nothing was written: free space (or raise the "
            "quota/file-size limit) or choose another output folder"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return MempruneError(f"cannot write {target.name} into {target.parent} ({reason}): choose a writable output folder")
    return MempruneError(f"cannot write {target.name} into {target.parent} ({reason}): check the output folder")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete memprune temporaries in ``folder`` whose writing process no longer exists (it was killed).

    Returns the removed paths. Temporaries of live processes (a parallel run) are left alone.
    """
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            m = _TMP_RE.match(entry.name)
            if m and not _pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _install_signal_handlers() -> None:
    """On SIGTERM/SIGHUP remove this process's temporaries, then die of the signal as before.

    Installed once, from the main thread only (Python delivers signals there); an ignored signal stays ignored
    and an earlier Python handler is called after the cleanup.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None or signum in _HANDLED:
            continue
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN or previous is _on_signal:
            continue
        _HANDLED[signum] = previous
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame: Any) -> None:
    for tmp in list(_LIVE):
        with contextlib.suppress(OSError):
            tmp.unlink()
        _LIVE.discard(tmp)
    previous = _HANDLED.get(signum)
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is flushed (POSIX); not possible on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
