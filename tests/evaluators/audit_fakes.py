"""Deterministic stand-ins for the multi-condition audit tests: a scripted generator and a pixel "SSCD".

``ScriptedModel`` is an :class:`IARModel` over 8 x 8 grey images (one token per pixel, vocabulary 256). Its
``generate`` reproduces an image exactly when that image's rule says the condition extracts it, and otherwise
continues with the inverted image (cosine -1 under ``PixelSSCD`` apart from the forced prefix). ``PixelSSCD``
embeds the mean-centred pixels, so a reproduced image has cosine 1 with its reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from memprune.evaluators.audit_candidates import Candidate
from memprune.evaluators.multi_audit import SEED_STRIDE
from memprune.evaluators.sscd import SSCDBackend
from memprune.families.base import IARModel, PositionGroup
from tests.families.fake_family import register_fake_family

SIDE = 8
Rule = Callable[[int, bool, int | None], bool]
"""``rule(prefix_tokens, greedy, seed)`` -> does this condition regenerate the image?"""


# A fake model declares its family like a real one (raster prefixes and views).
register_fake_family("scripted", like="rar")


class ScriptedModel(IARModel):
    arch = "scripted"
    image_size = SIDE
    num_classes = 2
    vocab_size = 256
    seq_len = SIDE * SIDE

    def __init__(self, truths: list[torch.Tensor], rules: list[Rule], hit_rates: list[float] | None = None) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.truths, self.rules, self.hit_rates = truths, rules, hit_rates
        self.calls = {"encode": 0, "generate": 0, "teacher_forced": 0}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.calls["encode"] += 1
        return images.mean(dim=1).mul(255).round().clamp(0, 255).long().flatten(1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.float().div(255).view(-1, 1, SIDE, SIDE).expand(-1, 3, -1, -1).contiguous()

    def _which(self, row: torch.Tensor) -> int:
        n = row.shape[0]
        return next(k for k, t in enumerate(self.truths) if torch.equal(t[:n], row))

    def teacher_forced(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # The argmax equals the true token on a share of the ranked rows given by hit_rates.
        self.calls["teacher_forced"] += 1
        out = torch.zeros(tokens.shape[0], self.seq_len, self.vocab_size)
        for i, row in enumerate(tokens):
            rate = self.hit_rates[self._which(row)] if self.hit_rates else 0.0
            right = torch.arange(self.seq_len) < round(rate * self.seq_len)
            out[i, torch.arange(self.seq_len), torch.where(right, row, (row + 1) % 256)] = 1.0
        return out

    def generate(self, labels, *, prefix=None, cfg=0.0, top_k=0, top_p=0.0, temperature=1.0, greedy=False, seed=None):
        self.calls["generate"] += 1
        base = None if seed is None else seed % SEED_STRIDE
        out = []
        for row in prefix:
            n, k = row.shape[0], self._which(row)
            truth = self.truths[k]
            out.append(truth.clone() if self.rules[k](n, greedy, base) else torch.cat([row, 255 - truth[n:]]))
        return torch.stack(out)

    def hook_points(self, layer: str = "fc1"):
        return {}

    def position_groups(self) -> list[PositionGroup]:
        return [PositionGroup("all", 0, self.seq_len)]


class PixelSSCD(SSCDBackend):
    """Mean-centred grey pixels as the descriptor (exact, fast); counts how many images it embedded."""

    backend_id = "pixels"
    device = torch.device("cpu")

    def __init__(self) -> None:
        super().__init__("square320")
        self.embedded = 0

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        self.embedded += batch.shape[0]
        grey = torch.nn.functional.adaptive_avg_pool2d(batch.mean(dim=1, keepdim=True), 16).flatten(1)
        grey = grey - grey.mean(dim=1, keepdim=True)
        # 512-d like SSCD: 256 pooled pixels padded with zeros.
        return torch.nn.functional.pad(grey, (0, 512 - grey.shape[1]))


def make_images(folder, count: int, seed: int = 0) -> tuple[list[Candidate], list[torch.Tensor]]:
    """``count`` random 8 x 8 grey PNGs (labels alternate 0/1) and their exact token sequences."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cands, truths = [], []
    for k in range(count):
        pixels = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
        path = folder / f"img{k}.png"
        Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(path)
        cands.append(Candidate(path, k % 2, f"img{k}.png"))
        truths.append(torch.from_numpy(pixels.astype(np.int64)).flatten())
    return cands, truths
