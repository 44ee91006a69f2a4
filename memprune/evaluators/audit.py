"""The extraction audit: which training images can a model be made to reproduce from a short prefix?

Method (Kowalczuk et al. 2025, *Privacy Attacks on Image AutoRegressive Models*, minus the bugs of its public
code listed in the reference notes), extended to several attack conditions:

1. **Candidates** (:mod:`memprune.evaluators.audit_candidates`): a given list, or the attack's selection by
   teacher-forced greedy-hit rate, top ``per_class`` per class; with several models, the union of their picks.
2. **Generation**: the ground-truth tokens of a prefix are forced and the rest is decoded under each attack
   condition (:mod:`memprune.evaluators.conditions`): ``paper`` is the single condition of the attack (greedy,
   conditional, VAR 4 scales / raster 30 tokens); ``robust`` (default) adds prefixes and sampling seeds.
3. **Similarity**: SSCD cosine between the generation and the *tokenizer reconstruction* of the training image
   (``decode(encode(x))``, which removes tokenizer error, as the attack does). Extracted = cosine > threshold
   (0.75, strict) under *any* counted condition. The stricter cosine against the training image itself and the
   token agreement on the *generated* positions only are recorded as secondary evidence.

Images enter through the attack's canonical view (no randomness): VAR shorter side ``round(1.125 * res)``
(LANCZOS) + centre crop; RAR and others shorter side ``res`` (BICUBIC) + centre crop; LlamaGen the centre
view of its training ten-crop. LlamaGen's paper condition (30 tokens, greedy, no guidance) is RAR's: the attack
code does not cover LlamaGen.

References are computed once per candidate (:class:`memprune.evaluators.multi_audit.ReferenceSet`) and shared
by every model and condition. Results are appended batch by batch to ``results.jsonl`` (one row per candidate,
model and condition) so an interrupted run resumes where it stopped; the report files are written by
:mod:`memprune.evaluators.audit_report`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from memprune.errors import MempruneError
from memprune.evaluators.audit_candidates import (  # noqa: F401 - re-exported: the audit's public names
    Candidate,
    Progress,
    canonical_view,
    candidates_from_records,
    check_unique,
    greedy_hit_rates,
    load_views,
    ranked_positions,
    read_candidates,
    scan_hit_rates,
    scan_models,
    select_candidates,
    select_top_per_class,
    write_candidates,
)
from memprune.evaluators import audit_units as U
from memprune.evaluators.audit_report import append_jsonl, read_jsonl
from memprune.evaluators.conditions import (  # noqa: F401 - re-exported
    ATTACKS,
    AttackCondition,
    default_conditions,
    max_prefix,
    paper_prefix,
    prefix_tokens,
    prefix_unit,
)
from memprune.evaluators.multi_audit import ReferenceSet, audit_conditions, model_facts
from memprune.evaluators.sscd import COPY_THRESHOLD, SSCDBackend
from memprune.families import family_of
from memprune.families.base import IARModel

if TYPE_CHECKING:
    from memprune.scoring.distributed import DistInfo

"""The attack's prefix grid (VAR scales 0..4 = 0/1/5/14/30 tokens; raster models the same token counts)."""


