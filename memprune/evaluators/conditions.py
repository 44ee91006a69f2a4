"""Attack conditions of the extraction audit: how a candidate is completed from its ground-truth prefix.

Two attacks are named:

* ``paper``: the single condition of Kowalczuk et al. 2025 (greedy, conditional, no guidance, VAR 4 scales /
  raster 30 tokens). Use it to compare with published counts.
* ``robust`` (the release gate): an image counts as extracted if *any* of a grid of conditions extracts it. The
  default grid per family is, at each prefix, greedy decoding plus sampled decoding (temperature 1, no top-k /
  top-p) with seeds 0, 1, 2, all without guidance:

  ==============  ==========  ================================================================
  family          prefixes    unit
  ==============  ==========  ================================================================
  VAR             3, 4, 5     scales (14 / 30 / 55 tokens at 256 px; 14 / 30 / 66 on the bundled
                              32 px model)
  raster models   16, 30, 64  tokens; values not shorter than the sequence are dropped (a tiny
                              model keeps what fits, at least one)
  ==============  ==========  ================================================================

  ``prefixes``, ``seeds`` and ``cfgs`` override the grid; ``seeds=[]`` keeps greedy decoding only.

Conditions are kept in one fixed order, which decides the "first condition" that extracted an image: prefix
ascending (the shorter the prefix, the stronger the evidence), then guidance in the order given, then greedy
before sampled, then seed ascending.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from memprune.errors import MempruneError
from memprune.families.base import IARModel

Attack = Literal["robust", "paper"]
ATTACKS: tuple[str, ...] = ("robust", "paper")
ROBUST_SEEDS = (0, 1, 2)
ROBUST_CFGS = (0.0,)


@dataclass(frozen=True)
class AttackCondition:
    """One way of completing a candidate from its ground-truth prefix.

    Attributes:
        prefix: ground-truth prefix in the family's unit (VAR: scales; raster models: tokens).
        greedy: argmax decoding; ``False`` samples with ``seed`` and the filters below.
        seed: seed of sampled decoding (``None`` when greedy).
        cfg: guidance in the family's convention (0 = conditional only).
        temperature, top_k, top_p: sampling filters (ignored when greedy; 0 = off for top-k / top-p).
    """

    prefix: int
    greedy: bool
    seed: int | None
    cfg: float = 0.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0

    def __post_init__(self) -> None:
        if self.prefix < 0:
            raise MempruneError(f"prefix {self.prefix} must be >= 0")
        if not math.isfinite(self.cfg) or self.cfg < 0:
            raise MempruneError(f"--cfg {self.cfg} is not a guidance weight: give a finite value >= 0 (0 = none)")
        if self.greedy and self.seed is not None:
            raise MempruneError("a greedy condition has no seed: pass seed=None")
        if not self.greedy:
            if self.seed is None or self.seed < 0:
                raise MempruneError(f"a sampled condition needs a seed >= 0, got {self.seed}")
            if not math.isfinite(self.temperature) or self.temperature <= 0:
                raise MempruneError(f"--temperature {self.temperature} must be a finite value > 0")
            if self.top_k < 0:
                raise MempruneError(f"--top-k {self.top_k} must be >= 0 (0 = off)")
            if not (math.isfinite(self.top_p) and 0 <= self.top_p <= 1):
                raise MempruneError(f"--top-p {self.top_p} must lie in [0, 1] (0 = off)")

    @property
    def key(self) -> str:
        """Stable name, e.g. ``p4-greedy`` or ``p4-s1`` (``-cfg1.5``, ``-t0.9``, ``-k900``, ``-p0.96`` when set)."""
        parts = [f"p{self.prefix}", "greedy" if self.greedy else f"s{self.seed}"]
        if self.cfg:
            parts.append(f"cfg{self.cfg:g}")
        if not self.greedy:
            if self.temperature != 1.0:
                parts.append(f"t{self.temperature:g}")
            if self.top_k:
                parts.append(f"k{self.top_k}")
            if self.top_p:
                parts.append(f"p{self.top_p:g}")
        return "-".join(parts)

    def sort_key(self, cfg_order: Sequence[float] = ()) -> tuple:
        """Position in the documented order: prefix, guidance (given order), greedy first, seed."""
        cfg_rank = list(cfg_order).index(self.cfg) if self.cfg in cfg_order else len(cfg_order)
        return (self.prefix, cfg_rank, self.cfg, not self.greedy, -1 if self.seed is None else self.seed)

    def to_json(self) -> dict:
        return {"key": self.key, "prefix": self.prefix, "greedy": self.greedy, "seed": self.seed, "cfg": self.cfg,
                "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}


# ---------------------------------------------------------------------------------------------- family facts
def prefix_unit(model: IARModel) -> str:
    """``scales`` for next-scale models (VAR), ``tokens`` for raster models, as the family spec declares it."""
    from memprune.families import family_of

    return str(family_of(model).need("prefix_unit"))


def max_prefix(model: IARModel) -> int:
    """The largest prefix in the family's unit (the whole sequence)."""
    bounds = model.valid_prefix_lengths()
    return len(bounds) - 1 if bounds is not None else model.seq_len


def prefix_tokens(model: IARModel, prefix: int) -> int:
    """Token count of a prefix given in the family's unit (VAR: scales; raster models: tokens)."""
    bounds = model.valid_prefix_lengths()
    if prefix < 0:
        raise MempruneError(f"--prefix {prefix} must be >= 0")
    if bounds is not None:
        if prefix >= len(bounds):
            raise MempruneError(f"--prefix {prefix} scales is more than this model has ({len(bounds) - 1}); "
                                f"give 0..{len(bounds) - 1} (the attack uses 4)")
        return bounds[prefix]
    if prefix > model.seq_len:
        raise MempruneError(f"--prefix {prefix} tokens is longer than the sequence ({model.seq_len}); the attack uses 30")
    return prefix


