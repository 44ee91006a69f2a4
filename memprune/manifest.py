"""The patch manifest: exactly what changed, machine-readable, next to the weights.

``patch`` writes ``<output stem>.manifest.json`` beside the output and embeds the same manifest (without
the output digest, which cannot be known before the file is written) in the safetensors header under
``memprune.manifest``. A manifest found on the input becomes ``history`` of the new one, so patches stack.
Fields are documented in docs/formats.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from memprune.errors import MempruneError

SCHEMA = "memprune.manifest/1"
META_KEY = "memprune.manifest"


def manifest_path_for(weights: str | os.PathLike) -> Path:
    """``dir/safe.safetensors`` -> ``dir/safe.manifest.json`` (the index suffix is dropped for shards)."""
    p = Path(weights)
    name = p.name
    for suffix in (".safetensors.index.json", ".safetensors", ".pth", ".pt", ".bin"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return p.with_name(f"{name}.manifest.json")


def read_manifest(weights: str | os.PathLike, metadata: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The manifest of a checkpoint: its JSON sidecar if present, else the copy embedded in its header."""
    sidecar = manifest_path_for(weights)
    if sidecar.exists():
        try:
            manifest = json.loads(sidecar.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise MempruneError(f"manifest {sidecar} is not valid JSON ({exc}): restore it from the release") from None
        _check_schema(manifest, sidecar)
        return manifest
    if metadata and META_KEY in metadata:
        manifest = json.loads(metadata[META_KEY])
        _check_schema(manifest, Path(weights))
        return manifest
    return None


def _check_schema(manifest: Any, where: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise MempruneError(f"{where} holds no memprune manifest of schema {SCHEMA}: was it written by memprune?")


def history_from(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Earlier steps, oldest first: the previous manifest's own history, then the previous step itself."""
    if previous is None:
        return []
    step = {k: v for k, v in previous.items() if k != "history"}
    return [*previous.get("history", []), step]


def embeddable(manifest: dict[str, Any]) -> str:
    """The compact JSON stored in the safetensors header (the output digest is only in the sidecar)."""
    body = {k: v for k, v in manifest.items() if k != "output"}
    return json.dumps(body, separators=(",", ":"), sort_keys=True)
