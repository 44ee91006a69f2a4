"""The library side of ``memprune inspect``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memprune.families import detect_family
from memprune.io import open_checkpoint
from memprune.manifest import read_manifest


@dataclass
class CheckpointInfo:
    """Facts about a checkpoint, as ``inspect`` shows them."""

    path: Path
    format: str
    container: str | None
    architecture: str
    summary: str
    facts: dict[str, Any]
    num_tensors: int
    num_parameters: int
    dtypes: list[str]
    unit_layers: list[str]
    units_per_layer: int | str
    total_units: int
    touched: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    dropped: list[str] = field(default_factory=list)
    official_code: str | None = None
    """The official implementation memprune's family reproduces (its fixtures' source); ``None`` for generic."""


def inspect_checkpoint(path: str | os.PathLike, *, arch: str | None = None, layers: str | None = None) -> CheckpointInfo:
    """Detect the architecture of a checkpoint and describe what memprune would touch."""
    with open_checkpoint(path) as ckpt:
        adapter = detect_family(ckpt, arch, layers)
        unit_layers = adapter.unit_layers(ckpt, "fc1")
        widths = sorted({u.width for u in unit_layers})
        touched = []
        for layer in unit_layers:
            roles = [(t, "unit rows (default target)") for t in layer.rows]
            if layer.bias:
                roles.append((layer.bias, "unit bias (--bias)"))
            if layer.out_columns:
                roles.append((layer.out_columns, "unit columns (--target fc2)"))
            touched += [{"layer": layer.name, "tensor": t, "role": r, "shape": list(ckpt.shape(t)), "dtype": str(ckpt.dtype(t)).replace("torch.", "")} for t, r in roles]
        return CheckpointInfo(
            path=ckpt.path,
            format=ckpt.format,
            container=ckpt.container,
            architecture=adapter.name,
            summary=adapter.summary,
            facts=adapter.describe(ckpt),
            num_tensors=len(ckpt),
            num_parameters=ckpt.num_parameters(),
            dtypes=sorted({str(ckpt.dtype(k)).replace("torch.", "") for k in ckpt.keys()}),
            unit_layers=[u.name for u in unit_layers],
            units_per_layer=widths[0] if len(widths) == 1 else "mixed",
            total_units=sum(u.width for u in unit_layers),
            touched=touched,
            manifest=read_manifest(ckpt.path, ckpt.metadata),
            dropped=ckpt.dropped,
            official_code=f"https://github.com/{adapter.official_repo}" if adapter.official_repo else None,
        )
