"""The adapter registry: which architecture a checkpoint is, and where its FFN units live.

An adapter is declarative: from state-dict names and shapes alone it detects its architecture and lists the
*unit layers*: for each transformer block, the module whose output rows are the units memprune scores and
patches, the tensors whose rows (axis 0) carry one unit each, and the output projection whose columns
(axis 1) carry each unit's contribution. Running the network is delegated to ``memprune.models``.
Adding an architecture means adding one module that registers an :class:`Adapter` subclass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from memprune.errors import MempruneError

if TYPE_CHECKING:
    from memprune.io import Checkpoint
    from memprune.models.base import IARModel

UNIT_KINDS = ("fc1", "fc2", "attn.proj")


@dataclass(frozen=True)
class UnitLayer:
    """One layer of units.

    Attributes:
        name: the unit module path, used as score key and hook name (``blocks.3.ffn.fc1``).
        block: transformer block index.
        kind: ``fc1`` (FFN hidden units, post-activation), ``fc2`` or ``attn.proj`` (residual-width outputs).
        width: number of units H.
        rows: tensors whose row j belongs to unit j and is scaled by the default (``fc1``) target.
        bias: the bias whose entry j belongs to unit j (scaled only with ``--bias``), if any.
        out_columns: the output projection whose column j carries unit j (the ``fc2`` target), if any.
    """

    name: str
    block: int
    kind: str
    width: int
    rows: tuple[str, ...]
    bias: str | None = None
    out_columns: str | None = None


@dataclass
class Adapter:
    """Base class of architecture adapters. Subclasses set the class variables and ``_layer``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # Regex over state-dict keys; group 1 is the block index of a block's fc1-like weight.
    block_pattern: ClassVar[str] = ""
    required_keys: ClassVar[tuple[str, ...]] = ()
    runnable: ClassVar[bool] = False
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def detect(cls, keys: set[str]) -> bool:
        """True when every required key is present and at least one block matches."""
        if not all(k in keys for k in cls.required_keys):
            return False
        pattern = re.compile(cls.block_pattern)
        return any(pattern.fullmatch(k) for k in keys)

    def blocks(self, keys: list[str]) -> list[int]:
        pattern = re.compile(self.block_pattern)
        found = {int(m.group(1)) for k in keys if (m := pattern.fullmatch(k))}
        return sorted(found)

    def unit_layers(self, ckpt: Checkpoint, kind: str = "fc1") -> list[UnitLayer]:
        """Every unit layer of ``kind`` in block order, with widths read from the tensor shapes."""
        if kind not in UNIT_KINDS:
            raise MempruneError(f"unknown unit layer type {kind!r}: choose one of {', '.join(UNIT_KINDS)}")
        layers = []
        for block in self.blocks(ckpt.keys()):
            layer = self._layer(ckpt, block, kind)
            missing = [t for t in (*layer.rows, layer.bias, layer.out_columns) if t and t not in ckpt]
            if missing:
                raise MempruneError(f"{self.name} checkpoint lacks {missing[0]}: the file is incomplete")
            layers.append(layer)
        return layers

    def _layer(self, ckpt: Checkpoint, block: int, kind: str) -> UnitLayer:
        raise NotImplementedError

    def describe(self, ckpt: Checkpoint) -> dict[str, Any]:
        """Architecture facts for ``inspect`` (depth, widths, vocabulary...)."""
        return {"depth": len(self.blocks(ckpt.keys()))}

    def load_model(self, checkpoint: Any, tokenizer: Any, **kwargs: Any) -> IARModel:
        """Build the runnable model (network + tokenizer); only runnable adapters implement it."""
        raise MempruneError(
            f"memprune can inspect and patch {self.name} checkpoints but cannot run them yet "
            "(scoring, audit and FID need a runnable architecture: var, rar or llamagen)"
        )


def linear_layer(ckpt: Checkpoint, name: str, block: int, kind: str, out_columns: str | None = None) -> UnitLayer:
    """A unit layer that is a plain Linear: rows of ``name.weight``, optional ``name.bias``."""
    weight = f"{name}.weight"
    if weight not in ckpt:
        raise MempruneError(f"checkpoint lacks {weight}: the file is incomplete or not this architecture")
    bias = f"{name}.bias" if f"{name}.bias" in ckpt else None
    return UnitLayer(name, block, kind, ckpt.shape(weight)[0], (weight,), bias, out_columns)


_REGISTRY: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator adding an adapter to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def known_adapters() -> dict[str, type[Adapter]]:
    return dict(_REGISTRY)


def get_adapter(name: str, **options: Any) -> Adapter:
    try:
        return _REGISTRY[name](options=options)
    except KeyError:
        raise MempruneError(f"unknown architecture {name!r}: choose one of {', '.join(sorted(_REGISTRY))}") from None


def detect_adapter(ckpt: Checkpoint, arch: str | None = None, layers: str | None = None) -> Adapter:
    """Pick the adapter for a checkpoint: explicit ``arch``, ``--layers`` regex (generic), or detection."""
    if layers is not None and arch in (None, "generic"):
        return get_adapter("generic", layers=layers)
    if arch is not None:
        adapter = get_adapter(arch)
        if arch != "generic" and not adapter.detect(set(ckpt.keys())):
            _refuse_non_model(ckpt, set(ckpt.keys()))
            raise MempruneError(f"{ckpt.path} does not look like a {arch} checkpoint (expected keys like {adapter.required_keys[:2]})")
        return adapter
    keys = set(ckpt.keys())
    matches = [cls for name, cls in _REGISTRY.items() if name != "generic" and cls.detect(keys)]
    if len(matches) == 1:
        return matches[0]()
    _refuse_non_model(ckpt, keys)
    sample = ", ".join(sorted(keys)[:4])
    known = ", ".join(sorted(n for n in _REGISTRY if n != "generic"))
    raise MempruneError(
        f"cannot tell the architecture of {ckpt.path} (known: {known}; found keys such as {sample}): "
        "pass --arch, or --layers REGEX for another transformer"
    )


def _refuse_non_model(ckpt: Checkpoint, keys: set[str]) -> None:
    """A tokenizer or score file where a model belongs: say what the file is, not which keys are missing."""
    from memprune.identify import identify_keys, not_a_model_message

    message = not_a_model_message(ckpt.path, identify_keys(keys, getattr(ckpt, "metadata", None)))
    if message:
        raise MempruneError(message)
