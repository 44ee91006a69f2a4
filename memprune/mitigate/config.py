"""The recipe of a ``memprune mitigate`` run: flags and ``--config mitigate.yaml`` share these fields.

A recipe file holds any of the fields of :class:`MitigateConfig` (YAML or JSON, one mapping); flags given on the
command line override it. Unknown keys, unparseable targets and budgets, and a grid without a valid point are
refused with one line before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memprune.errors import MempruneError
from memprune.selection import parse_top

METHODS = ("unitmem", "attribution", "random")
DEFAULT_SHARES = ("10%", "20%", "40%", "60%")
DEFAULT_FACTORS = (0.0,)


@dataclass(frozen=True)
class Target:
    """How many audited images may still be extracted: a count, or a share of those extracted at baseline."""

    text: str
    count: int | None = None
    fraction: float | None = None

    def allowed(self, baseline_extracted: int) -> int:
        if self.count is not None:
            return self.count
        return int(math.floor(self.fraction * baseline_extracted + 1e-9))  # type: ignore[operator]


@dataclass(frozen=True)
class Budget:
    """Largest held-out NLL increase accepted: relative (``1%``) or absolute in nats/token (``0.05``)."""

    text: str
    relative: float | None = None
    absolute: float | None = None

    def limit(self, baseline_nll: float) -> float:
        """The largest held-out NLL (nats/token) within budget."""
        if self.relative is not None:
            return baseline_nll * (1 + self.relative)
        return baseline_nll + self.absolute  # type: ignore[operator]


def parse_target(text: str | int) -> Target:
    raw = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*%", raw)
    if m and float(m.group(1)) <= 100:
        return Target(raw, fraction=float(m.group(1)) / 100)
    if re.fullmatch(r"\d+", raw):
        return Target(raw, count=int(raw))
    raise MempruneError(f"--target {raw!r} cannot be parsed: give a number of images still allowed to be extracted "
                        "(0) or a share of those extracted before (10%)")


def parse_budget(text: str | float) -> Budget:
    raw = str(text).strip()
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*%", raw)
    if m:
        return Budget(raw, relative=float(m.group(1)) / 100)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise MempruneError(f"--max-quality-loss {raw!r} cannot be parsed: give a held-out NLL increase as a share "
                            "(1%) or in nats/token (0.05)")
    return Budget(raw, absolute=value)


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)):
        return [str(value)]
    return [str(v).strip() for v in value]


@dataclass(frozen=True)
class MitigateConfig:
    """Every setting of a mitigation run (validated once, in :meth:`validated`).

    Attributes:
        target: audited images still allowed to be extracted after mitigation (count or share of baseline).
        max_quality_loss: held-out NLL budget (``1%`` relative or nats/token).
        methods: localization methods to sweep (``unitmem``, ``attribution``, ``random``).
        shares: shares (or counts) of FFN units to scale.
        factors: multipliers of the selected fc1 rows (0 prunes; must be < 1).
        rounds: re-audit and re-select at most this many times.
        seed: split of the forget set, random units, retain sample.
        candidates_per_class: images per class the attack's scan selects for the audit (ignored with ``candidates``).
        retain: training images (not extracted) that attribution contrasts against.
        prefixes, seeds: override the robust audit grid (family units; ``seeds`` of sampled conditions).
        batch_size: images per forward.
    """

    target: str = "0"
    max_quality_loss: str = "1%"
    methods: tuple[str, ...] = METHODS
    shares: tuple[str, ...] = DEFAULT_SHARES
    factors: tuple[float, ...] = DEFAULT_FACTORS
    rounds: int = 2
    seed: int = 0
    candidates_per_class: int = 5
    retain: int = 64
    prefixes: tuple[int, ...] | None = None
    seeds: tuple[int, ...] | None = None
    batch_size: int = 32

    def validated(self) -> MitigateConfig:
        parse_target(self.target)
        parse_budget(self.max_quality_loss)
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise MempruneError(f"--methods {','.join(self.methods)!r}: choose from {', '.join(METHODS)}")
        for s in self.shares:
            parse_top(s)
        for f in self.factors:
            if not (isinstance(f, (int, float)) and math.isfinite(f) and 0 <= f < 1):
                raise MempruneError(f"--factors holds {f}: each factor must be in [0, 1) (0 prunes, 0.5 halves)")
        if not self.shares or not self.factors:
            raise MempruneError("the grid has no valid point: give at least one --shares value and one --factors value")
        if self.rounds < 1:
            raise MempruneError(f"--rounds {self.rounds} must be at least 1")
        if self.candidates_per_class < 1 or self.retain < 1 or self.batch_size < 1:
            raise MempruneError("--candidates-per-class, --retain and --batch-size must be at least 1")
        return self

    @property
    def target_spec(self) -> Target:
        return parse_target(self.target)

    @property
    def budget(self) -> Budget:
        return parse_budget(self.max_quality_loss)

    def grid(self) -> list[tuple[str, str, float]]:
        """The (method, share, factor) points, methods in the order given."""
        return [(m, s, f) for m in self.methods for s in self.shares for f in self.factors]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = tuple(f.name for f in dataclasses.fields(MitigateConfig))


def make_config(values: Mapping[str, Any]) -> MitigateConfig:
    """A validated config from a mapping of field -> value (lists may be comma strings)."""
    unknown = [k for k in values if k.replace("-", "_") not in FIELDS]
    if unknown:
        raise MempruneError(f"unknown recipe key {unknown[0]!r}: the keys are {', '.join(FIELDS)}")
    v = {k.replace("-", "_"): val for k, val in values.items() if val is not None}
    try:
        for key in ("methods", "shares"):
            if key in v:
                v[key] = tuple(_list(v[key]))
        if "factors" in v:
            v["factors"] = tuple(float(x) for x in _list(v["factors"]))
        for key in ("prefixes", "seeds"):
            if key in v:
                v[key] = tuple(int(x) for x in _list(v[key]))
        for key in ("rounds", "seed", "candidates_per_class", "retain", "batch_size"):
            if key in v:
                v[key] = int(v[key])
        for key in ("target", "max_quality_loss"):
            if key in v:
                v[key] = str(v[key])
    except (TypeError, ValueError) as exc:
        raise MempruneError(f"a recipe value cannot be read ({exc}): see `memprune mitigate --help` for the forms") from None
    return MitigateConfig(**v).validated()


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a YAML or JSON recipe file."""
    p = Path(path)
    if not p.is_file():
        raise MempruneError(f"recipe file {p} does not exist: give a YAML file with keys such as target, methods, shares")
    try:
        import yaml
    except ImportError:
        raise MempruneError("reading a recipe file needs PyYAML: pip install pyyaml") from None
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MempruneError(f"recipe file {p} is not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise MempruneError(f"recipe file {p} must hold one mapping of keys to values (e.g. 'target: 0')")
    return dict(data)


def resolve_config(config_file: str | os.PathLike | None, flags: Mapping[str, Any]) -> MitigateConfig:
    """Recipe file values overridden by the flags that were given (``None`` = not given)."""
    values = read_config(config_file) if config_file is not None else {}
    make_config(values)  # unknown keys in the file are named before flags are merged
    values.update({k: v for k, v in flags.items() if v is not None})
    return make_config(values)


def write_recipe(config: MitigateConfig, path: str | os.PathLike) -> None:
    """The recipe as YAML (JSON if PyYAML is missing), so the run can be repeated with ``--config``."""
    from memprune.io import atomic_write

    data = config.to_json()
    data = {k: (list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v) for k, v in data.items()}
    try:
        import yaml

        text = yaml.safe_dump(data, sort_keys=False)
    except ImportError:
        import json

        text = json.dumps(data, indent=2) + "\n"
    with atomic_write(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
