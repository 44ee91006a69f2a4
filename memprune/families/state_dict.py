"""Reading a model's state dict from what a user passes: a path, an ``hf://`` reference, or a mapping."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from memprune.errors import MempruneError


def read_state_dict(
    source: str | os.PathLike | Mapping[str, torch.Tensor], what: str = "checkpoint", *, member: str | None = None
) -> dict[str, torch.Tensor]:
    """A state dict from a path or ``hf://`` reference (through :mod:`memprune.io`) or a mapping (copied, never modified).

    Missing files, unsafe pickles and Hub references are all handled by ``memprune.io``, so every
    architecture reports them the same way. ``member`` picks one network of a multi-network training
    checkpoint (:func:`memprune.io.open_checkpoint`).
    """
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, (str, os.PathLike)):
        from memprune.io import open_checkpoint  # imported here: the model modules stay importable on their own

        with open_checkpoint(source, member=member) as ckpt:
            return {k: ckpt.get(k) for k in ckpt.keys()}
    raise MempruneError(f"{what} must be a path or a state dict, got {type(source).__name__}")
