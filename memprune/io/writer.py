"""Writing: safetensors (streamed tensor by tensor) and JSON, always atomically.

Reading never executes untrusted code: safetensors are opened lazily with ``safe_open``; pickles
(``.pth``/``.pt``/``.bin``) go through ``torch.load(weights_only=True)`` and nothing else. Writing produces
safetensors only, through a temporary file in the target folder that is fsynced and renamed into place,
so a crash never leaves a partial output.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import signal
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from memprune.errors import MempruneError
from memprune.io.guard import check_output, checkpoint_files
from memprune.io.reader import open_checkpoint

__all__ = [
    "load_state_dict",
    "atomic_write",
    "save_safetensors",
    "write_safetensors_stream",
    "write_safetensors_to",
    "safetensors_header",
    "write_json_atomic",
    "sha256_file",
    "checkpoint_sha256",
    "check_output_path",
    "staged_file",
    "StagedFile",
    "remove_stale_temps",
]

# safetensors dtype codes (the format's own names).
_ST_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        _ST_DTYPES[getattr(torch, _name)] = _code


def load_state_dict(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load every tensor of a checkpoint (any supported format) into memory.

    Args:
        path: a ``.safetensors`` file, a sharded ``*.safetensors.index.json`` (or the folder holding it),
            or a pickled state dict (``.pth``, ``.pt``, ``.bin``), loaded with ``weights_only=True``.
        device: where to put the tensors.

    Returns:
        The flat state dict, wrappers such as ``{"model": ...}`` removed and ``module.``/``_orig_mod.``
        prefixes stripped; buffers included, dtypes kept.

    Raises:
        MempruneError: missing, corrupted or unsafe files.
    """
    with open_checkpoint(path) as ckpt:
        return {k: ckpt.get(k).to(device) for k in ckpt.keys()}


def sha256_file(path: str | os.PathLike, chunk: int = 16 << 20) -> str:
    """Hex sha256 of a file, read in chunks so memory stays flat."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(chunk))  # one buffer, reused: a new 16 MB block per read grows the heap in threads
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(buf[:n])
    return h.hexdigest()


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """The digest that identifies a checkpoint in score files and manifests.

    For one file it is the file's sha256. For a sharded set (``*.safetensors.index.json``) it is the sha256 of
    the lines ``<shard name> <shard sha256>`` in name order, so it does not depend on where the set lives.
    """
    p = Path(path)
    if not p.name.endswith(".index.json"):
        return sha256_file(p)
    index = json.loads(p.read_text(encoding="utf-8"))
    shards = sorted(set(index.get("weight_map", {}).values()))
    lines = "".join(f"{name} {sha256_file(p.parent / name)}\n" for name in shards)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def check_output_path(output: str | os.PathLike, *inputs: str | os.PathLike | None, suffix: str | None = None) -> Path:
    """Validate an output path before any work starts (kept for existing callers; see :func:`check_output`).

    Each input may be a checkpoint argument: a folder or a sharded index is expanded into all of its files.
    """
    return check_output(output, [f for inp in inputs for f in checkpoint_files(inp)], suffix=suffix)


# ------------------------------------------------------------------------------------------- atomic files
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


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    """Write ``obj`` as indented JSON through :func:`atomic_write`."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _st_dtype(dtype: torch.dtype, name: str) -> str:
    try:
        return _ST_DTYPES[dtype]
    except KeyError:
        raise MempruneError(f"tensor {name} has dtype {dtype}, which safetensors cannot store") from None


def write_safetensors_stream(
    path: str | os.PathLike,
    specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Iterable[tuple[str, torch.Tensor]],
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write a safetensors file tensor by tensor, so peak memory is one tensor, not the whole model.

    The header (names, dtypes, shapes, byte offsets) is laid out from ``specs`` first; then ``produce``
    must yield the same names in the same order with matching dtypes and shapes. The file is written
    atomically.

    Args:
        path: output file.
        specs: ``(name, dtype, shape)`` for every tensor, in file order.
        produce: ``(name, tensor)`` pairs in the same order.
        metadata: string-to-string header metadata; ``format: pt`` is always set.

    Returns:
        The sha256 of the written file, computed from the bytes as they were written (no re-read).
    """
    with staged_file(path) as staged:
        digest = write_safetensors_to(staged.tmp, specs, produce, metadata)
        staged.commit()
    return digest


def safetensors_header(specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]], metadata: Mapping[str, str] | None) -> bytes:
    """The 8-byte length plus the padded JSON header for tensors laid out contiguously in ``specs`` order."""
    meta = dict(metadata or {})
    meta["format"] = "pt"
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise MempruneError(f"safetensors metadata must map strings to strings; got {k!r}: {type(v).__name__}")
    header: dict[str, object] = {"__metadata__": meta}
    offset = 0
    for name, dtype, shape in specs:
        nbytes = _numel(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _st_dtype(dtype, name), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to an 8-byte boundary
    return struct.pack("<Q", len(raw)) + raw


def write_safetensors_to(
    file: str | os.PathLike,
    specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Iterable[tuple[str, torch.Tensor]],
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write a safetensors file at ``file`` directly (no rename: for a :func:`staged_file` temporary).

    Returns the sha256 of the bytes written.
    """
    specs = list(specs)
    head = safetensors_header(specs, metadata)
    digest = hashlib.sha256()
    with open(file, "wb") as f:
        f.write(head)
        digest.update(head)
        expected = iter(specs)
        for name, tensor in produce:
            want = next(expected, None)
            if want is None or want[0] != name or want[1] != tensor.dtype or tuple(want[2]) != tuple(tensor.shape):
                raise RuntimeError(f"tensor stream out of order at {name}: expected {want}")
            _write_tensor(f, tensor, digest)
        if next(expected, None) is not None:
            raise RuntimeError("tensor stream ended before every declared tensor was written")
        f.flush()
    return digest.hexdigest()


def read_safetensors_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file whatever its name (a temporary being checked before commit)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error type for a malformed file
        raise MempruneError(f"{path} could not be read back ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _write_tensor(f, tensor: torch.Tensor, digest) -> None:
    t = tensor.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return
    # Reinterpret as bytes (little-endian on every platform torch supports) without a dtype round-trip,
    # so bf16/fp8 and -inf/NaN payloads are written bit-exactly.
    data = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    f.write(data)
    digest.update(data)


def save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write a dict of tensors to ``path`` as safetensors, atomically, with ``format: pt`` in the header."""
    specs = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    return write_safetensors_stream(path, specs, tensors.items(), metadata)
