"""``memprune mitigate``: reach a privacy target under a multi-condition audit at the lowest quality cost.

Example:
    >>> from memprune.mitigate import MitigateConfig, mitigate
    >>> r = mitigate("var.pth", tokenizer="vae.pth", data="train.csv", heldout="heldout.csv", output="out",
    ...              config=MitigateConfig(target="3", max_quality_loss="1%"))
    >>> r.status, r.chosen
"""

from memprune.mitigate.config import MitigateConfig, make_config, parse_budget, parse_target, resolve_config
from memprune.mitigate.quality import heldout_nll

__all__ = ["MitigateConfig", "heldout_nll", "make_config", "mitigate", "parse_budget", "parse_target", "resolve_config"]


def __getattr__(name: str):  # the loop imports the audit stack; keep `import memprune.mitigate` light
    if name in ("mitigate", "MitigateResult"):
        from memprune.mitigate import run

        return getattr(run, name)
    raise AttributeError(name)
