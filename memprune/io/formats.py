"""Strict parsers for the bytes of checkpoint files: the safetensors header and the sharded index.

Both take untrusted bytes and return a checked object or raise one :class:`MempruneError`; nothing else
escapes (tested with Hypothesis in tests/reliability/test_parsers_property.py). The safetensors header is
validated as the format specifies: an 8-byte little-endian length, a UTF-8 JSON object of tensor entries with a
known dtype, a shape of non-negative integers and ``data_offsets`` that tile the data buffer exactly, and an
optional ``__metadata__`` of string values. The content decides, never the file name: a torch pickle renamed
``.safetensors`` is recognised and named as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, BinaryIO

from memprune.errors import MempruneError

# Bytes per element of every safetensors dtype (memprune maps the ones torch has; see reader._ST_TO_TORCH).
ST_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors library itself enforces
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: dtype code, shape and byte range inside the data buffer."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: where the data starts in the file, the tensors in file order, and the metadata."""

    data_start: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]


def sniff(prefix: bytes) -> str:
    """``zip`` (torch's zip container), ``pickle`` (a bare pickle) or ``other``, from a file's first bytes."""
    if prefix.startswith(_ZIP_MAGIC):
        return "zip"
    if len(prefix) >= 2 and prefix[0] == 0x80 and 1 <= prefix[1] <= 5:
        return "pickle"
    return "other"


def read_safetensors_header(f: BinaryIO, size: int, name: str) -> SafetensorsHeader:
    """Read and validate the header of the safetensors file open as ``f`` (``size`` bytes long).

    Raises:
        MempruneError: the file is not a safetensors file, is truncated, or its header is inconsistent.
    """
    prefix = f.read(9)
    n = int.from_bytes(prefix[:8], "little")
    plausible = len(prefix) == 9 and prefix[8:9] == b"{" and 8 + n <= size
    kind = sniff(prefix)
    if not plausible and kind != "other":  # a safetensors length can start with the same bytes as a pickle
        raise MempruneError(
            f"{name} is named .safetensors but holds a torch {'zip' if kind == 'zip' else 'pickle'} checkpoint: "
            f"rename it to .pth, or convert it with `memprune convert {name} model.safetensors`"
        )
    if len(prefix) < 8:
        raise _invalid(name, f"only {len(prefix)} bytes long")
    f.seek(8)
    if n > MAX_HEADER_BYTES:
        raise _invalid(name, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > size:
        raise _invalid(name, f"header of {n} bytes runs past the end of the {size}-byte file")
    raw = f.read(n)
    if len(raw) != n:
        raise _invalid(name, "the file ended inside the header")
    return parse_safetensors_header(raw, size - 8 - n, name)


def parse_safetensors_header(raw: bytes, data_size: int, name: str = "file") -> SafetensorsHeader:
    """Validate header bytes (without the 8-byte length) against a data buffer of ``data_size`` bytes."""
    obj = _json_object(raw, name, "header")
    metadata: dict[str, str] = {}
    if "__metadata__" in obj:
        meta = obj.pop("__metadata__")
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise _invalid(name, "__metadata__ must map names to strings")
        metadata = dict(meta)
    tensors: dict[str, TensorEntry] = {}
    for key, info in obj.items():
        tensors[key] = _entry(key, info, name)
    ordered = sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end))
    position = 0
    for key, t in ordered:
        if t.begin != position:
            raise _invalid(name, f"tensor {key!r} starts at byte {t.begin} of the data, expected {position} (overlap or gap)")
        position = t.end
    if position != data_size:
        raise _invalid(name, f"tensors cover {position} bytes of data but the file holds {data_size}; it may be truncated")
    return SafetensorsHeader(data_start=8 + len(raw), tensors=dict(ordered), metadata=metadata)


def _entry(key: str, info: Any, name: str) -> TensorEntry:
    # Written for speed as well as strictness: headers of large models list thousands of tensors.
    if type(info) is not dict:
        raise _invalid(name, f"entry {key!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    size = ST_ITEMSIZE.get(dtype) if type(dtype) is str else None
    if size is None:
        raise _invalid(name, f"tensor {key!r} has unknown dtype {dtype!r}")
    if type(shape) is not list:
        raise _invalid(name, f"tensor {key!r} has shape {shape!r}; expected a list of non-negative integers")
    numel = 1
    for d in shape:
        if type(d) is not int or d < 0:  # type() is: bool is not a dimension
            raise _invalid(name, f"tensor {key!r} has shape {shape!r}; expected a list of non-negative integers")
        numel *= d
    if type(offsets) is not list or len(offsets) != 2:
        raise _invalid(name, f"tensor {key!r} has data_offsets {offsets!r}; expected [begin, end]")
    begin, end = offsets
    if type(begin) is not int or type(end) is not int or not 0 <= begin <= end:
        raise _invalid(name, f"tensor {key!r} has data_offsets {offsets!r}; expected [begin, end] with 0 <= begin <= end")
    if numel * size != end - begin:
        raise _invalid(name, f"tensor {key!r} of shape {shape} and dtype {dtype} does not fill its {end - begin} bytes")
    return TensorEntry(dtype, tuple(shape), begin, end)


@dataclass(frozen=True)
class ShardIndex:
    """A validated ``*.safetensors.index.json``: tensor name -> shard file name, and string metadata."""

    weight_map: dict[str, str]
    metadata: dict[str, str]

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


def parse_index(raw: bytes, name: str = "index") -> ShardIndex:
    """Validate the bytes of a sharded safetensors index.

    Shard names must be plain relative paths inside the index's folder (no absolute path, no ``..``), so an
    index can never make memprune read, or download, a file outside its checkpoint.

    Raises:
        MempruneError: not JSON, no ``weight_map`` object of string -> string, a shard outside the folder, or
            ``metadata`` that is not an object.
    """
    obj = _json_object(raw, name, "index", what="safetensors index")
    weight_map = obj.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise MempruneError(f"{name} is not a valid safetensors index: it needs a non-empty \"weight_map\" object of tensor name -> shard file")
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise MempruneError(f"{name}: weight_map[{key!r}] is {shard!r}; it must be a shard file name: fix or regenerate the index")
        parts = shard.replace("\\", "/").split("/")
        if shard.startswith(("/", "\\")) or ".." in parts or (len(shard) > 1 and shard[1] == ":") or "\x00" in shard:
            raise MempruneError(f"{name} lists shard {shard!r}, outside the index's folder: shards must be files beside the index")
        if not shard.endswith(".safetensors"):
            raise MempruneError(f"{name} lists shard {shard!r}, which is not a .safetensors file: memprune reads safetensors shards only")
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise MempruneError(f"{name}: \"metadata\" is a {type(metadata).__name__}; it must be an object (or absent)")
    return ShardIndex(dict(weight_map), {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})


def _json_object(raw: bytes, name: str, part: str, what: str = "safetensors file") -> dict[str, Any]:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise MempruneError(f"{name} is not a valid {what}: its {part} is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise MempruneError(f"{name} is not a valid {what}: its {part} is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(obj, dict):
        raise MempruneError(f"{name} is not a valid {what}: its {part} is a JSON {type(obj).__name__}, not an object")
    return obj


def _invalid(name: str, reason: str) -> MempruneError:
    return MempruneError(f"{name} is not a valid safetensors file ({reason}); if it was downloaded, download it again")
