"""Writing: safetensors (streamed tensor by tensor) and JSON, always atomically.

Reading never executes untrusted code: safetensors are opened lazily with ``safe_open``; pickles
(``.pth``/``.pt``/``.bin``) go through ``torch.load(weights_only=True)`` and nothing else. Writing produces
safetensors only, through a temporary file in the target folder that is fsynced and renamed into place,
so a crash never leaves a partial output.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from memprune.errors import MempruneError
from memprune.io.atomic import StagedFile, atomic_write, remove_stale_temps, staged_file
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


def sha256_file(path: str | os.PathLike, chunk: int = 4 << 20) -> str:
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
