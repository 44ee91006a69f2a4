"""Candidates of the extraction audit: reading and writing lists, the attack's canonical view, and selection.

Selection is the attack's: one class-conditional teacher-forced pass per training image; the score is the
*greedy-hit rate*, the share of ranked positions where the argmax prediction equals the true token (VAR: the
last scale; RAR and other raster models: the last 99 predictions); keep the ``per_class`` best images of every
class. :func:`select_candidates` does this on several models at once (tokenizing each image once) and audits
the union, so that a patch cannot hide an image by lowering its rank.

Images enter through the attack's canonical view (no randomness): VAR shorter side ``round(1.125 * res)``
(LANCZOS) + centre crop; RAR and others shorter side ``res`` (BICUBIC) + centre crop.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from memprune.data import ImageRecord, load_image, to_tensor
from memprune.errors import MempruneError
from memprune.families.base import IARModel

if TYPE_CHECKING:
    from memprune.scoring.distributed import DistInfo

_INT = re.compile(r"-?\d+")

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: called after every batch (phases ``scan``, ``reference`` and ``audit``)."""


@dataclass(frozen=True)
class Candidate:
    """One image to audit.

    Attributes:
        path: where the file is.
        label: class id.
        id: stable image id (path relative to the data root), used in every report instead of row numbers.
        hit_rate: greedy-hit rate from the selection scan (the highest over the models it was selected on).
        selected_by: names of the models whose top-per-class list held it (empty for a given list).
    """

    path: Path
    label: int
    id: str
    hit_rate: float | None = None
    selected_by: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------- lists
def candidates_from_records(records: Sequence[ImageRecord]) -> list[Candidate]:
    """Wrap :class:`memprune.data.ImageRecord` rows (``memprune.data.load_records``) as candidates."""
    return [Candidate(Path(r.path), int(r.label), r.id) for r in records]


def read_candidates(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> list[Candidate]:
    """Read a candidate list: CSV with a header holding ``path`` (or ``id``) and ``label``, or JSON lines.

    Relative paths are looked up under ``data_root`` first (when it is a folder), then beside the list. The
    ``candidates.csv`` that :func:`memprune.evaluators.audit_run.audit` writes is accepted as is.

    Raises:
        MempruneError: unreadable or empty list, a row without an integer label, a ``hit_rate`` that is not a
            number in [0, 1], or images that do not exist.
    """
    p = Path(path)
    return resolve_paths(list(iter_candidates(p)), p, data_root)


def iter_candidates(path: Path) -> Iterator[Candidate]:
    """The rows of a candidate list one at a time, checked, with paths as written (see :func:`resolve_paths`).

    Streams the file (a ranking of 1.28 M images is never held whole). Raises as :func:`read_candidates`.
    """
    if not path.is_file():
        raise MempruneError(f"candidate list {path} does not exist: pass a CSV (path,label) or JSONL file to --candidates")
    n = 0
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            jsonl = path.suffix.lower() in (".jsonl", ".json")
            rows = (json.loads(line) for line in fh if line.strip()) if jsonl else csv.DictReader(fh)
            for n, row in enumerate(rows, start=1):
                yield _candidate_of(row, path, n)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise MempruneError(f"cannot read candidate list {path} ({exc}): give a CSV with header path,label or JSONL") from None
    if n == 0:
        raise MempruneError(f"candidate list {path} is empty: list at least one image (CSV header path,label)")


def _candidate_of(row: object, path: Path, n: int) -> Candidate:
    if not isinstance(row, dict):
        raise MempruneError(f"{path} row {n} is not an object with path and label: write one JSON object per line")
    name = str(row.get("path") or row.get("id") or "").strip()
    label = str(row.get("label", "")).strip()
    if not name or not _INT.fullmatch(label):
        raise MempruneError(f"{path} row {n} needs a path (or id) and an integer label, got {row!r}")
    hit = _hit_rate(row.get("hit_rate"), path, n)
    selected_by = tuple(s for s in str(row.get("selected_by") or "").split(";") if s)
    return Candidate(Path(name), int(label), str(row.get("id") or name), hit, selected_by)


def resolve_paths(candidates: Sequence[Candidate], listed_in: Path, data_root: str | os.PathLike | None) -> list[Candidate]:
    """The candidates with absolute paths of existing images: relative ones under ``data_root``, else beside the list.

    Raises:
        MempruneError: images that do not exist.
    """
    roots = [Path(data_root)] if data_root is not None and Path(data_root).is_dir() else []
    roots.append(listed_in.parent)
    out, missing = [], []
    for c in candidates:
        image = c.path
        found = image if image.is_absolute() else next((r / image for r in roots if (r / image).is_file()), None)
        if found is None or not found.is_file():
            missing.append(str(image))
            continue
        # Absolute, so that results.csv / candidates.csv written elsewhere still point at the image.
        out.append(Candidate(found.absolute(), c.label, c.id, c.hit_rate, c.selected_by))
    if missing:
        where = " or ".join(str(r) for r in roots)
        raise MempruneError(
            f"{len(missing)} candidate image(s) do not exist, e.g. {missing[0]!r} (looked under {where}): "
            "fix the list or pass the right --data root"
        )
    return out


def _hit_rate(value: object, path: Path, row: int) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        rate = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        rate = math.nan
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise MempruneError(f"{path} row {row}: hit_rate {value!r} is not a number in [0, 1]; fix it or leave it empty")
    return rate


def write_candidates(candidates: Sequence[Candidate], path: str | os.PathLike) -> None:
    """Write ``candidates.csv`` (id, path, label, hit_rate, selected_by); readable by :func:`read_candidates`."""
    from memprune.io import atomic_write

    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "path", "label", "hit_rate", "selected_by"])
        for c in candidates:
            rate = "" if c.hit_rate is None else f"{c.hit_rate:.6f}"
            writer.writerow([c.id, str(c.path.resolve()), c.label, rate, ";".join(c.selected_by)])


