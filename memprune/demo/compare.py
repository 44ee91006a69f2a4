"""The localization comparison of docs/demo.md on a bundled model: every method, random units beside it, both audits.

For each UnitMem setting of the paper's recipe (top 5/10/20% of units by the paper's max over scales, fc1 rows
x0.5 and x0) the same number of units is also chosen by attribution and by ``draws`` seeded random draws; random
units are also zeroed at larger shares (``random_shares``, 40/60/80%), so that random units are seen at the same
quality cost as the localized ones, not only at the same count; and
every one of these models is measured in memory (:func:`memprune.mitigate.inmemory.applied`: the arithmetic
``memprune patch`` writes) on the same references:

* the paper's audit (one condition: VAR prefix 4 scales, greedy) of all duplicated images and the seen-once sample
  the demo audits;
* the multi-condition audit (the robust grid, union) of the duplicated images, with the forget set's selection
  and check halves counted apart (attribution is computed from the selection half only);
* held-out NLL (nats/token) on the never-trained images.

Run: ``python -m memprune.demo.compare --model rare -o compare_rare`` (writes ``comparison.json`` and
``frontier.png``; prints the table). Nothing is selected by its outcome: the seeds, shares and sample are fixed.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "memprune.demo-comparison/1"
TOPS = ("5%", "10%", "20%")
FACTORS = (0.5, 0.0)
METHODS = ("unitmem", "attribution", "random")
RANDOM_SHARES = ("40%", "60%", "80%")


@dataclass(frozen=True)
class Measured:
    """One model's figures: paper audit (duplicated / seen once), multi-condition audit, held-out NLL."""

    paper_dup: int
    paper_single: int
    robust_dup: int
    robust_selection: int
    robust_check: int
    nll: float


@dataclass(frozen=True)
class MethodPoint:
    """One patched model: ``units`` chosen by ``method`` (``draw``: the random seed) scaled by ``factor``."""

    method: str
    setting: str  # the UnitMem setting whose unit count it shares, e.g. "10% x0.5"
    factor: float
    units: int
    draw: int | None
    figures: Measured


