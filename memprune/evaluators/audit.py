"""The extraction audit: which training images can a model be made to reproduce from a short prefix?

Method (Kowalczuk et al. 2025, *Privacy Attacks on Image AutoRegressive Models*, minus the bugs of its public
code listed in the reference notes):

1. **Candidates.** Either a given list, or the attack's selection: one class-conditional teacher-forced pass per
   training image; the score is the *greedy-hit rate*, the share of ranked positions where the argmax prediction
   equals the true token (VAR: the last scale; RAR and other raster models: the last 99 predictions); keep the
   ``per_class`` best images of every class.
2. **Generation.** The ground-truth tokens of a short prefix (VAR: ``prefix`` scales, default 4 = 30 tokens;
   raster models: ``prefix`` tokens, default 30) are forced; the rest is decoded greedily, conditionally, with
   no guidance (configurable), then decoded to pixels.
3. **Similarity.** SSCD cosine between the generation and the *tokenizer reconstruction* of the training image
   (``decode(encode(x))``, which removes tokenizer error, as the attack does). Extracted = cosine > threshold
   (0.75, strict). The stricter cosine against the training image itself and the token agreement on the
   *generated* positions only are recorded as secondary evidence.

Images enter through the attack's canonical view (no randomness): VAR shorter side ``round(1.125 * res)``
(LANCZOS) + centre crop; RAR and others shorter side ``res`` (BICUBIC) + centre crop; LlamaGen the centre
view of its training ten-crop. LlamaGen's defaults (30 tokens, greedy, no guidance) are RAR's: the attack code does
not cover LlamaGen. Results are appended
batch by batch to ``results.jsonl`` so an interrupted run resumes where it stopped; the report files are
written by :mod:`memprune.evaluators.audit_report`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from memprune.data import ImageRecord, check_labels, load_image, to_tensor
from memprune.errors import MempruneError
from memprune.evaluators.audit_report import append_jsonl, read_jsonl
from memprune.evaluators.sscd import COPY_THRESHOLD, SSCDBackend
from memprune.models.base import IARModel

RAR_RANKED_PREDICTIONS = 99
"""Raster models are ranked on their last 99 predictions (the attack's columns -100..-2 of 257)."""
DEFAULT_PREFIX = {"var": 4}
"""Default prefix per family, in the family's unit (VAR: scales); every other family: 30 tokens."""
DEFAULT_RASTER_PREFIX = 30
SWEEP = {"var": [0, 1, 2, 3, 4], "raster": [0, 1, 5, 14, 30]}
"""The attack's prefix grid (VAR scales 0..4 = 0/1/5/14/30 tokens; raster models the same token counts)."""

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: called after every batch (phases ``scan`` and ``audit``)."""


@dataclass(frozen=True)
class Candidate:
    """One image to audit.

    Attributes:
        path: where the file is.
        label: class id.
        id: stable image id (path relative to the data root), used in every report instead of row numbers.
        hit_rate: greedy-hit rate from the selection scan, if it was selected that way.
    """

    path: Path
    label: int
    id: str
    hit_rate: float | None = None


@dataclass(frozen=True)
class AuditSettings:
    """How candidates are completed and judged.

    Attributes:
        prefix: ground-truth prefix in the family's unit (VAR: scales; others: tokens); ``None`` = family default.
        sweep: also run the attack's prefix grid (0/1/5/14/30 tokens); only ``prefix`` is counted.
        threshold: SSCD cosine above which a candidate counts as extracted (strict ``>``).
        greedy: argmax decoding (the attack); ``False`` samples with the options below.
        cfg: guidance in the family's convention (0 = conditional only).
        top_k, top_p, temperature: sampling filters (ignored when ``greedy``).
        seed: seed of sampled generations.
        batch_size: candidates per batch.
    """

    prefix: int | None = None
    sweep: bool = False
    threshold: float = COPY_THRESHOLD
    greedy: bool = True
    cfg: float = 0.0
    top_k: int = 0
    top_p: float = 0.0
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold <= 1.0:
            raise MempruneError(f"--threshold {self.threshold} is not a cosine: give a value in [-1, 1] (default 0.75)")
        if self.batch_size < 1:
            raise MempruneError(f"--batch-size {self.batch_size} must be at least 1")
        if self.prefix is not None and self.prefix < 0:
            raise MempruneError(f"--prefix {self.prefix} must be >= 0")


@dataclass(frozen=True)
class CandidateResult:
    """One candidate judged for one model at one prefix length (one line of ``results.jsonl``)."""

    index: int
    id: str
    path: str
    label: int
    model: str
    prefix: int
    prefix_tokens: int
    hit_rate: float
    similarity: float
    similarity_image: float
    reconstruction_similarity: float
    token_match: float | None
    extracted: bool
    counted: bool = field(default=True)

    def to_json(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- candidates
def candidates_from_records(records: Sequence[ImageRecord]) -> list[Candidate]:
    """Wrap :class:`memprune.data.ImageRecord` rows (``memprune.data.load_records``) as candidates."""
    return [Candidate(Path(r.path), int(r.label), r.id) for r in records]


def read_candidates(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> list[Candidate]:
    """Read a candidate list: CSV with a header holding ``path`` (or ``id``) and ``label``, or JSON lines.

    Relative paths are looked up under ``data_root`` first (when it is a folder), then beside the list. The
    ``candidates.csv`` that :func:`run_audit` writes is accepted as is.

    Raises:
        MempruneError: unreadable or empty list, a row without label, or images that do not exist.
    """
    p = Path(path)
    if not p.is_file():
        raise MempruneError(f"candidate list {p} does not exist: pass a CSV (path,label) or JSONL file to --candidates")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() in (".jsonl", ".json"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = list(csv.DictReader(text.splitlines()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MempruneError(f"cannot read candidate list {p} ({exc}): give a CSV with header path,label or JSONL") from None
    if not rows:
        raise MempruneError(f"candidate list {p} is empty: list at least one image (CSV header path,label)")
    roots = [Path(data_root)] if data_root is not None and Path(data_root).is_dir() else []
    roots.append(p.parent)
    out, missing = [], []
    for n, row in enumerate(rows, start=1):
        name = str(row.get("path") or row.get("id") or "").strip()
        label = str(row.get("label", "")).strip()
        if not name or not label.lstrip("-").isdigit():
            raise MempruneError(f"{p} row {n} needs a path (or id) and an integer label, got {row!r}")
        image = Path(name)
        found = image if image.is_absolute() else next((r / image for r in roots if (r / image).is_file()), None)
        if found is None or not found.is_file():
            missing.append(name)
            continue
        image_id = str(row.get("id") or name)
        hit = row.get("hit_rate")
        out.append(Candidate(found, int(label), image_id, float(hit) if hit not in (None, "") else None))
    if missing:
        where = " or ".join(str(r) for r in roots)
        raise MempruneError(
            f"{len(missing)} candidate image(s) do not exist, e.g. {missing[0]!r} (looked under {where}): "
            "fix the list or pass the right --data root"
        )
    return out


def write_candidates(candidates: Sequence[Candidate], path: str | os.PathLike) -> None:
    """Write ``candidates.csv`` (id, path, label, hit_rate); readable again by :func:`read_candidates`."""
    from memprune.io import atomic_write

    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "path", "label", "hit_rate"])
        for c in candidates:
            writer.writerow([c.id, str(c.path.resolve()), c.label, "" if c.hit_rate is None else f"{c.hit_rate:.6f}"])


def select_top_per_class(scored: Sequence[Candidate], per_class: int) -> list[Candidate]:
    """The ``per_class`` highest greedy-hit rates of every class (ties broken by image id), class by class."""
    if per_class < 1:
        raise MempruneError(f"--per-class {per_class} selects nothing: give a positive number (the attack uses 5)")
    by_class: dict[int, list[Candidate]] = {}
    for c in scored:
        if c.hit_rate is None:
            raise MempruneError(f"image {c.id} has no greedy-hit rate: run the selection scan first")
        by_class.setdefault(c.label, []).append(c)
    out: list[Candidate] = []
    for label in sorted(by_class):
        out += sorted(by_class[label], key=lambda c: (-c.hit_rate, c.id))[:per_class]  # type: ignore[operator]
    return out


# ---------------------------------------------------------------------------------------------- model facts
def canonical_view(img: Image.Image, arch: str, size: int) -> torch.Tensor:
    """The attack's deterministic view of an RGB image as float ``[3, size, size]`` in [0, 1].

    VAR: shorter side to ``round(1.125 * size)`` with LANCZOS, centre crop. Others (RAR): shorter side to
    ``size`` with BICUBIC (PIL antialiases), centre crop, as torchvision's ``Resize`` + ``CenterCrop``.
    LlamaGen (not covered by the attack code): the centre view of its training ten-crop, i.e. ADM's
    ``center_crop_arr(int(1.1 * size))`` then the centre ``size`` crop (``extract_codes_c2i.py --ten-crop``).
    """
    if arch == "llamagen":
        from memprune.data import ViewPipeline

        return ViewPipeline("rar", size).view(img, "", 0)  # ten-crop view 0 = the unflipped centre
    short = round(1.125 * size) if arch == "var" else size
    resample = Image.Resampling.LANCZOS if arch == "var" else Image.Resampling.BICUBIC
    w, h = img.size
    if min(w, h) != short:  # torchvision Resize(int): the long side is truncated
        img = img.resize((short, int(short * h / w)) if w <= h else (int(short * w / h), short), resample=resample)
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return to_tensor(img.crop((left, top, left + size, top + size)))


def load_views(candidates: Sequence[Candidate], model: IARModel) -> torch.Tensor:
    """Canonical views ``[B, 3, S, S]`` of the candidates' images for ``model``."""
    return torch.stack([canonical_view(load_image(c.path), model.arch, model.image_size) for c in candidates])


def is_scale_model(model: IARModel) -> bool:
    """True for next-scale models (VAR), whose prefixes are counted in scales."""
    return model.valid_prefix_lengths() is not None


def prefix_tokens(model: IARModel, prefix: int) -> int:
    """Token count of a prefix given in the family's unit (VAR: scales; raster models: tokens)."""
    bounds = model.valid_prefix_lengths()
    if bounds is not None:
        if prefix >= len(bounds):
            raise MempruneError(f"--prefix {prefix} scales is more than this model has ({len(bounds) - 1}); "
                                f"give 0..{len(bounds) - 1} (the attack uses 4)")
        return bounds[prefix]
    if prefix > model.seq_len:
        raise MempruneError(f"--prefix {prefix} tokens is longer than the sequence ({model.seq_len}); the attack uses 30")
    return prefix


def default_prefix(model: IARModel) -> int:
    """The attack's prefix for the family: VAR 4 scales (30 tokens), others 30 tokens."""
    return DEFAULT_PREFIX.get(model.arch, DEFAULT_RASTER_PREFIX)


def sweep_prefixes(model: IARModel, main: int) -> list[int]:
    """The attack's prefix grid in the family's unit, plus ``main``, within the model's length."""
    grid = SWEEP["var"] if is_scale_model(model) else SWEEP["raster"]
    limit = len(model.valid_prefix_lengths() or []) - 1 if is_scale_model(model) else model.seq_len
    return sorted({p for p in grid if p <= limit} | {main})


def ranked_positions(model: IARModel) -> slice:
    """Logit rows the greedy-hit rate averages over: VAR the last scale, raster models the last 99 predictions."""
    bounds = model.valid_prefix_lengths()
    if bounds is not None and len(bounds) >= 2:
        return slice(bounds[-2], bounds[-1])
    return slice(max(0, model.seq_len - RAR_RANKED_PREDICTIONS), model.seq_len)


@torch.no_grad()
def greedy_hit_rates(model: IARModel, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of ranked positions whose argmax teacher-forced prediction is the true token, ``[B]`` float."""
    logits = model.teacher_forced(tokens, labels)
    rows = ranked_positions(model)
    hits = logits[:, rows].argmax(dim=-1) == tokens[:, rows].to(logits.device)
    return hits.float().mean(dim=1).cpu()


def scan_hit_rates(
    model: IARModel,
    candidates: Sequence[Candidate],
    *,
    batch_size: int = 16,
    log: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> list[Candidate]:
    """Greedy-hit rate of every image; results are appended to ``log`` (JSON lines) and reused when present.

    Returns:
        The candidates with ``hit_rate`` set, in input order.
    """
    check_labels(candidates, model.num_classes)  # type: ignore[arg-type]
    done = {row["id"]: float(row["hit_rate"]) for row in read_jsonl(log, repair=True)} if log is not None else {}
    todo = [c for c in candidates if c.id not in done]
    total = len(candidates)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        tokens = model.encode(load_views(chunk, model).to(model.device))
        labels = torch.tensor([c.label for c in chunk], device=model.device)
        rates = greedy_hit_rates(model, tokens, labels).tolist()
        rows = [{"id": c.id, "label": c.label, "hit_rate": r} for c, r in zip(chunk, rates)]
        done.update((row["id"], row["hit_rate"]) for row in rows)
        if log is not None:
            append_jsonl(log, rows)
        if progress:
            progress("scan", total - len(todo) + start + len(chunk), total)
    return [Candidate(c.path, c.label, c.id, done[c.id]) for c in candidates]


# ---------------------------------------------------------------------------------------------- the audit
@dataclass
class BatchImages:
    """Pixels of one batch kept for the extracted-image grid: views, reconstructions, generations per model."""

    views: torch.Tensor
    recons: torch.Tensor
    generations: dict[str, torch.Tensor]


def audit_batch(
    models: Mapping[str, IARModel],
    sscd: SSCDBackend,
    chunk: Sequence[tuple[int, Candidate]],
    settings: AuditSettings,
    prefixes: Sequence[int],
    main_prefix: int,
) -> tuple[list[CandidateResult], BatchImages]:
    """Judge one batch of candidates for every model and prefix; the first model tokenizes and reconstructs."""
    first = next(iter(models.values()))
    views = load_views([c for _, c in chunk], first).to(first.device)
    tokens = first.encode(views)
    recons = first.decode(tokens).float().clamp(0, 1).cpu()
    labels = torch.tensor([c.label for _, c in chunk], device=first.device)
    ref = sscd.embed(torch.cat([views.cpu(), recons]), batch_size=len(chunk) * 2)
    ref_view, ref_recon = ref[: len(chunk)], ref[len(chunk) :]
    recon_sim = ref_view.cosine(ref_recon).tolist()
    results: list[CandidateResult] = []
    kept: dict[str, torch.Tensor] = {}
    for name, model in models.items():
        rates = greedy_hit_rates(model, tokens.to(model.device), labels.to(model.device)).tolist()
        for prefix in prefixes:
            n = prefix_tokens(model, prefix)
            gen_tokens = _complete(model, tokens.to(model.device), labels.to(model.device), n, settings)
            gen = model.decode(gen_tokens).float().clamp(0, 1).cpu()
            emb = sscd.embed(gen, batch_size=len(chunk))
            sim, sim_img = emb.cosine(ref_recon).tolist(), emb.cosine(ref_view).tolist()
            match = _token_match(gen_tokens.cpu(), tokens.cpu(), n)
            if prefix == main_prefix:
                kept[name] = gen
            for j, (index, cand) in enumerate(chunk):
                results.append(CandidateResult(
                    index, cand.id, str(cand.path), cand.label, name, prefix, n, rates[j], sim[j], sim_img[j],
                    recon_sim[j], match[j], sim[j] > settings.threshold, prefix == main_prefix,
                ))  # fmt: skip
    return results, BatchImages(views.cpu(), recons, kept)


def _complete(model: IARModel, tokens: torch.Tensor, labels: torch.Tensor, n: int, s: AuditSettings) -> torch.Tensor:
    if n >= model.seq_len:
        return tokens.clone()  # the whole sequence is forced: nothing left to generate
    return model.generate(
        labels, prefix=tokens[:, :n], cfg=s.cfg, top_k=s.top_k, top_p=s.top_p, temperature=s.temperature,
        greedy=s.greedy, seed=None if s.greedy else s.seed,
    )  # fmt: skip


def _token_match(gen: torch.Tensor, gt: torch.Tensor, n: int) -> list[float | None]:
    # Only generated positions count: the forced prefix would inflate agreement (bug 15 of the attack code).
    if n >= gt.shape[1]:
        return [None] * gt.shape[0]
    return (gen[:, n:] == gt[:, n:]).float().mean(dim=1).tolist()


def run_audit(
    models: Mapping[str, IARModel],
    sscd: SSCDBackend,
    candidates: Sequence[Candidate],
    settings: AuditSettings,
    out_dir: str | os.PathLike,
    *,
    progress: Progress | None = None,
    on_extracted: Callable[[CandidateResult, BatchImages, int], None] | None = None,
) -> list[CandidateResult]:
    """Audit every candidate with every model; append results to ``out_dir/results.jsonl`` and skip done ones.

    Args:
        models: name -> model (e.g. ``{"baseline": original, "model": patched}``), sharing one tokenizer.
        sscd: the copy-detection backend (see :func:`memprune.evaluators.load_sscd`).
        candidates: what to audit; ``index`` in the results is the position in this list.
        settings: prefix, threshold, decoding, batch size.
        out_dir: folder of ``results.jsonl``; rows already there for the same (candidate, model, prefix) are kept.
        progress: called as ``progress("audit", done, total)``.
        on_extracted: called per result counted as extracted, with the batch's images and the row in the batch.

    Returns:
        All results (earlier and new), ordered by candidate, model, prefix.
    """
    if not candidates:
        raise MempruneError("no candidates to audit: check --data / --candidates (the candidate set is empty)")
    if not models:
        raise MempruneError("no model to audit")
    first = next(iter(models.values()))
    check_same_family(models)
    check_labels(candidates, first.num_classes)  # type: ignore[arg-type]
    main = settings.prefix if settings.prefix is not None else default_prefix(first)
    prefix_tokens(first, main)  # validate before any work
    prefixes = sweep_prefixes(first, main) if settings.sweep else [main]
    ids = [c.id for c in candidates]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise MempruneError(f"candidate {dup!r} is listed more than once: each image may appear once")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    log = Path(out_dir) / "results.jsonl"
    rows = [CandidateResult(**r) for r in read_jsonl(log, repair=True)]
    done = {(r.id, r.model, r.prefix) for r in rows}
    wanted = {(name, p) for name in models for p in prefixes}
    todo = [(i, c) for i, c in enumerate(candidates) if any((c.id, m, p) not in done for m, p in wanted)]
    total = len(candidates)
    for start in range(0, len(todo), settings.batch_size):
        chunk = todo[start : start + settings.batch_size]
        new, images = audit_batch(models, sscd, chunk, settings, prefixes, main)
        new = [r for r in new if (r.id, r.model, r.prefix) not in done]
        if on_extracted is not None:
            for r in new:
                if r.counted and r.extracted:
                    on_extracted(r, images, next(j for j, (i, _) in enumerate(chunk) if i == r.index))
        append_jsonl(log, [r.to_json() for r in new])
        rows += new
        if progress:
            progress("audit", total - len(todo) + start + len(chunk), total)
    order = {name: k for k, name in enumerate(models)}
    return sorted(rows, key=lambda r: (r.index, order.get(r.model, len(order)), r.prefix))


def check_same_family(models: Mapping[str, IARModel]) -> None:
    """All audited models must share architecture, sequence, vocabulary, classes and image size."""
    items = list(models.items())
    first_name, first = items[0]
    for name, other in items[1:]:
        facts = ("arch", "seq_len", "vocab_size", "num_classes", "image_size")
        diff = [f for f in facts if getattr(first, f) != getattr(other, f)]
        if diff:
            f = diff[0]
            raise MempruneError(
                f"the {name} model differs from the {first_name} model in {f} ({getattr(other, f)} vs {getattr(first, f)}): "
                "--baseline must be the checkpoint the audited model was patched from"
            )
