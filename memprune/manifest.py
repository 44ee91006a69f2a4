"""The patch manifest: exactly what changed, machine-readable, next to the weights.

``patch`` writes ``<output stem>.manifest.json`` beside the output and embeds the same manifest (without
the output digest, which cannot be known before the file is written) in the safetensors header under
``memprune.manifest``. A manifest found on the input becomes ``history`` of the new one, so patches stack.
Fields are documented in docs/formats.md.

Manifests are read from files other people made, so :func:`parse_manifest` checks every field the tools
use (types, ranges) and turns anything else into one :class:`MempruneError`. Manifests carry file names,
never folders: they travel inside published weights (:func:`public_name`, :func:`public_command`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from memprune.errors import MempruneError
from memprune.public import public_command, public_info, public_name

SCHEMA = "memprune.manifest/1"
META_KEY = "memprune.manifest"
TARGETS = ("fc1", "fc2")
_MAX_BYTES = 256 << 20  # a manifest of every unit of a 30-layer model is a few MB; refuse absurd files


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
    """The manifest of a checkpoint: its JSON sidecar if present, else the copy embedded in its header.

    Whether the sidecar belongs to these weights (a crash between the two renames of ``patch`` can leave an old
    sidecar beside new weights) is judged by :func:`sidecar_matches_header`, which ``verify`` reports.

    Raises:
        MempruneError: the sidecar or the header copy is not a valid manifest (one line, naming the file).
    """
    sidecar = manifest_path_for(weights)
    if sidecar.exists() or sidecar.is_symlink():
        return parse_manifest(_read_sidecar(sidecar), sidecar)
    if metadata and META_KEY in metadata:
        return parse_manifest(metadata[META_KEY], Path(weights), embedded=True)
    return None


def header_manifest(weights: str | os.PathLike, metadata: dict[str, str] | None) -> dict[str, Any] | None:
    """The manifest embedded in the safetensors header (authoritative for the weights it is in), or None."""
    if not metadata or META_KEY not in metadata:
        return None
    return parse_manifest(metadata[META_KEY], Path(weights), embedded=True)


def authoritative_manifest(weights: str | os.PathLike, metadata: dict[str, str] | None) -> dict[str, Any] | None:
    """The manifest that describes these weights: the sidecar when it agrees with the header copy, else the header copy."""
    manifest = read_manifest(weights, metadata)
    if manifest is not None and sidecar_matches_header(manifest, metadata) is False:
        return header_manifest(weights, metadata)
    return manifest


def sidecar_matches_header(manifest: dict[str, Any], metadata: dict[str, str] | None) -> bool | None:
    """True/False when the header holds a copy to compare with; None when it holds none."""
    if not metadata or META_KEY not in metadata:
        return None
    return metadata[META_KEY] == embeddable(manifest)


def _read_sidecar(sidecar: Path) -> bytes:
    if sidecar.is_dir():
        raise MempruneError(f"manifest {sidecar} is a folder, not a file: remove or rename it, then re-run `memprune patch`")
    if not sidecar.is_file():
        raise MempruneError(f"manifest {sidecar} is not a regular file: remove it and re-run `memprune patch`")
    try:
        if sidecar.stat().st_size > _MAX_BYTES:
            raise MempruneError(f"manifest {sidecar} is larger than {_MAX_BYTES >> 20} MB: it is not a memprune manifest")
        return sidecar.read_bytes()
    except OSError as exc:
        raise MempruneError(f"manifest {sidecar} cannot be read ({exc.strerror}): check its permissions") from None


def parse_manifest(data: bytes | str, where: str | os.PathLike, *, embedded: bool = False) -> dict[str, Any]:
    """Decode and validate a manifest; any malformed input gives one :class:`MempruneError`.

    Args:
        data: the JSON text (sidecar bytes or the header's ``memprune.manifest`` string).
        where: the file it came from, for messages.
        embedded: it is the header copy, which has no ``output`` field.
    """
    origin = f"the manifest in the header of {where}" if embedded else f"manifest {where}"
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        obj = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise MempruneError(f"{origin} is not valid JSON ({reason}): restore it from the release or re-run `memprune patch`") from None
    return validate_manifest(obj, origin)


def validate_manifest(obj: Any, origin: str) -> dict[str, Any]:
    """Check the fields tools rely on; returns ``obj`` unchanged when it passes."""
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise MempruneError(f"{origin} holds no memprune manifest of schema {SCHEMA}: was it written by memprune?")
    _check_step(obj, origin)
    history = obj.get("history", [])
    if not isinstance(history, list):
        raise MempruneError(f"{origin}: 'history' must be a list of earlier steps: re-run `memprune patch`")
    for i, step in enumerate(history):
        if not isinstance(step, dict):
            raise MempruneError(f"{origin}: history[{i}] is not an object: re-run `memprune patch`")
        _check_step(step, f"{origin} (history[{i}])")
    return obj


def _check_step(step: dict[str, Any], origin: str) -> None:
    def bad(what: str) -> MempruneError:
        return MempruneError(f"{origin}: {what}: the manifest is damaged; restore it from the release or re-run `memprune patch`")

    inter = step.get("intervention")
    if not isinstance(inter, dict):
        raise bad("'intervention' is missing or not an object")
    factor = inter.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 0:
        raise bad(f"intervention.factor {factor!r} is not a finite number >= 0")
    if inter.get("target", "fc1") not in TARGETS:
        raise bad(f"intervention.target {inter.get('target')!r} is not fc1 or fc2")
    if not isinstance(inter.get("bias", False), bool):
        raise bad("intervention.bias is not true/false")
    layers = step.get("layers", {})
    if not isinstance(layers, dict):
        raise bad("'layers' is not an object")
    for name, entry in layers.items():
        if not isinstance(entry, dict):
            raise bad(f"layers.{name} is not an object")
        units = entry.get("units")
        if not isinstance(units, list) or not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in units):
            raise bad(f"layers.{name}.units is not a list of unit indices >= 0")
        if len(set(units)) != len(units):
            raise bad(f"layers.{name}.units repeats a unit")
        tensors = entry.get("tensors")
        if not isinstance(tensors, dict) or not all(
            isinstance(spec, dict) and spec.get("axis") in (0, 1) and not isinstance(spec.get("axis"), bool) for spec in tensors.values()
        ):
            raise bad(f"layers.{name}.tensors must map tensor names to {{\"axis\": 0 or 1}}")
    for key in ("input", "output", "selection", "scores"):
        if step.get(key) is not None and not isinstance(step[key], dict):
            raise bad(f"'{key}' is not an object")
    for key in ("input", "output"):
        digest = (step.get(key) or {}).get("sha256")
        if digest is not None and not isinstance(digest, str):
            raise bad(f"{key}.sha256 is not a string")


def history_from(previous: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Earlier steps, oldest first: the previous manifest's own history, then the previous step itself.

    Steps written by older memprune versions may hold local paths; they are reduced to file names here.
    """
    if previous is None:
        return []
    step = {k: v for k, v in previous.items() if k != "history"}
    return [public_step(s) for s in [*previous.get("history", []), step]]


def public_step(step: dict[str, Any]) -> dict[str, Any]:
    """A manifest step with local paths reduced to file names (digests and settings kept)."""
    out = dict(step)
    for key in ("input", "scores", "output"):
        if isinstance(out.get(key), dict) and isinstance(out[key].get("path"), str):
            out[key] = {**out[key], "path": public_name(out[key]["path"])}
    scores = out.get("scores")
    if isinstance(scores, dict):
        out["scores"] = {k: (public_info(v, k) if k in ("info", "tokenizer") else v) for k, v in scores.items()}
    if isinstance(out.get("command"), str):
        out["command"] = public_command(out["command"])
    return out


def public_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as it may be published: every step's paths reduced to file names."""
    out = public_step(manifest)
    if isinstance(manifest.get("history"), list):
        out["history"] = [public_step(s) if isinstance(s, dict) else s for s in manifest["history"]]
    return out


def embeddable(manifest: dict[str, Any]) -> str:
    """The compact JSON stored in the safetensors header (the output digest is only in the sidecar)."""
    body = {k: v for k, v in manifest.items() if k != "output"}
    return json.dumps(body, separators=(",", ":"), sort_keys=True)
