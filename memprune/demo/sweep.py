"""The sweep that chose the demo's default ``top`` and ``factor`` (its numbers are in ``docs/demo.md``).

Run once with::

    python -c "from memprune.demo.sweep import main; main()"

Every setting is a full :func:`memprune.demo.run.run_demo` (scoring, patching, audit, held-out NLL) with the
same seed, so rows differ only by the patch.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memprune.demo.run import DEFAULT_SINGLES, run_demo

TOPS = ("10%", "20%", "30%")
FACTORS = (0.0, 0.5)


def sweep_demo(tops: Sequence[str] = TOPS, factors: Sequence[float] = FACTORS, *, seed: int = 0,
               singles: int | None = DEFAULT_SINGLES, **kwargs: Any) -> list[dict[str, Any]]:
    """One row per (top, factor): extraction counts and held-out NLL of the original and patched model."""
    rows = []
    for top in tops:
        for factor in factors:
            with tempfile.TemporaryDirectory(prefix="memprune_sweep_") as tmp:
                r = run_demo(Path(tmp), top=top, factor=factor, seed=seed, singles=singles, mitigate=False, **kwargs)
            o, p = r.models["original"], r.models["patched"]
            rows.append({
                "top": top, "factor": factor, "units": r.patched_units,
                "dup_before": o.extracted_duplicated, "dup_after": p.extracted_duplicated, "duplicated": o.duplicated,
                "single_before": o.extracted_single, "single_after": p.extracted_single, "singles": o.singles,
                "nll_before": round(o.heldout_nll, 4), "nll_after": round(p.heldout_nll, 4),
                "seconds": round(r.timings["total"], 1),
            })  # fmt: skip
    return rows


def main() -> None:
    """Print the sweep as JSON lines (one per setting)."""
    for row in sweep_demo():
        print(json.dumps(row), flush=True)
