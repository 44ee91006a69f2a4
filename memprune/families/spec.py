"""The family spec: one frozen declaration of everything memprune needs to know about an architecture family.

A :class:`FamilySpec` is declarative. From state-dict names and shapes alone it detects its family and lists the
*unit layers*: for each transformer block, the module whose output rows are the units memprune scores and
patches, the tensors whose rows (axis 0) carry one unit each, and the output projection whose columns (axis 1)
carry each unit's contribution. The unit name (score key, patched tensor prefix) and the hook module path are
both produced from one :class:`LayerTemplate`, so a score name, a hook name and a patched tensor name agree by
construction. The spec also declares the data views, the published sampling settings, the attack's prefixes,
the card text and how to load the runnable model. Nothing outside :mod:`memprune.families` switches on a family
name: it asks the spec, and a spec that does not declare something makes the caller fail with a clear error
(:meth:`FamilySpec.need`) instead of silently borrowing another family's default.

Adding a family means adding one package ``memprune/families/<name>/`` whose ``spec.py`` registers a spec.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memprune.errors import MempruneError

if TYPE_CHECKING:
    from torch import nn

    from memprune.families.base import IARModel
    from memprune.io import Checkpoint

UNIT_KINDS = ("fc1", "fc2", "attn.proj")
VIEW_RESAMPLES = ("lanczos", "bicubic")


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


@dataclass(frozen=True)
class LayerTemplate:
    """Where one kind of unit layer lives; ``{i}`` is the block index, ``{name}`` the formatted ``name``.

    Attributes:
        name: unit name = score key (``blocks.{i}.ffn.fc1``).
        hook: module path, inside the model's transformer, whose forward output holds the units
            (``blocks.{i}.ffn.act``: post-activation).
        rows: tensors whose rows are the units (the default ``fc1`` patch target).
        bias: the units' bias, used with ``--bias`` when the checkpoint has it.
        out_columns: the output projection whose columns carry the units (``--target fc2``).
    """

    name: str
    hook: str
    rows: tuple[str, ...] = ("{name}.weight",)
    bias: str | None = "{name}.bias"
    out_columns: str | None = None

    def unit_name(self, block: int) -> str:
        return self.name.format(i=block)

    def layer(self, ckpt: Checkpoint, block: int, kind: str) -> UnitLayer:
        name = self.unit_name(block)
        fill = {"i": block, "name": name}
        rows = tuple(r.format(**fill) for r in self.rows)
        missing = [t for t in rows if t not in ckpt]
        if missing:
            raise MempruneError(f"checkpoint lacks {missing[0]}: the file is incomplete or not this architecture")
        bias = self.bias.format(**fill) if self.bias else None
        out = self.out_columns.format(**fill) if self.out_columns else None
        if out is not None and out not in ckpt:
            raise MempruneError(f"checkpoint lacks {out}: the file is incomplete")
        return UnitLayer(name, block, kind, ckpt.shape(rows[0])[0], rows, bias if bias in ckpt else None, out)


@dataclass(frozen=True)
class AuditView:
    """The attack's deterministic view of a training image (the "ground truth" a generation is compared with).

    Attributes:
        method: ``resize_crop`` (shorter side to ``round(scale * size)`` with ``resample``, centre crop, as
            torchvision ``Resize`` + ``CenterCrop``) or ``center_crop_arr`` (ADM's, at ``int(scale * size)``, then
            the centre ``size`` crop: the centre view of a ten-crop).
        scale: the factor on the model's image size before cropping.
        resample: ``lanczos`` or ``bicubic`` (``resize_crop`` only).
    """

    method: str
    scale: float = 1.0
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if self.method not in ("resize_crop", "center_crop_arr") or self.resample not in VIEW_RESAMPLES:
            raise MempruneError(f"unknown audit view {self.method}/{self.resample}")

    def describe(self, size: int) -> str:
        if self.method == "center_crop_arr":
            return f"center_crop_arr({int(self.scale * size)}) + centre crop {size} (the training ten-crop's centre view)"
        return f"shorter side {round(self.scale * size)} ({self.resample.upper()}) + centre crop {size}"


@dataclass(frozen=True)
class PublishedSampling:
    """A family's published FID sampling setting (values in the family's own guidance convention)."""

    cfg: float
    top_k: int = 0
    top_p: float = 0.0
    temperature: float = 1.0
    cfg_pow: float | None = None
    source: str = ""


@dataclass(frozen=True)
class FamilySpec:
    """Everything the rest of memprune needs to know about one family (see the module docstring).

    Optional fields left ``None`` mean "this family does not declare it"; callers go through :meth:`need`, which
    fails with one line naming the family and the missing piece.
    """

    name: str
    display_name: str
    summary: str
    official_repo: str | None
    required_keys: tuple[str, ...]
    block_pattern: str  # regex over state-dict keys; group 1 is the block index
    block_container: str  # module path of the block list inside the model's transformer
    units: Mapping[str, LayerTemplate] = field(default_factory=dict)
    describe_fn: Callable[[Checkpoint], dict[str, Any]] | None = None
    loader: str | None = None  # "module:function" building the runnable model (network + tokenizer)
    load_options: tuple[str, ...] = ()  # extra keyword options the loader accepts (LlamaGen: num_heads)
    tokenizer_name: str | None = None  # what the released models were trained with (for error messages)
    tokenizer_uri: str | None = None  # the official tokenizer file (cards point to it)
    tokenizer_detect: Callable[[set[str]], bool] | None = None
    training_view: str | None = None  # ViewPipeline kind of the training augmentation (memprune.data_views)
    audit_view: AuditView | None = None
    decode_note: str | None = None  # how the audit decodes a generation, for the report
    sampling: Callable[[IARModel], PublishedSampling] | None = None
    guidance: str | None = None  # "weight" (0 = no guidance) or "scale" (1 = no guidance)
    prefix_unit: str | None = None  # "scales" or "tokens"
    paper_prefix: int | None = None  # Kowalczuk et al. 2025, in prefix_unit
    robust_prefixes: tuple[int, ...] | None = None
    prefix_sweep: tuple[int, ...] | None = None  # `audit --sweep` grid
    ranked_predictions: int | str | None = None  # logit rows of the greedy-hit rate: a count, or "last_scale"
    default_target: str = "fc1"  # patch target: rows of the fc1 template (SwiGLU: w3)
    layers_regex: str | None = None  # the generic spec: units are the weights this regex matches

    # ------------------------------------------------------------------------------------------------ detection
    def detect(self, keys: set[str]) -> bool:
        """True when every required key is present and at least one block matches."""
        if self.layers_regex is not None or not all(k in keys for k in self.required_keys):
            return False
        pattern = re.compile(self.block_pattern)
        return any(pattern.fullmatch(k) for k in keys)

    def blocks(self, keys: list[str]) -> list[int]:
        pattern = re.compile(self.block_pattern)
        return sorted({int(m.group(1)) for k in keys if (m := pattern.fullmatch(k))})

    # ----------------------------------------------------------------------------------------------------- units
    def template(self, kind: str) -> LayerTemplate:
        if kind not in UNIT_KINDS:
            raise MempruneError(f"unknown unit layer type {kind!r}: choose one of {', '.join(UNIT_KINDS)}")
        if kind not in self.units:
            raise MempruneError(f"the {self.display_name} family declares no {kind} unit layer")
        return self.units[kind]

    def unit_name(self, kind: str, block: int) -> str:
        return self.template(kind).unit_name(block)

    def unit_layers(self, ckpt: Checkpoint, kind: str = "fc1") -> list[UnitLayer]:
        """Every unit layer of ``kind`` in block order, with widths read from the tensor shapes."""
        if self.layers_regex is not None:
            from memprune.families.generic import regex_unit_layers

            return regex_unit_layers(self.layers_regex, ckpt, kind)
        template = self.template(kind)
        return [template.layer(ckpt, block, kind) for block in self.blocks(ckpt.keys())]

    def hook_points(self, root: nn.Module, kind: str = "fc1") -> dict[str, nn.Module]:
        """Unit name -> the module of ``root`` (the family's transformer) whose output holds the units."""
        if self.layers_regex is not None:  # generic: the matched Linear modules themselves
            pattern = re.compile(self.layers_regex)
            return {n: m for n, m in root.named_modules() if n and pattern.fullmatch(f"{n}.weight")}
        if kind not in UNIT_KINDS:
            raise MempruneError(f"unknown hook layer {kind!r}: use one of {', '.join(UNIT_KINDS)}")
        template = self.template(kind)
        depth = len(root.get_submodule(self.block_container))  # type: ignore[arg-type]
        return {template.unit_name(i): root.get_submodule(template.hook.format(i=i)) for i in range(depth)}

    def describe(self, ckpt: Checkpoint) -> dict[str, Any]:
        """Architecture facts for ``inspect`` (depth, widths, vocabulary...)."""
        if self.describe_fn is None:
            return {"depth": len(self.blocks(ckpt.keys()))}
        return self.describe_fn(ckpt)

    # -------------------------------------------------------------------------------------------------- running
    @property
    def runnable(self) -> bool:
        return self.loader is not None

    def load_model(self, checkpoint: Any, tokenizer: Any, **kwargs: Any) -> IARModel:
        """Build the runnable model (network + tokenizer); options other than ``load_options`` are refused."""
        if self.loader is None:
            raise MempruneError(
                f"memprune can inspect and patch {self.display_name} checkpoints but cannot run them "
                f"(scoring, audit and FID need a runnable family: {', '.join(runnable_families())})"
            )
        extra = set(kwargs) - {"device", "dtype", *self.load_options}
        if extra:
            flag = sorted(extra)[0].replace("_", "-")
            raise MempruneError(f"--{flag} does not apply to {self.display_name} models: leave it out")
        module, function = self.loader.split(":")
        return getattr(importlib.import_module(module), function)(checkpoint, tokenizer, **kwargs)

    def need(self, attribute: str) -> Any:
        """The declared value of ``attribute``; a missing declaration is an error, never another family's default."""
        value = getattr(self, attribute)
        if value is None:
            raise MempruneError(
                f"the {self.display_name} family declares no {attribute.replace('_', ' ')}: "
                f"add it to its spec (memprune/families/{self.name}/spec.py)"
            )
        return value


_REGISTRY: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add a spec to the registry under ``spec.name`` (each family's ``spec.py`` calls this on import)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"family {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def known_families() -> dict[str, FamilySpec]:
    """Every registered family by name (``generic`` is not one: it is built from ``--layers``)."""
    return dict(_REGISTRY)


def runnable_families() -> list[str]:
    return sorted(name for name, spec in _REGISTRY.items() if spec.runnable)


def get_family(name: str) -> FamilySpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MempruneError(f"unknown architecture {name!r}: choose one of {', '.join(sorted(_REGISTRY))}") from None


def family_of(model: Any) -> FamilySpec:
    """The spec of a runnable model (by its ``arch`` attribute)."""
    return get_family(str(getattr(model, "arch", "")))


def detect_family(ckpt: Checkpoint, arch: str | None = None, layers: str | None = None) -> FamilySpec:
    """Pick the spec for a checkpoint: explicit ``arch``, ``--layers`` regex (generic), or detection."""
    if layers is not None and arch in (None, "generic"):
        from memprune.families.generic import generic_spec

        return generic_spec(layers)
    if arch == "generic":
        raise MempruneError("--arch generic needs --layers REGEX matching the weight names, e.g. 'h\\.(\\d+)\\.mlp\\.c_fc\\.weight'")
    keys = set(ckpt.keys())
    if arch is not None:
        spec = get_family(arch)
        if not spec.detect(keys):
            _refuse_non_model(ckpt, keys)
            raise MempruneError(f"{ckpt.path} does not look like a {arch} checkpoint (expected keys like {spec.required_keys[:2]})")
        return spec
    matches = [spec for spec in _REGISTRY.values() if spec.detect(keys)]
    if len(matches) == 1:
        return matches[0]
    _refuse_non_model(ckpt, keys)
    sample = ", ".join(sorted(keys)[:4])
    raise MempruneError(
        f"cannot tell the architecture of {ckpt.path} (known: {', '.join(sorted(_REGISTRY))}; found keys such as "
        f"{sample}): pass --arch, or --layers REGEX for another transformer"
    )


def _refuse_non_model(ckpt: Checkpoint, keys: set[str]) -> None:
    """A tokenizer or score file where a model belongs: say what the file is, not which keys are missing."""
    from memprune.identify import identify_keys, not_a_model_message

    message = not_a_model_message(ckpt.path, identify_keys(keys, getattr(ckpt, "metadata", None)))
    if message:
        raise MempruneError(message)
