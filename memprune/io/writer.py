"""Writing: safetensors (streamed tensor by tensor) and JSON, always atomically.

Reading never executes untrusted code: safetensors are opened lazily with ``safe_open``; pickles
(``.pth``/``.pt``/``.bin``) go through ``torch.load(weights_only=True)`` and nothing else. Writing produces
safetensors only, through a temporary file in the target folder that is fsynced and renamed into place,
so a crash never leaves a partial output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch

from memprune.errors import MempruneError
from memprune.io.reader import open_checkpoint

__all__ = [
    "load_state_dict",
    "atomic_write",
    "save_safetensors",
    "write_safetensors_stream",
    "write_json_atomic",
    "sha256_file",
    "checkpoint_sha256",
    "check_output_path",
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
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
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


def check_output_path(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> Path:
    """Validate an output path before any work starts: its folder exists and it is none of the inputs."""
    out = Path(output)
    if not out.parent.exists():
        raise MempruneError(f"output folder {out.parent} does not exist: create it first or choose another -o path")
    if out.is_dir():
        raise MempruneError(f"output {out} is a folder: give a file path such as {out / 'model.safetensors'}")
    for inp in inputs:
        if inp is None:
            continue
        inp_path = Path(inp)
        same = out.resolve() == inp_path.resolve() or (
            out.exists() and inp_path.exists() and os.path.samefile(out, inp_path)
        )
        if same:
            raise MempruneError(f"output {out} is the input file: memprune never writes over its input; choose another -o path")
    return out


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it onto ``path``.

    On any exception (or KeyboardInterrupt) the temporary file is removed and ``path`` is untouched.
    The caller writes to the yielded path itself (open it, or hand it to a library).
    """
    target = Path(path)
    _remove_stale_temps(target)
    # The pid in the name lets a later run recognise (and remove) the leftovers of a process that was killed.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _remove_stale_temps(target: Path) -> None:
    """Delete temp files of earlier writes to ``target`` whose writing process no longer exists (kill -9)."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        parts = stale.name[len(target.name) + 2 :].split(".")
        if parts and parts[0].isdigit() and not _pid_alive(int(parts[0])):
            with contextlib.suppress(OSError):
                stale.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
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
    specs = list(specs)
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
    digest = hashlib.sha256()
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        for chunk in (struct.pack("<Q", len(raw)), raw):
            f.write(chunk)
            digest.update(chunk)
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
