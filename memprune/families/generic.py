"""Any other transformer: a spec built from a ``--layers`` regex; its units are the 2-D ``*.weight`` tensors it matches.

The regex is matched against full weight names (``re.fullmatch``); its first group, when it has one, is taken as
the block index. Each match is a Linear whose rows are units; its ``.bias`` is used with ``--bias``. The unit
name is the module path (the weight name without ``.weight``), which is also the module a hook would attach
to, so names agree by construction. There is no known output projection, so only the default row target is
offered, and there is no runnable model: such a spec inspects and patches, it cannot score, audit or measure FID.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from memprune.errors import MempruneError
from memprune.families.spec import FamilySpec, LayerTemplate, UnitLayer

if TYPE_CHECKING:
    from memprune.io import Checkpoint

GENERIC = "generic"
DISPLAY_NAME = "transformer"
SUMMARY = "a transformer matched by a layer regex (--layers)"


def generic_spec(layers: str) -> FamilySpec:
    """The spec of a transformer whose unit layers are the weights matched by ``layers``."""
    if not layers:
        raise MempruneError("--layers needs a REGEX matching the weight names, e.g. 'h\\.(\\d+)\\.mlp\\.c_fc\\.weight'")
    _compile(layers)
    return FamilySpec(
        name=GENERIC,
        display_name=DISPLAY_NAME,
        summary=SUMMARY,
        official_repo=None,
        required_keys=(),
        block_pattern="",
        block_container="",
        units={"fc1": LayerTemplate(name="{i}", hook="{i}")},  # the matched module itself; see regex_unit_layers
        describe_fn=lambda ckpt: {"layers_regex": layers, "depth": len(regex_unit_layers(layers, ckpt, "fc1"))},
        layers_regex=layers,
    )


def _compile(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise MempruneError(f"--layers {text!r} is not a valid regular expression ({exc})") from None


def regex_unit_layers(layers: str, ckpt: Checkpoint, kind: str = "fc1") -> list[UnitLayer]:
    """One unit layer per 2-D ``<module>.weight`` matched by ``layers``, named ``<module>``."""
    if kind != "fc1":
        raise MempruneError("with --layers only the matched layers themselves can be scored and patched (use --layers for the layer type you want)")
    pattern = _compile(layers)
    out = []
    for index, key in enumerate(k for k in ckpt.keys() if pattern.fullmatch(k)):
        if not key.endswith(".weight") or len(ckpt.shape(key)) != 2:
            raise MempruneError(f"--layers matched {key}, which is not a 2-D Linear weight: match only '<module>.weight' names")
        match = pattern.fullmatch(key)
        block = int(match.group(1)) if match and match.groups() and match.group(1) and match.group(1).isdigit() else index
        name = key[: -len(".weight")]
        bias = f"{name}.bias" if f"{name}.bias" in ckpt else None
        out.append(UnitLayer(name, block, "fc1", ckpt.shape(key)[0], (key,), bias, None))
    if not out:
        raise MempruneError(f"--layers {pattern.pattern!r} matched no tensor of {ckpt.path} (e.g. {ckpt.keys()[0]})")
    return out
