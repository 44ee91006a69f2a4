"""Lazy, read-only access to a checkpoint in any supported format.

:class:`Checkpoint` gives the same view of a safetensors file, a sharded safetensors set and a pickled state
dict: names, shapes and dtypes without loading data, and one tensor at a time on demand. That is what lets
``patch`` stream a multi-GB checkpoint with peak memory near its largest tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from memprune.errors import MempruneError
from memprune.io.formats import SafetensorsHeader, ShardIndex, TensorEntry, parse_index, read_safetensors_header
from memprune.io.names import strip_prefixes, stripped_names
from memprune.io.paths import check_input_file, shown
from memprune.io.pickles import load_pickle

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")
# Wrapper keys seen in the wild, in order of preference. Training checkpoints keep optimizer state and args
# beside the weights; LlamaGen uses {"model": ...}; DDP/compile leave prefixes on the keys themselves.
_CONTAINER_KEYS = ("model", "state_dict", "module", "model_ema", "state_dict_ema", "ema")
# Training checkpoints that hold several networks under one key: key -> members, the generator first (what a
# model command reads unless ``member`` names another). VAR's trainer: ``ar-ckpt-best.pth``.
_MULTI_NETWORK = {"trainer": ("var_wo_ddp", "vae_local")}

_ST_TO_TORCH: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _code, _name in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _name):
        _ST_TO_TORCH[_code] = getattr(torch, _name)


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """Turn a user argument into a checkpoint file (a folder resolves to its index or single safetensors)."""
    text = str(path)
    if text.startswith("hf://"):
        from memprune.hub import (
            resolve_hf_uri,  # imported lazily: the Hub client is only needed here
        )

        p = resolve_hf_uri(text)
    else:
        p = Path(path)
    if not p.exists():
        raise MempruneError(f"checkpoint {shown(p)} does not exist: check the path")
    if p.is_dir():
        indexes = sorted(p.glob("*.safetensors.index.json"))
        singles = sorted(p.glob("*.safetensors"))
        if len(indexes) == 1:
            p = indexes[0]
        elif len(singles) == 1:
            p = singles[0]
        else:
            raise MempruneError(f"{shown(p)} is a folder without exactly one safetensors checkpoint or index: pass the file itself")
    check_input_file(p, "checkpoint")
    if p.name.endswith(".safetensors"):
        read_header(p)  # the content decides: a pickle or garbage named .safetensors is refused here
    return p


_HEADERS: dict[tuple[int, int, int, int], SafetensorsHeader] = {}  # (dev, inode, size, mtime) -> parsed header


def read_header(file: Path) -> SafetensorsHeader:
    """The validated header of a safetensors file (see :func:`memprune.io.formats.read_safetensors_header`).

    Parsed once per file version: resolving a path and opening it both need the header, and memprune's writers
    replace files by rename (a new inode), so a cached header never outlives its file.
    """
    check_input_file(file, "checkpoint")
    try:
        with open(file, "rb") as f:
            st = os.fstat(f.fileno())
            version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if version not in _HEADERS:
                if len(_HEADERS) >= 16:
                    _HEADERS.clear()
                _HEADERS[version] = read_safetensors_header(f, st.st_size, shown(file))
            return _HEADERS[version]
    except OSError as exc:
        raise MempruneError(f"cannot read {shown(file)} ({exc.strerror}): check its permissions") from None


def read_index(file: Path) -> ShardIndex:
    """The validated content of a ``*.safetensors.index.json`` (shards confined to its folder)."""
    check_input_file(file, "safetensors index")
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise MempruneError(f"cannot read {shown(file)} ({exc.strerror}): check its permissions") from None
    return parse_index(raw, shown(file))


class Checkpoint:
    """A read-only view of a checkpoint: ``keys()``, ``shape()``, ``dtype()``, ``get()``, ``metadata``.

    Attributes:
        path: the resolved file.
        format: ``safetensors``, ``sharded-safetensors`` or ``pickle``.
        metadata: the safetensors header metadata (``{}`` for pickles).
        container: the wrapper key the weights were found under (``"model"``...) or ``None``.
        dropped: non-tensor entries of a pickle that were left out (training args, epoch counters).
    """

    def __init__(self, path: str | os.PathLike, member: str | None = None):
        self.member = member  # which network of a multi-network training checkpoint (ignored otherwise)
        self.path = resolve_checkpoint_path(path)
        self.metadata: dict[str, str] = {}
        self.container: str | None = None
        self.dropped: list[str] = []
        self._layout: dict[Path, tuple[int, dict[str, TensorEntry]]] = {}  # file -> (first data byte, tensors)
        self._files: dict[Path, Any] = {}
        self._where: dict[str, tuple[Path, str]] = {}  # our key -> (file, key inside that file)
        self._tensors: dict[str, torch.Tensor] | None = None
        name = self.path.name
        if name.endswith(".safetensors.index.json"):
            self.format = "sharded-safetensors"
            self._open_sharded()
        elif name.endswith(".safetensors"):
            self.format = "safetensors"
            self.metadata = self._open_safetensors(self.path)
        elif name.endswith(PICKLE_SUFFIXES):
            self.format = "pickle"
            self._open_pickle()
        else:
            raise MempruneError(
                f"{self.path} has an unknown extension: memprune reads .safetensors, *.safetensors.index.json, "
                ".pth, .pt and .bin checkpoints"
            )

    # -- opening -------------------------------------------------------------------------------------------
    def _open_safetensors(self, file: Path) -> dict[str, str]:
        header = read_header(file)
        self._layout[file] = (header.data_start, header.tensors)
        for name, key in stripped_names(header.tensors, shown(file), self._where).items():  # file order
            self._where[name] = (file, key)
        return header.metadata

    def _open_sharded(self) -> None:
        index = read_index(self.path)
        self.metadata = dict(index.metadata)
        for shard in index.shards:
            shard_path = self.path.parent / shard
            if not shard_path.exists():
                raise MempruneError(f"shard {shard} listed in {shown(self.path.name)} is missing: download every shard")
            shard_meta = self._open_safetensors(shard_path)
            if not self.metadata:
                self.metadata = dict(shard_meta)
        found = set(self._where.values())
        missing = [k for k, f in index.weight_map.items() if (self.path.parent / f, k) not in found]
        if missing:
            raise MempruneError(f"{shown(self.path.name)} lists {missing[0]} but its shard does not contain it: the index is stale")

    def _open_pickle(self) -> None:
        obj = load_pickle(self.path)
        selected, prefix = _select_member(obj, self.member)
        state, container, self.dropped = _unwrap(selected, self.path)
        self.container = ".".join(p for p in (prefix, container) if p) or None
        for key, value in state.items():
            _check_pickled_tensor(key, value, self.path)
        self._tensors = {name: state[key] for name, key in stripped_names(state, shown(self.path)).items()}

    # -- access ----------------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Every tensor name, in file order (buffers included)."""
        return list(self._tensors) if self._tensors is not None else list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in (self._tensors if self._tensors is not None else self._where)

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, key: str) -> torch.Tensor:
        """Load one tensor (a copy for safetensors; a memory-mapped view for pickles)."""
        if self._tensors is not None:
            return self._tensors[key]
        file, inner = self._where[key]
        return self._read(file, inner)

    def _read(self, file: Path, inner: str) -> torch.Tensor:
        # Read with plain file I/O rather than through safetensors' mmap: touched mmap pages count towards the
        # process's resident memory, and streaming a 10 GB checkpoint must keep that near one tensor.
        data_start, header = self._layout[file]
        info = header[inner]
        begin, end = info.begin, info.end
        tensor = torch.empty(info.shape, dtype=self.dtype(strip_prefixes(inner)))
        if end > begin:
            handle = self._files.get(file)
            if handle is None:
                handle = self._files[file] = open(file, "rb")  # noqa: SIM115 - closed in close()
            handle.seek(data_start + begin)
            view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            if handle.readinto(view) != end - begin:
                raise MempruneError(f"{file} ended inside tensor {inner}: the file is truncated; download it again")
        return tensor

    def shape(self, key: str) -> tuple[int, ...]:
        if self._tensors is not None:
            return tuple(self._tensors[key].shape)
        file, inner = self._where[key]
        return self._layout[file][1][inner].shape

    def dtype(self, key: str) -> torch.dtype:
        if self._tensors is not None:
            return self._tensors[key].dtype
        file, inner = self._where[key]
        code = self._layout[file][1][inner].dtype
        if code not in _ST_TO_TORCH:
            raise MempruneError(f"tensor {key} has safetensors dtype {code}, which memprune does not handle")
        return _ST_TO_TORCH[code]

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for key in self.keys():
            yield key, self.get(key)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.shape(k) for k in self.keys()}

    def num_parameters(self) -> int:
        total = 0
        for key in self.keys():
            n = 1
            for d in self.shape(key):
                n *= d
            total += n
        return total

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._tensors = None if self._tensors is None else {}

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_checkpoint(path: str | os.PathLike, *, member: str | None = None) -> Checkpoint:
    """Open a checkpoint lazily; see :class:`Checkpoint`.

    ``member`` names the network to read from a training checkpoint that holds several (VAR's
    ``{"trainer": {"var_wo_ddp": ..., "vae_local": ...}}``: the generator by default, ``vae_local`` for its
    tokenizer); files that hold one network ignore it.
    """
    return Checkpoint(path, member)


