"""A tiny class-conditional model implementing :class:`IARModel` (a test double for the scoring engine).

Like VAR it has a start row that sees only the class (row 0, group ``g0``, image-independent) and image rows
(group ``g1`` = rows 1..4). Tokens come from 4x4 average pooling of the 8x8 image, so different crops give
different activations. Small enough that a forward takes well under a millisecond.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from memprune.families.base import IARModel, PositionGroup
from tests.families.fake_family import register_fake_family


class _Block(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, width)
        self.bypass = False  # True imitates a fused MLP kernel that never calls the `act` module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.fc1(x), approximate="tanh") if self.bypass else self.act(self.fc1(x))
        return x + self.fc2(h)


# A fake model declares its family like a real one (raster prefixes and views).
register_fake_family("tiny", like="var", prefix_unit="tokens", paper_prefix=30, robust_prefixes=(16, 30, 64),
                     ranked_predictions=99)


class TinyIAR(IARModel):
    arch = "tiny"

    def __init__(self, seed: int = 0, depth: int = 2, width: int = 8, hidden: int = 16, num_classes: int = 4) -> None:
        super().__init__()
        self.image_size, self.num_classes, self.vocab_size, self.seq_len = 8, num_classes, 16, 4
        g = torch.Generator().manual_seed(seed)
        self.class_emb = nn.Embedding(num_classes, width)
        self.tok_emb = nn.Embedding(self.vocab_size, width)
        self.pos = nn.Parameter(torch.zeros(1, 5, width))
        self.blocks = nn.ModuleList(_Block(width, hidden) for _ in range(depth))
        self.head = nn.Linear(width, self.vocab_size)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
        self.eval()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(images, 4).mean(1).flatten(1)  # [B, 4] in [0, 1]
        return (pooled * (self.vocab_size - 1)).round().long()

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        grid = (tokens.float() / (self.vocab_size - 1)).view(-1, 1, 2, 2)
        return F.interpolate(grid, scale_factor=4).expand(-1, 3, -1, -1)

    def teacher_forced(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cond = self.class_emb(labels).unsqueeze(1)  # [B, 1, C]
        x = torch.cat([cond, self.tok_emb(tokens) + cond], dim=1) + self.pos  # row 0 depends only on the label
        for blk in self.blocks:
            x = blk(x)
        return self.head(x[:, :-1])

    def generate(self, labels, **kwargs):  # not used by scoring
        raise NotImplementedError

    def hook_points(self, layer: str = "fc1") -> dict[str, nn.Module]:
        if layer == "fc1":
            return {f"blocks.{i}.ffn.fc1": b.act for i, b in enumerate(self.blocks)}
        if layer == "fc2":
            return {f"blocks.{i}.ffn.fc2": b.fc2 for i, b in enumerate(self.blocks)}
        raise ValueError(layer)

    def position_groups(self) -> list[PositionGroup]:
        return [PositionGroup("g0", 0, 1), PositionGroup("g1", 1, 5)]

    def image_independent_groups(self) -> list[str]:
        return ["g0"]


# ------------------------------------------------------------------------------------------------ test support
def make_image_folder(root, per_class=(3, 2, 4), size=(12, 10), seed=0):
    """Class folders c0, c1, ... of random RGB PNGs (sizes vary slightly so crops differ)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for c, n in enumerate(per_class):
        folder = root / f"c{c}"
        folder.mkdir(exist_ok=True)
        for i in range(n):
            w, h = size[0] + i % 3, size[1] + (i * 2) % 3
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return root


def direct_unitmem(model, records, views, augs, layer="fc1"):
    """UnitMem computed the obvious way: one image at a time, full activations kept, numpy formula.

    Returns ``(scores, argmax)`` dicts of ``[S, H]`` arrays.
    """
    import numpy as np

    acts = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: acts.__setitem__(n, o.detach().clone()))
               for n, m in model.hook_points(layer).items()]
    per_image = {n: [] for n in model.hook_points(layer)}
    try:
        with torch.no_grad():
            for r in records:
                x = views.load(r, augs)
                sums = {n: 0.0 for n in per_image}
                for a in range(augs):
                    model.teacher_forced(model.encode(x[a : a + 1]), torch.tensor([r.label]))
                    for n in per_image:
                        full = acts[n][0].double().abs().numpy()  # [T, H]
                        sums[n] = sums[n] + np.stack([full[g.begin : g.end].mean(0) for g in model.position_groups()])
                for n in per_image:
                    per_image[n].append(sums[n] / augs)
    finally:
        for h in handles:
            h.remove()
    scores, argmax = {}, {}
    for n, rows in per_image.items():
        v = np.stack(rows)  # [N, S, H]
        mx, arg = v.max(0), v.argmax(0)
        keep = np.ones(v.shape, dtype=bool)
        np.put_along_axis(keep, arg[None], False, axis=0)  # drop x_k, average the rest
        others = np.where(keep, v, 0.0).sum(0) / (len(rows) - 1)
        scores[n] = np.where(mx > 0, (mx - others) / np.where(mx > 0, mx + others, 1), 0.0)
        argmax[n] = arg
    return scores, argmax


def distributed_worker(rank: int, world: int, port: int, folder: str, output: str, kwargs: dict) -> None:
    """One torchrun-like rank: the environment torchrun would set, then the ordinary ``score`` call."""
    import os

    from memprune.scoring import score

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = score(TinyIAR(seed=0), folder, output=output, **kwargs)
    assert (result.output is not None) == (rank == 0)
    assert result.world_size == world
