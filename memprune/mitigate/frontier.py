"""Rendering a mitigation run: JSON, table rows and the frontier plot (extracted vs quality cost per method)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from memprune.mitigate.run import MitigateResult, Point

COLOURS = {"unitmem": "tab:blue", "attribution": "tab:orange", "random": "tab:gray"}


def to_json(result: MitigateResult) -> dict[str, Any]:
    """The report as plain JSON types (NaN -> null)."""

    def clean(obj: Any) -> Any:
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return obj

    return clean(dataclasses.asdict(result))


def point_rows(result: MitigateResult) -> list[tuple[str, ...]]:
    """One row per sweep point: round, method, share, factor, units, extracted (selection / check), paper, NLL."""
    rows = []
    chosen = result.chosen
    for rnd in result.rounds:
        for p in rnd.points:
            mark = "chosen" if chosen is not None and p == chosen else ("ok" if p.meets_target and p.within_budget else "")
            rows.append((
                str(p.round), p.method, p.share, f"{p.factor:g}", str(p.units),
                f"{p.extracted}/{rnd.forget}", f"{p.extracted_selection}/{rnd.selection_half}",
                f"{p.extracted_check}/{rnd.check_half}", "-" if p.paper_extracted is None else str(p.paper_extracted),
                f"{p.heldout_nll:.4f}", f"{p.nll_increase:+.4f}", mark,
            ))  # fmt: skip
    return rows


POINT_COLUMNS = ("round", "method", "share", "factor", "units", "extracted (forget set)", "selection half",
                 "check half", "paper condition", "held-out NLL", "change", "")


def plot_frontier(result: MitigateResult, path: Path) -> Path | None:
    """Extracted (forget set, any condition) vs held-out NLL increase, one curve per method and round; the
    chosen point circled. ``None`` without matplotlib (the JSON holds the same numbers)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from memprune.io import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    base_nll = result.baseline.get("heldout_nll", 0.0)
    for rnd in result.rounds:
        for method in dict.fromkeys(p.method for p in rnd.points):
            pts = sorted((p for p in rnd.points if p.method == method), key=lambda p: (p.nll_increase, p.extracted))
            style = "-" if rnd.round == 1 else "--"
            ax.plot([p.nll_increase for p in pts], [p.extracted for p in pts], style, marker="o",
                    color=COLOURS.get(method), label=f"{method} (round {rnd.round}, {rnd.forget} in forget set)")
            for p in pts:
                ax.annotate(f"{p.share} x{p.factor:g}", (p.nll_increase, p.extracted), fontsize=6,
                            textcoords="offset points", xytext=(3, 3))
    first = result.rounds[0].forget if result.rounds else result.baseline.get("extracted", 0)
    ax.scatter([0], [first], marker="s", color="black", zorder=3, label="original")
    ax.axhline(result.allowed, color="green", lw=0.8, ls=":", label=f"target ({result.allowed})")
    ax.axvline(result.budget_nll - base_nll, color="red", lw=0.8, ls=":", label="quality budget")
    best = result.chosen or result.closest
    if best is not None:
        ax.scatter([best.nll_increase], [best.extracted], s=200, facecolors="none", edgecolors="black", lw=1.5,
                   zorder=4, label="chosen" if result.chosen else "closest (target not met)")
    ax.set_xlabel("held-out NLL increase (nats/token)")
    ax.set_ylabel("forget-set images extracted (any condition)")
    ax.set_title(f"memprune mitigate: {len(result.conditions)} attack conditions, random units beside each method",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


