"""``memprune score``: UnitMem of every FFN unit over a set of training images, in one streaming pass.

For each image x (with its true label) and each augmentation view, the model runs one teacher-forced,
class-conditional forward (label dropout off). A hook on every unit layer reduces the activations at once to
``mean over the rows of position group s of |a_u|`` (VAR: one group per scale, Algorithm 1 of the paper;
RAR: the row predicting the last token); the views of an image are averaged to ``mu_u,s(x)``. Streaming
statistics (:mod:`memprune.scoring.stats`) then give per unit and group ``mu_max`` at ``x_k`` (first index on
ties), ``mu_-max`` = mean over the other images and ``UnitMem = (mu_max - mu_-max) / (mu_max + mu_-max)``.

Images are processed in their global order in batches of ``batch_size`` images; each view index is one
forward of the batch. Loading runs ahead in a thread pool. ``shard=(i, n)`` scores the i-th contiguous part
(merge parts with :func:`memprune.scoring.merge.merge_scores`); under ``torchrun`` the ranks split the
(shard's) images further and reduce their statistics before rank 0 writes the file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memprune.data import (
    DataSet,
    ImageRecord,
    ViewPipeline,
    balanced_subset,
    check_labels,
    load_records,
    parse_fraction,
)
from memprune.errors import MempruneError
from memprune.io import check_output, checkpoint_files
from memprune.families.base import IARModel, PositionGroup
from memprune.families.loading import load_model, resolve_device, resolve_dtype
from memprune.scores import ScoreSet, save_scores
from memprune.scoring import distributed as D
from memprune.scoring import resume as R
from memprune.scoring.hooks import capture_groups
from memprune.scoring.stats import StreamingStats

log = logging.getLogger(__name__)
ProgressFn = Callable[[int, int], None]
VARIANT = "mean |post-activation| per position group, averaged over views; mu_-max = mean of the other images"


@dataclass(frozen=True)
class ScoreResult:
    """What a scoring run produced.

    Attributes:
        scores: the score set (complete on rank 0; other ranks get the same reduced statistics).
        output: the written file, or ``None`` (no output asked, or not rank 0).
        images: images in this run's part (shard) of the scoring set.
        total_images: images in the whole scoring set.
        seconds: wall time of the scoring loop (model loading excluded).
        resumed_from: images of this process already done by a previous, interrupted run.
        dead: layer -> (group, unit) entries with ``mu_max == 0`` (scored 0).
        tied: layer -> entries whose maximum several images reach exactly.
        shard: ``(i, n)`` or ``None``.
        world_size: torch.distributed ranks that took part.
    """

    scores: ScoreSet
    output: Path | None
    images: int
    total_images: int
    seconds: float
    resumed_from: int = 0
    dead: dict[str, int] = field(default_factory=dict)
    tied: dict[str, int] = field(default_factory=dict)
    shard: tuple[int, int] | None = None
    world_size: int = 1

    @property
    def images_per_second(self) -> float:
        done = self.images - self.resumed_from
        return done / self.seconds if self.seconds > 0 else float("nan")


def select_images(
    data: str | os.PathLike | DataSet | Sequence[ImageRecord],
    *,
    class_index: str | os.PathLike | None = None,
    fraction: float | str | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> tuple[list[ImageRecord], dict[str, Any]]:
    """The scoring set in global index order, and a description of it for the score file."""
    if isinstance(data, DataSet):
        ds = data
    elif isinstance(data, (str, os.PathLike)):
        ds = load_records(data, class_index)
    else:
        ds = DataSet(records=list(data), classes={}, source="<records>")
    records = ds.records
    frac = parse_fraction(fraction) if fraction is not None else None
    if frac is not None or per_class is not None:
        records = balanced_subset(records, fraction=frac, per_class=per_class, seed=seed)
    desc = {**ds.describe(), "selected": len(records), "fraction": frac, "per_class": per_class}
    return records, desc


def _chunks(begin: int, end: int, size: int) -> Iterator[tuple[int, int]]:
    for s in range(begin, end, size):
        yield s, min(s + size, end)


def _prefetched(records: Sequence[ImageRecord], spans: Iterator[tuple[int, int]], views: ViewPipeline, augs: int,
                workers: int, pin: bool) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield ``(begin, end, views [b, augs, 3, H, W])``, loading the next batch while the current one runs."""

    def load(span: tuple[int, int]) -> tuple[int, int, torch.Tensor]:
        b, e = span
        x = torch.stack(list(pool.map(lambda r: views.load(r, augs), records[b:e])))
        return b, e, x.pin_memory() if pin else x

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, ThreadPoolExecutor(max_workers=1) as ahead:
        pending = None
        for span in spans:
            nxt = ahead.submit(load, span)
            if pending is not None:
                yield pending.result()
            pending = nxt
        if pending is not None:
            yield pending.result()


