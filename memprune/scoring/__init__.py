"""UnitMem scoring: streaming statistics, activation hooks, the scoring engine, merging and reports.

Public entry points::

    from memprune.scoring import score, merge_scores, build_report
    result = score("var_d16.pth", "imagenet/train", tokenizer="vae_ch160v4096z32.pth",
                   output="scores.safetensors", fraction="1%", device="cuda")
"""

from memprune.scoring.engine import ScoreResult, score, score_records, select_images
from memprune.scoring.merge import MergeResult, merge_scores
from memprune.scoring.report import Report, build_report, write_report
from memprune.scoring.stats import StreamingStats, unitmem

__all__ = [
    "MergeResult",
    "Report",
    "ScoreResult",
    "StreamingStats",
    "build_report",
    "merge_scores",
    "score",
    "score_records",
    "select_images",
    "unitmem",
    "write_report",
]
