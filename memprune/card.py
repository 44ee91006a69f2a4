"""The model card of a pushed checkpoint, rendered from its manifest (and audit/FID reports) alone.

The card is ``memprune/templates/model_card.md`` (Jinja) under YAML front matter built with huggingface_hub's
``ModelCardData``: ``base_model`` when the source came from the Hub, ``tags`` (memprune,
memorization-mitigation, the architecture), ``library_name``, the source's ``license`` when known, and
``model-index`` evaluation results when reports are present. Nothing is looked up elsewhere, so the same
manifest always gives the same card.

Reports are the JSON files the evaluation commands write into report folders: ``audit_summary.json`` (the
SSCD extraction audit) and ``fid.json``. A report either holds one model's numbers (matched to the base or
the patched model by a ``checkpoint_sha256`` field) or both, under ``base``/``before`` and
``patched``/``after``; every numeric field becomes a row of the card's table.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from memprune.errors import MempruneError
from memprune.public import public_command

REPORT_FILES = {"audit_summary.json": "audit", "fid.json": "fid"}
PAPER_URL = "https://arxiv.org/abs/2509.00488"
UNITMEM_URL = "https://arxiv.org/abs/2409.19069"
SSCD_URL = "https://github.com/facebookresearch/sscd-copy-detection"
# What each report kind contributes to the card's table, in order; the first present ones become eval_results.
_AUDIT_METRICS = ("extracted", "candidates", "extracted_share", "extracted_vs_training_image", "mean_similarity", "max_similarity")
_HEADLINE = {"audit": ("extracted", "extracted_share"), "fid": ("fid",)}
_BEFORE_KEYS = ("base", "before", "baseline", "original")
_AFTER_KEYS = ("patched", "after", "model")
_UNIT_LAYERS = {
    "fc1": "FFN hidden units (the post-activation outputs of fc1)",
    "fc2": "FFN output channels (fc2)",
    "attn.proj": "attention output-projection channels",
}


@dataclass
class EvalReport:
    """Audit or FID numbers of the original (``before``) and the patched model (``after``), plus settings."""

    kind: str  # "audit" | "fid"
    files: list[str]  # where the report files go in the repository
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> list[str]:
        """Metric names in first-seen order over both sides."""
        return list(dict.fromkeys([*self.before, *self.after]))


@dataclass(frozen=True)
class ReportFile:
    """A report file to upload."""

    path: Path
    path_in_repo: str


def find_reports(
    checkpoint: str | os.PathLike, folders: Sequence[str | os.PathLike] = ()
) -> tuple[list[EvalReport], list[ReportFile], list[str]]:
    """Load ``audit_summary.json`` / ``fid.json`` from ``folders`` and from the checkpoint's own folder.

    Each report is matched to the original or the patched model by the checkpoint digests it records
    (``memprune.audit/1``: ``models.*.sha256``; ``memprune.fid/1``: ``model.sha256``); a report about
    another checkpoint is skipped with a warning. Two FID reports (original and patched) merge into one table.

    Returns:
        ``(reports for the card, files to upload, warnings)``.

    Raises:
        MempruneError: a given folder does not exist or a report is not a JSON object.
    """
    from memprune.io import sha256_file
    from memprune.manifest import read_manifest

    ckpt = Path(checkpoint)
    manifest = read_manifest(ckpt) or {}
    digests = {(manifest.get("output") or {}).get("sha256") or sha256_file(ckpt): "after"}
    if (manifest.get("input") or {}).get("sha256"):
        digests[manifest["input"]["sha256"]] = "before"
    dirs = []
    for folder in folders:
        if not Path(folder).is_dir():
            raise MempruneError(f"report folder {folder} does not exist: pass folders written by `memprune audit` / `memprune fid`")
        dirs.append(Path(folder))
    reports: dict[str, EvalReport] = {}
    files: list[ReportFile] = []
    warnings: list[str] = []
    seen: set[Path] = set()
    for folder in [*dirs, ckpt.parent]:
        for name, kind in REPORT_FILES.items():
            path = folder / name
            if not path.is_file() or path.resolve() in seen:
                continue
            seen.add(path.resolve())
            in_repo = _unique(f"reports/{folder.resolve().name}/{name}", {f.path_in_repo for f in files})
            parsed, warning = load_report(path, kind, digests)
            warnings += [warning] if warning else []
            if parsed is None:
                continue
            files.append(ReportFile(path, in_repo))
            _merge(reports.setdefault(kind, EvalReport(kind, [])), parsed, in_repo)
    return list(reports.values()), files, warnings


def load_report(path: Path, kind: str, digests: dict[str, str]) -> tuple[EvalReport | None, str | None]:
    """Parse one report into before/after numbers; ``digests`` maps checkpoint sha256 -> ``before``/``after``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MempruneError(f"report {path} is not valid JSON ({exc}): re-run the evaluation that wrote it") from None
    if not isinstance(data, dict):
        raise MempruneError(f"report {path} must hold a JSON object, not {type(data).__name__}")
    report = EvalReport(kind, [])
    if kind == "audit" and isinstance(data.get("counts"), dict):
        models = data.get("models") or {}
        for name, counts in data["counts"].items():
            side = digests.get((models.get(name) or {}).get("sha256"))
            if side and isinstance(counts, dict):
                getattr(report, side).update(_numbers({k: counts.get(k) for k in _AUDIT_METRICS}))
        head, sscd = data.get("headline") or {}, data.get("sscd") or {}
        conds = head.get("conditions") if isinstance(head.get("conditions"), list) else None
        attack = f"{head['attack']} ({len(conds)} conditions: {', '.join(map(str, conds))})" if head.get("attack") and conds else None
        report.settings = {k: v for k, v in {"attack": attack, "threshold": head.get("threshold"),
                                              "SSCD": sscd.get("backend_id"), "license": sscd.get("license")}.items()
                           if v is not None}
    elif kind == "fid" and isinstance(data.get("model"), dict) and "fid" in data:
        side = digests.get(data["model"].get("sha256"))
        if side:
            getattr(report, side).update(_numbers({"fid": data["fid"]}))
        report.settings = {k: data[k] for k in ("num_images", "seed") if data.get(k) is not None}
    else:  # a plain report: {"before": {...}, "after": {...}} or flat numbers with a checkpoint_sha256
        before = next((data[k] for k in _BEFORE_KEYS if isinstance(data.get(k), dict)), None)
        after = next((data[k] for k in _AFTER_KEYS if isinstance(data.get(k), dict)), None)
        if before is None and after is None:
            side = digests.get(data.get("checkpoint_sha256"))
            before, after = (data, None) if side == "before" else (None, data) if side == "after" else (None, None)
        report.before, report.after = _numbers(before or {}), _numbers(after or {})
    if not report.before and not report.after:
        return None, f"skipped {path}: it records no numbers for this checkpoint or its base (matched by sha256)"
    return report, None


