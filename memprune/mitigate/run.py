"""``memprune mitigate``: a closed loop from a multi-condition audit to the cheapest patch that meets a target.

1. **Baseline.** Audit the candidates (a given list, or the attack's top ``candidates_per_class`` per class of the
   training data) under the robust condition grid; measure held-out NLL. The *forget set* is the images
   extracted under any condition; a seeded split makes a selection half and a check half.
2. **Scores** per method: ``unitmem`` over the training data (the paper's recipe), ``attribution`` with the
   selection half as FORGET and a seeded sample of training images never extracted as RETAIN, ``random``.
3. **Sweep** (method, share, factor) in memory (:mod:`memprune.mitigate.inmemory`: rows scaled on the loaded
   model and restored): audit the forget set under every condition and measure held-out NLL.
4. **Choose** the lowest held-out NLL among points leaving at most the target extracted within the budget;
   re-audit every candidate on it. Images extracted again join the forget set; repeat up to ``rounds``.
5. **Write** ``mitigated.safetensors`` through ``memprune.patching.patch`` (atomic, manifest, verified) only when
   the full re-audit meets the target; otherwise nothing is written but the report, and the caller exits 3.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from memprune.data import ImageRecord, balanced_subset, load_records
from memprune.errors import MempruneError
from memprune.mitigate.config import MitigateConfig
from memprune.mitigate.gate import union_audit
from memprune.mitigate.inmemory import applied, plan_point
from memprune.mitigate.quality import heldout_nll
from memprune.scores import ScoreSet
from memprune.scoring.attribution import NothingToForget, attribution_scores, ids_digest, random_score_set

log = logging.getLogger(__name__)
SCHEMA = "memprune.mitigate/1"
Say = Callable[[str], None]


@dataclass
class Point:
    """One (method, share, factor) point of a round's sweep, measured on the forget set and held-out images."""

    round: int
    method: str
    share: str
    factor: float
    units: int
    extracted: int
    extracted_selection: int
    extracted_check: int
    paper_extracted: int | None
    heldout_nll: float
    nll_increase: float
    within_budget: bool
    meets_target: bool


@dataclass
class Round:
    """One round: its forget set (counts and digest only), the sweep, the choice and the full re-audit."""

    round: int
    forget: int
    selection_half: int
    check_half: int
    forget_sha256: str
    points: list[Point]
    chosen: Point | None = None
    reaudit: dict[str, Any] | None = None


@dataclass
class MitigateResult:
    """What :func:`mitigate` measured and wrote (``mitigate.json``; aggregate figures only, no image ids)."""

    schema: str
    status: str
    message: str
    config: dict[str, Any]
    checkpoint_sha256: str
    conditions: list[str]
    baseline: dict[str, Any]
    allowed: int
    budget_nll: float
    rounds: list[Round] = field(default_factory=list)
    chosen: Point | None = None
    closest: Point | None = None
    final: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def achieved(self) -> bool:
        return self.status == "achieved"