def _select_member(obj: object, member: str | None) -> tuple[object, str | None]:
    """The chosen network of a multi-network training checkpoint and where it was; anything else unchanged."""
    if not isinstance(obj, dict):
        return obj, None
    for key, members in _MULTI_NETWORK.items():
        inner = obj.get(key)
        if isinstance(inner, dict) and any(m in inner for m in members):
            name = member if member in members else members[0]
            if not isinstance(inner.get(name), dict):
                raise MempruneError(f"this training checkpoint has no {key}.{name} network (found: {', '.join(map(str, inner))})")
            return inner[name], f"{key}.{name}"
    return obj, None




def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _check_pickled_tensor(key: object, value: torch.Tensor, path: Path) -> None:
    """Only dense, materialised tensors under string names are weights memprune can read and write."""
    if not isinstance(key, str):
        raise MempruneError(
            f"{shown(path)} has a tensor under the {type(key).__name__} key {key!r}: a state dict maps string names "
            "to tensors; save model.state_dict()"
        )
    if value.layout != torch.strided:
        raise MempruneError(f"tensor {key} in {shown(path)} is {value.layout} (not dense): save it with .to_dense() first")
    if value.is_meta:
        raise MempruneError(f"tensor {key} in {shown(path)} is on the meta device and holds no values: save the real weights")
    if value.is_quantized:
        raise MempruneError(f"tensor {key} in {shown(path)} is quantized ({value.dtype}): save dequantized weights")


