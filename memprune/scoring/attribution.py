"""``memprune attribute``: localization by first-order attribution, and the seeded random control.

Both write the score-file format of :mod:`memprune.scores`, so ``patch`` stays method-agnostic; the file's
``info.method`` says which method made it (``attribution`` or ``random``; a file without it is UnitMem).

**Attribution.** For image x (true label, the attack's canonical view, teacher-forced, conditional) let
``L(x)`` be the mean token cross-entropy over its ``seq_len`` predictions (nats/token). Setting unit u to 0 at
the rows of position group s changes the activations by ``-a_u(x, p)``; to first order (Taylor, Molchanov et
al. 2017) the loss then changes by::

    D_u,s(x) = - sum_{p in s} a_u(x, p) * dL(x)/da_u(x, p)

Removing the unit everywhere (what ``patch --factor 0`` on its fc2 column does exactly, and fc1 x 0 up to
``GELU(bias)``) changes the loss by ``sum_s D_u,s(x)`` to first order. The score is::

    score_u,s = mean_{x in FORGET} D_u,s(x) - mean_{x in RETAIN} D_u,s(x)

Normalisation: per token within an image (L is a mean over the image's tokens, or over those from
``from_token`` on: an attack forcing a prefix only generates the rest), then per image within each
set, so the two sets weigh the same whatever their sizes and the score is in nats/token. A high score: removing
the unit raises the loss of the forget images more than that of the retain images. Because the intervention
acts on every position, rank with ``--aggregate sum`` (the sum over groups is the whole first-order estimate);
``info.aggregate`` records this and ``memprune mitigate`` uses it. No group is image-independent here (VAR's
scale 0 rows feed every later prediction), so none is excluded.

**Random.** A seeded uniform score per unit (the same in every group): the control that every claim needs.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from memprune.data import ImageRecord, check_labels, load_image, load_records
from memprune.errors import MempruneError
from memprune.families.base import IARModel
from memprune.families.loading import load_model, resolve_device
from memprune.scores import ScoreSet, save_scores
from memprune.scoring.engine import _chunks, _layer_shapes, _prefetched
from memprune.scoring.hooks import GroupCapture

log = logging.getLogger(__name__)
METHODS = ("attribution", "random")
NORMALISATION = ("first-order loss change when the unit is set to 0: -sum over the group's rows of a * dL/da, "
                 "L = mean token cross-entropy of one image (nats/token); mean over FORGET images minus mean "
                 "over RETAIN images")
ProgressFn = Callable[[str, int, int], None]


class NothingToForget(MempruneError):
    """The forget set is empty (nothing was extracted): there is nothing to localize. Not a failure."""


@dataclass(frozen=True)
class ImageList:
    """Images read from a data list, with a privacy-safe description (counts and a digest, no ids or paths)."""

    records: list[ImageRecord]
    source: str

    def describe(self) -> dict[str, Any]:
        return {"images": len(self.records), "classes": len({r.label for r in self.records}),
                "sha256": ids_digest(self.records)}


def ids_digest(records: Sequence[ImageRecord]) -> str:
    """SHA-256 of the sorted resolved image paths: names a set without listing it."""
    joined = "\n".join(sorted(str(Path(r.path).resolve()) for r in records))
    return hashlib.sha256(joined.encode()).hexdigest()


def read_image_list(spec: str | os.PathLike, class_index: str | os.PathLike | None = None) -> ImageList:
    """An image list in any form ``score --data`` accepts, or an audit's output.

    * ImageFolder directory or ``path,label`` CSV (the ``candidates.csv`` an audit writes is one);
    * an audit's ``results.csv`` (columns ``extracted`` and ``counted``): the images extracted at a counted
      condition, each once; an empty selection is allowed (the caller decides what nothing extracted means).
    """
    p = Path(spec)
    if p.is_file() and p.suffix.lower() == ".csv":
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = {h.strip() for h in reader.fieldnames or []}
            if "extracted" in header:
                return ImageList(_extracted_rows(p, list(reader)), str(p))
    return ImageList(load_records(p, class_index).records, str(p))


def _extracted_rows(p: Path, rows: list[dict[str, str]]) -> list[ImageRecord]:
    def true(v: str | None) -> bool:
        return str(v).strip().lower() in ("true", "1", "yes")

    out: dict[str, ImageRecord] = {}
    for n, row in enumerate(rows, start=2):
        if not true(row.get("extracted")) or ("counted" in row and not true(row.get("counted"))):
            continue
        name, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not name or not label.isdigit():
            raise MempruneError(f"{p} line {n} needs a path and an integer label: pass the audit's results.csv as written")
        # Audits record absolute paths; a relative one is taken beside the file, else from the working folder.
        path = Path(name) if Path(name).is_absolute() or not (p.parent / name).is_file() else p.parent / name
        if not path.is_file():
            raise MempruneError(f"{p} line {n}: image {name} does not exist: run the audit again or fix the path")
        image_id = (row.get("id") or name).strip()
        out.setdefault(image_id, ImageRecord(path, int(label), image_id))
    return sorted(out.values(), key=lambda r: (r.label, r.id))


def check_sets(forget: Sequence[ImageRecord], retain: Sequence[ImageRecord],
               training: Sequence[ImageRecord] | None = None) -> None:
    """Refuse an empty forget set (:class:`NothingToForget`), an empty retain set, overlapping sets and forget
    images missing from ``training``; images are compared by resolved path."""
    if not forget:
        raise NothingToForget("the forget set is empty (nothing was extracted): nothing to localize or remove")
    if not retain:
        raise MempruneError("the retain set is empty: give images the model should keep (e.g. training images not extracted)")
    f = {Path(r.path).resolve(): r.id for r in forget}
    both = [f[Path(r.path).resolve()] for r in retain if Path(r.path).resolve() in f]
    if both:
        raise MempruneError(f"{len(both)} image(s) are in both the forget and the retain set (e.g. {both[0]}): "
                            "remove them from --retain")
    if training is not None:
        t = {Path(r.path).resolve() for r in training}
        outside = [i for path, i in f.items() if path not in t]
        if outside:
            raise MempruneError(f"{len(outside)} forget image(s) are not in the training data given (e.g. {outside[0]}): "
                                "pass the --data the model was trained on, or fix the forget list")


@dataclass(frozen=True)
class _CanonicalViews:
    """The attack's deterministic view (what the audit forces and held-out NLL measures), in the engine's loader API."""

    arch: str
    size: int

    def load(self, record: ImageRecord, augs: int) -> torch.Tensor:
        from memprune.evaluators.audit_candidates import canonical_view

        return canonical_view(load_image(record.path), self.arch, self.size).unsqueeze(0).expand(augs, -1, -1, -1)


class _GradCapture(GroupCapture):
    """Keeps each hooked activation in the autograd graph (instead of reducing it) so dL/da can be taken."""

    def _hook(self, name: str):
        def hook(module: torch.nn.Module, args: object, output: object) -> torch.Tensor:
            if not isinstance(output, torch.Tensor) or output.dim() != 3:
                raise MempruneError(f"hook {name} produced {type(output).__name__}, expected activations [B, rows, units]")
            self.calls[name] = self.calls.get(name, 0) + 1
            # + a zero leaf: exact, and makes everything downstream differentiable even with frozen weights.
            act = output + output.new_zeros((), requires_grad=True)
            self.values[name] = act
            return act

        return hook

    def reduce_grad(self, name: str, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """``[B, T, H]`` -> ``[B, S, H]`` float64: ``-sum over the group's rows of a * dL/da``."""
        prod = (act.detach().float() * grad.float()).neg_()
        return torch.stack([prod[:, g.begin : g.end].sum(1, dtype=torch.float64) for g in self.groups], dim=1)


