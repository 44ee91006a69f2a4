"""Any other transformer: the unit layers are the 2-D ``*.weight`` tensors matched by a ``--layers`` regex.

The regex is matched against full weight names (``re.fullmatch``); its first group, when it has one, is
taken as the block index. Each match is a Linear whose rows are units; its ``.bias`` is used with ``--bias``.
There is no known output projection, so only the default row target is offered.
"""

from __future__ import annotations

import re
from typing import Any

from memprune.adapters.base import Adapter, UnitLayer, linear_layer, register_adapter
from memprune.errors import MempruneError
from memprune.io import Checkpoint


@register_adapter
class GenericAdapter(Adapter):
    name = "generic"
    summary = "any transformer, units = rows of the weights matched by --layers REGEX"

    @classmethod
    def detect(cls, keys: set[str]) -> bool:
        return False  # never auto-detected: the user names the layers

    def _pattern(self) -> re.Pattern[str]:
        text = self.options.get("layers")
        if not text:
            raise MempruneError("the generic adapter needs --layers REGEX matching the weight names, e.g. 'h\\.(\\d+)\\.mlp\\.c_fc\\.weight'")
        try:
            return re.compile(text)
        except re.error as exc:
            raise MempruneError(f"--layers {text!r} is not a valid regular expression ({exc})") from None

    def unit_layers(self, ckpt: Checkpoint, kind: str = "fc1") -> list[UnitLayer]:
        if kind != "fc1":
            raise MempruneError("with --layers only the matched layers themselves can be scored and patched (use --layers for the layer type you want)")
        pattern = self._pattern()
        layers = []
        for index, key in enumerate(k for k in ckpt.keys() if pattern.fullmatch(k)):
            if not key.endswith(".weight") or len(ckpt.shape(key)) != 2:
                raise MempruneError(f"--layers matched {key}, which is not a 2-D Linear weight: match only '<module>.weight' names")
            match = pattern.fullmatch(key)
            block = int(match.group(1)) if match and match.groups() and match.group(1) and match.group(1).isdigit() else index
            layers.append(linear_layer(ckpt, key[: -len(".weight")], block, "fc1"))
        if not layers:
            raise MempruneError(f"--layers {pattern.pattern!r} matched no tensor of {ckpt.path} (e.g. {ckpt.keys()[0]})")
        return layers

    def describe(self, ckpt: Checkpoint) -> dict[str, Any]:
        return {"layers_regex": self.options.get("layers"), "depth": len(self.unit_layers(ckpt))}
