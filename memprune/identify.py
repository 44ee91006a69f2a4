"""What a file is, told by its content: a model checkpoint (which family), a tokenizer (which), or a score file.

Used to make errors point the right way: a checkpoint passed as ``--scores``, a tokenizer or score file given
to ``inspect``, a VAR tokenizer given to a RAR model. Detection reads tensor names and metadata only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memprune.errors import MempruneError

SCORE_KIND = "memprune.unitmem-scores"  # the ``memprune.kind`` metadata of score files (memprune.scores.KIND)



@dataclass(frozen=True)
class FileKind:
    """``kind`` is ``scores``, ``model``, ``tokenizer`` or ``unknown``; ``family`` is var/rar/llamagen or None."""

    kind: str
    family: str | None = None

    def describe(self) -> str:
        name = _display_name(self.family)
        if self.kind == "scores":
            return "a memprune score file"
        if self.kind == "model":
            return f"a {name} model checkpoint"
        if self.kind == "tokenizer":
            return f"a {name} tokenizer checkpoint" if name else "a tokenizer checkpoint"
        return "an unrecognised file"


def identify_keys(keys: Iterable[str], metadata: Mapping[str, str] | None = None) -> FileKind:
    """Classify a state dict by its key names (and safetensors metadata, when present)."""
    keys = set(keys)
    if (metadata or {}).get("memprune.kind") == SCORE_KIND or (keys and all(k.startswith(("unitmem.", "stats.")) for k in keys)):
        return FileKind("scores")
    tokenizer = _tokenizer_family(keys)
    if tokenizer is not None:
        return FileKind("tokenizer", tokenizer)
    from memprune.families import known_families

    found = [name for name, spec in known_families().items() if spec.detect(keys)]
    if len(found) == 1:
        return FileKind("model", found[0])
    return FileKind("unknown")


def _tokenizer_family(keys: set[str]) -> str | None:
    """The family whose spec recognises this VQ tokenizer (None: not a VQ tokenizer, or no single family)."""
    if not {"encoder.conv_in.weight", "quantize.embedding.weight"} <= keys:
        return None
    from memprune.families import known_families

    found = [n for n, spec in known_families().items() if spec.tokenizer_detect is not None and spec.tokenizer_detect(keys)]
    return found[0] if len(found) == 1 else None


def _display_name(family: str | None) -> str:
    from memprune.families import known_families

    spec = known_families().get(family or "")
    return spec.display_name if spec else (family or "")


def identify(path: str | os.PathLike) -> FileKind:
    """Open ``path`` safely (weights_only for pickles) and classify it; ``unknown`` when it cannot be read."""
    p = str(path)
    if p.endswith(".npz"):
        return FileKind("unknown")
    from memprune.io import open_checkpoint

    try:
        with open_checkpoint(path) as ckpt:
            return identify_keys(ckpt.keys(), getattr(ckpt, "metadata", None))
    except Exception:  # noqa: BLE001 - only ever used to improve an error message; never raise a new one
        return FileKind("unknown")


def refuse_non_score_file(path: str | os.PathLike) -> None:
    """``--scores`` given a checkpoint or tokenizer: say so instead of complaining about score shapes."""
    kind = identify(path)
    if kind.kind in ("model", "tokenizer"):
        raise MempruneError(
            f"{path} is {kind.describe()}, not a score file: pass the file written by `memprune score ... -o "
            "scores.safetensors` (or `memprune merge`) as --scores, and the checkpoint as the first argument"
        )


def not_a_model_message(path: str | os.PathLike, kind: FileKind) -> str | None:
    """The one-line error for a model command given a tokenizer or score file (None for other files)."""
    if kind.kind == "tokenizer":
        use = "pass it as --tokenizer (-t) to score/audit/fid" if kind.family else "pass it as --tokenizer"
        return f"{path} is {kind.describe()}, not a model checkpoint: give the transformer checkpoint here and {use}"
    if kind.kind == "scores":
        return (f"{path} is {kind.describe()}, not a model checkpoint: give the model checkpoint here; "
                "score files go to `memprune report` or `memprune patch CHECKPOINT --scores FILE`")
    return None


def tokenizer_mismatch_message(family: str, tokenizer: str | os.PathLike) -> str | None:
    """A model of ``family`` given another family's tokenizer (or a non-tokenizer): name the tokenizer it needs."""
    from memprune.families import known_families

    kind = identify(tokenizer)
    spec = known_families().get(family)
    need = spec.tokenizer_name if spec else None
    name = _display_name(family)
    if need is None or kind.kind == "unknown" or (kind.kind == "tokenizer" and kind.family == family):
        return None
    return f"{tokenizer} is {kind.describe()}, but this {name} model needs {need}: pass that file as --tokenizer"


def score_file_shard(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``shard`` record of a memprune score file (``{"index", "count", "begin", "end"}``), None when complete.

    Reads only the safetensors header; other formats (npz, pickles) never come from ``score --shard``.
    """
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return None
    try:
        with open(p, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if size <= 0 or size > 100 << 20:
                return None
            meta = json.loads(f.read(size)).get("__metadata__") or {}
        if meta.get("memprune.kind") != SCORE_KIND:
            return None
        shard = json.loads(meta.get("memprune.info", "{}")).get("shard")
    except (OSError, ValueError, AttributeError):
        return None  # the score reader reports a damaged file properly
    return shard if isinstance(shard, dict) else None
