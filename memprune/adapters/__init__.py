"""Architecture adapters: detection from state-dict keys and the location of FFN units."""

from memprune.adapters import generic, llamagen, rar, var  # noqa: F401  (registration side effects)
from memprune.adapters.base import (
    UNIT_KINDS,
    Adapter,
    UnitLayer,
    detect_adapter,
    get_adapter,
    known_adapters,
    register_adapter,
)

__all__ = [
    "UNIT_KINDS",
    "Adapter",
    "UnitLayer",
    "detect_adapter",
    "get_adapter",
    "known_adapters",
    "register_adapter",
]
