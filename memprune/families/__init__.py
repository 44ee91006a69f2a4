"""Architecture families: one package per family (``var``, ``rar``, ``llamagen``), each with one registered spec.

``memprune.families.<name>`` holds the family's network, tokenizer and loading code, and ``<name>/spec.py``
registers its :class:`~memprune.families.spec.FamilySpec`. The shared pieces live beside them: ``base``
(the :class:`~memprune.families.base.IARModel` interface), ``spec`` (the spec and registry), ``generic`` (the
``--layers REGEX`` spec), ``common`` (KV cache, sampling and state-dict helpers used by several families) and
``loading`` (the model entry point of every command). Import order: core (errors, io) <- families <- scoring,
patching, evaluators <- cli, demo, push.
"""

from memprune.families.llamagen import spec as _llamagen  # noqa: F401  (registration side effects)
from memprune.families.rar import spec as _rar  # noqa: F401
from memprune.families.var import spec as _var  # noqa: F401
from memprune.families.generic import generic_spec
from memprune.families.spec import (
    UNIT_KINDS,
    AuditView,
    FamilySpec,
    LayerTemplate,
    PublishedSampling,
    UnitLayer,
    detect_family,
    family_of,
    get_family,
    known_families,
    register_family,
    runnable_families,
)

__all__ = [
    "UNIT_KINDS",
    "AuditView",
    "FamilySpec",
    "LayerTemplate",
    "PublishedSampling",
    "UnitLayer",
    "detect_family",
    "family_of",
    "generic_spec",
    "get_family",
    "known_families",
    "register_family",
    "runnable_families",
]