def paper_prefix(model: IARModel) -> int:
    """The paper's prefix, as the family spec declares it: VAR 4 scales (30 tokens), raster families 30 tokens."""
    from memprune.families import family_of

    return int(family_of(model).need("paper_prefix"))


def robust_prefixes(model: IARModel) -> list[int]:
    """The robust grid's prefixes for ``model``, clipped to what its sequence allows (see the module docstring)."""
    from memprune.families import family_of

    grid = family_of(model).need("robust_prefixes")
    limit = max_prefix(model)
    # A prefix as long as the whole sequence forces the image: it would count every candidate as extracted.
    kept = [p for p in grid if p < limit]
    return kept or [max(0, limit - 1)]


# ---------------------------------------------------------------------------------------------- grids
def default_conditions(
    model: IARModel,
    attack: Attack = "robust",
    prefixes: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    cfgs: Sequence[float] | None = None,
    *,
    greedy: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
) -> list[AttackCondition]:
    """The conditions of an attack on ``model``, in the documented order.

    Args:
        model: gives the family (prefix unit) and the sequence length prefixes are checked against.
        attack: ``robust`` (the grid) or ``paper`` (one condition).
        prefixes: override the prefixes (family unit). ``paper`` takes exactly one.
        seeds: ``robust``: seeds of the sampled conditions beside greedy (``[]`` = greedy only).
            ``paper``: with ``greedy=False``, the one seed to sample with.
        cfgs: guidance values; ``paper`` takes exactly one.
        greedy, temperature, top_k, top_p: ``paper`` only: its decoding (``greedy=False`` samples).

    Raises:
        MempruneError: unknown attack, a prefix the model cannot take, or a paper grid of more than one condition.
    """
    if attack not in ATTACKS:
        raise MempruneError(f"--attack {attack!r} is not known: choose robust (the release gate) or paper")
    cfg_list = list(cfgs) if cfgs is not None else list(ROBUST_CFGS)
    if not cfg_list:
        raise MempruneError("--cfg lists no value: give at least one guidance weight (0 = none)")
    if len(set(cfg_list)) != len(cfg_list):
        raise MempruneError(f"--cfg {','.join(f'{c:g}' for c in cfg_list)} repeats a value: list each once")
    if attack == "paper":
        pre = list(prefixes) if prefixes is not None else [paper_prefix(model)]
        seed_list = list(seeds) if seeds is not None else [0]
        if len(pre) != 1 or len(cfg_list) != 1 or len(seed_list) != 1:
            raise MempruneError("--attack paper is one condition: give one --prefix, one --cfg and one --seed "
                                "(lists are for --attack robust)")
        prefix_tokens(model, pre[0])
        return [AttackCondition(pre[0], greedy, None if greedy else seed_list[0], cfg_list[0],
                                temperature, top_k, top_p)]
    pre = list(prefixes) if prefixes is not None else robust_prefixes(model)
    if not pre:
        raise MempruneError("--prefixes lists no prefix: give at least one (e.g. 3,4,5 scales for VAR)")
    if len(set(pre)) != len(pre):
        raise MempruneError(f"--prefixes {','.join(map(str, pre))} repeats a value: list each once")
    for p in pre:
        prefix_tokens(model, p)
    seed_list = list(seeds) if seeds is not None else list(ROBUST_SEEDS)
    if len(set(seed_list)) != len(seed_list):
        raise MempruneError(f"--seeds {','.join(map(str, seed_list))} repeats a value: list each once")
    out = []
    for p in pre:
        for cfg in cfg_list:
            out.append(AttackCondition(p, True, None, cfg))
            out += [AttackCondition(p, False, s, cfg) for s in seed_list]
    return order_conditions(out, cfg_list)


def order_conditions(conditions: Sequence[AttackCondition], cfg_order: Sequence[float] = ()) -> list[AttackCondition]:
    """``conditions`` in the documented order; raises on duplicates (two conditions with one key)."""
    keys = [c.key for c in conditions]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise MempruneError(f"condition {dup} is listed twice: list each condition once")
    return sorted(conditions, key=lambda c: c.sort_key(cfg_order))


# ---------------------------------------------------------------------------------------------- CLI lists
def parse_int_list(text: str, option: str, *, minimum: int = 0) -> list[int]:
    """``"3,4,5"`` -> ``[3, 4, 5]``; ranges ``"0-2"`` allowed; every value ``>= minimum``."""
    out: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1) if x)
                out += list(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise MempruneError(f"{option} {text!r} is not a list of integers: write e.g. 3,4,5 or 0-2") from None
    bad = [v for v in out if v < minimum]
    if bad:
        raise MempruneError(f"{option} {text!r} holds {bad[0]}: every value must be >= {minimum}")
    return out


def parse_float_list(text: str, option: str) -> list[float]:
    """``"0,1.5"`` -> ``[0.0, 1.5]``; every value finite and ``>= 0``."""
    try:
        out = [float(p) for p in (p.strip() for p in text.split(",")) if p]
    except ValueError:
        raise MempruneError(f"{option} {text!r} is not a list of numbers: write e.g. 0 or 0,1.5") from None
    bad = [v for v in out if not math.isfinite(v) or v < 0]
    if bad:
        raise MempruneError(f"{option} {text!r} holds {bad[0]}: give finite values >= 0 (0 = no guidance)")
    if not out:
        raise MempruneError(f"{option} {text!r} lists no value: give at least one (0 = no guidance)")
    return out
