"""Units of audit work shared out over shards and ranks: a candidate batch and a contiguous slice of its conditions.

The candidates are cut into fixed batches of ``batch_size`` (the batches one process runs), and every condition
of a batch is computed independently of the others (its sampling seed depends only on the batch's first
candidate; a prefix pass shared between conditions is exact). A batch may therefore be split by conditions
without changing a single row. :func:`plan` hands out whole batches in full rounds, one per worker, as before;
only the last, incomplete round is split by conditions, so that e.g. 2 ranks on one batch of 12 conditions
each run 6. The same plan splits shards (``--shard i/n``) and then, inside a shard, torch.distributed ranks.

Grid images need, per extracted candidate and model, the generation of the highest cosine over *all* counted
conditions (the first condition on ties). A slice knows only its own: :func:`combine` merges the slices of a
batch (each slice's best, the earlier slice on ties, which is the first condition overall), and a shard part
whose batch was split keeps every candidate's slice-best pictures under ``extracted/slices/`` so that
``memprune merge`` can make the same choice (:func:`finish_slices`).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from memprune.plots.grid import safe_name

if TYPE_CHECKING:
    from memprune.evaluators.audit import BatchImages, Candidate, CandidateResult

SLICES_DIR = "slices"


@dataclass(frozen=True)
class Unit:
    """Batch ``batch`` under conditions ``lo..hi-1`` of the run's list (counted conditions, then the sweep's)."""

    batch: int
    lo: int
    hi: int


def whole_batches(n_batches: int, n_conditions: int) -> list[Unit]:
    return [Unit(b, 0, n_conditions) for b in range(n_batches)]


def split(unit: Unit, parts: int) -> list[Unit]:
    """``unit`` as ``parts`` (at most one per condition) contiguous, near-equal condition slices."""
    n = unit.hi - unit.lo
    parts = max(1, min(parts, n))
    return [Unit(unit.batch, unit.lo + k * n // parts, unit.lo + (k + 1) * n // parts) for k in range(parts)]


def plan(units: Sequence[Unit], workers: int) -> list[Unit]:
    """Unit ``j`` of the result goes to worker ``j mod workers``: whole units in full rounds, then the last round's
    units split by conditions so that no worker idles while another runs a whole batch."""
    full = len(units) // workers * workers
    out = list(units[:full])
    tail = units[full:]
    for unit in tail:
        out += split(unit, workers // len(tail))
    return out


def shard_units(n_batches: int, n_conditions: int, shard: tuple[int, int] | None) -> list[Unit]:
    """The units of ``--shard i/n`` (every unit without a shard); with a whole number of rounds, batch b belongs to
    shard ``b mod n``. It does not depend on what a resumed part has done already."""
    units = whole_batches(n_batches, n_conditions)
    if shard is None:
        return units
    index, count = shard
    return [u for j, u in enumerate(plan(units, count)) if j % count == index]


def slice_conditions(unit: Unit, counted: Sequence, extras: Sequence) -> tuple[list, list]:
    """The counted and the uncounted (sweep) conditions of ``unit``."""
    c = len(counted)
    return list(counted[unit.lo : min(unit.hi, c)]), list(extras[max(unit.lo - c, 0) : max(unit.hi - c, 0)])


# ---------------------------------------------------------------------------------------------- images
def to_bytes(images: BatchImages) -> BatchImages:
    """The pixels as uint8 (what the PNGs hold): a quarter of the float32 size to send between ranks."""
    from memprune.evaluators.audit import BatchImages

    q = lambda t: t.float().clamp(0, 1).mul(255).round().to(torch.uint8)  # noqa: E731 - as audit_report._to_pil
    return BatchImages(q(images.views), q(images.recons), {m: q(g) for m, g in images.generations.items()})


def to_float(images: BatchImages) -> BatchImages:
    """Back to [0, 1] floats; ``_to_pil`` rounds them to the same bytes."""
    from memprune.evaluators.audit import BatchImages

    f = lambda t: t.float().div(255)  # noqa: E731
    return BatchImages(f(images.views), f(images.recons), {m: f(g) for m, g in images.generations.items()})


def best_similarity(rows: Sequence[CandidateResult], index: int, model: str) -> float:
    """The highest counted cosine of one candidate and model among ``rows`` (-inf when none)."""
    return max((r.similarity for r in rows if r.counted and r.index == index and r.model == model), default=-math.inf)


def combine(slices: Sequence[tuple[Unit, list[CandidateResult], BatchImages]], indices: Sequence[int]) -> BatchImages:
    """One batch's pictures from its condition slices: per candidate and model, the slice of the highest cosine,
    the earliest on ties (= the first condition of the highest cosine, as one process keeps it)."""
    from memprune.evaluators.audit import BatchImages

    ordered = sorted(slices, key=lambda s: s[0].lo)
    first = ordered[0][2]
    models = sorted({m for _, _, images in ordered for m in images.generations})
    gens = {}
    for m in models:
        rows_out = []
        for j, index in enumerate(indices):
            best, pick = -math.inf, None
            for _, rows, images in ordered:
                sim = best_similarity(rows, index, m)
                if m in images.generations and sim > best:
                    best, pick = sim, images.generations[m][j]
            rows_out.append(pick if pick is not None else torch.zeros_like(first.views[j]))
        gens[m] = torch.stack(rows_out)
    return BatchImages(first.views, first.recons, gens)


def one_row(images: BatchImages, row: int) -> BatchImages:
    """The pictures of one candidate of a batch (what travels between ranks for an extraction)."""
    from memprune.evaluators.audit import BatchImages

    pick = slice(row, row + 1)
    return BatchImages(images.views[pick].clone(), images.recons[pick].clone(),
                       {name: g[pick].clone() for name, g in images.generations.items()})


def keep_pictures(
    outs: list, chunk: Sequence[tuple[int, Candidate]], new: list[CandidateResult], fresh: list[CandidateResult],
    whole: bool, n_conditions: int, out_dir: str | os.PathLike, on_extracted: Callable | None,
) -> None:
    """Hand the pictures of a batch's new extractions to ``on_extracted``; ``outs`` are the batch's units of one
    step (one whole batch, or its condition slices), ``new`` all their rows, ``fresh`` those not yet on disk.
    A shard's slice of a batch cannot tell what is extracted: it keeps every candidate's pictures for merge."""
    keys = {(r.id, r.model, r.condition) for r in fresh}
    if len(outs) == 1 and (outs[0][0].lo, outs[0][0].hi) == (0, n_conditions):  # computed whole, as before
        for r, images in outs[0][2]:
            if on_extracted is not None and (r.id, r.model, r.condition) in keys:
                on_extracted(r, images, 0)
        return
    images = combine(outs, [i for i, _ in chunk])
    if not whole:
        unit = Unit(outs[0][0].batch, min(o[0].lo for o in outs), max(o[0].hi for o in outs))
        save_slice(out_dir, unit, chunk, images)
        return
    pictures = to_float(images)
    at = {i: k for k, (i, _) in enumerate(chunk)}
    for r in new:
        if r.counted and r.extracted and on_extracted is not None and (r.id, r.model, r.condition) in keys:
            on_extracted(r, one_row(pictures, at[r.index]), 0)


def save_slice(out_dir: str | os.PathLike, unit: Unit, chunk: Sequence, images: BatchImages) -> None:
    """A shard part's split batch: every candidate's view, reconstruction and slice-best generations, for merge."""
    from memprune.evaluators.audit_report import EXTRACTED_DIR

    folder = Path(out_dir) / EXTRACTED_DIR / SLICES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for j, (_, cand) in enumerate(chunk):
        stem = safe_name(cand.id)
        pictures = {"image": images.views[j], "reconstruction": images.recons[j]}
        pictures.update({f"{m}_c{unit.lo}-{unit.hi}": g[j] for m, g in images.generations.items()})
        for name, img in pictures.items():
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{stem}_{name}.png")


def finish_slices(parts: Sequence[Path], out: Path, rows: Sequence[CandidateResult], models: Sequence[str],
                  keys: Sequence[str]) -> None:
    """Merge: the pictures of extracted candidates whose batch was split over shards, chosen as one process does.

    ``keys`` are the run's condition keys in order (counted, then sweep): slice ``lo-hi`` covers ``keys[lo:hi]``.
    """
    from memprune.evaluators.audit_report import EXTRACTED_DIR

    folders = [p / EXTRACTED_DIR / SLICES_DIR for p in parts if (p / EXTRACTED_DIR / SLICES_DIR).is_dir()]
    if not folders:
        return
    target = out / EXTRACTED_DIR
    position = {key: k for k, key in enumerate(keys)}
    for index in sorted({r.index for r in rows if r.counted and r.extracted}):
        stem = safe_name(next(r.id for r in rows if r.index == index))
        for base in ("image", "reconstruction"):
            src = next((f / f"{stem}_{base}.png" for f in folders if (f / f"{stem}_{base}.png").is_file()), None)
            if src is not None and not (target / f"{stem}_{base}.png").exists():
                target.mkdir(exist_ok=True)
                shutil.copyfile(src, target / f"{stem}_{base}.png")
        for m in models:
            best, pick = -math.inf, None
            for lo, hi, path in sorted(_slice_files(folders, stem, m)):
                sim = max((r.similarity for r in rows if r.counted and r.index == index and r.model == m
                           and lo <= position.get(r.condition, -1) < hi), default=-math.inf)  # fmt: skip
                if sim > best:
                    best, pick = sim, path
            if pick is not None and not (target / f"{stem}_{m}.png").exists():
                shutil.copyfile(pick, target / f"{stem}_{m}.png")


def _slice_files(folders: Sequence[Path], stem: str, model: str) -> list[tuple[int, int, Path]]:
    out = []
    prefix = f"{stem}_{model}_c"
    for folder in folders:
        for path in folder.glob(f"{stem}_{model}_c*.png"):
            lo, _, hi = path.name[len(prefix) : -len(".png")].partition("-")
            if lo.isdigit() and hi.isdigit():
                out.append((int(lo), int(hi), path))
    return out