def split_halves(ids: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """A seeded split of ``ids`` into a selection half (the larger when odd) and a check half."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    k = (len(order) + 1) // 2
    return sorted(order[:k]), sorted(order[k:])


def _audit_summary(audit: Any) -> dict[str, Any]:
    """Aggregate figures of a union audit (no ids): candidates, extracted under any condition, the paper's count."""
    return {"candidates": len(audit.ids), "extracted": audit.union_count, "paper_extracted": audit.paper_extracted}


def _extracted_ids(audit: Any) -> list[str]:
    return sorted(audit.extracted)


def mitigate(
    checkpoint: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike,
    data: str | os.PathLike | Sequence[ImageRecord],
    heldout: str | os.PathLike | Sequence[ImageRecord],
    output: str | os.PathLike,
    config: MitigateConfig | None = None,
    candidates: Sequence[Any] | None = None,
    class_index: str | os.PathLike | None = None,
    device: str = "cpu",
    sscd: Any = None,
    command: str | None = None,
    progress: Say | None = None,
) -> MitigateResult:
    """Run the loop and write ``output/mitigate.json`` (+ ``mitigated.safetensors`` when the target is met).

    Raises:
        NothingToForget: nothing was extracted at baseline (the result is still written; the CLI exits 0).
        MempruneError: bad inputs or settings (before any model work where possible).
    """
    from memprune.families import detect_family as detect_adapter
    from memprune.evaluators.audit_candidates import candidates_from_records, select_candidates
    from memprune.evaluators.conditions import default_conditions, paper_prefix, prefix_tokens
    from memprune.evaluators.multi_audit import ReferenceSet
    from memprune.io import open_checkpoint
    from memprune.families.loading import load_model, resolve_device

    cfg = (config or MitigateConfig()).validated()
    say = progress or (lambda msg: log.info(msg))
    out = _prepare_output(output, checkpoint)
    train = _records(data, class_index, "--data")
    held = _records(heldout, class_index, "--heldout")
    _check_heldout(train, held)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    model, digest = load_model(checkpoint, tokenizer, device=resolve_device(device), dtype="float32")
    with open_checkpoint(checkpoint) as ckpt:
        layers = detect_adapter(ckpt, None, None).unit_layers(ckpt, "fc1")
    if sscd is None:
        sscd = _default_sscd()
    conds = default_conditions(model, "robust", cfg.prefixes, cfg.seeds)
    paper_key = next((c.key for c in conds if c.greedy and c.prefix == paper_prefix(model) and not c.cfg), None)
    bs = cfg.batch_size
    # attribution's loss: what the attack generates after the shortest prefix of the grid
    first_generated = min(prefix_tokens(model, c.prefix) for c in conds)

    t = time.perf_counter()
    if candidates is None:
        say(f"selecting audit candidates: the attack's top {cfg.candidates_per_class} per class of {len(train)} images")
        candidates = select_candidates({"model": model}, candidates_from_records(train), cfg.candidates_per_class,
                                       batch_size=bs)
    _check_candidates(train, candidates)
    say(f"baseline audit: {len(candidates)} candidates x {len(conds)} conditions")
    refs = ReferenceSet.build(model, list(candidates), sscd, batch_size=bs)
    base = union_audit(model, refs, conds, sscd, batch_size=bs, paper_key=paper_key)
    nll0 = heldout_nll(model, held, bs)
    timings["baseline"] = time.perf_counter() - t
    extracted = _extracted_ids(base)
    allowed = cfg.target_spec.allowed(len(extracted))
    result = MitigateResult(
        SCHEMA, "running", "", cfg.to_json(), digest, [c.key for c in conds],
        {**_audit_summary(base), "heldout_nll": nll0, "heldout_images": len(held)},
        allowed, cfg.budget.limit(nll0), timings=timings,
    )  # fmt: skip
    if not extracted or len(extracted) <= allowed:
        result.status = "nothing_to_do"
        result.message = (f"nothing extracted under {len(conds)} conditions from {len(candidates)} candidates: nothing "
                          "to remove" if not extracted else
                          f"{len(extracted)} extracted, already within the target of {allowed}: nothing to remove")
        _finish(result, out, t_all)
        raise NothingToForget(result.message)

    say("scoring units (methods: " + ", ".join(cfg.methods) + ")")
    t = time.perf_counter()
    fixed = _fixed_scores(model, cfg, train, digest, bs)
    timings["scores"] = time.perf_counter() - t
    forget: list[str] = []
    halves: tuple[list[str], list[str]] = ([], [])
    position = {i: k for k, i in enumerate(refs.ids)}
    chosen_scores: ScoreSet | None = None
    for r in range(1, cfg.rounds + 1):
        new = [i for i in extracted if i not in forget]
        sel, chk = split_halves(new, cfg.seed + r - 1)
        halves = (sorted(halves[0] + sel), sorted(halves[1] + chk))
        forget = sorted(forget + new)
        by_id = {c.id: c for c in candidates}
        f_recs = [ImageRecord(Path(by_id[i].path), by_id[i].label, i) for i in forget]
        rnd = Round(r, len(forget), len(halves[0]), len(halves[1]), ids_digest(f_recs), [])
        result.rounds.append(rnd)
        scores = dict(fixed)
        if "attribution" in cfg.methods:
            say(f"round {r}: attribution on {len(halves[0])} selection-half images")
            scores["attribution"] = attribution_scores(
                model, [x for x in f_recs if x.id in set(halves[0])], _retain(train, forget, cfg), digest=digest,
                batch_size=max(1, bs // 4), from_token=first_generated)
        f_refs = refs.subset([position[i] for i in forget])
        t = time.perf_counter()
        for method, share, factor in cfg.grid():
            plan = plan_point(scores[method], layers, share, factor)
            with applied(model, plan.edits):
                audit = union_audit(model, f_refs, conds, sscd, batch_size=bs, paper_key=paper_key)
                nll = heldout_nll(model, held, bs)
            n_ext = audit.union_count
            point = Point(r, method, share, factor, plan.selection.selected, n_ext, audit.count(halves[0]),
                          audit.count(halves[1]), audit.paper_extracted, nll, nll - nll0, nll <= result.budget_nll,
                          n_ext <= allowed)
            rnd.points.append(point)
            say(f"round {r}: {method} {share} x{factor:g}: {n_ext}/{len(forget)} extracted, NLL {nll:.4f}")
        timings[f"sweep_round{r}"] = time.perf_counter() - t
        ok = [p for p in rnd.points if p.meets_target and p.within_budget]
        if not ok:
            break
        rnd.chosen = min(ok, key=lambda p: (p.heldout_nll, p.units))
        plan = plan_point(scores[rnd.chosen.method], layers, rnd.chosen.share, rnd.chosen.factor)
        say(f"round {r}: re-auditing all {len(candidates)} candidates on {rnd.chosen.method} {rnd.chosen.share}")
        with applied(model, plan.edits):
            again = union_audit(model, refs, conds, sscd, batch_size=bs, paper_key=paper_key)
        rnd.reaudit = _audit_summary(again)
        extracted = _extracted_ids(again)
        if len(extracted) <= allowed:
            result.status, result.chosen = "achieved", rnd.chosen
            result.final = {**rnd.reaudit, "heldout_nll": rnd.chosen.heldout_nll}
            chosen_scores = scores[rnd.chosen.method]
            break
        if set(extracted) <= set(forget):
            break  # nothing new joins the forget set: another round would repeat this one
        extracted = sorted(set(extracted) | set(forget))
    if result.achieved:
        _write_model(result, chosen_scores, checkpoint, out, command)  # type: ignore[arg-type]
        result.message = (f"{result.chosen.method} top {result.chosen.share} x{result.chosen.factor:g}: "  # type: ignore[union-attr]
                          f"{result.final['extracted']} of {len(candidates)} candidates extracted under "  # type: ignore[index]
                          f"{len(conds)} conditions (baseline {result.baseline['extracted']}), "
                          f"held-out NLL {nll0:.4f} -> {result.chosen.heldout_nll:.4f}")  # type: ignore[union-attr]
    else:
        result.status = "not_reached"
        result.closest = _closest([p for rd in result.rounds for p in rd.points])
        result.message = _not_reached_message(result)
    _finish(result, out, t_all)
    return result


def _prepare_output(output: str | os.PathLike, checkpoint: str | os.PathLike) -> Path:
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise MempruneError(f"-o {out} is a file: give a folder (it is created if missing)")
    if out.resolve() == Path(checkpoint).resolve().parent and (out / "mitigated.safetensors").resolve() == Path(checkpoint).resolve():
        raise MempruneError(f"-o {out} would overwrite the input checkpoint: choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("mitigated.safetensors", "mitigated.manifest.json"):
        # a model from an earlier run must not sit beside a report that did not produce it
        if (out / stale).exists():
            (out / stale).unlink()
    return out


def _records(spec: Any, class_index: Any, option: str) -> list[ImageRecord]:
    if isinstance(spec, (str, os.PathLike)):
        return load_records(spec, class_index).records
    recs = list(spec)
    if not recs:
        raise MempruneError(f"{option} holds no images")
    return recs


def _check_heldout(train: Sequence[ImageRecord], held: Sequence[ImageRecord]) -> None:
    seen = {Path(r.path).resolve() for r in train}
    both = [r.id for r in held if Path(r.path).resolve() in seen]
    if both:
        raise MempruneError(f"{len(both)} held-out image(s) are also in --data (e.g. {both[0]}): held-out images "
                            "must be images the model never trained on")


def _check_candidates(train: Sequence[ImageRecord], candidates: Sequence[Any]) -> None:
    """Extracted candidates become the forget set, so they must be training images."""
    seen = {Path(r.path).resolve() for r in train}
    outside = [c.id for c in candidates if Path(c.path).resolve() not in seen]
    if outside:
        raise MempruneError(f"{len(outside)} audit candidate(s) are not in the training data given (e.g. {outside[0]}): "
                            "pass the --data the model was trained on, or candidates drawn from it")


def _retain(train: Sequence[ImageRecord], forget: Sequence[str], cfg: MitigateConfig) -> list[ImageRecord]:
    """A seeded, class-balanced sample of training images outside the forget set."""
    gone = set(forget)
    pool = [r for r in train if r.id not in gone]
    if not pool:
        raise MempruneError("every training image was extracted: there is nothing left to retain")
    per_class = max(1, cfg.retain // max(1, len({r.label for r in pool})))
    return balanced_subset(pool, per_class=per_class, seed=cfg.seed)[: cfg.retain]


def _fixed_scores(model: Any, cfg: MitigateConfig, train: Sequence[ImageRecord], digest: str,
                  bs: int) -> dict[str, ScoreSet]:
    """Scores that do not depend on the forget set: UnitMem over the training data, and random units."""
    out: dict[str, ScoreSet] = {}
    if "unitmem" in cfg.methods:
        from memprune.scoring.engine import score

        unit = score(model, list(train), augment=False, batch_size=cfg.batch_size, workers=1,
                     checkpoint_digest=digest).scores
        unit.info["method"] = "unitmem"
        out["unitmem"] = unit
    if "random" in cfg.methods:
        out["random"] = random_score_set(model, cfg.seed, digest=digest)
    return out


def _closest(points: Sequence[Point]) -> Point | None:
    if not points:
        return None
    inside = [p for p in points if p.within_budget]
    return min(inside or points, key=lambda p: (p.extracted, p.heldout_nll))


def _not_reached_message(result: MitigateResult) -> str:
    c = result.closest
    if c is None:
        return "no sweep point was measured"
    where = "within" if c.within_budget else "over"
    last = result.rounds[-1]
    if last.chosen is not None and last.reaudit is not None:
        return (f"round {last.round}'s choice ({last.chosen.method} top {last.chosen.share} x{last.chosen.factor:g}) left "
                f"{last.chosen.extracted} of the forget set extracted, but the re-audit of every candidate found "
                f"{last.reaudit['extracted']} (target {result.allowed}); no model was written")
    return (f"no point met the target ({result.allowed} extracted within held-out NLL {result.budget_nll:.4f}); "
            f"closest: {c.method} top {c.share} x{c.factor:g} in round {c.round}, {c.extracted} extracted, "
            f"NLL {c.heldout_nll:.4f} ({where} budget); no model was written")


def _write_model(result: MitigateResult, scores: ScoreSet, checkpoint: str | os.PathLike, out: Path,
                 command: str | None) -> None:
    from memprune.patching import patch
    from memprune.scores import save_scores

    chosen = result.chosen
    assert chosen is not None
    info = dict(scores.info)
    info["mitigate"] = {
        "schema": SCHEMA, "method": chosen.method, "forget_sha256": result.rounds[-1].forget_sha256,
        "rounds": [{"round": r.round, "forget_images": r.forget, "forget_sha256": r.forget_sha256,
                    "selection": None if r.chosen is None else {"method": r.chosen.method, "share": r.chosen.share,
                                                                 "factor": r.chosen.factor, "units": r.chosen.units}}
                   for r in result.rounds],
        "conditions": result.conditions, "extracted_after": result.final["extracted"],  # type: ignore[index]
    }  # fmt: skip
    info.setdefault("method", chosen.method)
    tagged = replace(scores, info=info)
    score_path = out / f"scores.{chosen.method}.safetensors"
    save_scores(tagged, score_path)
    res = patch(checkpoint, score_path, output=out / "mitigated.safetensors", top=chosen.share, factor=chosen.factor,
                aggregate=str(scores.info.get("aggregate", "max")), command=command)
    result.files += [str(score_path), str(res.output), str(res.manifest_path)]


def _finish(result: MitigateResult, out: Path, t_all: float) -> None:
    from memprune.io import write_json_atomic
    from memprune.mitigate.config import MitigateConfig, write_recipe
    from memprune.mitigate.frontier import plot_frontier, to_json

    result.timings["total"] = time.perf_counter() - t_all
    png = plot_frontier(result, out / "frontier.png")
    if png is not None:
        result.files.append(str(png))
    write_recipe(MitigateConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in result.config.items()}),
                 out / "recipe.yaml")
    result.files += [str(out / "recipe.yaml"), str(out / "mitigate.json")]
    write_json_atomic(out / "mitigate.json", to_json(result))


def _default_sscd() -> Any:
    import torch

    from memprune.evaluators.sscd import OnnxSSCD

    return OnnxSSCD(threads=torch.get_num_threads())
