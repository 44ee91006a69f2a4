"""LlamaGen (FoundationVision/LlamaGen): Llama-style raster model with the VQ-16 tokenizer."""

from typing import Any

from memprune.families.llamagen.spec import SPEC

__all__ = ["SPEC", "LlamaGenModel", "build_random_llamagen", "load_llamagen"]
_LAZY = {"LlamaGenModel", "build_random_llamagen", "load_llamagen"}


def __getattr__(name: str) -> Any:
    # The network code (and torch) loads on first use, so that the registry stays cheap to import.
    if name in _LAZY:
        from memprune.families.llamagen import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
