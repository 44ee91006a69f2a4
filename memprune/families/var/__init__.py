"""VAR (FoundationVision/VAR): next-scale prediction with the multi-scale VQVAE tokenizer."""

from typing import Any

from memprune.families.var.spec import SPEC

__all__ = ["SPEC", "VARModel", "build_var_model", "load_var"]
_LAZY = {"VARModel", "build_var_model", "load_var"}


def __getattr__(name: str) -> Any:
    # The network code (and torch) loads on first use, so that the registry stays cheap to import.
    if name in _LAZY:
        from memprune.families.var import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
