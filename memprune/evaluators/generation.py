"""Class-conditional image generation for FID, with each family's published evaluation settings.

The published FIDs were computed with 50 images per class and these sampling settings (reference notes,
``extraction_audit.md`` section 5), declared by each family's spec (``memprune/families/<name>/spec.py``):

* VAR d16..d36: ``cfg=1.5, top_p=0.96, top_k=900`` (VAR's guidance weight, ramped over the scales), no
  temperature (FoundationVision/VAR README).
* RAR: guidance scale / power / temperature per size: B 16.0 / 2.75 / 1.0, L 15.5 / 2.5 / 1.02,
  XL 6.9 / 1.5 / 1.02, XXL 8.0 / 1.2 / 1.02; no top-k or top-p (bytedance/1d-tokenizer ``README_RAR.md``).
  The size is recognised from the model width (768 / 1024 / 1280 / 1408); another width takes the settings of
  the nearest release, and the summary says so.
* LlamaGen: guidance scale 2.0 (B, L), 1.75 (XL, XXL), 1.65 (3B), top-k 0, top-p 1.0 (off), temperature 1.0: the
  published FID commands at 384 px (FoundationVision/LlamaGen ``GETTING_STARTED.md``; the cfg behind the ``*_256``
  FIDs is not stated). The size is recognised from the width (768 / 1024 / 1280 / 1536 / 3200). The official
  sampler draws uniformly random labels; memprune keeps its class-balanced list, so FIDs compare before/after only.

Labels are the class list repeated ``per_class`` times (0..C-1, 0..C-1, ..., as RAR's sampler). Batch ``b``
is drawn with ``seed + b``, so a run is reproducible for a given batch size (recorded with the result).
The upstream numbers come from OpenAI's TensorFlow evaluator on 50,000 samples; memprune's FID uses the
pytorch-fid protocol and is meant for before/after comparisons under identical settings.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from memprune.errors import MempruneError
from memprune.evaluators.fid import FeatureStatsAccumulator, FIDStats, frechet_distance
from memprune.evaluators.inception import FIDInceptionV3
from memprune.evaluators.kid import DEFAULT_SUBSETS, KIDResult, kernel_inception_distance
from memprune.families.base import IARModel

if TYPE_CHECKING:
    from memprune.scoring.distributed import DistInfo

DEFAULT_PER_CLASS = 50


@dataclass(frozen=True)
class SamplingSettings:
    """How FID images are sampled, in the family's own conventions.

    Attributes:
        cfg: guidance (VAR: weight, 0 = none; RAR: scale, 0 = none).
        top_k: keep the k most likely tokens (0 = all).
        top_p: nucleus mass (0 = off).
        temperature: logits divisor.
        cfg_pow: RAR's guidance schedule power (``None`` for families without it).
        source: where the values come from (published setting, or overridden flags).
    """

    cfg: float
    top_k: int = 0
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_pow: float | None = None
    source: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def published_settings(model: IARModel) -> SamplingSettings:
    """The family's published FID sampling settings for ``model``, as its spec declares them."""
    from memprune.families import family_of

    spec = family_of(model)
    if spec.sampling is None:
        return SamplingSettings(0.0, source=f"no published setting for {spec.display_name}: conditional sampling, set --cfg etc.")
    p = spec.sampling(model)
    return SamplingSettings(p.cfg, p.top_k, p.top_p, p.temperature, p.cfg_pow, p.source)


def with_overrides(base: SamplingSettings, **flags: float | int | None) -> SamplingSettings:
    """``base`` with every flag that is not ``None`` replaced; ``source`` notes which ones."""
    given = {k: v for k, v in flags.items() if v is not None}
    if not given:
        return base
    unknown = set(given) - {"cfg", "top_k", "top_p", "temperature", "cfg_pow"}
    if unknown:
        raise MempruneError(f"unknown sampling option(s) {sorted(unknown)}")
    note = ", ".join(f"{k}={v}" for k, v in sorted(given.items()))
    return replace(base, **given, source=f"{base.source}; overridden: {note}")