def check_unique(candidates: Sequence[Candidate]) -> None:
    """Each image id may appear once."""
    seen: set[str] = set()
    for c in candidates:
        if c.id in seen:
            raise MempruneError(f"candidate {c.id!r} is listed more than once: each image may appear once")
        seen.add(c.id)


def select_top_per_class(scored: Sequence[Candidate], per_class: int) -> list[Candidate]:
    """The ``per_class`` highest greedy-hit rates of every class (ties broken by image id), class by class."""
    from memprune.evaluators.audit_scan import TopPerClass

    top = TopPerClass(per_class)
    for c in scored:
        if c.hit_rate is None:
            raise MempruneError(f"image {c.id} has no greedy-hit rate: run the selection scan first")
        top.add(c, c.hit_rate)
    return top.ranked()


# ---------------------------------------------------------------------------------------------- model facts
def canonical_view(img: Image.Image, arch: str, size: int) -> torch.Tensor:
    """The attack's deterministic view of an RGB image as float ``[3, size, size]`` in [0, 1].

    The family spec declares it (:class:`memprune.families.AuditView`): VAR shorter side to
    ``round(1.125 * size)`` with LANCZOS, centre crop; RAR shorter side to ``size`` with BICUBIC (PIL
    antialiases), centre crop, as torchvision's ``Resize`` + ``CenterCrop``; LlamaGen (not covered by the attack
    code) the centre view of its training ten-crop, ADM's ``center_crop_arr(int(1.1 * size))`` then the centre
    ``size`` crop (``extract_codes_c2i.py --ten-crop``).
    """
    from memprune.families import get_family

    view = get_family(arch).need("audit_view")
    if view.method == "center_crop_arr":  # = ten-crop view 0, the unflipped centre
        from memprune.data_views import _center_crop_arr

        big = _center_crop_arr(img, int(view.scale * size))
        off = int(round((big.size[0] - size) / 2.0))
        return to_tensor(big.crop((off, off, off + size, off + size)))
    short = round(view.scale * size)
    resample = Image.Resampling.LANCZOS if view.resample == "lanczos" else Image.Resampling.BICUBIC
    w, h = img.size
    if min(w, h) != short:  # torchvision Resize(int): the long side is truncated
        img = img.resize((short, int(short * h / w)) if w <= h else (int(short * w / h), short), resample=resample)
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return to_tensor(img.crop((left, top, left + size, top + size)))


