"""RAR (bytedance/1d-tokenizer): randomized autoregressive raster model with the MaskGIT-VQGAN tokenizer."""

from typing import Any

from memprune.families.rar.spec import SPEC

__all__ = ["SPEC", "RARModel", "build_random_rar", "load_rar"]
_LAZY = {"RARModel", "build_random_rar", "load_rar"}


def __getattr__(name: str) -> Any:
    # The network code (and torch) loads on first use, so that the registry stays cheap to import.
    if name in _LAZY:
        from memprune.families.rar import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