def _merge(into: EvalReport, new: EvalReport, path_in_repo: str) -> None:
    into.files.append(path_in_repo)
    into.before.update(new.before)
    into.after.update(new.after)
    for key, value in new.settings.items():
        into.settings.setdefault(key, value)


def _unique(name: str, taken: set[str]) -> str:
    stem, _, leaf = name.rpartition("/")
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}/{leaf}"
    return candidate


def _numbers(side: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in side.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def hub_source(manifest: dict[str, Any]) -> dict[str, str] | None:
    """The Hub provenance of the original input: the oldest step of the history that came from the Hub."""
    from memprune.hub import hub_provenance

    for step in [*manifest.get("history", []), manifest]:
        source = step.get("input") or {}
        found = source.get("hub") or (hub_provenance(source["path"]) if source.get("path") else None)
        if found:
            return found
    return None


def card_dataset(manifest: dict[str, Any], dataset: str | None = None) -> str | None:
    """The training set to name: what the user says, else what the manifest records, else nothing (never guessed)."""
    recorded = manifest.get("dataset") or ((manifest.get("scores") or {}).get("info") or {}).get("dataset")
    value = dataset or recorded
    return str(value) if value else None


def card_data(manifest: dict[str, Any], *, repo_id: str, reports: Sequence[EvalReport] = (), license: str | None = None,
              dataset: str | None = None):
    """The YAML front matter as a ``huggingface_hub.ModelCardData``.

    ``model-index`` results need a dataset; without one (no ``dataset`` given or recorded) the numbers appear in
    the card's body only.
    """
    from huggingface_hub import EvalResult, ModelCardData

    source = hub_source(manifest)
    arch = str(manifest.get("architecture") or "unknown")
    name = card_dataset(manifest, dataset)
    results = []
    for report in reports if name else ():
        headline = [m for m in _HEADLINE.get(report.kind, ()) if m in report.after] or list(report.after)
        for metric in headline:
            results.append(EvalResult(
                task_type="image-generation", task_name="Class-conditional image generation",
                dataset_type=re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "dataset", dataset_name=name, metric_type=metric if report.kind == "fid" else f"memorization/{metric}",
                metric_name=_metric_label(report.kind, metric), metric_value=report.after[metric],
                source_name="memprune", source_url=f"https://huggingface.co/{repo_id}/blob/main/{report.files[0]}",
            ))
    return ModelCardData(
        base_model=source["repo"] if source else None,
        license=license or (source or {}).get("license"),
        library_name="memprune",
        tags=["memprune", "memorization-mitigation", arch],
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )


def render_card(
    manifest: dict[str, Any],
    *,
    repo_id: str,
    weights_name: str,
    reports: Sequence[EvalReport] = (),
    license: str | None = None,
    tokenizer: dict[str, Any] | None = None,
    dataset: str | None = None,
) -> str:
    """The full README.md (YAML front matter and body) for a pushed checkpoint.

    Args:
        manifest: the patch manifest (``memprune.manifest/1``).
        repo_id: the target repository.
        weights_name: the safetensors file name in the repository.
        reports: audit/FID reports to show (see :func:`find_reports`).
        license: overrides the license carried over from the source.
        tokenizer: the tokenizer record (``reference``, ``origin``, optional ``file``).
        dataset: the training set to name (default: the manifest's, else none).
    """
    import jinja2
    from huggingface_hub import ModelCard

    data = card_data(manifest, repo_id=repo_id, reports=reports, license=license, dataset=dataset)
    template = resources.files("memprune").joinpath("templates/model_card.md").read_text(encoding="utf-8")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    body = env.from_string(template).render(card_data=data.to_yaml(), **_context(manifest, repo_id, weights_name, reports, data, tokenizer),
                                          dataset=card_dataset(manifest, dataset))
    ModelCard(body, ignore_metadata_errors=False)  # parse it back: the front matter must be valid YAML metadata
    return body


def _context(manifest, repo_id, weights_name, reports, data, tokenizer) -> dict[str, Any]:
    from memprune.manifest import manifest_path_for

    sel, inter = manifest.get("selection", {}), manifest.get("intervention", {})
    source = hub_source(manifest)
    layers = manifest.get("layers", {})
    total = sel.get("total_units") or 0
    base_ref = f"hf://{source['repo']}/{source['path']}@{source['commit']}" if source else None
    return {
        "title": repo_id.split("/")[-1],
        "repo_id": repo_id,
        "weights_name": weights_name,
        "manifest_name": manifest_path_for(weights_name).name,
        "arch": _family_text(manifest, "display_name"),
        "arch_name": _family_text(manifest, "summary"),
        "unit_layer": _UNIT_LAYERS.get(str(manifest.get("unit_layer")), str(manifest.get("unit_layer"))),
        "sel": sel,
        "share": 100.0 * (sel.get("selected") or 0) / total if total else 0.0,
        "groups": sel.get("groups_used") or [],
        "inter": inter,
        "target_text": _target_text(inter),
        "layers": [(name, len(entry.get("units", []))) for name, entry in layers.items()],
        "source": source,
        "base_ref": base_ref,
        "license": data.license,
        "input": manifest.get("input", {}),
        "output": manifest.get("output") or {},
        "command": public_command(str(manifest.get("command") or "")),
        "version": manifest.get("memprune_version"),
        "history": manifest.get("history", []),
        "reports": [_report_rows(r) for r in reports],
        "has_audit": any(r.kind == "audit" for r in reports),
        "tokenizer": tokenizer,
        "paper_url": PAPER_URL,
        "unitmem_url": UNITMEM_URL,
        "sscd_url": SSCD_URL,
    }


def _target_text(inter: dict[str, Any]) -> str:
    factor = inter.get("factor")
    if inter.get("target") == "fc2":
        return f"column j of the output projection (fc2 weight) multiplied by {factor}, which scales unit j's contribution to the residual stream by exactly that factor"
    bias = "its bias entry scaled too" if inter.get("bias") else "the bias left unchanged"
    return f"row j of the unit's input weight (fc1 weight; SwiGLU: w3) multiplied by {factor}, {bias} (the paper's intervention)"


def _metric_label(kind: str, metric: str, long: bool = True) -> str:
    names = {"fid": "FID", "extracted": "extracted training images", "extracted_share": "share of candidates extracted",
             "extracted_vs_training_image": "extracted (vs the training image itself)"}
    label = names.get(metric, metric.replace("_", " "))
    return f"{label} (SSCD extraction audit)" if long and kind == "audit" else label


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


# Below these sizes a figure is a smoke test, not a measurement comparable with published ones.
FID_STANDARD_IMAGES = 50_000
AUDIT_STANDARD_CANDIDATES = 5_000


def sample_caveat(report: EvalReport) -> str | None:
    """A sentence on the sample size of a small-sample figure (None when the sample is the standard size)."""
    if report.kind == "fid":
        n = report.settings.get("num_images")
        if isinstance(n, int) and n < FID_STANDARD_IMAGES:
            return (f"FID from {n:,} images: FID is biased upward on small samples, so compare it only with FIDs of the "
                    f"same size and settings, not with published FID-{FID_STANDARD_IMAGES // 1000}k figures.")
    if report.kind == "audit":
        n = max([int(side["candidates"]) for side in (report.before, report.after) if isinstance(side.get("candidates"), (int, float))] or [0])
        if 0 < n < AUDIT_STANDARD_CANDIDATES:
            return (f"Audit over {n:,} candidates (the published setting uses {AUDIT_STANDARD_CANDIDATES:,}): counts from a "
                    "small candidate set are a lower bound with wide uncertainty.")
    return None


def _report_rows(report: EvalReport) -> dict[str, Any]:
    rows = [(_metric_label(report.kind, m, long=False), _fmt(report.before.get(m)), _fmt(report.after.get(m))) for m in report.metrics()]
    settings = ", ".join(f"{k} {v}" for k, v in report.settings.items() if k != "license" and not isinstance(v, (dict, list)))
    return {"kind": report.kind, "files": ", ".join(f"`{f}`" for f in report.files), "rows": rows, "settings": settings,
            "license": report.settings.get("license"), "caveat": sample_caveat(report)}


def _family_text(manifest: dict, attribute: str) -> str:
    """The family spec's display name or summary for the manifest's architecture (the name itself if unknown)."""
    from memprune.families import generic, known_families

    name = str(manifest.get("architecture"))
    if name == generic.GENERIC:  # built from --layers, not registered
        return generic.DISPLAY_NAME if attribute == "display_name" else generic.SUMMARY
    spec = known_families().get(name)
    return str(getattr(spec, attribute)) if spec else name
