"""Former name of the family registry; kept so that ``memprune.adapters`` imports keep working.

Use :mod:`memprune.families`: ``detect_family`` returns the :class:`~memprune.families.spec.FamilySpec` that
``detect_adapter`` returns here.
"""

import sys

from memprune.families import spec as _spec
from memprune.families.spec import UNIT_KINDS, UnitLayer
from memprune.families.spec import FamilySpec as Adapter
from memprune.families.spec import detect_family as detect_adapter
from memprune.families.spec import get_family as get_adapter
from memprune.families.spec import known_families as known_adapters

__all__ = ["UNIT_KINDS", "Adapter", "UnitLayer", "detect_adapter", "get_adapter", "known_adapters"]

sys.modules[f"{__name__}.base"] = _spec  # `from memprune.adapters.base import UnitLayer` keeps working
