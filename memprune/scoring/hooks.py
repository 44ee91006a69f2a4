"""Forward hooks that reduce unit activations to per-group mean |activation| as they are produced.

The hooked module's output is ``[B, T, H]`` (T block-sequence rows, H units). Inside the hook it is reduced
at once to ``[B, S, H]`` float32, ``mean over the rows of group s of |a|``, so raw activations are never
stored (VAR-d30: 680 x 7680 values per block per image). Under autocast the output is bf16/fp16; the mean
accumulates in float32 (``mean(dtype=float32)``).

Usage::

    with capture_groups(model.hook_points("fc1"), model.position_groups()) as cap:
        cap.begin()
        model.teacher_forced(tokens, labels)
        values = cap.end()        # {"blocks.0.ffn.fc1": [B, S, H], ...}

Hooks are removed in ``finally``; :meth:`GroupCapture.end` fails loudly if a hook did not fire exactly once
(a fused kernel or a skipped block would otherwise silently give wrong scores).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from memprune.errors import MempruneError
from memprune.families.base import PositionGroup


class GroupCapture:
    """Per-forward buffers of group means, filled by forward hooks."""

    def __init__(self, points: Mapping[str, nn.Module], groups: Sequence[PositionGroup]) -> None:
        if not points:
            raise MempruneError("the model exposes no hook points for this layer type: nothing to score")
        if not groups:
            raise MempruneError("the model declares no position groups: nothing to average over")
        self.points = dict(points)
        self.groups = list(groups)
        self.values: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._scratch: dict[tuple, torch.Tensor] = {}

    def _hook(self, name: str):
        def hook(module: nn.Module, args: object, output: object) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            self.calls[name] = self.calls.get(name, 0) + 1
            self.values[name] = self.reduce(name, out)

        return hook

    def reduce(self, name: str, out: object) -> torch.Tensor:
        """``[B, T, H]`` activations -> ``[B, S, H]`` float32 group means of ``|a|``."""
        if not isinstance(out, torch.Tensor) or out.dim() != 3:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MempruneError(f"hook {name} produced {shape}, expected activations [B, rows, units]")
        rows, reach = out.shape[1], max(g.end for g in self.groups)
        if reach > rows:
            raise MempruneError(f"hook {name} saw {rows} rows but the position groups reach row {reach}: "
                                "the model and its position groups disagree")
        mag = self._magnitude(out.detach())
        return torch.stack([mag[:, g.begin : g.end].mean(1, dtype=torch.float32) for g in self.groups], dim=1)

    def _magnitude(self, out: torch.Tensor) -> torch.Tensor:
        """``|out|``; on the CPU written into a scratch buffer reused across hooks and batches.

        A fresh ``[B, T, H]`` tensor per hook call is a large allocation that the CPU allocator maps and the
        kernel zero-fills every time (3-6x the cost of the reduction itself, measured); CUDA's caching
        allocator already reuses memory. The values and the reduction order are the same either way.
        """
        if out.device.type != "cpu" or not out.is_contiguous():
            return out.abs()
        key = (tuple(out.shape), out.dtype)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = torch.empty_like(out)
        return torch.abs(out, out=buf)

    def attach(self) -> None:
        for name, module in self.points.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._scratch.clear()

    def begin(self) -> None:
        """Forget the previous forward's values."""
        self.values = {}
        self.calls = {}

    def end(self) -> dict[str, torch.Tensor]:
        """The values of the forward since :meth:`begin`.

        Raises:
            MempruneError: a hook fired zero or several times.
        """
        silent = [n for n in self.points if self.calls.get(n, 0) == 0]
        if silent:
            raise MempruneError(
                f"hook {silent[0]} did not fire ({len(silent)} of {len(self.points)} silent): the model bypasses "
                "the hooked module (e.g. a fused MLP kernel); build it without fused kernels"
            )
        repeated = [n for n in self.points if self.calls[n] > 1]
        if repeated:
            raise MempruneError(
                f"hook {repeated[0]} fired {self.calls[repeated[0]]} times in one forward: the module is reused, "
                "so its units cannot be attributed to one block"
            )
        return self.values


@contextlib.contextmanager
def capture_groups(points: Mapping[str, nn.Module], groups: Sequence[PositionGroup]) -> Iterator[GroupCapture]:
    """Attach group-mean hooks for the duration of the ``with`` block; always removed afterwards."""
    cap = GroupCapture(points, groups)
    cap.attach()
    try:
        yield cap
    finally:
        cap.detach()
