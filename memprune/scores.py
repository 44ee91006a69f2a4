"""Score files: what ``memprune score`` writes and ``memprune patch`` reads (see docs/formats.md).

A memprune score file is a safetensors file with one float32 tensor ``unitmem.<layer>`` of shape ``[S, H]``
per scored layer (S = position groups, e.g. the 10 VAR scales; H = units), the streaming statistics needed
to merge shards (``stats.*``), and string metadata (checkpoint digest, architecture, groups, data, settings).
Scores made elsewhere are accepted as ``.npz``, ``.pt`` or plain safetensors dicts keyed by layer name
(with or without the ``unitmem.`` prefix), shaped ``[H]`` or ``[S, H]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memprune import __version__
from memprune.families.spec import UnitLayer
from memprune.errors import MempruneError
from memprune.io import load_pickle, open_checkpoint, save_safetensors
from memprune.io.paths import check_input_file, shown

SCORE_PREFIX = "unitmem."
STATS_PREFIX = "stats."
KIND = "memprune.unitmem-scores"


@dataclass
class ScoreSet:
    """Per-unit scores, ``scores[layer]`` float32 ``[S, H]``, and where they came from.

    Attributes:
        scores: layer name -> ``[S, H]`` float32 scores.
        groups: the S position-group names (``["scale0", ...]`` for VAR, ``["last"]`` for RAR).
        checkpoint_sha256: digest of the checkpoint the scores were computed on, when known.
        arch: architecture name, when known.
        image_independent: groups whose statistics cannot depend on the image (VAR scale 0 depends only on the
            class label); they are left out when scales are aggregated for selection.
        stats: streaming statistics (``max.<layer>``, ``argmax.<layer>``, ``sum.<layer>``, ``ties.<layer>``,
            ``count``) for merging shards exactly; see docs/scoring.md.
        images: the scoring images in global index order (what ``argmax`` indexes).
        info: other metadata (data description, settings), JSON-serialisable.
    """

    scores: dict[str, torch.Tensor]
    groups: list[str]
    checkpoint_sha256: str | None = None
    arch: str | None = None
    image_independent: list[str] = field(default_factory=list)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    images: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def save_scores(scores: ScoreSet, path: str | os.PathLike) -> None:
    """Write a score file atomically (safetensors; metadata values are JSON strings)."""
    tensors: dict[str, torch.Tensor] = {}
    for layer, value in scores.scores.items():
        value = value.unsqueeze(0) if value.dim() == 1 else value  # always [S, H] on disk
        tensors[SCORE_PREFIX + layer] = value.detach().to("cpu", torch.float32).contiguous()
    for name, value in scores.stats.items():
        tensors[STATS_PREFIX + name] = value.detach().to("cpu").contiguous()
    meta = {
        "memprune.kind": KIND,
        "memprune.version": __version__,
        "memprune.groups": json.dumps(scores.groups),
        "memprune.image_independent_groups": json.dumps(scores.image_independent),
        "memprune.info": json.dumps(scores.info, sort_keys=True),
    }
    if scores.checkpoint_sha256:
        meta["memprune.checkpoint_sha256"] = scores.checkpoint_sha256
    if scores.arch:
        meta["memprune.arch"] = scores.arch
    if scores.images is not None:
        meta["memprune.images"] = json.dumps(scores.images)
    save_safetensors(tensors, path, meta)


def load_scores(path: str | os.PathLike) -> ScoreSet:
    """Read a memprune score file or scores precomputed elsewhere (.npz, .pt, .safetensors).

    Raises:
        MempruneError: a missing or non-regular file, unreadable content, non-real or non-numeric arrays,
            metadata of the wrong type, or a memprune score file without ``unitmem.*`` tensors.
    """
    p = Path(path)
    if not p.exists():
        raise MempruneError(f"score file {shown(p)} does not exist: run `memprune score` first or check the path")
    check_input_file(p, "score file")
    if p.suffix == ".npz":
        return _from_plain(_read_npz(p), p)
    if p.suffix in (".pt", ".pth", ".bin"):
        obj = load_pickle(p)
        if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise MempruneError(f"{shown(p)} must hold a dict of layer name -> tensor of scores")
        return _from_plain({str(k): v for k, v in obj.items()}, p)
    with open_checkpoint(p) as ckpt:
        meta = ckpt.metadata
        raw = {k: ckpt.get(k) for k in ckpt.keys()}
    if meta.get("memprune.kind") != KIND:
        return _from_plain(raw, p)
    return _from_memprune(raw, meta, p)


def _read_npz(p: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except Exception as exc:  # noqa: BLE001 - numpy/zipfile raise many types for a damaged archive
        raise MempruneError(
            f"cannot read {shown(p)} as a numpy .npz of arrays ({type(exc).__name__}: {str(exc)[:120]}); "
            "it may be truncated: write it again with numpy.savez"
        ) from None
    for key, arr in arrays.items():
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.dtype == np.bool_:
            kind = "complex" if np.issubdtype(arr.dtype, np.complexfloating) else "non-numeric"
            raise MempruneError(f"{shown(p)}: array {key!r} is {kind} ({arr.dtype}); scores must be real numbers, one per unit")
    return {k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in arrays.items()}


def _from_memprune(raw: dict[str, torch.Tensor], meta: dict[str, str], p: Path) -> ScoreSet:
    scores: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if key.startswith(SCORE_PREFIX):
            _check_real(key, value, p)
            if value.dim() == 0 or value.numel() == 0:
                raise MempruneError(f"{shown(p)}: {key} has shape {tuple(value.shape)}; expected [S, H] scores")
            scores[key[len(SCORE_PREFIX) :]] = value.reshape(-1, value.shape[-1]).float()
    if not scores:
        raise MempruneError(f"{shown(p)} is marked as a memprune score file but holds no unitmem.* tensors: score again")
    stats = {k[len(STATS_PREFIX) :]: v for k, v in raw.items() if k.startswith(STATS_PREFIX)}
    groups = _meta(meta, "memprune.groups", [], _str_list, p) or _default_groups(scores)
    images = _meta(meta, "memprune.images", None, _str_list, p)
    info = _meta(meta, "memprune.info", {}, lambda v: isinstance(v, dict), p)
    s_counts = {v.shape[0] for v in scores.values()}
    if s_counts != {len(groups)}:
        raise MempruneError(f"{shown(p)}: its metadata names {len(groups)} group(s) but the scores have {sorted(s_counts)}: the file is inconsistent; score again")
    _check_argmax(stats, scores, images, p)
    return ScoreSet(
        scores=scores,
        groups=groups,
        checkpoint_sha256=meta.get("memprune.checkpoint_sha256"),
        arch=meta.get("memprune.arch"),
        image_independent=_meta(meta, "memprune.image_independent_groups", [], _str_list, p),
        stats=stats,
        images=images,
        info=info,
    )


def _meta(meta: dict[str, str], key: str, default: Any, valid: Any, p: Path) -> Any:
    """A JSON metadata value of a score file, checked with ``valid``."""
    if key not in meta:
        return default
    try:
        value = json.loads(meta[key])
    except (ValueError, RecursionError):
        raise MempruneError(f"{shown(p)}: metadata {key} is not valid JSON: the file was damaged; score again") from None
    if not valid(value):
        raise MempruneError(f"{shown(p)}: metadata {key} has the wrong type ({type(value).__name__}): the file was damaged; score again")
    return value


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_argmax(stats: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], images: list[str] | None, p: Path) -> None:
    # Reports index image lists with argmax: a value out of range would point at the wrong image or crash.
    for name, value in scores.items():
        arg = stats.get(f"argmax.{name}")
        if arg is None:
            continue
        if tuple(arg.shape) != tuple(value.shape) or arg.is_floating_point() or arg.is_complex():
            raise MempruneError(f"{shown(p)}: stats.argmax.{name} does not match its scores: the file was damaged; score again")
        limit = len(images) if images is not None else None
        if arg.numel() and (int(arg.min()) < 0 or (limit is not None and int(arg.max()) >= limit)):
            raise MempruneError(f"{shown(p)}: stats.argmax.{name} points outside the image list: the file was damaged; score again")


def _check_real(name: str, value: torch.Tensor, p: Path | None) -> None:
    if value.is_complex() or value.dtype == torch.bool or not (value.is_floating_point() or _is_int(value)):
        where = f"{shown(p)}: " if p is not None else ""
        raise MempruneError(f"{where}scores {name!r} are {value.dtype}; scores must be real numbers, one per unit")


def _is_int(value: torch.Tensor) -> bool:
    return value.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _default_groups(scores: Mapping[str, torch.Tensor]) -> list[str]:
    first = next(iter(scores.values()), None)
    n = 1 if first is None or first.dim() == 1 else first.shape[0]
    return ["all"] if n == 1 else [f"group{i}" for i in range(n)]


def _from_plain(raw: dict[str, torch.Tensor], p: Path | None = None) -> ScoreSet:
    """Scores keyed by layer name (``unitmem.`` prefix optional), ``[H]`` or ``[S, H]``."""
    if not raw:
        raise MempruneError("the score file holds no tensors: expected one [H] or [S, H] array per layer")
    scores = {}
    for key, value in raw.items():
        name = key[len(SCORE_PREFIX) :] if key.startswith(SCORE_PREFIX) else key
        _check_real(key, value, p)
        if value.numel() == 0:
            raise MempruneError(f"scores for {name} are empty: expected one value per unit")
        if value.dim() == 1:
            value = value.unsqueeze(0)
        if value.dim() != 2:
            raise MempruneError(f"scores for {name} have shape {tuple(value.shape)}: expected [H] or [S, H]")
        scores[name] = value.to(torch.float32)
    shapes = {v.shape[0] for v in scores.values()}
    if len(shapes) != 1:
        raise MempruneError(f"score layers disagree on the number of groups S ({sorted(shapes)}): give every layer the same S")
    return ScoreSet(scores=scores, groups=_default_groups(scores))


def validate_scores(scores: ScoreSet, layers: list[UnitLayer]) -> dict[str, torch.Tensor]:
    """Check scores against a checkpoint's unit layers; return them in layer order.

    Raises:
        MempruneError: naming the first missing, extra or mis-shaped layer, or a non-finite value.
    """
    by_name = {layer.name: layer for layer in layers}
    for name in scores.scores:
        if name not in by_name:
            hint = ", ".join(list(by_name)[:2])
            raise MempruneError(f"scores name layer {name}, which this checkpoint does not have (its layers look like {hint})")
    out = {}
    for layer in layers:
        value = scores.scores.get(layer.name)
        if value is None:
            raise MempruneError(f"scores lack layer {layer.name}: score every unit layer of this checkpoint")
        if value.shape[-1] != layer.width:
            raise MempruneError(f"scores for {layer.name} have {value.shape[-1]} units but the checkpoint has {layer.width}")
        bad = ~torch.isfinite(value)
        if bad.any():
            pos = tuple(int(i) for i in bad.nonzero()[0])
            raise MempruneError(f"scores for {layer.name} contain NaN or Inf (first at {pos}): recompute or clean them")
        out[layer.name] = value
    return out
