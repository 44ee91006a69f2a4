"""``memprune demo``: the whole tool on a bundled tiny VAR that memorized planted duplicates.

Example:
    >>> from memprune.demo import run_demo
    >>> result = run_demo("demo_report")
    >>> result.models["original"].extracted_duplicated, result.models["patched"].extracted_duplicated
"""

from memprune.demo.assets import (
    DemoAssets,
    DemoImage,
    default_assets_dir,
    load_demo_assets,
)
from memprune.demo.render import summary_lines, table_rows, verdict
from memprune.demo.run import (
    DEFAULT_FACTOR,
    DEFAULT_SINGLES,
    DEFAULT_TOP,
    DEMO_THREADS,
    DemoResult,
    ModelFigures,
    heldout_nll,
    run_demo,
)

__all__ = [
    "DEFAULT_FACTOR",
    "DEFAULT_SINGLES",
    "DEFAULT_TOP",
    "DEMO_THREADS",
    "DemoAssets",
    "DemoImage",
    "DemoResult",
    "ModelFigures",
    "default_assets_dir",
    "heldout_nll",
    "load_demo_assets",
    "run_demo",
    "summary_lines",
    "table_rows",
    "verdict",
]