def parse_classes(spec: str | None, num_classes: int) -> list[int]:
    """``all`` (or ``None``), ``0-9``, ``1,5,7`` or a mix (``0-4,10``) -> sorted class ids within the model's range."""
    if spec is None or spec.strip().lower() == "all":
        return list(range(num_classes))
    out: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                out.update(range(lo, hi + 1))
            elif part:
                out.add(int(part))
    except ValueError:
        raise MempruneError(f"--classes {spec!r} is not a class list: write all, 0-9, or 1,5,7") from None
    bad = [c for c in out if not 0 <= c < num_classes]
    if not out or bad:
        raise MempruneError(f"--classes {spec!r} selects {'nothing' if not out else bad[0]}: the model has classes 0..{num_classes - 1}")
    return sorted(out)


def fid_labels(classes: Sequence[int], per_class: int) -> torch.Tensor:
    """The label of every FID image: ``classes`` repeated ``per_class`` times (int64 ``[len * per_class]``)."""
    if per_class < 1:
        raise MempruneError(f"--per-class {per_class} generates nothing: give a positive number (published: 50)")
    return torch.tensor(list(classes), dtype=torch.long).repeat(per_class)


def generate_images(
    model: IARModel, labels: torch.Tensor, settings: SamplingSettings, *, batch_size: int = 25, seed: int = 0,
    batches: Sequence[int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(labels, images)`` batches; images float ``[B, 3, S, S]`` in [0, 1] on the model's device.

    ``batches`` restricts the run to those batch indices (batch ``b`` is labels ``[b * batch_size, ...)``,
    sampled with ``seed + b`` wherever it runs), which is how shards and ranks share one FID run.
    """
    if batch_size < 1:
        raise MempruneError(f"--batch-size {batch_size} must be at least 1")
    extra = {}
    if settings.cfg_pow is not None:
        if "cfg_pow" not in inspect.signature(model.generate).parameters:
            raise MempruneError(f"{model.arch} has no guidance power: leave --cfg-pow unset")
        extra["cfg_pow"] = settings.cfg_pow
    for b in range(num_batches(len(labels), batch_size)) if batches is None else batches:
        chunk = labels[b * batch_size : (b + 1) * batch_size].to(model.device)
        tokens = model.generate(
            chunk, cfg=settings.cfg, top_k=settings.top_k, top_p=settings.top_p, temperature=settings.temperature,
            seed=seed + b, **extra,
        )  # fmt: skip
        yield chunk, model.decode(tokens).float().clamp(0, 1)


def num_batches(n: int, batch_size: int) -> int:
    """Generation batches of ``n`` labels."""
    return -(-n // batch_size)


@dataclass
class SampledBatch:
    """Inception features of one generation batch (float64 ``[B, D]``), with its labels and, when asked for,
    its images as uint8 ``[B, 3, S, S]`` on the CPU."""

    index: int
    labels: torch.Tensor
    features: np.ndarray
    images: torch.Tensor | None = None


def sample_features(
    model: IARModel,
    inception: FIDInceptionV3,
    labels: torch.Tensor,
    settings: SamplingSettings,
    *,
    batch_size: int = 25,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    dist: DistInfo | None = None,
    keep_images: Callable[[int], bool] = lambda b: False,
) -> Iterator[SampledBatch]:
    """Generate the batches (of ``shard``, else all) and yield their Inception features in batch order.

    Under torch.distributed the batches are shared out over the ranks (batch ``b`` sampled with ``seed + b``
    wherever it runs) and every rank receives every batch, so the caller accumulates exactly what one process
    accumulates. ``keep_images(b)`` says which batches also bring their pixels (PNGs, sample sheets).
    """
    from memprune.evaluators.fid import inception_features
    from memprune.scoring import distributed as D

    info = dist or D.DistInfo()
    every = D.shard_batches(num_batches(len(labels), batch_size), shard)

    def one(b: int) -> SampledBatch:
        chunk, images = next(generate_images(model, labels, settings, batch_size=batch_size, seed=seed, batches=[b]))
        kept = images.mul(255).round().to(torch.uint8).cpu() if keep_images(b) else None
        return SampledBatch(b, chunk.cpu(), inception_features(inception, images, batch_size), kept)

    for mine, step in D.steps(every, info):
        yield from D.run_step(one, mine, info)[: len(step)]  # idle ranks (the last step) come last


@dataclass
class FIDRun:
    """The outcome of :func:`evaluate_fid`.

    ``seconds`` is sampling plus Inception (what ``images_per_second`` divides by); ``distance_seconds`` is
    the Frechet distance and KID after it, which do not grow with the number of images.
    """

    fid: float
    stats: FIDStats
    num_images: int
    seconds: float
    distance_seconds: float = 0.0
    kid: KIDResult | None = None
    first_images: list[torch.Tensor] = field(default_factory=list, repr=False)
    first_labels: list[int] = field(default_factory=list, repr=False)

    @property
    def images_per_second(self) -> float:
        return self.num_images / self.seconds if self.seconds > 0 else float("nan")


def evaluate_fid(
    model: IARModel,
    inception: FIDInceptionV3,
    reference: FIDStats,
    labels: torch.Tensor,
    settings: SamplingSettings,
    *,
    batch_size: int = 25,
    seed: int = 0,
    save_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
    kid_subsets: int = DEFAULT_SUBSETS,
    keep_first: int = 0,
    dist: DistInfo | None = None,
) -> FIDRun:
    """Generate one image per label, stream their Inception features and return the FID to ``reference``.

    Args:
        model: the generator.
        inception: FID Inception network (:func:`memprune.evaluators.load_inception`).
        reference: reference statistics (:func:`memprune.evaluators.load_reference`); when it holds feature rows,
            KID is computed too.
        labels: one class id per image (:func:`fid_labels`).
        settings: sampling settings (:func:`published_settings`, :func:`with_overrides`).
        batch_size: images per generation batch (part of what makes a run reproducible).
        seed: batch ``b`` is sampled with ``seed + b``.
        save_dir: also write every image as ``{i:06d}_class{label}.png`` there (for other evaluators).
        progress: called as ``progress(done, len(labels) + 1)`` after every batch and once more after the
            distance (its own last step, so a bar reaches the end only when the result is ready).
        kid_subsets: KID subsets (0 = no KID).
        keep_first: keep the first this many images (uint8, on the CPU) for a sample sheet.
        dist: under torch.distributed the batches are shared out over the ranks (:func:`sample_features`);
            every rank returns the same statistics, rank 0 alone writes PNGs and reports progress.
    """
    if len(labels) < 2:
        raise MempruneError(f"FID needs at least 2 images, got {len(labels)}: raise --per-class or --classes")
    main = dist is None or dist.is_main
    if save_dir is not None and main:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    acc = FeatureStatsAccumulator(dim=reference.mu.shape[0], keep_features=reference.features is not None)
    steps = len(labels) + 1
    done, started = 0, time.perf_counter()
    first: list[torch.Tensor] = []
    wanted = (lambda b: True) if save_dir is not None else (lambda b: b * batch_size < keep_first)
    for batch in sample_features(model, inception, labels, settings, batch_size=batch_size, seed=seed, dist=dist,
                                 keep_images=wanted if main else (lambda b: False)):  # fmt: skip
        acc.update(batch.features)  # in batch order: the float64 sums of one process, bit for bit
        if save_dir is not None and main:
            _save_pngs(batch.images, batch.labels, done, Path(save_dir))  # type: ignore[arg-type]
        if len(first) < keep_first and batch.images is not None:
            first += list(batch.images[: keep_first - len(first)])
        done += len(batch.labels)
        if progress and main:
            progress(done, steps)
    generated = time.perf_counter()
    stats = acc.compute()
    if not main:  # rank 0 reports; the others skip the distance and KID
        return FIDRun(float("nan"), stats, done, generated - started)
    fid = frechet_distance(stats, reference)
    kid = None
    if kid_subsets > 0 and stats.features is not None and reference.features is not None:
        device = next(inception.parameters()).device
        kid = kernel_inception_distance(stats.features, reference.features, subsets=kid_subsets, seed=seed, device=device)
    if progress:
        progress(steps, steps)
    return FIDRun(fid, stats, done, generated - started, time.perf_counter() - generated, kid, first,
                  labels[: len(first)].tolist())


def _save_pngs(images: torch.Tensor, labels: torch.Tensor, offset: int, folder: Path) -> None:
    if images.is_floating_point():
        images = images.mul(255).round().to(torch.uint8)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    for k, (img, label) in enumerate(zip(arr, labels.tolist())):
        Image.fromarray(img).save(folder / f"{offset + k:06d}_class{label}.png")
