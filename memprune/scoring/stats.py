"""Streaming per-unit statistics for UnitMem: exact, mergeable, O(units x groups) memory.

For every layer, position group s and unit u the statistics of the per-image values ``mu_u,s(x)`` are

* ``max``    float32 ``[S, H]``: ``mu_max = max_x mu(x)``;
* ``argmax`` int64   ``[S, H]``: the smallest global image index reaching that maximum (``np.argmax``'s
  first-index rule, whatever the batch order);
* ``sum``    float64 ``[S, H]``: ``sum_x mu(x)`` (float64 so that one pass over 10^5 images stays exact to
  ~1e-12 relative);
* ``ties``   int32   ``[S, H]``: how many *other* images reach exactly the same maximum;

plus one ``count`` of images. All updates stay on the device (no host synchronisation per batch) and are
associative: merging two disjoint parts gives the same numbers as one pass (sums add; the larger max wins,
an equal max keeps the smaller index and adds the ties + 1).

UnitMem (the paper's mean-of-others variant) is then, per entry::

    mu_-max = (sum - max) / (N - 1)
    UnitMem = (mu_max - mu_-max) / (mu_max + mu_-max)        in [0, 1] because mu >= 0

computed in float64. A *dead* entry (``mu_max == 0``: the unit's |activation| was exactly 0 on every image,
0/0) scores 0 and is counted. N = 1 has no "others" and is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from memprune.errors import MempruneError

FIELDS = ("max", "argmax", "sum", "ties")
_DTYPES = {"max": torch.float32, "argmax": torch.int64, "sum": torch.float64, "ties": torch.int32}
NO_IMAGE = -1  # argmax before any image was seen


@dataclass
class Finished:
    """UnitMem scores and their health counts.

    Attributes:
        scores: layer -> float32 ``[S, H]`` UnitMem.
        dead: layer -> number of (group, unit) entries with ``mu_max == 0`` (scored 0).
        tied: layer -> number of entries whose maximum is reached by more than one image.
        count: number of images N.
    """

    scores: dict[str, torch.Tensor]
    dead: dict[str, int]
    tied: dict[str, int]
    count: int


class StreamingStats:
    """Running max / argmax / sum / ties per layer, plus the image count.

    Args:
        shapes: layer -> ``(S, H)``.
        device: where the accumulators live (the model's device).
    """

    def __init__(self, shapes: Mapping[str, tuple[int, int]], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.layers = list(shapes)
        self.tensors: dict[str, dict[str, torch.Tensor]] = {}
        for layer, (s, h) in shapes.items():
            self.tensors[layer] = {
                "max": torch.full((s, h), float("-inf"), dtype=torch.float32, device=self.device),
                "argmax": torch.full((s, h), NO_IMAGE, dtype=torch.int64, device=self.device),
                "sum": torch.zeros((s, h), dtype=torch.float64, device=self.device),
                "ties": torch.zeros((s, h), dtype=torch.int32, device=self.device),
            }
        self.count = torch.zeros((1,), dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------------------------------ update
    @torch.no_grad()
    def update(self, layer: str, values: torch.Tensor, index: torch.Tensor) -> None:
        """Fold per-image values ``[B, S, H]`` (float32) of images with global indices ``index`` ``[B]``.

        Does not touch ``count``: call :meth:`add_images` once per batch (all layers share it).
        """
        t = self.tensors[layer]
        values = values.to(self.device, torch.float32)
        index = index.to(self.device, torch.int64)
        bmax = values.amax(0)
        hit = values == bmax  # [B, S, H]: the images reaching the batch maximum
        # Smallest global index among them (independent of where they sit in the batch).
        big = torch.iinfo(torch.int64).max
        barg = torch.where(hit, index.view(-1, 1, 1), torch.full_like(index.view(-1, 1, 1), big)).amin(0)
        bties = hit.sum(0, dtype=torch.int32) - 1
        self._fold(t, bmax, barg, bties)
        t["sum"] += values.sum(0, dtype=torch.float64)

    def add_images(self, n: int) -> None:
        """Count ``n`` more images."""
        self.count += n

    @staticmethod
    def _fold(t: dict[str, torch.Tensor], bmax: torch.Tensor, barg: torch.Tensor, bties: torch.Tensor) -> None:
        # Strictly larger replaces; an equal maximum keeps the smaller index and pools the ties. A fresh
        # accumulator (-inf) never equals a real value, so its NO_IMAGE index is always replaced.
        greater = bmax > t["max"]
        equal = (bmax == t["max"]) & torch.isfinite(bmax)
        t["argmax"] = torch.where(greater, barg, torch.where(equal, torch.minimum(t["argmax"], barg), t["argmax"]))
        t["ties"] = torch.where(greater, bties, torch.where(equal, t["ties"] + bties + 1, t["ties"]))
        t["max"] = torch.maximum(t["max"], bmax)

    # ------------------------------------------------------------------------------------------ merge
    @torch.no_grad()
    def merge_(self, other: StreamingStats) -> StreamingStats:
        """Fold a disjoint part's statistics into these (in place); returns ``self``."""
        if set(other.layers) != set(self.layers):
            raise MempruneError(f"cannot merge statistics of different layers ({other.layers[:2]} vs {self.layers[:2]})")
        for layer in self.layers:
            mine, theirs = self.tensors[layer], {k: v.to(self.device) for k, v in other.tensors[layer].items()}
            if mine["max"].shape != theirs["max"].shape:
                raise MempruneError(f"cannot merge {layer}: shapes {tuple(mine['max'].shape)} and {tuple(theirs['max'].shape)}")
            self._fold(mine, theirs["max"], theirs["argmax"], theirs["ties"])
            mine["sum"] += theirs["sum"]
        self.count += other.count.to(self.device)
        return self

    # ------------------------------------------------------------------------------------------ (de)serialise
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{"max.<layer>": ..., "argmax.<layer>": ..., "sum.<layer>": ..., "ties.<layer>": ..., "count": [1]}`` on CPU."""
        out = {f"{f}.{layer}": self.tensors[layer][f].detach().cpu() for layer in self.layers for f in FIELDS}
        out["count"] = self.count.detach().cpu()
        return out

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], device: torch.device | str = "cpu") -> StreamingStats:
        """Rebuild from :meth:`state_dict` output (e.g. the ``stats.*`` tensors of a score file).

        Raises:
            MempruneError: missing fields, wrong dtypes or inconsistent shapes.
        """
        if "count" not in state:
            raise MempruneError("score statistics lack 'count': the file was not written by `memprune score`")
        layers = sorted({k.split(".", 1)[1] for k in state if k.startswith("max.")}, key=layer_sort_key)
        if not layers:
            raise MempruneError("score file holds no streaming statistics (stats.max.*): rescore with `memprune score`")
        shapes = {}
        for layer in layers:
            missing = [f for f in FIELDS if f"{f}.{layer}" not in state]
            if missing:
                raise MempruneError(f"statistics of {layer} lack {missing[0]}: the file is incomplete")
            shapes[layer] = tuple(state[f"max.{layer}"].shape)
            if len(shapes[layer]) != 2:
                raise MempruneError(f"statistics max.{layer} have shape {shapes[layer]}, expected [S, H]: the file is damaged")
        count = state["count"]
        if count.numel() != 1 or count.is_floating_point() or count.is_complex() or int(count.reshape(-1)[0]) < 0:
            raise MempruneError(f"statistics 'count' must be one non-negative integer (found {tuple(count.shape)} {count.dtype}): the file is damaged")
        stats = cls(shapes, device)  # type: ignore[arg-type]
        for layer in layers:
            for f in FIELDS:
                value = state[f"{f}.{layer}"]
                if tuple(value.shape) != shapes[layer]:
                    raise MempruneError(f"statistics {f}.{layer} have shape {tuple(value.shape)}, expected {shapes[layer]}")
                stats.tensors[layer][f] = value.to(stats.device, _DTYPES[f]).clone()
        stats.count = state["count"].to(stats.device, torch.int64).reshape(1).clone()
        return stats

    # ------------------------------------------------------------------------------------------ finish
    def finish(self, allow_too_few: bool = False) -> Finished:
        """UnitMem per layer (float32 ``[S, H]``) with dead and tied counts.

        Args:
            allow_too_few: with fewer than 2 images return NaN scores instead of raising (a shard's part,
                which is only meaningful after merging; NaN makes ``patch`` refuse it).

        Raises:
            MempruneError: fewer than 2 images, or non-finite statistics (activations overflowed).
        """
        n = int(self.count.item())
        if n < 2 and allow_too_few:
            nan = {layer: torch.full(self.tensors[layer]["max"].shape, float("nan")) for layer in self.layers}
            return Finished(scores=nan, dead=dict.fromkeys(self.layers, 0), tied=dict.fromkeys(self.layers, 0), count=n)
        if n < 2:
            raise MempruneError(
                f"UnitMem compares each unit's top image with the others, but only {n} image(s) were scored: use at least 2"
            )
        scores, dead, tied = {}, {}, {}
        for layer in self.layers:
            t = self.tensors[layer]
            if not bool(torch.isfinite(t["sum"]).all()) or not bool(torch.isfinite(t["max"]).all()):
                raise MempruneError(
                    f"activations of {layer} overflowed to Inf/NaN: rerun with --dtype float32 (or bfloat16 instead of float16)"
                )
            scores[layer], dead[layer] = unitmem(t["max"], t["sum"], n)
            tied[layer] = int((t["ties"] > 0).sum().item())
        return Finished(scores=scores, dead=dead, tied=tied, count=n)


def unitmem(mu_max: torch.Tensor, total: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """UnitMem from the maximum and the sum of ``n`` non-negative per-image values.

    Returns:
        float32 scores (same shape) and the number of dead entries (``mu_max == 0``, scored 0).
    """
    mx = mu_max.double()
    # Rounding can make sum - max a hair below 0 (or the ratio a hair outside [0, 1]) when all values are
    # equal; the exact value is then 0, so clamp.
    rest = ((total.double() - mx) / (n - 1)).clamp_min(0)
    den = mx + rest
    alive = mx > 0
    score = torch.where(alive, (mx - rest) / torch.where(alive, den, torch.ones_like(den)), torch.zeros_like(den))
    return score.clamp(0, 1).float(), int((~alive).sum().item())


def layer_sort_key(name: str) -> tuple:
    # blocks.10 after blocks.9: compare digit runs as numbers.
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
