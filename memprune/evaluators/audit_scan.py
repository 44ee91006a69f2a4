"""The candidate-selection scan in bounded memory: a per-class top-k of greedy-hit rates, streamed image by image.

The attack keeps the ``per_class`` images of highest greedy-hit rate in every class. :class:`TopPerClass` holds
exactly those, a bounded heap per class whose order is the one :func:`select_top_per_class` sorts by (rate
descending, then image id), so it keeps the same images as sorting every rate would, in memory that grows with
classes x k, not with the number of images. Rates are logged to ``scan.jsonl`` (one row per image, in image
order) as the scan goes; that log is the saved ranking (``--ranking``) and what ``--resume`` continues from: the
rows already there are streamed back into the heaps, checked against the image list, and never held together.

The scan runs fixed batches of ``batch_size`` images in image order, the batches one process runs; under
torch.distributed the batches of a step are shared out over the ranks and every rank receives every rate, so
every rank's heaps are the single-process heaps. The image list itself stays in memory (one path, label and
id per image, given by the caller); the rates do not.
"""

from __future__ import annotations

import heapq
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from memprune.data import check_labels
from memprune.errors import MempruneError
from memprune.evaluators.audit_candidates import Candidate, Progress, greedy_hit_rates, load_views
from memprune.evaluators.audit_report import append_jsonl
from memprune.families.base import IARModel

if TYPE_CHECKING:
    from memprune.scoring.distributed import DistInfo


class _Entry:
    """A scored image; ``a < b`` when ``a`` ranks below ``b`` (lower rate, or the same rate and a larger id)."""

    __slots__ = ("candidate", "rate", "position")

    def __init__(self, candidate: Candidate, rate: float, position: int) -> None:
        self.candidate, self.rate, self.position = candidate, rate, position

    def __lt__(self, other: _Entry) -> bool:
        return self.rate < other.rate or (self.rate == other.rate and self.candidate.id > other.candidate.id)


class TopPerClass:
    """The ``k`` best images of every class (``k=None``: all of them), in the order of :func:`select_top_per_class`.

    Each class is a min-heap whose root is its worst kept image, so adding an image costs O(log k) and the
    memory is O(classes x k). Images are ranked by rate, then id: a strict total order, so the kept set does not
    depend on the order in which images arrive (a resumed, sharded or distributed scan keeps the same).
    """

    def __init__(self, k: int | None) -> None:
        if k is not None and k < 1:
            raise MempruneError(f"--per-class {k} selects nothing: give a positive number (the attack uses 5)")
        self.k = k
        self.heaps: dict[int, list[_Entry]] = {}

    def add(self, candidate: Candidate, rate: float, position: int = 0) -> None:
        heap = self.heaps.setdefault(candidate.label, [])
        entry = _Entry(candidate, rate, position)
        if self.k is None or len(heap) < self.k:
            heapq.heappush(heap, entry)
        elif heap[0] < entry:
            heapq.heapreplace(heap, entry)

    def __len__(self) -> int:
        return sum(len(h) for h in self.heaps.values())

    def ranked(self) -> list[Candidate]:
        """Class by class (ascending), best first; each candidate carries its ``hit_rate``."""
        out = []
        for label in sorted(self.heaps):
            for e in sorted(self.heaps[label], reverse=True):
                out.append(replace(e.candidate, hit_rate=e.rate))
        return out

    def in_input_order(self) -> list[Candidate]:
        """Every kept candidate in the order it was scanned (with ``k=None``: the whole image list)."""
        entries = sorted((e for h in self.heaps.values() for e in h), key=lambda e: e.position)
        return [replace(e.candidate, hit_rate=e.rate) for e in entries]


# ---------------------------------------------------------------------------------------------- the log
def replay_log(log: str | os.PathLike | None, images: Sequence[Candidate], top: TopPerClass) -> int:
    """Stream the rows of a scan log into ``top``; return how many leading images it covers.

    Row n must be image n of ``images`` (the scan appends in image order), so nothing but the count needs to be
    remembered to resume. A torn last line is dropped and the file repaired.

    Raises:
        MempruneError: a row that is not a scan row, a rate outside [0, 1], or rows that do not follow the image
            list (the data changed since the scan).
    """
    n = 0
    for n, row in enumerate(_rows(log), start=1):
        try:
            rate, ident = float(row["hit_rate"]), str(row["id"])
        except (KeyError, TypeError, ValueError):
            raise MempruneError(f"{log} line {n} is not a scan row (id, hit_rate): delete the file to rescan") from None
        if not 0.0 <= rate <= 1.0:
            raise MempruneError(f"{log} line {n} has hit_rate {rate}, not in [0, 1]: delete the file to rescan")
        if n > len(images) or images[n - 1].id != ident:
            where = f"image {n} is {images[n - 1].id!r}" if n <= len(images) else f"there are {len(images)} images"
            raise MempruneError(f"{log} line {n} scores {ident!r} but {where}: the images changed since this scan; "
                                "delete the file (or start a new -o folder) to rescan")
        top.add(images[n - 1], rate, n - 1)
    return n