def score_records(
    model: IARModel,
    records: Sequence[ImageRecord],
    views: ViewPipeline,
    stats: StreamingStats,
    *,
    layers: Sequence[str],
    augs: int,
    begin: int,
    end: int,
    batch_size: int,
    workers: int = 2,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Fold images ``records[begin:end]`` (global indices) into ``stats``.

    Args:
        model: the runnable model (eval mode; its ``teacher_forced`` is label-dropout free).
        records: the whole scoring set (global order).
        views: the view pipeline; view ``a`` of every image is one forward of the batch.
        stats: accumulators on the model's device.
        layers: unit layer types to hook (``fc1``, ``fc2``, ``attn.proj``).
        augs: views per image (averaged).
        begin, end: the part of ``records`` to process.
        batch_size: images per forward.
        workers: image-loading threads.
        on_batch: called with the next global position after each batch (checkpointing, progress).
    """
    device = model.device
    points: dict[str, torch.nn.Module] = {}
    for kind in layers:
        points.update(model.hook_points(kind))
    groups = model.position_groups()
    pin = device.type == "cuda"
    with capture_groups(points, groups) as cap, torch.no_grad():
        for b, e, x in _prefetched(records, _chunks(begin, end, batch_size), views, augs, workers, pin):
            labels = torch.tensor([r.label for r in records[b:e]], dtype=torch.long).to(device, non_blocking=True)
            index = torch.arange(b, e, dtype=torch.long).to(device, non_blocking=True)
            x = x.to(device, non_blocking=True)
            acc: dict[str, torch.Tensor] = {}
            for a in range(augs):  # views summed in a fixed order, then divided: mean over views
                tokens = model.encode(x[:, a])
                cap.begin()
                model.teacher_forced(tokens, labels)
                for name, value in cap.end().items():
                    acc[name] = value if a == 0 else acc[name].add_(value)
            for name, value in acc.items():
                stats.update(name, value.div_(augs) if augs > 1 else value, index)
            stats.add_images(e - b)
            if on_batch is not None:
                on_batch(e)


def _image_independent(model: IARModel, groups: list[PositionGroup]) -> list[str]:
    # Groups whose activations depend only on the label (VAR scale 0), as the model declares them.
    names = {g.name for g in groups}
    return [g for g in model.image_independent_groups() if g in names]


def _layer_shapes(model: IARModel, layers: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``(S, H)`` of every hooked layer, from one teacher-forced probe on all-zero tokens (no tokenizer run).

    The probe also proves that every hook fires before any real work starts.
    """
    points: dict[str, torch.nn.Module] = {}
    for kind in layers:
        points.update(model.hook_points(kind))
    tokens = torch.zeros(1, model.seq_len, dtype=torch.long, device=model.device)
    with capture_groups(points, model.position_groups()) as cap, torch.no_grad():
        cap.begin()
        model.teacher_forced(tokens, torch.zeros(1, dtype=torch.long, device=model.device))
        values = cap.end()
    return {name: (int(values[name].shape[1]), int(values[name].shape[2])) for name in points}


def parse_layers(text: str | Sequence[str]) -> list[str]:
    """``fc1`` / ``fc1,fc2`` -> unit layer types (validated)."""
    from memprune.families import UNIT_KINDS

    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [t for t in items if t not in UNIT_KINDS]
    if bad or not items:
        raise MempruneError(f"--layers {text!r}: choose one or more of {', '.join(UNIT_KINDS)} (comma-separated)")
    return list(dict.fromkeys(items))


def score(
    checkpoint: str | os.PathLike | IARModel,
    data: str | os.PathLike | DataSet | Sequence[ImageRecord],
    *,
    tokenizer: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    class_index: str | os.PathLike | None = None,
    fraction: float | str | None = None,
    per_class: int | None = None,
    augs: int | None = None,
    augment: bool = True,
    layers: str | Sequence[str] = "fc1",
    batch_size: int = 16,
    device: str = "cpu",
    dtype: str | torch.dtype = "auto",
    seed: int = 0,
    resume: bool = False,
    checkpoint_every: int = 0,
    shard: str | tuple[int, int] | None = None,
    arch: str | None = None,
    workers: int = 2,
    checkpoint_digest: str | None = None,
    progress: ProgressFn | None = None,
    num_heads: int | None = None,
) -> ScoreResult:
    """Compute UnitMem scores and (optionally) write them as a score file.

    Args:
        checkpoint: model checkpoint path, or an already built :class:`IARModel`.
        data: image folder, ``path,label`` CSV, a :class:`DataSet` or a list of records.
        tokenizer: the tokenizer checkpoint (needed with a checkpoint path).
        output: score file to write (``.safetensors``); required for ``resume`` / ``checkpoint_every``.
        class_index: folder/label name -> class id file.
        fraction, per_class: class-balanced seeded subset (``"1%"`` or a count per class).
        augs: views per image (default 10 with ``augment``, 1 without).
        augment: use the model's training augmentations; ``False`` = one deterministic centre view.
        layers: ``fc1`` (post-activation, the paper's), ``fc2``, ``attn.proj`` or a comma list.
        batch_size: images per forward.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        dtype: ``auto`` (bf16 on CUDA, float32 on CPU), ``float32``, ``bfloat16``, ``float16``.
        seed: subset sampling and random-crop seed.
        resume: continue from this run's last checkpoint if there is one.
        checkpoint_every: save the statistics atomically every this many images (0 = never).
        shard: ``"i/n"`` or ``(i, n)``: score only the i-th of n contiguous parts.
        arch: skip architecture detection.
        workers: image-loading threads.
        checkpoint_digest: sha256 to record when ``checkpoint`` is a model object.
        progress: called as ``progress(done, total)`` after each batch.
        num_heads: head count for a LlamaGen width that is no release (the weights do not store it).

    Raises:
        MempruneError: bad options, data or checkpoints, fewer than 2 images overall, a hook that did not fire.
    """
    shard_t = D.parse_shard(shard) if isinstance(shard, str) else shard
    layer_kinds = parse_layers(layers)
    n_augs = _check_options(augs, augment, batch_size, checkpoint_every, resume, output, workers)
    out_path = Path(output) if output is not None else None
    inputs = [] if isinstance(checkpoint, IARModel) else [*checkpoint_files(checkpoint), *checkpoint_files(tokenizer)]
    inputs += [data, class_index]  # a data folder counts with every file below it
    if out_path is not None:
        check_output(out_path, inputs, suffix=".safetensors", what="score output")
    device = resolve_device(device)
    records, data_desc = select_images(data, class_index=class_index, fraction=fraction, per_class=per_class, seed=seed)
    if out_path is not None and out_path.exists():  # a CSV's images too (only worth listing when -o exists)
        check_output(out_path, [r.path for r in records], suffix=".safetensors", what="score output")
    dist_info = D.init_distributed(device)
    try:
        return _run(checkpoint, tokenizer, records, data_desc, out_path, layer_kinds, n_augs, augment, batch_size,
                    device, dtype, seed, resume, checkpoint_every, shard_t, arch, workers, checkpoint_digest,
                    progress, dist_info, num_heads)
    finally:
        D.shutdown(dist_info)


def _check_options(augs: int | None, augment: bool, batch_size: int, every: int, resume: bool,
                   output: object, workers: int = 1) -> int:
    if batch_size <= 0:
        raise MempruneError(f"--batch-size {batch_size} must be at least 1")
    if workers < 1:
        raise MempruneError(f"--workers {workers} must be at least 1 (image-loading threads)")
    if every < 0:
        raise MempruneError(f"--checkpoint-every {every} must be 0 (off) or a positive number of images")
    if (resume or every) and output is None:
        raise MempruneError("--resume and --checkpoint-every need an output file (-o) to keep the checkpoint beside")
    if not augment:
        if augs not in (None, 1):
            raise MempruneError(f"--augs {augs} with --no-augment would repeat one identical view: drop one of them")
        return 1
    n = 10 if augs is None else augs
    if n <= 0:
        raise MempruneError(f"--augs {n} must be at least 1")
    return n


def _run(checkpoint, tokenizer, records, data_desc, out_path, layer_kinds, augs, augment, batch_size, device,
         dtype, seed, resume, every, shard, arch, workers, digest, progress, info, num_heads=None) -> ScoreResult:
    dev = D.local_device(device, info)
    model, digest = load_model(checkpoint, tokenizer, device=dev, dtype=dtype, arch=arch, digest=digest, num_heads=num_heads)
    check_labels(records, model.num_classes)
    views = ViewPipeline.for_arch(model.arch, model.image_size, augment=augment, seed=seed)
    groups = model.position_groups()
    total = len(records)
    begin, end = (0, total) if shard is None else D.split_range(0, total, *shard)
    my_begin, my_end = D.split_range(begin, end, info.rank, info.world_size)
    settings = {
        "layers": layer_kinds, "augs": augs, "views": views.describe(), "seed": seed, "groups": [g.name for g in groups],
        "dtype": str(resolve_dtype(dtype, model.device)).replace("torch.", ""), "variant": VARIANT,
        "fraction": data_desc["fraction"], "per_class": data_desc["per_class"],
    }
    run_id = {**settings, "checkpoint": digest, "records": R.records_digest(records), "batch_size": batch_size,
              "range": [my_begin, my_end]}
    stats, start = _initial_stats(model, layer_kinds, out_path, shard, info, run_id, resume)
    partial = R.partial_path(out_path, shard, info.rank, info.world_size) if out_path is not None else None
    last_saved = start

    def on_batch(position: int) -> None:
        nonlocal last_saved
        if every and partial is not None and (position - last_saved >= every or position == my_end):
            R.save_partial(partial, stats, position, R.fingerprint(run_id))
            last_saved = position
        if progress is not None:
            progress(position - my_begin, my_end - my_begin)

    t0 = time.perf_counter()
    if progress is not None and start > my_begin:
        progress(start - my_begin, my_end - my_begin)
    score_records(model, records, views, stats, layers=layer_kinds, augs=augs, begin=start, end=my_end,
                  batch_size=batch_size, workers=workers, on_batch=on_batch)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    seconds = time.perf_counter() - t0
    D.all_reduce_stats(stats, info)
    finished = stats.finish(allow_too_few=shard is not None)  # a shard's own scores matter only merged
    scores = ScoreSet(
        scores=finished.scores, groups=[g.name for g in groups], checkpoint_sha256=digest, arch=model.arch,
        image_independent=_image_independent(model, groups), stats=stats.state_dict(),
        images=[r.id for r in records],
        info={"data": data_desc, "settings": settings, "images_scored": end - begin,
              "tokenizer": None if tokenizer is None or isinstance(checkpoint, IARModel) else str(tokenizer),
              "shard": {"index": shard[0], "count": shard[1], "begin": begin, "end": end} if shard else None,
              "dead_units": finished.dead, "tied_units": finished.tied, "labels": [r.label for r in records]},
    )
    written = None
    if out_path is not None and info.is_main:
        save_scores(scores, out_path)
        written = out_path
    D.barrier(info)
    if partial is not None:
        R.remove_partial(partial)
    return ScoreResult(scores=scores, output=written, images=end - begin, total_images=total, seconds=seconds,
                       resumed_from=start - my_begin, dead=finished.dead, tied=finished.tied, shard=shard,
                       world_size=info.world_size)


def _initial_stats(model: IARModel, layer_kinds: list[str], out_path: Path | None, shard, info: D.DistInfo,
                   run_id: dict[str, Any], resume: bool) -> tuple[StreamingStats, int]:
    my_begin = run_id["range"][0]
    fresh = StreamingStats(_layer_shapes(model, layer_kinds), model.device)
    if not resume or out_path is None:
        return fresh, my_begin
    partial = R.partial_path(out_path, shard, info.rank, info.world_size)
    loaded = R.load_partial(partial, R.fingerprint(run_id), model.device, tuple(run_id["range"]))
    if loaded is None:
        log.warning("--resume: no checkpoint at %s, starting from the first image", partial)
        return fresh, my_begin
    stats, position = loaded
    if set(stats.layers) != set(fresh.layers):
        raise MempruneError(f"{partial} holds other layers than this run: delete it to start over")
    log.info("resuming from image %d of %d (checkpoint %s)", position - my_begin, run_id["range"][1] - my_begin, partial)
    return stats, position
