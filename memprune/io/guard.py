"""The output guard: every writing command checks its output path here before any work starts.

One function, :func:`check_output`, decides whether a path may be written: its folder exists and is writable,
it is not a FIFO, device node or folder (``os.replace`` would swap a regular file in for ``/dev/null``), its
suffix matches what is written, and it is none of the inputs. Inputs are compared by ``(st_dev, st_ino)``, so a
symlink, a hard link, a relative spelling or a checkpoint given as its folder cannot slip through.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from memprune.errors import MempruneError
from memprune.io.paths import _KINDS, check_output_file

__all__ = ["check_output", "checkpoint_files"]

InputLike = str | os.PathLike | None


def check_output(
    path: str | os.PathLike,
    inputs: Iterable[InputLike] = (),
    *,
    suffix: str | Sequence[str] | None = None,
    overwrite: bool = True,
    what: str = "output",
) -> Path:
    """Validate an output file path before anything is computed or written; return it as a ``Path``.

    Args:
        path: the file that will be written (atomically, through :func:`memprune.io.atomic_write`).
        inputs: every file the command reads, so the output can never replace one of them. Give files
            (checkpoints, their shards, score files, data CSVs, each image a CSV lists) or folders (every file
            below them counts). ``None`` and ``hf://`` references are skipped. For a checkpoint argument pass
            ``*checkpoint_files(arg)``, which expands a folder or a sharded index into all of its files.
        suffix: what the written file must end with (``".safetensors"``; a sequence allows several). A path
            with another suffix is refused instead of silently holding a different format.
        overwrite: when False an existing output is refused (the CLI's ``--overwrite`` policy decides the
            value); the default True keeps replacing an existing regular file.
        what: how the path is named in messages (``output``, ``manifest``).

    Raises:
        MempruneError: one line naming the problem and the fix.
    """
    out = Path(path)
    if str(path).startswith("hf://"):
        raise MempruneError(f"{what} {path} is a Hub reference: write to a local file, then `memprune push` it")
    if out.is_dir():  # said first: "is a folder" tells more than "must end in .safetensors"
        raise MempruneError(f"{what} {out} is a folder: give a file path such as {out / ('model' + _first(suffix, '.out'))}")
    if suffix is not None:
        allowed = (suffix,) if isinstance(suffix, str) else tuple(suffix)
        if not out.name.endswith(allowed) or out.name in allowed:
            raise MempruneError(f"{what} {out} must end in {' or '.join(allowed)}: that is the format written; rename the -o path")
    check_output_file(out, what)  # the folder exists, is a folder and is writable (one copy of those checks)
    try:
        st = os.stat(out)
    except FileNotFoundError:
        return out  # nothing there yet, so it cannot be an input (inputs exist)
    except OSError as exc:
        raise MempruneError(f"{what} {out} cannot be examined ({exc.strerror}): choose another -o path") from None
    if stat.S_ISDIR(st.st_mode):
        raise MempruneError(f"{what} {out} is a folder: give a file path such as {out / ('model' + _first(suffix, '.out'))}")
    if not stat.S_ISREG(st.st_mode):
        raise MempruneError(f"{what} {out} is a {_kind(st.st_mode)}, not a regular file: memprune only replaces regular files; choose another -o path")
    _refuse_inputs(out, (st.st_dev, st.st_ino), inputs, what)
    if not overwrite:
        raise MempruneError(f"{what} {out} already exists: pass --overwrite to replace it, or choose another -o path")
    return out


def checkpoint_files(checkpoint: InputLike) -> list[Path]:
    """Every local file a checkpoint argument stands for: the file, or a folder's files, or an index and its shards.

    Never raises: an unreadable index contributes itself only (the reader reports its problem later).
    """
    if checkpoint is None or str(checkpoint).startswith("hf://"):
        return []
    p = Path(checkpoint)
    if p.is_dir():
        return [p]  # the folder: check_output compares against every file below it
    files = [p]
    if p.name.endswith(".index.json") and p.is_file():
        try:
            weight_map = json.loads(p.read_text(encoding="utf-8")).get("weight_map") or {}
            shards = weight_map.values() if isinstance(weight_map, dict) else []
            files += [p.parent / s for s in shards if isinstance(s, str)]
        except (OSError, ValueError, AttributeError):
            pass
    return files


def _refuse_inputs(out: Path, ident: tuple[int, int], inputs: Iterable[InputLike], what: str) -> None:
    for inp in inputs:
        if inp is None or str(inp).startswith("hf://"):
            continue
        p = Path(inp)
        try:
            st = os.stat(p)
        except OSError:
            continue  # a missing input is the reader's error to report
        if stat.S_ISDIR(st.st_mode):
            hit = _inside(p, ident, st.st_dev)
            if hit is not None:
                raise MempruneError(f"{what} {out} is the input file {hit} (in {p}): memprune never writes over its input; choose another -o path")
        elif (st.st_dev, st.st_ino) == ident:
            raise MempruneError(f"{what} {out} is the input file {p}: memprune never writes over its input; choose another -o path")


def _inside(folder: Path, ident: tuple[int, int], dev: int) -> Path | None:
    """The file below ``folder`` with identity ``ident``, if any (other file systems cannot hold it)."""
    if dev != ident[0]:
        return None
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                    continue
                est = entry.stat()
            except OSError:
                continue
            if (est.st_dev, est.st_ino) == ident:
                return Path(entry.path)
    return None


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def _first(suffix: str | Sequence[str] | None, default: str) -> str:
    if suffix is None:
        return default
    return suffix if isinstance(suffix, str) else (suffix[0] if suffix else default)
