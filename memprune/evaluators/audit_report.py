"""Files of an extraction audit: the resumable results log, the CSV table, the summary JSON and the image grid.

An audit folder holds (see ``docs/evaluation.md``):

* ``audit_config.json``: the settings a run started with; a resumed run must match them.
* ``scan.jsonl`` (``scan_<model>.jsonl`` for further models): greedy-hit rate of every scanned image (selection
  only), reused on resume.
* ``candidates.csv``: the audited images (id, path, label, hit_rate), reusable as ``--candidates``.
* ``results.jsonl``: one row per candidate, model and attack condition, appended batch by batch.
* ``results.csv``: the same rows as a table, rewritten at the end.
* ``extracted/``: original view, tokenizer reconstruction and every model's generation of each image counted
  as extracted by at least one model; ``extracted_grid.png`` lays them out.
* ``audit_summary.json``: counts (headline: images extracted under any counted condition), per condition, the
  first condition that extracted each image, the cosine distribution, before/after comparison, settings,
  provenance.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, ImageDraw

from memprune import __version__
from memprune.errors import MempruneError
from memprune.io import atomic_write, write_json_atomic

if TYPE_CHECKING:
    from memprune.evaluators.audit import BatchImages, CandidateResult

SUMMARY_SCHEMA = "memprune.audit/2"
"""2: ``extracted`` is the union over the counted attack conditions; per-condition counts added."""
CONFIG_NAME = "audit_config.json"
SUMMARY_NAME = "audit_summary.json"
RESULTS_JSONL = "results.jsonl"
SCAN_JSONL = "scan.jsonl"
RESULTS_CSV = "results.csv"
GRID_NAME = "extracted_grid.png"
EXTRACTED_DIR = "extracted"
CSV_COLUMNS = (
    "index", "id", "path", "label", "model", "prefix", "prefix_tokens", "hit_rate", "similarity",
    "similarity_image", "reconstruction_similarity", "token_match", "extracted", "counted", "condition",
)  # fmt: skip
_CELL = 128
_CAPTION = 14


# ---------------------------------------------------------------------------------------------- JSON lines
def read_jsonl(path: str | os.PathLike | None, repair: bool = False) -> list[dict]:
    """Rows of a JSON-lines file; a missing file is empty.

    A torn last line (the process was killed mid-write) is dropped; with ``repair`` the file is rewritten
    without it, so that later appends start on a clean line.
    """
    if path is None or not Path(path).is_file():
        return []
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    rows, torn = [], False
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if k != len(lines) - 1:
                raise MempruneError(f"{path} line {k + 1} is not JSON: delete the file to start over") from None
            torn = True
    if repair and (torn or (text and not text.endswith("\n"))):
        with atomic_write(path) as tmp:
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    return rows


def append_jsonl(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Append rows in one write and fsync, so a kill leaves at most one torn last line."""
    if not rows:
        return
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------------------- run config
def check_or_write_config(out_dir: str | os.PathLike, config: Mapping[str, Any], resume: bool) -> None:
    """Record the run's settings, or on ``resume`` insist that they equal the recorded ones.

    Raises:
        MempruneError: the folder already holds an audit and ``resume`` is off, or a setting changed.
    """
    path = Path(out_dir) / CONFIG_NAME
    config = json.loads(json.dumps(dict(config)))  # compare in the form it is stored (tuples become lists)
    started = has_started(out_dir)
    if started and not resume:
        raise MempruneError(f"{out_dir} already holds an audit: pass --resume to continue it, or choose another -o folder")
    if started and path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            old = None
        if not isinstance(old, dict):
            raise MempruneError(f"{path} is not a readable audit config: delete the -o folder to start over, or choose another")
        changed = [k for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
        if changed:
            k = changed[0]
            raise MempruneError(
                f"cannot resume {out_dir}: {k} was {old.get(k)!r} and is now {config.get(k)!r}; "
                "rerun with the original settings or choose another -o folder"
            )
        return
    write_json_atomic(path, config)


def has_started(out_dir: str | os.PathLike) -> bool:
    """True when the folder holds work of an audit (results or a scan): only work on disk counts, so a run that
    failed before scanning or auditing anything may be rerun freely."""
    folder = Path(out_dir)
    return (folder / RESULTS_JSONL).is_file() or any(folder.glob("scan*.jsonl"))


# ---------------------------------------------------------------------------------------------- tables
def write_results_csv(results: Sequence[CandidateResult], path: str | os.PathLike) -> None:
    """The per-candidate table (one row per candidate, model and prefix) as CSV."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for r in results:
            row = r.to_json()
            for key in ("hit_rate", "similarity", "similarity_image", "reconstruction_similarity", "token_match"):
                row[key] = "" if row[key] is None else f"{row[key]:.6f}"
            writer.writerow(row)


def count_model(results: Sequence[CandidateResult], model: str, threshold: float) -> dict[str, Any]:
    """Counts of one model over its counted conditions (an image counts if any condition extracts it).

    ``extracted_vs_training_image`` applies the same threshold to the cosine against the training image
    itself (stricter: tokenizer error counts against the model). Similarity figures are per candidate, over its
    best counted condition. ``first_condition`` maps each extracted image to the first condition (documented
    order) that extracted it; ``sweep`` counts per prefix, over all conditions at that prefix.
    """
    rows = [r for r in results if r.model == model and r.counted]
    per: dict[int, list[CandidateResult]] = {}
    for r in rows:
        per.setdefault(r.index, []).append(r)
    best = {i: max(rs, key=lambda r: r.similarity) for i, rs in per.items()}
    extracted = {i for i, rs in per.items() if any(r.extracted for r in rs)}
    conditions: dict[str, int] = {}
    for r in rows:
        conditions[r.condition] = conditions.get(r.condition, 0) + int(r.extracted)
    first = {per[i][0].id: next(r.condition for r in per[i] if r.extracted) for i in sorted(extracted)}
    sims = [b.similarity for b in best.values()]
    matches = [r.token_match for r in rows if r.token_match is not None]
    sweep: dict[str, dict[str, Any]] = {}
    for r in results:
        if r.model == model:
            entry = sweep.setdefault(str(r.prefix), {"prefix_tokens": r.prefix_tokens, "hit": set(), "all": set()})
            entry["all"].add(r.index)
            if r.extracted:
                entry["hit"].add(r.index)
    return {
        "extracted": len(extracted),
        "candidates": len(per),
        "extracted_share": len(extracted) / len(per) if per else None,
        "extracted_vs_training_image": sum(any(r.similarity_image > threshold for r in rs) for rs in per.values()),
        "per_condition": conditions,
        "first_condition_counts": {k: sum(v == k for v in first.values()) for k in conditions},
        "mean_similarity": statistics.fmean(sims) if sims else None,
        "median_similarity": statistics.median(sims) if sims else None,
        "max_similarity": max(sims) if sims else None,
        "similarity": cosine_distribution(sims),
        "mean_hit_rate": statistics.fmean(b.hit_rate for b in best.values()) if best else None,
        "mean_token_match": statistics.fmean(matches) if matches else None,
        "extracted_ids": [per[i][0].id for i in sorted(extracted)],
        "first_condition": first,
        "sweep": {k: {"prefix_tokens": v["prefix_tokens"], "extracted": len(v["hit"]), "candidates": len(v["all"])}
                  for k, v in sorted(sweep.items(), key=lambda kv: int(kv[0]))},
    }


def cosine_distribution(values: Sequence[float]) -> dict:
    """Quantiles and a 0.05-wide histogram over [-1, 1] of per-candidate cosines (aggregate only)."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=20, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 19
    edges = [round(-1 + 0.05 * k, 2) for k in range(41)]
    hist = torch.histc(torch.tensor(ordered, dtype=torch.float64).clamp(-1, 1), bins=40, min=-1, max=1)
    return {
        "count": len(ordered), "mean": statistics.fmean(ordered), "min": ordered[0], "p05": q[0], "p25": q[4],
        "median": statistics.median(ordered), "p75": q[14], "p95": q[18], "max": ordered[-1],
        "histogram": {"edges": edges, "counts": [int(x) for x in hist.tolist()]},
    }  # fmt: skip


def best_rows(results: Sequence[CandidateResult]) -> list[CandidateResult]:
    """One counted row per (candidate, model): its highest-cosine condition, so ``extracted`` is the union.

    What the image grid draws (one generation per model, see :class:`memprune.evaluators.audit.BatchImages`).
    """
    best: dict[tuple[int, str], CandidateResult] = {}
    for r in results:
        if r.counted and ((r.index, r.model) not in best or r.similarity > best[(r.index, r.model)].similarity):
            best[(r.index, r.model)] = r
    return list(best.values())


def compare(results: Sequence[CandidateResult], before: str, after: str) -> dict[str, Any]:
    """Extracted (under any counted condition) before vs after on the same candidates, and the reduction in
    percent of ``before``."""
    ids = sorted({r.id for r in results if r.counted})
    b = {r.id for r in results if r.counted and r.model == before and r.extracted}
    a = {r.id for r in results if r.counted and r.model == after and r.extracted}
    return {
        "before": len(b),
        "after": len(a),
        "reduction": len(b) - len(a),
        "reduction_percent": 100.0 * (len(b) - len(a)) / len(b) if b else None,
        "extracted_in_both": len(a & b),
        "only_before": len(b - a),
        "only_after": len(a - b),
        "candidates": len(ids),
    }


def build_summary(
    results: Sequence[CandidateResult],
    *,
    models: Mapping[str, Mapping[str, Any]],
    settings: Mapping[str, Any],
    candidates: Mapping[str, Any],
    sscd: Mapping[str, Any],
    audited: str = "model",
    baseline: str | None = None,
    files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``audit_summary.json`` object (schema ``memprune.audit/1``, fields in ``docs/evaluation.md``)."""
    threshold = float(settings["threshold"])
    counts = {name: count_model(results, name, threshold) for name in models}
    headline: dict[str, Any] = {"model": audited, "extracted": counts[audited]["extracted"],
                                "candidates": counts[audited]["candidates"], "threshold": threshold,
                                "attack": settings.get("attack"), "conditions": settings.get("condition_keys")}
    summary: dict[str, Any] = {"schema": SUMMARY_SCHEMA, "headline": headline}
    if baseline is not None:
        comparison = compare(results, baseline, audited)
        headline.update(baseline_extracted=comparison["before"], reduction_percent=comparison["reduction_percent"])
        summary["comparison"] = comparison
    summary.update(
        counts=counts, models=dict(models), settings=dict(settings), candidates=dict(candidates), sscd=dict(sscd),
        environment=environment(), files=dict(files or {}),
    )
    return summary


def environment() -> dict[str, Any]:
    """Versions that can change the numbers."""
    return {
        "memprune": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------------------------- images
def save_extracted_images(out_dir: str | os.PathLike, result: CandidateResult, images: BatchImages, row: int) -> None:
    """Save the view, reconstruction and every model's generation of an extracted candidate (once)."""
    folder = Path(out_dir) / EXTRACTED_DIR
    folder.mkdir(exist_ok=True)
    stem = f"{result.index:05d}"
    pictures = {"image": images.views[row], "reconstruction": images.recons[row]}
    pictures.update({name: gen[row] for name, gen in images.generations.items()})
    for name, img in pictures.items():
        target = folder / f"{stem}_{name}.png"
        if not target.exists():
            _to_pil(img).save(target)


def make_grid(
    out_dir: str | os.PathLike, results: Sequence[CandidateResult], models: Sequence[str], max_rows: int = 32
) -> Path | None:
    """Draw ``extracted_grid.png``: per extracted candidate, image | reconstruction | one column per model.

    Returns:
        The grid path, or ``None`` when nothing was extracted.
    """
    counted = [r for r in results if r.counted]
    hit = sorted({r.index for r in counted if r.extracted})[:max_rows]
    if not hit:
        return None
    sims = {(r.index, r.model): r.similarity for r in counted}
    ids = {r.index: (r.id, r.label) for r in counted}
    columns = ["image", "reconstruction", *models]
    width, height = _CELL * len(columns), _CAPTION + len(hit) * (_CELL + _CAPTION)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(columns):
        draw.text((c * _CELL + 3, 1), name, fill="black")
    folder = Path(out_dir) / EXTRACTED_DIR
    for k, index in enumerate(hit):
        y = _CAPTION + k * (_CELL + _CAPTION)
        image_id, label = ids[index]
        scores = " ".join(f"{m}={sims[(index, m)]:.2f}" for m in models if (index, m) in sims)
        draw.text((3, y + 1), f"{image_id[-40:]}  class {label}  cos {scores}", fill="black")
        for c, name in enumerate(columns):
            path = folder / f"{index:05d}_{name}.png"
            if path.is_file():
                with Image.open(path) as cell:
                    grid.paste(cell.convert("RGB").resize((_CELL, _CELL), Image.Resampling.BILINEAR), (c * _CELL, y + _CAPTION))
    target = Path(out_dir) / GRID_NAME
    with atomic_write(target) as tmp:
        grid.save(tmp, format="PNG")
    return target


def _to_pil(img: torch.Tensor) -> Image.Image:
    arr = img.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)