def load_views(candidates: Sequence[Candidate], model: IARModel) -> torch.Tensor:
    """Canonical views ``[B, 3, S, S]`` of the candidates' images for ``model``."""
    return torch.stack([canonical_view(load_image(c.path), model.arch, model.image_size) for c in candidates])


def ranked_positions(model: IARModel) -> slice:
    """Logit rows the greedy-hit rate averages over, as the family spec declares them (``ranked_predictions``):
    VAR the last scale, raster models the last 99 predictions."""
    from memprune.families import family_of

    count = family_of(model).ranked_predictions
    bounds = model.valid_prefix_lengths()
    if count == "last_scale":
        if bounds is None or len(bounds) < 2:
            raise MempruneError(f"{model.arch} ranks candidates on its last scale but the model has no scales")
        return slice(bounds[-2], bounds[-1])
    if not isinstance(count, int) or count < 1:
        raise MempruneError(f"the {model.arch} family declares no ranked predictions: add them to its spec")
    return slice(max(0, model.seq_len - count), model.seq_len)


@torch.no_grad()
def greedy_hit_rates(model: IARModel, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of ranked positions whose argmax teacher-forced prediction is the true token, ``[B]`` float."""
    logits = model.teacher_forced(tokens, labels)
    rows = ranked_positions(model)
    hits = logits[:, rows].argmax(dim=-1) == tokens[:, rows].to(logits.device)
    return hits.float().mean(dim=1).cpu()


# ---------------------------------------------------------------------------------------------- selection
# The scan itself lives in memprune.evaluators.audit_scan (bounded per-class top-k); these are its entry points.
def scan_models(
    models: Mapping[str, IARModel],
    candidates: Sequence[Candidate],
    *,
    batch_size: int = 16,
    logs: Mapping[str, str | os.PathLike] | None = None,
    progress: Progress | None = None,
    dist: DistInfo | None = None,
) -> dict[str, list[Candidate]]:
    """Greedy-hit rate of every image under every model; each image is tokenized once (first model's tokenizer).

    Keeps every rate (memory grows with the images); :func:`select_candidates` keeps only each class's top k.
    ``logs[name]`` (JSON lines) receives the rates of model ``name`` batch by batch and is reused when present,
    so an interrupted scan resumes; ``dist`` as in :func:`memprune.evaluators.audit_scan.scan_top`.

    Returns:
        name -> the candidates with ``hit_rate`` set by that model, in input order.
    """
    from memprune.evaluators.audit_scan import scan_top

    tops = scan_top(models, candidates, None, batch_size=batch_size, logs=logs, progress=progress, dist=dist)
    return {name: top.in_input_order() for name, top in tops.items()}


def scan_hit_rates(
    model: IARModel,
    candidates: Sequence[Candidate],
    *,
    batch_size: int = 16,
    log: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> list[Candidate]:
    """:func:`scan_models` for one model: the candidates with ``hit_rate`` set, in input order."""
    logs = {"model": log} if log is not None else None
    return scan_models({"model": model}, candidates, batch_size=batch_size, logs=logs, progress=progress)["model"]


def select_candidates(
    models: Mapping[str, IARModel],
    images: Sequence[Candidate],
    per_class: int,
    *,
    batch_size: int = 16,
    logs: Mapping[str, str | os.PathLike] | None = None,
    progress: Progress | None = None,
    dist: DistInfo | None = None,
) -> list[Candidate]:
    """The union of every model's top ``per_class`` per class, scanned in memory bounded by classes x per_class
    (:func:`memprune.evaluators.audit_scan.scan_top` for ``logs`` and ``dist``).

    Order: class by class; within a class the first model's picks (its ranking), then the others' new ones.
    Each candidate keeps the highest hit rate over the models that picked it and their names in ``selected_by``.
    """
    from memprune.evaluators.audit_scan import scan_top, select_from_scan

    if per_class < 1:
        raise MempruneError(f"--per-class {per_class} selects nothing: give a positive number (the attack uses 5)")
    tops = scan_top(models, images, per_class, batch_size=batch_size, logs=logs, progress=progress, dist=dist)
    return select_from_scan(tops)
