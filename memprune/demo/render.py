"""Plain-text rendering of a :class:`~memprune.demo.run.DemoResult`: the before/after rows and a summary line.

The CLI turns the rows into a rich table; tests and notebooks can use them as they are.
"""

from __future__ import annotations

import math

from memprune.demo.run import DemoResult, ModelFigures


def _ratio(k: int, n: int) -> str:
    return f"{k}/{n}" if n else "-"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table_rows(result: DemoResult) -> list[tuple[str, str, str]]:
    """``(measure, original, patched)`` rows of the before/after table."""
    o, p = result.models["original"], result.models["patched"]

    def row(label: str, fn) -> tuple[str, str, str]:
        return label, fn(o), fn(p)

    rows = [
        row("extracted: duplicated images", lambda m: _ratio(m.extracted_duplicated, m.duplicated)),
        row("extracted: images seen once", lambda m: _ratio(m.extracted_single, m.singles)),
        row("extracted: all audited", lambda m: _ratio(m.extracted, m.candidates)),
        row("mean SSCD cosine, duplicated", lambda m: _num(m.mean_similarity_duplicated)),
        row("mean SSCD cosine, seen once", lambda m: _num(m.mean_similarity_single)),
        row("held-out NLL (nats/token, lower = better)", lambda m: _num(m.heldout_nll)),
    ]
    if any(m.fid is not None for m in result.models.values()):
        rows.append(row("FID vs training images (lower = better)", lambda m: _num(m.fid, 2)))
    rows.append(row("quality measure time (s)", lambda m: f"{m.seconds:.1f}"))
    return rows


def summary_lines(result: DemoResult) -> list[str]:
    """What was patched, how long each step took, and the verdict in one sentence."""
    o, p = result.models["original"], result.models["patched"]
    t = result.timings
    s = result.settings
    lines = [
        (f"patched {result.patched_units} of {result.total_units} FFN units (top {s['top']}, fc1 rows x "
         f"{s['factor']}); UnitMem scored on {s['scoring_images']} training images"),
        "time: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()),
        verdict(o, p),
    ]
    return lines + list(result.notes)


def verdict(o: ModelFigures, p: ModelFigures) -> str:
    """One sentence comparing extraction before and after, with the quality cost."""
    if o.extracted == 0:
        return "the original model leaked nothing in this audit, so there was nothing to remove"
    change = p.extracted - o.extracted
    cost = p.heldout_nll - o.heldout_nll
    what = "no change" if change == 0 else f"{abs(change)} {'fewer' if change < 0 else 'more'}"
    return (f"extracted images: {o.extracted} before, {p.extracted} after patching ({what}); "
            f"held-out NLL changed by {cost:+.3f} nats/token")
