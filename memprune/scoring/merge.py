"""``memprune merge``: combine the score files of ``--shard i/n`` runs into the full result.

Merging uses the streaming statistics stored in each shard (``stats.*``): sums and counts add; max/argmax
take the larger maximum, and for equal maxima the smaller global image index (the shards index the same
full image list). The merged scores therefore equal those of one run over all images, up to the order of
float64 summation. Shards of different checkpoints, data, views, seeds, layers or groups are refused, and so
are duplicated or missing parts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memprune.errors import MempruneError
from memprune.io import check_output
from memprune.io.paths import check_output_file
from memprune.scores import ScoreSet, load_scores, save_scores
from memprune.scoring.stats import StreamingStats


@dataclass(frozen=True)
class MergeResult:
    """The merged scores, where they were written, and how many shards/images went in."""

    scores: ScoreSet
    output: Path | None
    shards: int
    images: int
    dead: dict[str, int]
    tied: dict[str, int]


def _shard_of(s: ScoreSet, path: Path) -> dict[str, Any]:
    if not s.stats or "count" not in s.stats:
        raise MempruneError(f"{path} has no streaming statistics: only files written by `memprune score` can be merged")
    shard = s.info.get("shard")
    if not shard:
        raise MempruneError(f"{path} is a complete run, not a shard: merge only the outputs of `memprune score --shard i/n`")
    count, index = (shard.get("count"), shard.get("index")) if isinstance(shard, dict) else (None, None)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (count, index)) or not 0 <= index < count:
        raise MempruneError(f"{path}: its shard record {shard!r} is not a valid i/n pair: the file was damaged; score that part again")
    return shard


def _check_same(first: ScoreSet, other: ScoreSet, p0: Path, p: Path) -> None:
    checks = [
        ("checkpoint", first.checkpoint_sha256, other.checkpoint_sha256),
        ("architecture", first.arch, other.arch),
        ("position groups", first.groups, other.groups),
        ("image list", first.images, other.images),
        ("settings", first.info.get("settings"), other.info.get("settings")),
        ("layers", sorted(first.scores), sorted(other.scores)),
    ]
    for what, a, b in checks:
        if a != b:
            raise MempruneError(
                f"{p} and {p0} differ in {what}: they were not scored with the same checkpoint and settings; "
                "rerun the odd shard with the same options"
            )
    for layer, value in first.stats.items():
        if layer in other.stats and other.stats[layer].shape != value.shape:
            raise MempruneError(f"{p} and {p0} have statistics {layer} of different shapes")


def merge_scores(paths: Sequence[str | os.PathLike], output: str | os.PathLike | None = None) -> MergeResult:
    """Merge shard score files into one :class:`ScoreSet` and optionally write it.

    Args:
        paths: the shard files (any order), all from ``--shard i/n`` runs with the same n.
        output: the merged score file to write, or ``None``.

    Raises:
        MempruneError: fewer than 2 files, files that are not shards, differing checkpoints/settings,
            duplicated or missing parts.
    """
    files = [Path(p) for p in paths]
    if len(files) < 2:
        raise MempruneError("give at least two shard files to merge (e.g. scores.*-of-4.safetensors)")
    out = check_output(output, files, suffix=".safetensors") if output is not None else None
    if out is not None:
        check_output_file(out, "merged score file")
    sets = [load_scores(p) for p in files]
    shards = [_shard_of(s, p) for s, p in zip(sets, files)]
    for s, p in zip(sets[1:], files[1:]):
        _check_same(sets[0], s, files[0], p)
    _check_parts(shards, files)
    order = sorted(range(len(sets)), key=lambda i: shards[i]["index"])
    merged = StreamingStats.from_state_dict(sets[order[0]].stats)
    for i in order[1:]:
        merged.merge_(StreamingStats.from_state_dict(sets[i].stats))
    finished = merged.finish()
    base = sets[order[0]]
    info = {**base.info, "shard": None, "images_scored": finished.count, "dead_units": finished.dead,
            "tied_units": finished.tied, "merged_from": [files[i].name for i in order]}
    result = ScoreSet(scores=finished.scores, groups=base.groups, checkpoint_sha256=base.checkpoint_sha256,
                      arch=base.arch, image_independent=base.image_independent, stats=merged.state_dict(),
                      images=base.images, info=info)
    if out is not None:
        save_scores(result, out)
    return MergeResult(scores=result, output=out, shards=len(files), images=finished.count, dead=finished.dead,
                       tied=finished.tied)


def _check_parts(shards: list[dict[str, Any]], files: list[Path]) -> None:
    counts = {s["count"] for s in shards}
    if len(counts) != 1:
        raise MempruneError(f"the shards were split differently (n = {sorted(counts)}): merge parts of one --shard i/n split")
    n = counts.pop()
    seen: dict[int, Path] = {}
    for s, p in zip(shards, files):
        if s["index"] in seen:
            raise MempruneError(f"{p} and {seen[s['index']]} are both shard {s['index']}/{n}: give each part once")
        seen[s["index"]] = p
    missing = [i for i in range(n) if i not in seen]
    if missing:
        raise MempruneError(
            f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing: score them with --shard and merge all {n} parts"
        )
