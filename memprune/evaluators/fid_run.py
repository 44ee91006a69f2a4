"""FID as library calls: ``fid(checkpoint, ...)`` (optionally beside a baseline) and ``fid_compare(a, b)``.

``memprune fid`` and ``memprune fid-compare`` parse their options, call these and render what they return.
Everything that can be checked is checked before anything is written, and the output folder is created only
when the results are ready, so a failed run leaves no empty ``-o`` folder behind.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memprune.errors import MempruneError
from memprune.evaluators import generation as G
from memprune.evaluators.audit_report import environment
from memprune.evaluators.audit_run import checkpoint_info
from memprune.evaluators.fid import PROTOCOL, FIDStats, compute_stats_for_folder, frechet_distance, load_reference
from memprune.evaluators.inception import load_inception
from memprune.evaluators.kid import DEFAULT_SUBSETS, kernel_inception_distance
from memprune.io import write_json_atomic
from memprune.families.loading import load_model, resolve_device
from memprune.scoring.distributed import join, shard_batches

FID_SCHEMA = "memprune.fid/1"  # fields were only added since /1 (kid, warnings, baseline, change)
COMPARE_SCHEMA = "memprune.fid-compare/1"
MIN_UNBIASED = 2048  # below this FID's small-sample bias dominates differences between models
GRID_IMAGES = 64
Progress = Callable[[int, int, str], None]


def small_sample_warning(n: int) -> str | None:
    """The warning for FIDs on fewer than 2,048 images, or ``None``."""
    if n >= MIN_UNBIASED:
        return None
    return (f"FID on {n} images (< {MIN_UNBIASED}) is biased upward and only comparable to FIDs on exactly {n} images "
            "with the same settings (published FIDs use 50,000); compare KID, which has no such bias")


def fid(
    checkpoint: str | os.PathLike,
    tokenizer: str | os.PathLike,
    ref: str | os.PathLike,
    output: str | os.PathLike,
    *,
    baseline: str | os.PathLike | None = None,
    per_class: int = 50,
    classes: str = "all",
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 25,
    inception_spec: str = "auto",
    save_images: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str = "float32",
    arch: str | None = None,
    kid_subsets: int = DEFAULT_SUBSETS,
    progress: Progress | None = None,
    num_heads: int | None = None,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """FID (and KID) of a checkpoint's class-conditional samples against reference statistics.

    With ``baseline`` (the checkpoint before patching) both models are sampled with the same labels and seeds
    against the same reference in one run, one after the other. Sampling defaults to the family's published
    settings; ``overrides`` (cfg, cfg_pow, top_k, top_p, temperature; ``None`` values ignored) replace single
    values. Writes ``fid.json``, ``samples_stats.npz`` (and ``baseline_stats.npz``), and with ``save_images``
    the PNGs plus ``samples_grid.png`` in ``output``.

    Under ``torchrun`` the generation batches are shared out over the ranks (batch ``b`` sampled with
    ``seed + b`` wherever it runs) and the features are accumulated in batch order, so the statistics equal a
    single process's bit for bit; rank 0 alone writes. With ``shard=(i, n)`` only every n-th batch from i is
    sampled and its features are written as ``fid_part.json`` + ``*_features.npz``; ``memprune merge`` adds
    the n parts in batch order and computes FID and KID (:func:`memprune.evaluators.merge_parts.merge_fids`).

    Returns:
        The ``fid.json`` object (schema ``memprune.fid/1``, see docs/evaluation.md); for a shard its part record.
    """
    ref, output = Path(ref), Path(output)
    save_images = Path(save_images) if save_images is not None else None
    runs = {"model": str(checkpoint)} | ({"baseline": str(baseline)} if baseline is not None else {})
    _check_inputs(ref, output, save_images, runs, kid_subsets)
    if shard is not None and not ref.is_file():
        raise MempruneError(f"--shard needs --ref as a statistics .npz (the parts are merged against it): make it once "
                            f"with `memprune fid-stats {ref} -o ref.npz` and pass --ref ref.npz")
    dist, device = join(resolve_device(device))
    main = dist.is_main
    net = load_inception(inception_spec, device=device)  # fail early on missing weights, before any model loads
    say = (progress if main else None) or (lambda done, total, phase: None)
    if shard is not None:
        reference = FIDStats.load(ref)  # only its facts are recorded; the distance is taken when the parts merge
    else:
        reference = load_reference(ref, net, batch_size=batch_size) if ref.is_file() else compute_stats_for_folder(
            ref, net, batch_size, progress=lambda d, t: say(d, t, "reference statistics"))
    results: dict[str, dict[str, Any]] = {}
    for k, (name, ckpt) in enumerate(runs.items()):
        model, digest = load_model(ckpt, tokenizer, device=device, dtype=dtype, arch=arch, num_heads=num_heads)
        settings = G.with_overrides(G.published_settings(model), **(overrides or {}))
        class_list = G.parse_classes(classes, model.num_classes)
        labels = G.fid_labels(class_list, per_class)
        folder = None if save_images is None else (save_images / name if baseline is not None else save_images)
        phase = f"{name} {k + 1}/{len(runs)}: sampling + Inception"
        entry = {"digest": digest, "settings": settings, "classes": class_list, "arch": model.arch,
                 "image_size": model.image_size, "num_classes": model.num_classes}
        if shard is not None:
            entry["part"] = _sample_part(model, net, labels, settings, batch_size, seed, shard, dist, folder,
                                         lambda d, t, p=phase: say(d, t, p))
        else:
            entry["run"] = G.evaluate_fid(
                model, net, reference, labels, settings, batch_size=batch_size, seed=seed,
                save_dir=folder, kid_subsets=kid_subsets, keep_first=GRID_IMAGES if save_images else 0, dist=dist,
                progress=lambda d, t, p=phase: say(d, t, p if d < t - 1 else f"{name}: FID and KID"))  # fmt: skip
        results[name] = entry
        del model
        _free_memory()
    if not main:
        return {}
    context = {
        "runs": runs, "tokenizer": str(tokenizer), "per_class": per_class, "seed": seed, "batch_size": batch_size,
        "inception": {"spec": inception_spec, "weights_id": getattr(net, "weights_id", None)},
        "reference": {"path": str(ref), "num_images": reference.num_images, "protocol": reference.protocol,
                      "has_features": reference.features is not None},
        "device": device, "dtype": dtype, "kid_subsets": kid_subsets,
        "images": str(save_images) if save_images else None,
    }  # fmt: skip
    if shard is not None:
        return _write_part(output, results, context, ref, shard)
    output.mkdir(parents=True, exist_ok=True)
    files = _write_outputs(output, {n: e["run"] for n, e in results.items()}, save_images)
    return finish_fid(output, results, context, files)


def finish_fid(output: Path, results: dict[str, dict[str, Any]], context: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    """Build and write ``fid.json`` from the runs (``results[name]["run"]``) of a finished or merged FID run."""
    warnings: list[str] = []
    if not context["reference"]["has_features"] and context["kid_subsets"] > 0:
        warnings.append("KID not computed: the reference holds no feature rows (pytorch-fid files keep only mu/sigma); "
                        "make it with `memprune fid-stats` or pass a folder of images as --ref")
    main = results["model"]
    note = small_sample_warning(main["run"].num_images)
    if note:
        warnings.append(note)
    runs, per_class = context["runs"], context["per_class"]
    run, class_list = main["run"], main["classes"]
    result: dict[str, Any] = {
        "schema": FID_SCHEMA,
        "fid": run.fid,
        "kid": run.kid.to_json() if run.kid else None,
        "num_images": run.num_images,
        "per_class": per_class,
        "classes": "all" if len(class_list) == main["num_classes"] else class_list,
        "num_classes": len(class_list),
        "labels": "the class list repeated per_class times (0..C-1, 0..C-1, ...)",
        "sampling": main["settings"].to_json(),
        "seed": context["seed"],
        "batch_size": context["batch_size"],
        "seeding": "batch b is sampled with seed + b",
        "model": {**checkpoint_info(runs["model"], main["digest"]), "arch": main["arch"], "image_size": main["image_size"],
                  "tokenizer": context["tokenizer"]},
        "reference": context["reference"],
        "inception": context["inception"],
        "protocol": PROTOCOL,
        "comparability": "only compare FIDs with the same protocol, image count, labels, seeds, batch size and reference",
        "device": context["device"],
        "dtype": context["dtype"],
        "timing": _timing(run),
        "warnings": warnings,
        "environment": environment(),
        "files": {**files, "images": context["images"]},
    }
    if "baseline" in results:
        base = results["baseline"]["run"]
        result["baseline"] = {"fid": base.fid, "kid": base.kid.to_json() if base.kid else None,
                              "model": checkpoint_info(runs["baseline"], results["baseline"]["digest"]),
                              "timing": _timing(base)}
        result["change"] = {"fid": run.fid - base.fid,
                            "kid": run.kid.mean - base.kid.mean if run.kid and base.kid else None}
    write_json_atomic(output / "fid.json", result)
    return result


PART_NAME = "fid_part.json"
PART_SCHEMA = "memprune.fid-part/1"


def _sample_part(model: Any, net: Any, labels: torch.Tensor, settings: G.SamplingSettings, batch_size: int, seed: int,
                 shard: tuple[int, int], dist: Any, folder: Path | None, progress: Callable[[int, int], None]) -> dict[str, Any]:
    """Sample the batches of ``shard`` and keep their Inception features (float64, for an exact merge)."""
    started, done = time.perf_counter(), 0
    feats, batches, sizes = [], [], []
    total = sum(min(batch_size, len(labels) - b * batch_size)
                for b in shard_batches(G.num_batches(len(labels), batch_size), shard))  # fmt: skip
    main = dist.is_main
    if folder is not None and main:
        folder.mkdir(parents=True, exist_ok=True)
    for batch in G.sample_features(model, net, labels, settings, batch_size=batch_size, seed=seed, shard=shard,
                                   dist=dist, keep_images=lambda b: folder is not None and main):  # fmt: skip
        feats.append(batch.features)
        batches.append(batch.index)
        sizes.append(len(batch.labels))
        if folder is not None and main:
            G._save_pngs(batch.images, batch.labels, batch.index * batch_size, folder)  # type: ignore[arg-type]
        done += len(batch.labels)
        progress(done, total)
    return {"features": np.concatenate(feats) if feats else np.zeros((0, 0)), "batches": batches, "sizes": sizes,
            "seconds": time.perf_counter() - started}


def _write_part(output: Path, results: dict[str, dict[str, Any]], context: dict[str, Any], ref: Path,
                shard: tuple[int, int]) -> dict[str, Any]:
    from memprune.io import atomic_write
    from memprune.io.writer import sha256_file

    output.mkdir(parents=True, exist_ok=True)
    files, models = {}, {}
    for name, entry in results.items():
        part = entry["part"]
        stem = "samples" if name == "model" else name
        with atomic_write(output / f"{stem}_features.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, features=part["features"], batches=np.asarray(part["batches"], np.int64),
                     sizes=np.asarray(part["sizes"], np.int64))
        files[name] = f"{stem}_features.npz"
        models[name] = {"digest": entry["digest"], "settings": entry["settings"].to_json(), "classes": entry["classes"],
                        "arch": entry["arch"], "image_size": entry["image_size"], "num_classes": entry["num_classes"]}
    record = {"schema": PART_SCHEMA, "shard": {"index": shard[0], "count": shard[1]},
              "config": {**context, "device": None, "models": models, "ref_sha256": sha256_file(ref)},
              "context": context, "features": files,
              "seconds": {name: e["part"]["seconds"] for name, e in results.items()},
              "images": {name: int(sum(e["part"]["sizes"])) for name, e in results.items()}}  # fmt: skip
    write_json_atomic(output / PART_NAME, record)
    return record


def fid_compare(
    a: str | os.PathLike,
    b: str | os.PathLike,
    *,
    inception_spec: str = "auto",
    batch_size: int = 50,
    device: str = "auto",
    kid_subsets: int = DEFAULT_SUBSETS,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """FID (and KID when both sides have feature rows) between two folders of images or ``.npz`` statistics.

    As ``pytorch-fid A B``: a folder is run through the Inception network, an ``.npz`` is read as is. Writes
    nothing.
    """
    paths = [Path(a), Path(b)]
    for p in paths:
        if not p.exists():
            raise MempruneError(f"{p} does not exist: pass two folders of images or two .npz statistics files")
        if p.is_file() and p.suffix != ".npz":
            raise MempruneError(f"{p} is neither a folder of images nor an .npz statistics file")
    say = progress or (lambda done, total, phase: None)
    device = resolve_device(device)
    net = load_inception(inception_spec, device=device) if any(p.is_dir() for p in paths) else None
    stats: list[FIDStats] = []
    started = time.perf_counter()
    for k, p in enumerate(paths):
        if p.is_dir():
            stats.append(compute_stats_for_folder(p, net, batch_size, progress=lambda d, t, k=k: say(d, t, f"side {k + 1}/2")))
        else:
            stats.append(FIDStats.load(p))
    value = frechet_distance(stats[0], stats[1])
    kid = None
    if kid_subsets > 0 and stats[0].features is not None and stats[1].features is not None:
        kid = kernel_inception_distance(stats[0].features, stats[1].features, subsets=kid_subsets, seed=seed,
                                        device=device)
    warnings = [w for w in (small_sample_warning(s.num_images) for s in stats if s.num_images) if w][:1]
    if kid is None and kid_subsets > 0:
        warnings.append("KID not computed: a side has no feature rows (pytorch-fid .npz files keep only mu/sigma)")
    return {
        "schema": COMPARE_SCHEMA,
        "fid": value,
        "kid": kid.to_json() if kid else None,
        "sides": [{"path": str(p), "num_images": s.num_images, "protocol": s.protocol} for p, s in zip(paths, stats)],
        "inception": {"spec": inception_spec, "weights_id": getattr(net, "weights_id", None)} if net else None,
        "protocol": PROTOCOL,
        "seconds": time.perf_counter() - started,
        "warnings": warnings,
    }


def _check_inputs(ref: Path, output: Path, save_images: Path | None, runs: dict[str, str], kid_subsets: int) -> None:
    if not ref.exists():
        raise MempruneError(f"--ref {ref} does not exist: pass a statistics .npz (see `memprune fid-stats`) or a folder of images")
    if output.exists() and not output.is_dir():
        raise MempruneError(f"-o {output} is a file: give a folder for fid.json (it is created when the run succeeds)")
    if save_images is not None and save_images.exists() and not save_images.is_dir():
        raise MempruneError(f"--save-images {save_images} is a file: give a folder")
    if kid_subsets < 0:
        raise MempruneError(f"--kid-subsets {kid_subsets} must be 0 (no KID) or more")
    for name, path in runs.items():
        if not path.startswith("hf://") and not Path(path).exists():
            what = "--baseline" if name == "baseline" else "checkpoint"
            raise MempruneError(f"{what} {path} does not exist: pass a checkpoint file or hf://repo/file")


def _timing(run: G.FIDRun) -> dict[str, float]:
    return {"seconds": run.seconds + run.distance_seconds, "sampling_seconds": run.seconds,
            "distance_seconds": run.distance_seconds, "images_per_second": run.images_per_second}


def _write_outputs(output: Path, runs: dict[str, G.FIDRun], save_images: Path | None) -> dict[str, str]:
    from memprune.plots.grid import class_name, render_sample_grid

    files = {}
    for name, run in runs.items():
        stem = "samples" if name == "model" else name
        run.stats.save(output / f"{stem}_stats.npz")
        files[f"{stem}_stats"] = f"{stem}_stats.npz"
        if save_images is not None and run.first_images:
            grid = render_sample_grid(run.first_images, [class_name(c) for c in run.first_labels],
                                      output / f"{stem}_grid.png", title=f"{name}: first {len(run.first_images)} samples")
            files[f"{stem}_grid"] = grid.name
    return files


def _free_memory() -> None:
    # The next model (the baseline) must fit where this one was.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
