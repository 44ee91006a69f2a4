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
from memprune.adapters.base import UnitLayer
from memprune.errors import MempruneError
from memprune.io import load_pickle, open_checkpoint, save_safetensors

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
    """Read a memprune score file or scores precomputed elsewhere (.npz, .pt, .safetensors)."""
    p = Path(path)
    if not p.exists():
        raise MempruneError(f"score file {p} does not exist: run `memprune score` first or check the path")
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as data:
                raw = {k: torch.from_numpy(np.asarray(data[k])) for k in data.files}
        except (ValueError, OSError) as exc:
            raise MempruneError(f"cannot read {p} as a numpy .npz of arrays ({exc})") from None
        return _from_plain(raw)
    if p.suffix in (".pt", ".pth", ".bin"):
        obj = load_pickle(p)
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise MempruneError(f"{p} must hold a dict of layer name -> tensor of scores")
        return _from_plain(dict(obj))
    with open_checkpoint(p) as ckpt:
        meta = ckpt.metadata
        raw = {k: ckpt.get(k) for k in ckpt.keys()}
    if meta.get("memprune.kind") != KIND:
        return _from_plain(raw)
    scores = {k[len(SCORE_PREFIX) :]: v.reshape(-1, v.shape[-1]).float() for k, v in raw.items() if k.startswith(SCORE_PREFIX)}
    stats = {k[len(STATS_PREFIX) :]: v for k, v in raw.items() if k.startswith(STATS_PREFIX)}
    images = json.loads(meta["memprune.images"]) if "memprune.images" in meta else None
    return ScoreSet(
        scores=scores,
        groups=json.loads(meta.get("memprune.groups", "[]")) or _default_groups(scores),
        checkpoint_sha256=meta.get("memprune.checkpoint_sha256"),
        arch=meta.get("memprune.arch"),
        image_independent=json.loads(meta.get("memprune.image_independent_groups", "[]")),
        stats=stats,
        images=images,
        info=json.loads(meta.get("memprune.info", "{}")),
    )


def _default_groups(scores: Mapping[str, torch.Tensor]) -> list[str]:
    first = next(iter(scores.values()), None)
    n = 1 if first is None or first.dim() == 1 else first.shape[0]
    return ["all"] if n == 1 else [f"group{i}" for i in range(n)]


def _from_plain(raw: dict[str, torch.Tensor]) -> ScoreSet:
    """Scores keyed by layer name (``unitmem.`` prefix optional), ``[H]`` or ``[S, H]``."""
    if not raw:
        raise MempruneError("the score file holds no tensors: expected one [H] or [S, H] array per layer")
    scores = {}
    for key, value in raw.items():
        name = key[len(SCORE_PREFIX) :] if key.startswith(SCORE_PREFIX) else key
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
