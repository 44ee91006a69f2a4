"""FID of a checkpoint as one library call: ``fid(checkpoint, tokenizer, ref, output, ...)``.

``memprune fid`` parses its options, calls :func:`fid` and renders the result it returns.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memprune.errors import MempruneError
from memprune.evaluators import generation as G
from memprune.evaluators.audit_report import environment
from memprune.evaluators.audit_run import checkpoint_info
from memprune.evaluators.fid import PROTOCOL, load_reference
from memprune.evaluators.inception import load_inception
from memprune.io import write_json_atomic
from memprune.models.loading import load_model, resolve_device

FID_SCHEMA = "memprune.fid/1"


def fid(
    checkpoint: str | os.PathLike,
    tokenizer: str | os.PathLike,
    ref: str | os.PathLike,
    output: str | os.PathLike,
    *,
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
    progress: Callable[[int, int], None] | None = None,
    num_heads: int | None = None,
) -> dict[str, Any]:
    """FID of a checkpoint's class-conditional samples against reference statistics, as ``memprune fid`` runs it.

    Sampling defaults to the family's published evaluation settings; ``overrides`` (cfg, cfg_pow, top_k, top_p,
    temperature; ``None`` values are ignored) replace single values. Writes ``fid.json`` and ``samples_stats.npz``.

    Returns:
        The ``fid.json`` object (schema ``memprune.fid/1``, see docs/evaluation.md).
    """
    ref, output = Path(ref), Path(output)
    save_images = Path(save_images) if save_images is not None else None

    device = resolve_device(device)
    if not ref.exists():
        raise MempruneError(f"--ref {ref} does not exist: pass a statistics .npz (see `memprune fid-stats`) or a folder of images")
    output.mkdir(parents=True, exist_ok=True)
    net = load_inception(inception_spec, device=device)  # fail early on missing weights, before the model loads
    reference = load_reference(ref, net, batch_size=batch_size)
    model, digest = load_model(checkpoint, tokenizer, device=device, dtype=dtype, arch=arch, num_heads=num_heads)
    settings = G.with_overrides(G.published_settings(model), **(overrides or {}))
    class_list = G.parse_classes(classes, model.num_classes)
    labels = G.fid_labels(class_list, per_class)
    run = G.evaluate_fid(model, net, reference, labels, settings, batch_size=batch_size, seed=seed,
                         save_dir=save_images, progress=progress)
    run.stats.save(output / "samples_stats.npz")
    result = {
        "schema": FID_SCHEMA,
        "fid": run.fid,
        "num_images": run.num_images,
        "per_class": per_class,
        "classes": "all" if len(class_list) == model.num_classes else class_list,
        "num_classes": len(class_list),
        "labels": "the class list repeated per_class times (0..C-1, 0..C-1, ...)",
        "sampling": settings.to_json(),
        "seed": seed,
        "batch_size": batch_size,
        "seeding": "batch b is sampled with seed + b",
        "model": {**checkpoint_info(checkpoint, digest), "arch": model.arch, "image_size": model.image_size,
                  "tokenizer": str(tokenizer)},
        "reference": {"path": str(ref), "num_images": reference.num_images, "protocol": reference.protocol},
        "inception": {"spec": inception_spec, "weights_id": getattr(net, "weights_id", None)},
        "protocol": PROTOCOL,
        "comparability": "only compare FIDs with the same protocol, image count, labels, seeds, batch size and reference",
        "device": device,
        "dtype": dtype,
        "timing": {"seconds": run.seconds, "images_per_second": run.images_per_second},
        "environment": environment(),
        "files": {"samples_stats": "samples_stats.npz", "images": str(save_images) if save_images else None},
    }
    write_json_atomic(output / "fid.json", result)
    return result
