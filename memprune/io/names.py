"""Tensor names as memprune sees them: wrapper prefixes (``module.``, ``_orig_mod.``) removed, without collisions.

A checkpoint saved from a DDP-wrapped and an unwrapped model at once can hold both ``x`` and ``module.x``;
stripping the prefix would silently keep one of the two, so such a checkpoint is refused instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from memprune.errors import MempruneError

KEY_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(key: str) -> str:
    """``module._orig_mod.blocks.0.w`` -> ``blocks.0.w`` (any order, any repetition of the known prefixes)."""
    changed = True
    while changed:
        changed = False
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def stripped_names(keys: Iterable[str], where: str | os.PathLike, taken: Iterable[str] = ()) -> dict[str, str]:
    """Map each stripped name to its original key, in the given order.

    Args:
        keys: the names as stored in the file.
        where: the file, for the message.
        taken: stripped names already used (earlier shards of the same checkpoint).

    Raises:
        MempruneError: two stored names become the same name (``x`` and ``module.x``).
    """
    seen = {name: name for name in taken}
    out: dict[str, str] = {}
    for key in keys:
        name = strip_prefixes(key)
        if name in seen or name in out:
            other = out.get(name, seen.get(name))
            raise MempruneError(
                f"{where} holds both {other!r} and {key!r}, which are the same tensor {name!r} once the "
                f"{'/'.join(KEY_PREFIXES)} prefixes are removed: keep one of them (re-save the state dict of the unwrapped model)"
            )
        out[name] = key
    return out