_MAX_NESTING = 4  # {"model": {"state_dict": ...}} is the deepest wrapping seen in the wild


def _unwrap(obj: object, path: Path, depth: int = 0) -> tuple[dict[str, torch.Tensor], str | None, list[str]]:
    """Find the tensor dict inside a training checkpoint; report what else was there."""
    if _is_state_dict(obj):
        return dict(obj), None, []  # type: ignore[arg-type]
    if isinstance(obj, dict):
        for key in _CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and depth >= _MAX_NESTING:
                raise MempruneError(
                    f"{shown(path)} wraps its weights more than {_MAX_NESTING} levels deep ({key}/{key}/...): "
                    "save model.state_dict() instead"
                )
            if isinstance(inner, dict):
                state, sub, _ = _unwrap(inner, path, depth + 1)
                dropped = [str(k) for k in obj if k != key]
                return state, key if sub is None else f"{key}.{sub}", dropped
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors, None, [str(k) for k in obj if k not in tensors]
        found = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(obj.items())[:6])
        raise MempruneError(
            f"{shown(path)} holds no tensors at the top level nor under {'/'.join(_CONTAINER_KEYS)} (found: {found}); "
            "extract the model's state dict first"
        )
    raise MempruneError(f"{shown(path)} holds a {type(obj).__name__}, not a state dict: save model.state_dict() instead")