def _rows(log: str | os.PathLike | None) -> Iterator[dict]:
    """The rows of a JSON-lines log, one at a time (a 1.28 M-row log is never held whole).

    A torn last line (killed mid-write) is cut off the file, and a last line without its newline gets one, so
    that later appends start on a clean line (what ``read_jsonl(repair=True)`` does, without reading it all).
    """
    if log is None or not Path(log).is_file():
        return
    with open(log, "rb+") as fh:
        offset, number = 0, 0
        for raw in fh:
            number += 1
            last = not raw.endswith(b"\n")
            if raw.strip():
                try:
                    row = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    if not last:
                        raise MempruneError(f"{log} line {number} is not JSON: delete the file to start over") from None
                    fh.truncate(offset)  # the torn tail of an interrupted append
                    return
                if last:
                    fh.write(b"\n")
                yield row
            offset += len(raw)


# ---------------------------------------------------------------------------------------------- the scan
def scan_top(
    models: Mapping[str, IARModel],
    images: Sequence[Candidate],
    per_class: int | None,
    *,
    batch_size: int = 16,
    logs: Mapping[str, str | os.PathLike] | None = None,
    progress: Progress | None = None,
    dist: DistInfo | None = None,
) -> dict[str, TopPerClass]:
    """Greedy-hit rate of every image under every model, keeping each model's top ``per_class`` per class.

    Each image is tokenized once (first model's tokenizer). ``logs[name]`` receives the rates of model ``name``
    batch by batch; rows already there are reused (:func:`replay_log`), so an interrupted scan resumes at the
    first batch one of the models lacks. Under torch.distributed the batches are shared out over the ranks;
    rank 0 alone reads and appends the logs, and every rank returns the same heaps.
    """
    from memprune.scoring import distributed as D

    if not models:
        raise MempruneError("no model to scan")
    if batch_size < 1:
        raise MempruneError(f"--batch-size {batch_size} must be at least 1")
    info = dist or D.DistInfo()
    first = next(iter(models.values()))
    check_labels(images, first.num_classes)  # type: ignore[arg-type]

    def replay() -> tuple[dict[str, TopPerClass], dict[str, int]]:
        tops = {name: TopPerClass(per_class) for name in models}
        return tops, {name: replay_log(logs.get(name) if logs else None, images, tops[name]) for name in models}

    tops, covered = D.on_main(replay, info)  # the heaps travel, not the log: O(classes x k)
    n_batches = math.ceil(len(images) / batch_size)
    # From the batch of the first image a model lacks, in whole batches composed as in a fresh run.
    lacking = min(covered.values())
    start = lacking // batch_size if lacking < len(images) else n_batches

    def rates_of(b: int) -> dict[str, list[float]]:
        chunk = images[b * batch_size : (b + 1) * batch_size]
        tokens = first.encode(load_views(chunk, first).to(first.device))
        labels = torch.tensor([c.label for c in chunk])
        return {name: greedy_hit_rates(model, tokens.to(model.device), labels.to(model.device)).tolist()
                for name, model in models.items()}  # fmt: skip

    finished = min(start * batch_size, len(images))
    for mine, step in D.steps(list(range(start, n_batches)), info):
        for b, rates in zip(step, D.run_step(rates_of, mine, info)):
            begin = b * batch_size
            chunk = images[begin : begin + batch_size]
            for name in models:
                new = [(begin + j, c, r) for j, (c, r) in enumerate(zip(chunk, rates[name])) if begin + j >= covered[name]]
                for position, c, r in new:
                    tops[name].add(c, r, position)
                if logs and name in logs and info.is_main:
                    append_jsonl(logs[name], [{"id": c.id, "label": c.label, "hit_rate": r} for _, c, r in new])
            finished += len(chunk)
            if progress:
                progress("scan", finished, len(images))
    return tops


def select_from_scan(tops: Mapping[str, TopPerClass]) -> list[Candidate]:
    """The union of every model's picks. Order: class by class; within a class the first model's picks (its
    ranking), then the others' new ones. Each keeps the highest rate over the models that picked it and their
    names in ``selected_by``."""
    merged: dict[str, Candidate] = {}
    for name, top in tops.items():
        for c in top.ranked():
            old = merged.get(c.id)
            if old is None:
                merged[c.id] = replace(c, selected_by=(name,))
            else:
                merged[c.id] = replace(old, hit_rate=max(old.hit_rate or 0.0, c.hit_rate or 0.0),
                                       selected_by=(*old.selected_by, name))
    position = {c.id: k for k, c in enumerate(merged.values())}
    return sorted(merged.values(), key=lambda c: (c.label, position[c.id]))


def top_of_ranking(path: str | os.PathLike, data_root: str | os.PathLike | None, per_class: int) -> list[Candidate]:
    """The top ``per_class`` per class of a saved ranking (``scan.jsonl``, or a list with ``hit_rate``), streamed:
    memory O(classes x k), and only the selected images are looked up on disk.

    Raises:
        MempruneError: an unreadable list, a row without a hit rate, or a selected image that does not exist.
    """
    from memprune.evaluators.audit_candidates import iter_candidates, resolve_paths

    p = Path(path)
    top = TopPerClass(per_class)
    for n, c in enumerate(iter_candidates(p)):
        if c.hit_rate is None:
            raise MempruneError(f"image {c.id} has no greedy-hit rate: run the selection scan first")
        top.add(c, c.hit_rate, n)
    return resolve_paths(top.ranked(), p, data_root)