@dataclass(frozen=True)
class AuditSettings:
    """Which attack conditions complete the candidates and how they are judged.

    Attributes:
        attack: ``robust`` (a grid of conditions, an image counts if any extracts it) or ``paper`` (one).
        prefix: ``paper``: ground-truth prefix in the family's unit (VAR scales; others tokens); ``None`` = 4 / 30.
        prefixes: ``robust``: override the grid's prefixes (family unit); ``None`` = the family default.
        seeds: ``robust``: seeds of the sampled conditions beside greedy (``()`` = greedy only); ``None`` = 0, 1, 2.
        cfgs: guidance values (``robust``: a list; ``paper``: one); ``None`` = ``(cfg,)``.
        sweep: also run the attack's prefix grid (0/1/5/14/30 tokens), uncounted, with the first condition's decoding.
        threshold: SSCD cosine above which a candidate counts as extracted (strict ``>``), in (0, 1).
        greedy, cfg, top_k, top_p, temperature, seed: ``paper``: its decoding (``greedy=False`` samples).
        batch_size: candidates per batch (sampled conditions are reproducible for a given batch size).
    """

    attack: str = "robust"
    prefix: int | None = None
    prefixes: tuple[int, ...] | None = None
    seeds: tuple[int, ...] | None = None
    cfgs: tuple[float, ...] | None = None
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
        if self.attack not in ATTACKS:
            raise MempruneError(f"--attack {self.attack!r} is not known: choose robust (the release gate) or paper")
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise MempruneError(f"--threshold {self.threshold} is not a usable cosine threshold: give a value in (0, 1) "
                                "(the attack uses 0.75)")
        if self.batch_size < 1:
            raise MempruneError(f"--batch-size {self.batch_size} must be at least 1")
        if self.prefix is not None and self.prefix < 0:
            raise MempruneError(f"--prefix {self.prefix} must be >= 0")
        if self.attack == "robust":
            paper_only = {"--prefix": self.prefix is not None, "--sample": not self.greedy, "--top-k": self.top_k != 0,
                          "--top-p": self.top_p != 0, "--temperature": self.temperature != 1, "--seed": self.seed != 0}
            given = [name for name, on in paper_only.items() if on]
            if given:
                raise MempruneError(f"{given[0]} sets the single condition of --attack paper; "
                                    "with --attack robust use --prefixes, --seeds and --cfg lists")
        elif self.prefixes is not None or self.seeds is not None:
            raise MempruneError("--prefixes and --seeds are lists for --attack robust; "
                                "with --attack paper use --prefix and --seed")
        elif len(self.cfg_list) != 1:
            raise MempruneError("--attack paper is one condition: give one --cfg value (lists are for --attack robust)")
        if len(set(self.cfg_list)) != len(self.cfg_list):
            raise MempruneError(f"--cfg {','.join(f'{c:g}' for c in self.cfg_list)} repeats a value: list each once")
        # Build one condition now so that every decoding option is checked before any model is loaded.
        for cfg in self.cfg_list:
            seed = None if self.greedy else self.seed
            AttackCondition(0, self.greedy, seed, cfg, self.temperature, self.top_k, self.top_p)
        for s in self.seeds or ():
            AttackCondition(0, False, s)

    @property
    def cfg_list(self) -> list[float]:
        return list(self.cfgs) if self.cfgs is not None else [self.cfg]

    def conditions(self, model: IARModel) -> list[AttackCondition]:
        """The counted conditions for ``model``, in the documented order."""
        if self.attack == "paper":
            return default_conditions(model, "paper", None if self.prefix is None else [self.prefix], [self.seed],
                                      self.cfg_list, greedy=self.greedy, temperature=self.temperature,
                                      top_k=self.top_k, top_p=self.top_p)  # fmt: skip
        return default_conditions(model, "robust", self.prefixes, self.seeds, self.cfg_list)

    def sweep_conditions(self, model: IARModel, counted: Sequence[AttackCondition]) -> list[AttackCondition]:
        """Uncounted extra conditions of ``--sweep``: the attack's prefix grid with the first condition's decoding."""
        if not self.sweep:
            return []
        grid = family_of(model).need("prefix_sweep")
        first = counted[0]
        have = {c.key for c in counted}
        extra = [replace(first, prefix=p) for p in grid if p <= max_prefix(model)]
        return [c for c in extra if c.key not in have]

    def to_json(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass(frozen=True)
class CandidateResult:
    """One candidate judged for one model under one condition (one line of ``results.jsonl``)."""

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
    condition: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class BatchImages:
    """Pixels of one batch kept for the extracted-image grid: views, reconstructions, and per model the
    generation with the highest cosine over the counted conditions."""

    views: torch.Tensor
    recons: torch.Tensor
    generations: dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------- the audit
def audit_batch(
    models: Mapping[str, IARModel],
    sscd: SSCDBackend,
    chunk: Sequence[tuple[int, Candidate]],
    settings: AuditSettings,
    conditions: Sequence[AttackCondition],
    extras: Sequence[AttackCondition] = (),
) -> tuple[list[CandidateResult], BatchImages]:
    """Judge one batch for every model under the counted ``conditions`` and the uncounted ``extras``.

    The references (tokens, reconstruction, SSCD embeddings) are computed once for the batch and shared.
    """
    first = next(iter(models.values()))
    refs = ReferenceSet.build(first, [c for _, c in chunk], sscd, batch_size=len(chunk), keep_images=True,
                              start_index=chunk[0][0])
    results: list[CandidateResult] = []
    kept: dict[str, torch.Tensor] = {}
    recon_sim = refs.reconstruction_similarity.tolist()
    for name, model in models.items():
        rates = greedy_hit_rates(model, refs.tokens.to(model.device), refs.labels.to(model.device)).tolist()
        for group, counted in ((conditions, True), (extras, False)):
            if not group:
                continue
            audit = audit_conditions(model, refs, group, sscd, threshold=settings.threshold, batch_size=len(chunk),
                                     keep_images=counted)
            if counted:
                kept[name] = audit.best_images  # type: ignore[assignment]
            for k, cond in enumerate(group):
                n = prefix_tokens(model, cond.prefix)
                for j, (index, cand) in enumerate(chunk):
                    sim, match = float(audit.similarity[j, k]), float(audit.token_match[j, k])
                    results.append(CandidateResult(
                        index, cand.id, str(cand.path), cand.label, name, cond.prefix, n, rates[j], sim,
                        float(audit.similarity_image[j, k]), recon_sim[j], None if math.isnan(match) else match,
                        sim > settings.threshold, counted, cond.key,
                    ))  # fmt: skip
    return results, BatchImages(refs.views, refs.reconstructions, kept)  # type: ignore[arg-type]


def run_audit(
    models: Mapping[str, IARModel],
    sscd: SSCDBackend,
    candidates: Sequence[Candidate],
    settings: AuditSettings,
    out_dir: str | os.PathLike,
    *,
    progress: Progress | None = None,
    on_extracted: Callable[[CandidateResult, BatchImages, int], None] | None = None,
    dist: DistInfo | None = None,
    shard: tuple[int, int] | None = None,
) -> list[CandidateResult]:
    """Audit every candidate with every model; append results to ``out_dir/results.jsonl`` and skip done ones.

    Args:
        models: name -> model (e.g. ``{"baseline": original, "model": patched}``), sharing one tokenizer.
        sscd: the copy-detection backend (see :func:`memprune.evaluators.load_sscd`).
        candidates: what to audit; ``index`` in the results is the position in this list.
        settings: attack, conditions, threshold, batch size.
        out_dir: folder of ``results.jsonl``; rows already there for the same (candidate, model, condition) are kept.
        progress: called as ``progress("audit", done, total)``.
        on_extracted: called per counted result that is an extraction, with the batch's images and the row in it.
        dist: under torch.distributed, the work is shared out over the ranks in units of a batch and a slice of
            its conditions (:mod:`memprune.evaluators.audit_units`: whole batches while there are enough, the last
            round split by conditions), each batch composed as one process composes it, so every row is
            identical; every rank receives all rows, rank 0 alone writes.
        shard: ``(i, n)``: audit only the units of part i of n (every n-th batch from i of the whole candidate
            list in full rounds, condition slices of the last ones; fixed whatever a resumed part has done
            already); ``memprune merge`` combines the parts.

    Returns:
        All results (earlier and new), ordered by candidate, model, prefix, condition.
    """
    if not candidates:
        raise MempruneError("no candidates to audit: check --data / --candidates (the candidate set is empty)")
    if not models:
        raise MempruneError("no model to audit")
    first = next(iter(models.values()))
    check_same_family(models)
    from memprune.data import check_labels

    check_labels(candidates, first.num_classes)  # type: ignore[arg-type]
    conditions = settings.conditions(first)  # validates every prefix before any work
    extras = settings.sweep_conditions(first, conditions)
    check_unique(candidates)
    from memprune.scoring import distributed as D

    info = dist or D.DistInfo()
    log = Path(out_dir) / "results.jsonl"

    def read() -> list[CandidateResult]:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return read_results(log)

    rows = D.on_main(read, info)
    done = {(r.id, r.model, r.condition) for r in rows}
    allc = [*conditions, *extras]
    size = settings.batch_size
    indexed = list(enumerate(candidates))
    batches = [indexed[b : b + size] for b in range(0, len(indexed), size)]
    # The shard's units (whole batches, or condition slices of a last, incomplete round) do not depend on what is
    # done; a unit with any row missing runs again whole (rows already on disk are not written twice).
    units = U.shard_units(len(batches), len(allc), shard)
    todo = [u for u in units if any((c.id, m, k.key) not in done for _, c in batches[u.batch]
                                    for m in models for k in allc[u.lo : u.hi])]  # fmt: skip
    ranked = U.plan(todo, info.world_size)
    total = sum(len(batches[u.batch]) for u in units)  # a shard owns at most one slice of a batch
    finished = total - sum(len(batches[u.batch]) for u in todo)
    whole = {u.batch: (u.lo, u.hi) == (0, len(allc)) for u in units}

    def judge(j: int) -> tuple[U.Unit, list[CandidateResult], object]:
        unit = ranked[j]
        chunk = batches[unit.batch]
        counted, extra = U.slice_conditions(unit, conditions, extras)
        new, images = audit_batch(models, sscd, chunk, settings, counted, extra)
        if (unit.lo, unit.hi) == (0, len(allc)):  # a whole batch: only the pixels of extractions travel
            at = {i: k for k, (i, _) in enumerate(chunk)}
            return unit, new, [(r, U.one_row(images, at[r.index])) for r in new if r.counted and r.extracted]
        return unit, new, U.to_bytes(images)  # a slice: every candidate's best so far (extraction is not known yet)

    for mine, step in D.steps(list(range(len(ranked))), info):
        outs = D.run_step(judge, mine, info)[: len(step)]
        for b in dict.fromkeys(u.batch for u, _, _ in outs):  # batches in plan order; a split batch's slices together
            mine_b = [o for o in outs if o[0].batch == b]
            new = [r for _, part, _ in mine_b for r in part]
            fresh = [r for r in new if (r.id, r.model, r.condition) not in done]
            if info.is_main:
                U.keep_pictures(mine_b, batches[b], new, fresh, whole[b], len(allc), out_dir, on_extracted)
                append_jsonl(log, [r.to_json() for r in fresh])
            rows += fresh
            done.update((r.id, r.model, r.condition) for r in fresh)
            finished += len(batches[b])
            if progress:
                progress("audit", min(finished, total), total)
    return order_results(rows, list(models), [c.key for c in allc])


def order_results(rows: Sequence[CandidateResult], models: Sequence[str], keys: Sequence[str]) -> list[CandidateResult]:
    """Rows ordered by candidate, model (in ``models`` order), prefix and condition (in ``keys`` order)."""
    order = {name: k for k, name in enumerate(models)}
    position = {key: k for k, key in enumerate(keys)}
    return sorted(rows, key=lambda r: (r.index, order.get(r.model, len(order)), r.prefix, position.get(r.condition, -1)))


def read_results(log: str | os.PathLike) -> list[CandidateResult]:
    """The rows of a ``results.jsonl`` (a torn last line is dropped and the file repaired)."""
    names = {f.name for f in fields(CandidateResult)}
    out = []
    for n, row in enumerate(read_jsonl(log, repair=True), start=1):
        if not isinstance(row, dict) or not names >= set(row) or not {"index", "id", "model", "similarity"} <= set(row):
            raise MempruneError(f"{log} line {n} is not an audit result row: delete the file (or the -o folder) to start over")
        try:
            result = CandidateResult(**row)
        except TypeError:
            result = None
        if result is None or not _well_typed(result):
            raise MempruneError(f"{log} line {n} is not an audit result row: delete the file to start over")
        out.append(result)
    return out


def _well_typed(r: CandidateResult) -> bool:
    def number(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return (isinstance(r.index, int) and not isinstance(r.index, bool) and r.index >= 0 and isinstance(r.id, str)
            and isinstance(r.model, str) and isinstance(r.condition, str) and isinstance(r.prefix, int)
            and isinstance(r.extracted, bool) and isinstance(r.counted, bool)
            and all(number(v) for v in (r.hit_rate, r.similarity, r.similarity_image, r.reconstruction_similarity))
            and (r.token_match is None or number(r.token_match)))


def check_same_family(models: Mapping[str, IARModel]) -> None:
    """All audited models must share architecture, sequence, vocabulary, classes and image size."""
    items = list(models.items())
    first_name, first = items[0]
    facts = model_facts(first)
    for name, other in items[1:]:
        diff = [f for f, v in model_facts(other).items() if v != facts[f]]
        if diff:
            f = diff[0]
            raise MempruneError(
                f"the {name} model differs from the {first_name} model in {f} ({getattr(other, f)} vs {facts[f]}): "
                "--baseline must be the checkpoint the audited model was patched from"
            )


# Names kept for callers of the single-condition audit.
def default_prefix(model: IARModel) -> int:
    """The paper's prefix for the family: VAR 4 scales (30 tokens), others 30 tokens."""
    return paper_prefix(model)


def is_scale_model(model: IARModel) -> bool:
    """True for next-scale models (VAR), whose prefixes are counted in scales."""
    return prefix_unit(model) == "scales"