@dataclass
class Comparison:
    """Everything :func:`compare_methods` measured."""

    schema: str
    model: str
    settings: dict[str, Any]
    baseline: Measured
    points: list[MethodPoint] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Comparison:
        """Back from :meth:`to_json` (to re-render a saved comparison)."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} file (schema {data.get('schema')!r})")
        points = [MethodPoint(**{**p, "figures": Measured(**p["figures"])}) for p in data["points"]]
        return cls(SCHEMA, data["model"], data["settings"], Measured(**data["baseline"]), points, data["seconds"])


def compare_methods(model: str = "rare", *, seed: int = 0, tops: Sequence[str] = TOPS,
                    factors: Sequence[float] = FACTORS, draws: int = 3, singles: int = 64,
                    random_shares: Sequence[str] = RANDOM_SHARES,
                    fraction: float | None = None, batch_size: int = 32, sscd: Any = None,
                    prefixes: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
                    say: Callable[[str], None] | None = None) -> Comparison:
    """Measure every method at the paper's settings on the bundled ``model`` (see the module doc).

    ``prefixes``/``seeds`` shrink the robust grid (tests); ``fraction`` overrides the model's UnitMem subset.
    """
    from memprune.demo.assets import load_demo_assets
    from memprune.demo.run import _default_sscd, pick_candidates, scoring_images
    from memprune.demo.sscd_cache import CachedSSCD
    from memprune.evaluators.audit_candidates import Candidate
    from memprune.evaluators.conditions import default_conditions, paper_prefix, prefix_tokens
    from memprune.evaluators.multi_audit import ReferenceSet, audit_conditions
    from memprune.families import detect_family
    from memprune.families.var.model import load_var
    from memprune.io import checkpoint_sha256, open_checkpoint
    from memprune.mitigate.config import MitigateConfig
    from memprune.mitigate.gate import union_audit
    from memprune.mitigate.inmemory import applied, plan_point
    from memprune.mitigate.quality import heldout_nll
    from memprune.mitigate.run import _retain, split_halves
    from memprune.scoring.attribution import attribution_scores, random_score_set
    from memprune.scoring.engine import score

    say = say or (lambda msg: None)
    t0 = time.perf_counter()
    data = load_demo_assets(None, model)
    fraction = data.model.score_fraction if fraction is None else fraction
    original = load_var(data.var_path, data.vae_path)
    digest = checkpoint_sha256(data.var_path)
    with open_checkpoint(data.var_path) as ckpt:
        layers = detect_family(ckpt, None, None).unit_layers(ckpt, "fc1")
    sscd = CachedSSCD(sscd if sscd is not None else _default_sscd())

    scored_on = scoring_images(data, None, fraction, seed)
    say(f"UnitMem on {len(scored_on)} training images")
    unitmem = score(original, [im.record() for im in scored_on], augment=False, batch_size=batch_size, workers=1,
                    checkpoint_digest=digest).scores
    cands = pick_candidates(data, singles, None, seed)
    dup_rows = [k for k, c in enumerate(cands) if c.role == "duplicated"]
    say(f"references of {len(cands)} candidates ({len(dup_rows)} duplicated)")
    refs = ReferenceSet.build(original, [Candidate(c.path, c.label, c.id) for c in cands], sscd,
                              batch_size=batch_size)
    dup_refs = refs.subset(dup_rows)
    dup_ids = set(dup_refs.ids)
    paper = default_conditions(original, "paper")
    robust = default_conditions(original, "robust", prefixes, seeds)
    paper_key = next((c.key for c in robust if c.greedy and c.prefix == paper_prefix(original)), None)
    held = [im.record() for im in data.role("heldout")]
    halves: tuple[list[str], list[str]] = ([], [])

    def measure() -> Measured:
        hits = audit_conditions(original, refs, paper, sscd, batch_size=batch_size).extracted.tolist()
        pd = sum(bool(h) for i, h in zip(refs.ids, hits) if i in dup_ids)
        union = union_audit(original, dup_refs, robust, sscd, batch_size=batch_size, paper_key=paper_key)
        return Measured(pd, sum(bool(h) for h in hits) - pd, union.union_count, union.count(halves[0]),
                        union.count(halves[1]), heldout_nll(original, held, batch_size))

    say("baseline: both audits and held-out NLL of the original")
    first = union_audit(original, dup_refs, robust, sscd, batch_size=batch_size, paper_key=paper_key)
    halves = split_halves(sorted(first.extracted), seed)
    baseline = measure()
    say(f"attribution on the selection half ({len(halves[0])} images)")
    forget = [im.record() for im in data.role("duplicated") if im.id in set(halves[0])]
    train = sorted((im.record() for im in data.training), key=lambda r: (r.label, r.id))
    retain = _retain(train, sorted(first.extracted), MitigateConfig(seed=seed))
    start = min(prefix_tokens(original, c.prefix) for c in robust)
    scores = {"unitmem": unitmem,
              "attribution": attribution_scores(original, forget, retain, digest=digest, batch_size=8,
                                                from_token=start) if forget else None}
    randoms = [random_score_set(original, seed + d, digest=digest) for d in range(draws)]
    settings = {"seed": seed, "tops": list(tops), "factors": list(factors), "random_draws": draws,
                "random_shares": list(random_shares),
                "score_fraction": fraction, "scoring_images": len(scored_on),
                "scoring_duplicated": sorted(im.name for im in scored_on if im.role == "duplicated"),
                "duplicated": len(dup_rows), "singles": len(cands) - len(dup_rows),
                "heldout": len(held), "paper_condition": [c.key for c in paper], "robust_conditions":
                [c.key for c in robust], "forget_set": len(first.extracted), "selection_half": len(halves[0]),
                "check_half": len(halves[1]), "retain": len(retain), "threshold": 0.75,
                "unitmem_aggregate": "max over scales (the paper)", "other_aggregate": "sum over scales"}
    result = Comparison(SCHEMA, model, settings, baseline)
    for top in tops:
        for factor in factors:
            setting = f"{top} x{factor:g}"
            plan = plan_point(unitmem, layers, top, factor)
            n = plan.selection.selected
            runs: list[tuple[str, Any, int | None]] = [("unitmem", plan, None)]
            if scores["attribution"] is not None:
                runs.append(("attribution", plan_point(scores["attribution"], layers, str(n), factor), None))
            runs += [("random", plan_point(r, layers, str(n), factor), seed + d) for d, r in enumerate(randoms)]
            for method, p, draw in runs:
                with applied(original, p.edits):
                    fig = measure()
                result.points.append(MethodPoint(method, setting, factor, p.selection.selected, draw, fig))
                say(f"{setting} {method}{'' if draw is None else f' draw {draw}'}: paper {fig.paper_dup}/"
                    f"{len(dup_rows)} dup, {fig.paper_single} single; robust {fig.robust_dup}; NLL {fig.nll:.4f}")
    for share in random_shares:  # random units at the quality cost of the localized ones
        for d, r in enumerate(randoms):
            p = plan_point(r, layers, share, 0.0)
            with applied(original, p.edits):
                fig = measure()
            result.points.append(MethodPoint("random", f"{share} x0", 0.0, p.selection.selected, seed + d, fig))
            say(f"{share} x0 random draw {seed + d}: paper {fig.paper_dup}/{len(dup_rows)} dup, {fig.paper_single} "
                f"single; robust {fig.robust_dup}; NLL {fig.nll:.4f}")
    result.seconds = time.perf_counter() - t0
    return result


def table(c: Comparison) -> list[str]:
    """The comparison as markdown rows (random: mean of the draws, with their range)."""
    b = c.baseline
    d, s = c.settings["duplicated"], c.settings["singles"]
    out = [f"| setting | method | units | paper audit: duplicated /{d} | seen once /{s} | multi-condition: "
           f"duplicated /{d} (selection / check half) | held-out NLL (change) |", "|---|---|---|---|---|---|---|",
           f"| original | - | 0 | {b.paper_dup} | {b.paper_single} | {b.robust_dup} ({b.robust_selection} / "
           f"{b.robust_check}) | {b.nll:.4f} |"]
    for setting in dict.fromkeys(p.setting for p in c.points):
        pts = [p for p in c.points if p.setting == setting]
        for method in METHODS:
            mp = [p for p in pts if p.method == method]
            if not mp:
                continue
            out.append(_row(setting, method, mp, b.nll))
    return out


def _row(setting: str, method: str, pts: list[MethodPoint], base_nll: float) -> str:
    def cell(values: list[float], fmt: str) -> str:
        if len(set(values)) == 1:
            return fmt.format(values[0]).removesuffix(".0")
        mean = sum(values) / len(values)
        return f"{fmt.format(mean)} ({fmt.format(min(values))} to {fmt.format(max(values))})"

    f = [p.figures for p in pts]
    ints = "{:.0f}" if len(f) == 1 else "{:.1f}"
    name = method if len(pts) == 1 else f"{method} ({len(pts)} draws: mean (range))"
    return (f"| {setting} | {name} | {pts[0].units} | {cell([x.paper_dup for x in f], ints)} | "
            f"{cell([x.paper_single for x in f], ints)} | {cell([x.robust_dup for x in f], ints)} "
            f"({cell([x.robust_selection for x in f], ints)} / {cell([x.robust_check for x in f], ints)}) | "
            f"{cell([x.nll for x in f], '{:.4f}')} ({cell([x.nll - base_nll for x in f], '{:+.4f}')}) |")


def plot(c: Comparison, path: Path) -> Path | None:
    """Extracted vs held-out NLL increase per method, paper audit and multi-condition audit side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from memprune.io import atomic_write
    from memprune.mitigate.frontier import COLOURS

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120, sharex=True)
    for ax, key, title in ((axes[0], "paper_dup", "paper's audit (1 condition)"),
                           (axes[1], "robust_dup", f"multi-condition audit ({len(c.settings['robust_conditions'])})")):
        ax.scatter([0], [getattr(c.baseline, key)], marker="s", color="black", zorder=3, label="original")
        for method in METHODS:
            pts = [p for p in c.points if p.method == method]
            if not pts:
                continue
            ax.scatter([p.figures.nll - c.baseline.nll for p in pts], [getattr(p.figures, key) for p in pts],
                       color=COLOURS.get(method), alpha=0.6 if method == "random" else 0.9,
                       marker="x" if method == "random" else "o", label=method)
            for p in pts:
                if p.method != "random":
                    ax.annotate(p.setting, (p.figures.nll - c.baseline.nll, getattr(p.figures, key)), fontsize=6,
                                textcoords="offset points", xytext=(3, 3))
        ax.set_ylim(0, c.settings["duplicated"] + 1)  # the whole range: how much is left, not only the change
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("held-out NLL increase (nats/token)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"duplicated images extracted (of {c.settings['duplicated']})")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{c.model} model: UnitMem (paper's recipe) vs attribution vs random units, same unit counts",
                 fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m memprune.demo.compare --model rare -o DIR``."""
    import torch

    p = argparse.ArgumentParser(prog="python -m memprune.demo.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("rare", "dense"), default="rare")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--table", action="store_true", help="only print the table of OUTPUT/comparison.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.table:
        print("\n".join(table(Comparison.from_json(json.loads((args.output / "comparison.json").read_text())))))
        return 0
    torch.set_num_threads(args.threads)
    args.output.mkdir(parents=True, exist_ok=True)
    c = compare_methods(args.model, seed=args.seed, draws=args.draws, say=lambda m: print(m, flush=True))
    from memprune.io import atomic_write

    with atomic_write(args.output / "comparison.json") as tmp:
        Path(tmp).write_text(json.dumps(c.to_json(), indent=1) + "\n")
    plot(c, args.output / "frontier.png")
    print("\n".join(table(c)))
    print(f"{c.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
