"""Plain-text rendering of a :class:`~memprune.demo.run.DemoResult`: the comparison rows and a summary.

The CLI turns the rows into a rich table; tests and notebooks can use them as they are.
"""

from __future__ import annotations

import math

from memprune.demo.run import DemoResult, ModelFigures

TITLES = {"original": "original", "patched": "paper's recipe", "mitigated": "mitigate's choice",
          "random": "random units (control)"}


def _ratio(k: int | None, n: int) -> str:
    return f"{k}/{n}" if n and k is not None else "-"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def columns(result: DemoResult) -> list[str]:
    """Model names in display order (original, paper's recipe, mitigate's choice, random control)."""
    return [m for m in TITLES if m in result.models]


def table_rows(result: DemoResult) -> list[tuple[str, ...]]:
    """``(measure, value per model...)`` rows; the header is ``["measure", *TITLES[m] for m in columns]``."""
    names = columns(result)
    ms = [result.models[n] for n in names]
    robust = result.robust

    def row(label: str, fn) -> tuple[str, ...]:
        return (label, *(fn(n, m) for n, m in zip(names, ms)))

    rows = []
    if robust is not None:
        rows.append(row(f"multi-condition audit ({len(robust.conditions)} conditions): duplicated extracted",
                        lambda n, m: _ratio(robust.extracted.get(n), len_dups(result))))
        rows.append(row("  of them: selection half / check half",
                        lambda n, m: f"{robust.selection.get(n, '-')}/{robust.selection_half} | "
                                     f"{robust.check.get(n, '-')}/{robust.check_half}"))
    rows += [
        row("paper's audit (prefix 4 scales, greedy): duplicated extracted",
            lambda n, m: _ratio(m.extracted_duplicated, m.duplicated)),
        row("paper's audit: images seen once extracted", lambda n, m: _ratio(m.extracted_single, m.singles)),
        row("mean SSCD cosine, duplicated (paper's audit)", lambda n, m: _num(m.mean_similarity_duplicated)),
        row("held-out NLL (nats/token, lower = better)", lambda n, m: _num(m.heldout_nll)),
        row("FFN units scaled", lambda n, m: str(_units(result, n))),
    ]
    if any(m.fid is not None for m in ms):
        rows.append(row("FID vs training images (lower = better)", lambda n, m: _num(m.fid, 2)))
    return rows


def len_dups(result: DemoResult) -> int:
    """Duplicated images in the multi-condition audit (all of them)."""
    return int(result.settings.get("duplicated_total", 32))


def _units(result: DemoResult, name: str) -> int:
    if name == "original":
        return 0
    if name == "patched":
        return result.patched_units
    return result.robust.units if result.robust is not None else 0


def summary_lines(result: DemoResult) -> list[str]:
    """What was patched, how long each step took, and the verdict."""
    s, t = result.settings, result.timings
    lines = [
        (f"paper's recipe: UnitMem top {s['top']} of {result.total_units} FFN units, fc1 rows x {s['factor']}; "
         f"UnitMem scored on {s['scoring_images']} training images{_subset(s)}"),
    ]
    if result.robust is not None:
        r = result.robust
        lines.append(f"mitigate's choice: attribution on the selection half ({r.selection_half} of the {r.forget} images "
                     f"the multi-condition audit extracted), top {s['mitigate_share']} ({r.units} units) x "
                     f"{s['mitigate_factor']}; random control: {r.units} random units")
        lines.append("multi-condition audit: " + ", ".join(r.conditions) + f" (paper's condition: {r.paper_condition})")
    lines += ["time: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()),
              verdict(result.models["original"], result.models["patched"])]
    if "mitigated" in result.models:
        lines.append(verdict(result.models["original"], result.models["mitigated"], "mitigate's choice"))
    return lines + list(result.notes)


def _subset(s: dict) -> str:
    """Which duplicated images a class-balanced scoring subset happens to hold (the paper's 1% of ImageNet holds
    only some of the memorized images too)."""
    frac = s.get("score_fraction")
    if frac is None or frac >= 1:
        return ""
    held = s.get("scoring_duplicated", [])
    names = f": {', '.join(held)}" if held else ""
    return (f" (a class-balanced {100 * frac:g}% subset, seed {s['seed']}; it holds {len(held)} of the "
            f"{s.get('duplicated_total', '?')} duplicated images{names})")


def verdict(o: ModelFigures, p: ModelFigures, what: str = "the paper's recipe") -> str:
    """One sentence comparing extraction (paper's audit) before and after, with the quality cost."""
    if o.extracted == 0:
        return "the original model leaked nothing in this audit, so there was nothing to remove"
    change = p.extracted - o.extracted
    cost = p.heldout_nll - o.heldout_nll
    how = "no change" if change == 0 else f"{abs(change)} {'fewer' if change < 0 else 'more'}"
    return (f"{what}: {o.extracted} extracted before, {p.extracted} after under the paper's audit ({how}); "
            f"held-out NLL changed by {cost:+.3f} nats/token")