def teacher_forced_with_grad(model: IARModel, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``model.teacher_forced`` with autograd on.

    The model classes decorate ``teacher_forced`` with ``torch.no_grad`` (scoring and the audit never need
    gradients); the undecorated function (``__wrapped__``) is the same computation.
    """
    fn = type(model).teacher_forced
    inner = getattr(fn, "__wrapped__", fn)
    with torch.enable_grad():
        return inner(model, tokens, labels)


def image_losses(logits: torch.Tensor, tokens: torch.Tensor, from_token: int = 0) -> torch.Tensor:
    """Per-image mean token cross-entropy ``[B]`` (nats/token) over the predictions of tokens ``from_token`` on."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), reduction="none")
    return ce.view(tokens.shape)[:, from_token:].mean(1)


def mean_attribution(model: IARModel, records: Sequence[ImageRecord], *, layer: str = "fc1", batch_size: int = 8,
                     from_token: int = 0, workers: int = 2, progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """Per layer ``[S, H]`` float64: the mean over ``records`` of the first-order loss change ``D_u,s(x)``."""
    points = model.hook_points(layer)
    groups = model.position_groups()
    views = _CanonicalViews(model.arch, model.image_size)
    sums: dict[str, torch.Tensor] = {}
    with _capture_with_grad(points, groups) as cap:
        for b, e, x in _prefetched(records, _chunks(0, len(records), batch_size), views, 1, workers, False):
            labels = torch.tensor([r.label for r in records[b:e]], dtype=torch.long, device=model.device)
            tokens = model.encode(x[:, 0].to(model.device))
            cap.begin()
            loss = image_losses(teacher_forced_with_grad(model, tokens, labels), tokens, from_token).sum()
            values = cap.end()
            names = list(values)
            grads = torch.autograd.grad(loss, [values[n] for n in names])
            for n, g in zip(names, grads):
                part = cap.reduce_grad(n, values[n], g).sum(0)
                sums[n] = part if n not in sums else sums[n].add_(part)
            if progress is not None:
                progress(e, len(records))
    return {n: v.div_(len(records)) for n, v in sums.items()}


@contextlib.contextmanager
def _capture_with_grad(points, groups) -> Iterator[_GradCapture]:
    """Attach the gradient-keeping hooks for the ``with`` block; always removed afterwards."""
    cap = _GradCapture(points, groups)
    cap.attach()
    try:
        yield cap
    finally:
        cap.detach()


@dataclass
class AttributionResult:
    """What :func:`attribute` or :func:`random_scores` produced."""

    scores: ScoreSet
    output: Path | None
    method: str
    forget: int = 0
    retain: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def attribution_scores(model: IARModel, forget: Sequence[ImageRecord], retain: Sequence[ImageRecord], *,
                       digest: str | None = None, batch_size: int = 8, from_token: int = 0, workers: int = 2,
                       progress: ProgressFn | None = None) -> ScoreSet:
    """The attribution :class:`ScoreSet` of a loaded model (forget/retain already checked).

    ``from_token``: the loss counts only the predictions of tokens ``from_token`` on (e.g. what an attack with
    that prefix generates; 0 = every token).
    """
    if not 0 <= from_token < model.seq_len:
        raise MempruneError(f"--from-token {from_token} must be in [0, {model.seq_len - 1}] (0 = every token)")
    check_labels(list(forget) + list(retain), model.num_classes)
    t = time.perf_counter()
    on = (lambda name: (lambda d, n: progress(name, d, n))) if progress else (lambda name: None)
    f = mean_attribution(model, forget, batch_size=batch_size, from_token=from_token, workers=workers,
                         progress=on("forget"))
    r = mean_attribution(model, retain, batch_size=batch_size, from_token=from_token, workers=workers,
                         progress=on("retain"))
    scores = {n: (f[n] - r[n]).float() for n in f}
    groups = [g.name for g in model.position_groups()]
    info = {"method": "attribution", "normalisation": NORMALISATION, "aggregate": "sum", "layers": ["fc1"],
            "from_token": from_token, "view": "the attack's canonical view", "groups": groups,
            "forget": ImageList(list(forget), "").describe(), "retain": ImageList(list(retain), "").describe(),
            "seconds": round(time.perf_counter() - t, 3)}
    return ScoreSet(scores=scores, groups=groups, checkpoint_sha256=digest, arch=model.arch, image_independent=[],
                    info=info)


def random_score_set(model: IARModel, seed: int, *, digest: str | None = None) -> ScoreSet:
    """A seeded uniform score per unit, repeated over the groups (so any aggregate ranks the same)."""
    shapes = _layer_shapes(model, ["fc1"])
    gen = torch.Generator().manual_seed(int(seed))
    scores = {n: torch.rand(h, generator=gen).expand(s, h).contiguous() for n, (s, h) in shapes.items()}
    groups = [g.name for g in model.position_groups()]
    info = {"method": "random", "seed": int(seed), "aggregate": "sum", "layers": ["fc1"], "groups": groups}
    return ScoreSet(scores=scores, groups=groups, checkpoint_sha256=digest, arch=model.arch, image_independent=[],
                    info=info)


def attribute(
    checkpoint: str | os.PathLike | IARModel,
    forget: str | os.PathLike | Sequence[ImageRecord] | None = None,
    retain: str | os.PathLike | Sequence[ImageRecord] | None = None,
    *,
    method: str = "attribution",
    tokenizer: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    class_index: str | os.PathLike | None = None,
    seed: int = 0,
    from_token: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    arch: str | None = None,
    workers: int = 2,
    checkpoint_digest: str | None = None,
    progress: ProgressFn | None = None,
) -> AttributionResult:
    """Localize with ``method`` and (optionally) write the score file.

    Args:
        checkpoint: checkpoint path or a built :class:`IARModel`.
        forget, retain: image lists (folder, ``path,label`` CSV, an audit's candidates.csv or results.csv) or
            records; required for ``attribution``, ignored for ``random``.
        method: ``attribution`` or ``random``.
        data: the training data; when given, every forget image must be in it.
        seed: the random method's seed.
        from_token: attribution's loss counts predictions of tokens ``from_token`` on (0 = all).

    Raises:
        NothingToForget: the forget set is empty (the CLI says so and exits 0).
        MempruneError: bad options or inputs (overlapping sets, forget images outside ``data``, ...).
    """
    if method not in METHODS:
        raise MempruneError(f"--method {method!r} is unknown: choose one of {', '.join(METHODS)}")
    if batch_size < 1:
        raise MempruneError(f"--batch-size {batch_size} must be at least 1")
    out = Path(output) if output is not None else None
    if out is not None:  # the one output guard: suffix, special files, and never over a model or image list
        from memprune.io import check_output, checkpoint_files

        models = [] if isinstance(checkpoint, IARModel) else [*checkpoint_files(checkpoint), *checkpoint_files(tokenizer)]
        check_output(out, [*models, forget, retain, data, class_index], suffix=".safetensors", what="score output")
    f_recs = r_recs = None
    if method == "attribution":
        if forget is None or retain is None:
            raise MempruneError("attribution needs --forget and --retain image lists (or use --method random)")
        f_recs = _records(forget, class_index)
        r_recs = _records(retain, class_index)
        check_sets(f_recs, r_recs, load_records(data, class_index).records if data is not None else None)
    t = time.perf_counter()
    model, digest = load_model(checkpoint, tokenizer, device=resolve_device(device), dtype="float32", arch=arch,
                               digest=checkpoint_digest)
    if method == "random":
        scores = random_score_set(model, seed, digest=digest)
    else:
        scores = attribution_scores(model, f_recs, r_recs, digest=digest, batch_size=batch_size,  # type: ignore[arg-type]
                                    from_token=from_token, workers=workers, progress=progress)
    if out is not None:
        save_scores(scores, out)
    return AttributionResult(scores, out, method, len(f_recs or []), len(r_recs or []), time.perf_counter() - t,
                             scores.info)


def _records(spec: str | os.PathLike | Sequence[ImageRecord], class_index) -> list[ImageRecord]:
    if isinstance(spec, (str, os.PathLike)):
        return read_image_list(spec, class_index).records
    return list(spec)
