"""``memprune merge`` for audit and FID parts: combine the folders of ``--shard i/n`` runs exactly.

Audit parts hold disjoint units of one candidate list (whole candidate batches, or condition slices of a batch
when there were fewer batches left than parts): their result rows are concatenated (each row was computed on a
batch composed as one process composes it, so nothing changes) and the summary, table and grid are written as a
single run writes them; for a batch split by conditions the pictures of its extractions are chosen from the
parts' slices as one process chooses them (the generation of the highest cosine, the first condition on ties). FID parts hold the Inception features of disjoint generation
batches: they are added to the statistics batch by batch in batch order, exactly the float64 accumulation of a
single run, so mean, covariance, FID and KID are bit-identical to it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memprune.errors import MempruneError
from memprune.io import atomic_write, write_json_atomic
from memprune.scoring.merge import _check_parts


@dataclass(frozen=True)
class MergedParts:
    """What ``memprune merge`` made of audit or FID part folders."""

    kind: str  # "audit" | "fid"
    output: Path
    parts: int
    result: dict[str, Any]


def part_kind(path: str | os.PathLike) -> str | None:
    """``audit`` / ``fid`` for a part folder of that command, else ``None`` (a score file, or anything else)."""
    p = Path(path)
    if (p / "audit_part.json").is_file():
        return "audit"
    if (p / "fid_part.json").is_file():
        return "fid"
    return None


def _read_parts(folders: Sequence[str | os.PathLike], name: str, command: str) -> tuple[list[Path], list[dict]]:
    paths = [Path(f) for f in folders]
    if len(paths) < 2:
        raise MempruneError(f"give at least two part folders of `memprune {command} --shard i/n` to merge")
    parts = []
    for p in paths:
        try:
            parts.append(json.loads((p / name).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ValueError):
            raise MempruneError(f"{p} holds no readable {name}: give the -o folders of `memprune {command} --shard i/n` runs") from None
    _check_parts([part["shard"] for part in parts], paths)
    def same(part: dict, key: str) -> Any:
        value = part.get(key)
        return {k: v for k, v in value.items() if k != "shard"} if isinstance(value, dict) else value

    for p, part in zip(paths[1:], parts[1:]):
        for key in ("config", "summary_inputs"):
            if same(part, key) != same(parts[0], key):
                raise MempruneError(f"{p} and {paths[0]} differ in their {key.replace('_', ' ')}: they are parts of different "
                                    f"{command} runs; rerun the odd part with the same options")
    order = sorted(range(len(paths)), key=lambda i: parts[i]["shard"]["index"])
    return [paths[i] for i in order], [parts[i] for i in order]


def _check_target(output: Path, inputs: Sequence[Path]) -> None:
    if any(output.resolve() == p.resolve() for p in inputs):
        raise MempruneError(f"-o {output} is one of the parts: write the merged result to a new folder")
    if output.exists() and not output.is_dir():
        raise MempruneError(f"-o {output} is a file: give a folder")


def merge_audits(folders: Sequence[str | os.PathLike], output: str | os.PathLike) -> MergedParts:
    """Merge the part folders of ``memprune audit --shard i/n`` into one audit folder (summary, table, grid).

    Raises:
        MempruneError: not part folders, parts of different runs, duplicated or missing parts, a part that
            has not finished (resume it first).
    """
    from memprune.evaluators import audit_report as R
    from memprune.evaluators.audit import order_results, read_results
    from memprune.evaluators.audit_run import CANDIDATES_CSV, finish_audit
    from memprune.evaluators.audit_units import finish_slices

    out = Path(output)
    paths, parts = _read_parts(folders, "audit_part.json", "audit")
    _check_target(out, paths)
    inputs = parts[0]["summary_inputs"]
    lists = {(p / CANDIDATES_CSV).read_text(encoding="utf-8") if (p / CANDIDATES_CSV).is_file() else None for p in paths}
    if len(lists) != 1 or None in lists:
        raise MempruneError("the parts audited different candidate lists: give every part the same --candidates / --data")
    rows, seen = [], set()
    for p in paths:
        for r in read_results(p / R.RESULTS_JSONL):
            key = (r.id, r.model, r.condition)
            if key in seen:
                raise MempruneError(f"{p} repeats results of candidate {r.id}: its parts overlap; rerun the parts with one --shard split")
            seen.add(key)
            rows.append(r)
    wanted = len(inputs["model_names"]) * len(inputs["keys"])
    count = parts[0]["candidates"]
    per = {}
    for r in rows:
        per[r.index] = per.get(r.index, 0) + 1
    missing = [i for i in range(count) if per.get(i, 0) != wanted]
    if missing:
        raise MempruneError(f"{len(missing)} of {count} candidates have no complete results in the parts: a part was "
                            "interrupted; rerun it with --resume, then merge")
    rows = order_results(rows, inputs["model_names"], inputs["keys"])
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / R.RESULTS_JSONL) as tmp:
        tmp.write_text("".join(json.dumps(r.to_json(), sort_keys=True) + "\n" for r in rows), encoding="utf-8")
    shutil.copyfile(paths[0] / CANDIDATES_CSV, out / CANDIDATES_CSV)
    write_json_atomic(out / R.CONFIG_NAME, {k: v for k, v in parts[0]["config"].items() if k != "shard"})
    for p in paths:
        for f in sorted((p / R.EXTRACTED_DIR).glob("*.png")) if (p / R.EXTRACTED_DIR).is_dir() else []:
            (out / R.EXTRACTED_DIR).mkdir(exist_ok=True)
            if not (out / R.EXTRACTED_DIR / f.name).exists():
                shutil.copyfile(f, out / R.EXTRACTED_DIR / f.name)
    finish_slices(paths, out, rows, inputs["model_names"], inputs["keys"])  # batches split by conditions over parts
    summary = finish_audit(out, rows, inputs)
    return MergedParts("audit", out, len(paths), summary)


def merge_fids(folders: Sequence[str | os.PathLike], output: str | os.PathLike) -> MergedParts:
    """Merge the part folders of ``memprune fid --shard i/n``: statistics, FID, KID and ``fid.json`` of the whole run.

    The features of every generation batch are added in batch order, as one process adds them, so the
    statistics are bit-identical to a single run's; the reference is the ``--ref`` file the parts recorded
    (checked by its sha256).

    Raises:
        MempruneError: not part folders, parts of different runs, duplicated or missing parts or batches, a
            reference file that is gone or changed.
    """
    import numpy as np

    from memprune.evaluators import generation as G
    from memprune.evaluators.fid import FeatureStatsAccumulator, FIDStats, frechet_distance
    from memprune.evaluators.fid_run import _write_outputs, finish_fid
    from memprune.evaluators.kid import kernel_inception_distance
    from memprune.io.writer import sha256_file

    out = Path(output)
    paths, parts = _read_parts(folders, "fid_part.json", "fid")
    _check_target(out, paths)
    config, context = parts[0]["config"], parts[0]["context"]
    ref = Path(context["reference"]["path"])
    if not ref.is_file() or sha256_file(ref) != config["ref_sha256"]:
        raise MempruneError(f"the reference {ref} the parts were sampled against is missing or changed: restore it, "
                            "or rerun the parts against the file you have")
    reference = FIDStats.load(ref)
    batch_size, seed = context["batch_size"], context["seed"]
    results: dict[str, dict] = {}
    for name, facts in config["models"].items():
        n_images = len(facts["classes"]) * context["per_class"]
        rows: dict[int, np.ndarray] = {}
        for p, part in zip(paths, parts):
            with np.load(p / part["features"][name]) as z:
                feats, batches, sizes = z["features"], z["batches"].tolist(), z["sizes"].tolist()
            for b, start, size in zip(batches, np.cumsum([0, *sizes[:-1]]).tolist(), sizes):
                if b in rows:
                    raise MempruneError(f"{p} repeats generation batch {b}: the parts overlap; rerun them with one --shard split")
                rows[b] = feats[start : start + size]
        missing = [b for b in range(G.num_batches(n_images, batch_size)) if b not in rows]
        if missing:
            raise MempruneError(f"{len(missing)} generation batch(es) missing from the parts (e.g. batch {missing[0]}): "
                                "a part was interrupted; rerun it, then merge")
        acc = FeatureStatsAccumulator(dim=reference.mu.shape[0], keep_features=reference.features is not None)
        for b in sorted(rows):  # batch order: the float64 sums of one process, bit for bit
            acc.update(rows[b])
        started = time.perf_counter()
        stats = acc.compute()
        value = frechet_distance(stats, reference)
        kid = None
        if context["kid_subsets"] > 0 and stats.features is not None and reference.features is not None:
            kid = kernel_inception_distance(stats.features, reference.features, subsets=context["kid_subsets"], seed=seed)
        seconds = sum(part["seconds"][name] for part in parts)
        run = G.FIDRun(value, stats, acc.count, seconds, time.perf_counter() - started, kid)
        results[name] = {**facts, "settings": G.SamplingSettings(**facts["settings"]), "run": run}
    out.mkdir(parents=True, exist_ok=True)
    files = _write_outputs(out, {n: e["run"] for n, e in results.items()}, None)
    result = finish_fid(out, results, context, files)
    return MergedParts("fid", out, len(paths), result)
