"""Periodic, atomic checkpoints of the scoring statistics, so a killed run resumes exactly.

A checkpoint is a small safetensors file beside the output (``scores.safetensors.partial.safetensors``, with
``.shard-i-of-n`` / ``.rank-r-of-w`` tags when the run is split) holding the streaming statistics and, in its
metadata, the position of the next image and a fingerprint of everything that determines the scores
(checkpoint digest, image list, views, seed, layers, groups, dtype, batch size, this process's image range).
Checkpoints are taken only between batches and the views are seeded per image, so a resumed run processes
exactly the batches an uninterrupted one would and ends with bit-identical statistics.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from memprune.errors import MempruneError
from memprune.io import open_checkpoint, save_safetensors
from memprune.scoring.stats import StreamingStats

if TYPE_CHECKING:
    from memprune.data import ImageRecord

log = logging.getLogger(__name__)
KIND = "memprune.scoring-checkpoint"


def partial_path(output: Path, shard: tuple[int, int] | None, rank: int, world: int) -> Path:
    """Where the checkpoint of this process lives."""
    tags = ""
    if shard is not None:
        tags += f".shard-{shard[0]}-of-{shard[1]}"
    if world > 1:
        tags += f".rank-{rank}-of-{world}"
    return output.with_name(f"{output.name}{tags}.partial.safetensors")


def fingerprint(settings: dict[str, Any]) -> str:
    """A stable digest of the settings (sorted-key JSON)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def save_partial(path: Path, stats: StreamingStats, next_position: int, digest: str) -> None:
    """Write the statistics and the resume position atomically (a crash keeps the previous checkpoint)."""
    meta = {"memprune.kind": KIND, "memprune.fingerprint": digest, "memprune.next": str(next_position)}
    save_safetensors(stats.state_dict(), path, meta)


def load_partial(
    path: Path, digest: str, device: torch.device, span: tuple[int, int] | None = None
) -> tuple[StreamingStats, int] | None:
    """The saved statistics and the next image position, or ``None`` when there is no checkpoint.

    Args:
        span: this process's ``[begin, end)`` image range; the saved position must lie in it and the saved
            statistics must hold exactly the images before it (a tampered or mixed-up file is refused).

    Raises:
        MempruneError: the checkpoint belongs to a run with other settings (data, seed, model...), or its
            position and statistics disagree.
    """
    if not path.exists():
        return None
    try:
        ckpt = open_checkpoint(path)
    except MempruneError as exc:  # the resume file is ours: the fix is to start over, not to download anything
        raise MempruneError(f"cannot resume from {path}: {str(exc).split(';')[0]}; delete it to start over") from None
    with ckpt:
        meta = ckpt.metadata
        if meta.get("memprune.kind") != KIND:
            raise MempruneError(f"{path} is not a memprune scoring checkpoint: move it away or drop --resume")
        if meta.get("memprune.fingerprint") != digest:
            raise MempruneError(
                f"{path} was written by a run with other settings (checkpoint, data, views, seed, layers, dtype or "
                "batch size): rerun with the same options, or delete it to start over"
            )
        state = {k: ckpt.get(k) for k in ckpt.keys()}
    broken = f"{path} is damaged or was edited ({{}}): delete it to start over"
    text = meta.get("memprune.next", "")
    if not text.isdigit():
        raise MempruneError(broken.format(f"next image position {text!r} is not a number"))
    position = int(text)
    stats = StreamingStats.from_state_dict(state, device)
    if span is not None:
        begin, end = span
        if not begin <= position <= end:
            raise MempruneError(broken.format(f"next image {position} lies outside this run's images [{begin}, {end})"))
        held = int(stats.count.item())
        if held != position - begin:
            raise MempruneError(broken.format(f"it records {position - begin} images done but its statistics hold {held}"))
    return stats, position


def remove_partial(path: Path) -> None:
    """Delete a finished run's checkpoint (missing is fine)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # read-only folder etc.: the scores are written, so only warn
        log.warning("could not remove the scoring checkpoint %s (%s); delete it by hand", path, exc)


def records_digest(records: Sequence[ImageRecord]) -> str:
    """sha256 over the ``id<TAB>label`` lines of the scoring set (order matters: it defines the indices)."""
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.id}\t{r.label}\n".encode())
    return h.hexdigest()
