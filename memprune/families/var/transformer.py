"""The VAR transformer (next-scale prediction), state-dict compatible with ``var_d16.pth`` ... ``var_d36.pth``.

Differences from the official ``VAR`` class, all deliberate:

* no label dropout: the official forward replaces labels by the null class with probability 0.1 even in eval
  mode; here the caller passes the labels it wants (the null class is ``num_classes``);
* no fused MLP / flash / xformers paths, no drop path (inference only);
* the VQVAE is not held here (:class:`memprune.families.var.model.VARModel` holds both);
* the head (AdaLN before head + linear) always runs in float32, outside autocast.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from memprune.families.var.blocks import AdaLNBeforeHead, AdaLNSelfAttn, SharedAdaLin

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass(frozen=True)
class VARConfig:
    """Shape facts of a VAR transformer (all inferable from its state dict).

    Attributes:
        depth: number of blocks.
        width: embedding width ``C`` (64 * depth in the releases).
        num_heads: attention heads (``C / 64`` in the releases).
        mlp_hidden: FFN hidden units per block (rows of ``fc1.weight``; ``4 C`` in the releases).
        vocab_size: codebook size ``V`` (logit width).
        cvae: code width of the tokenizer (``word_embed`` input).
        num_classes: real classes; the null class used for guidance is index ``num_classes``.
        patch_nums: side of the token map at each scale.
        shared_aln: shared AdaLN (VAR-d36).
        attn_l2_norm: l2-normalised attention (every release).
        norm_eps: LayerNorm epsilon (not stored in checkpoints; 1e-6 in every release).
    """

    depth: int = 16
    width: int = 1024
    num_heads: int = 16
    mlp_hidden: int = 4096
    vocab_size: int = 4096
    cvae: int = 32
    num_classes: int = 1000
    patch_nums: tuple[int, ...] = field(default=PATCH_NUMS_256)
    shared_aln: bool = False
    attn_l2_norm: bool = True
    norm_eps: float = 1e-6

    @property
    def seq_len(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def begin_ends(self) -> list[tuple[int, int]]:
        """Half-open token ranges of each scale in the flat sequence."""
        out, cur = [], 0
        for pn in self.patch_nums:
            out.append((cur, cur + pn * pn))
            cur += pn * pn
        return out

    @classmethod
    def release(cls, depth: int) -> VARConfig:
        """The configuration of an official release (depth 16, 20, 24, 30 at 256 px; 36 at 512 px)."""
        if depth == 36:
            return cls(depth=36, width=2304, num_heads=36, mlp_hidden=9216, patch_nums=PATCH_NUMS_512,
                       shared_aln=True)
        return cls(depth=depth, width=64 * depth, num_heads=depth, mlp_hidden=256 * depth)


def _scale_index(patch_nums: tuple[int, ...]) -> torch.Tensor:
    return torch.cat([torch.full((pn * pn,), s) for s, pn in enumerate(patch_nums)])


class VARTransformer(nn.Module):
    """Class-conditional next-scale transformer; parameter names are those of the official checkpoints."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.config = cfg
        c, length = cfg.width, cfg.seq_len
        self.first_l = cfg.patch_nums[0] ** 2
        self.begin_ends = cfg.begin_ends
        # Registration order reproduces the official state-dict order (own params, own buffers, children).
        self.word_embed = nn.Linear(cfg.cvae, c)
        self.class_emb = nn.Embedding(cfg.num_classes + 1, c)
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, c))
        self.pos_1LC = nn.Parameter(torch.zeros(1, length, c))
        self.lvl_embed = nn.Embedding(len(cfg.patch_nums), c)
        self.shared_ada_lin: nn.Module = (
            nn.Sequential(nn.SiLU(), SharedAdaLin(c, 6 * c)) if cfg.shared_aln else nn.Identity()
        )
        self.blocks = nn.ModuleList(
            AdaLNSelfAttn(c, cfg.num_heads, cfg.mlp_hidden, cfg.attn_l2_norm, cfg.shared_aln, cfg.norm_eps)
            for _ in range(cfg.depth)
        )
        level = _scale_index(cfg.patch_nums)
        self.register_buffer("lvl_1L", level.view(1, length).contiguous())
        # Block-causal mask: query at scale a sees key at scale b iff b <= a (bidirectional within a scale).
        mask = torch.where(level.view(length, 1) >= level.view(1, length), 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", mask.reshape(1, 1, length, length).contiguous())
        self.head_nm = AdaLNBeforeHead(c, cfg.norm_eps)
        self.head = nn.Linear(c, cfg.vocab_size)

    # ----------------------------------------------------------------------------------------- embeddings
    def class_cond(self, labels: torch.Tensor) -> torch.Tensor:
        """Class embeddings ``[B, C]`` (label ``num_classes`` is the null class)."""
        return self.class_emb(labels)

    def lvl_pos(self) -> torch.Tensor:
        """Scale embedding + absolute position embedding of every position, ``[1, L, C]``."""
        return self.lvl_embed(self.lvl_1L) + self.pos_1LC

    def start_tokens(self, cond: torch.Tensor) -> torch.Tensor:
        """Input rows of scale 0: ``cond + pos_start + lvl_pos``, ``[B, first_l, C]``."""
        b = cond.shape[0]
        sos = cond.unsqueeze(1).expand(b, self.first_l, -1) + self.pos_start.expand(b, self.first_l, -1)
        return sos + self.lvl_pos()[:, : self.first_l]

    def embed_sequence(self, cond: torch.Tensor, x_blcv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """The teacher-forced block input ``[B, L, C]`` from the class cond and the VQ input rows."""
        b = cond.shape[0]
        sos = cond.unsqueeze(1).expand(b, self.first_l, -1) + self.pos_start.expand(b, self.first_l, -1)
        x = torch.cat((sos, self.word_embed(x_blcv_wo_first_l.float())), dim=1)
        return x + (self.lvl_embed(self.lvl_1L.expand(b, -1)) + self.pos_1LC)

    # ---------------------------------------------------------------------------------------- blocks/head
    def run_blocks(self, x: torch.Tensor, cond: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        """All blocks on ``x`` ``[B, N, C]``. Under autocast the residual stream runs in the autocast dtype."""
        cond_blocks = self.shared_ada_lin(cond)
        if torch.is_autocast_enabled(x.device.type):
            amp = torch.get_autocast_dtype(x.device.type)
            x, cond_blocks = x.to(amp), cond_blocks.to(amp)
            attn_bias = None if attn_bias is None else attn_bias.to(amp)
        for block in self.blocks:
            x = block(x, cond_blocks, attn_bias)
        return x

    def logits(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Float32 logits ``[B, N, V]`` from the last block's output (computed outside autocast)."""
        with torch.autocast(h.device.type, enabled=False):
            return self.head(self.head_nm(h.float(), cond.float())).float()

    def forward(self, labels: torch.Tensor, x_blcv_wo_first_l: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``[B, L, V]``; row p predicts token p. No label dropout is applied.

        Args:
            labels: ``[B]`` int64 class indices (``num_classes`` = null class).
            x_blcv_wo_first_l: ``[B, L - first_l, Cvae]`` from the quantizer's teacher-forcing input.
        """
        with torch.autocast(labels.device.type, enabled=False):
            cond = self.class_cond(labels)
            x = self.embed_sequence(cond, x_blcv_wo_first_l)
        h = self.run_blocks(x, cond, self.attn_bias_for_masking)
        return self.logits(h, cond)

    @contextlib.contextmanager
    def kv_cache(self, start: list[list[torch.Tensor]] | None = None) -> Iterator[None]:
        """Enable per-block key/value caching for stepwise generation; caches are dropped on exit.

        ``start`` (a :meth:`cache_state`) continues from cached rows instead of an empty cache. Caches grow by
        concatenation into new tensors, so the tensors of ``start`` are shared, never written.
        """
        for k, block in enumerate(self.blocks):
            block.attn.set_kv_cache(True, None if start is None else start[k])
        try:
            yield
        finally:
            for block in self.blocks:
                block.attn.set_kv_cache(False)

    def cache_state(self) -> list[list[torch.Tensor]]:
        """Every block's cached ``[k, v]`` (inside :meth:`kv_cache`), to start another :meth:`kv_cache` from."""
        return [list(block.attn.cached()) for block in self.blocks]

    # ------------------------------------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5, init_head: float = 0.02,
                     generator: torch.Generator | None = None) -> None:
        """The official random initialisation (``VAR.init_weights`` with ``init_std=-1``).

        Truncated normal with std ``sqrt(1 / (3 C))`` for every Linear/Embedding/position table, zero biases;
        the head is scaled by ``init_head``, attention/FFN output projections by ``1 / sqrt(2 depth)``, AdaLN
        gammas by ``init_adaln_gamma`` and the other AdaLN rows by ``init_adaln``.
        """
        std = math.sqrt(1 / self.config.width / 3)

        def trunc(t: torch.Tensor) -> None:
            nn.init.trunc_normal_(t, std=std, a=-2.0, b=2.0, generator=generator)

        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                trunc(module.weight)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        for param in (self.pos_start, self.pos_1LC):
            trunc(param)
        self.head.weight.mul_(init_head)
        self.head_nm.ada_lin[-1].weight.mul_(init_adaln)
        c, depth = self.config.width, self.config.depth
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * depth))
            if block.shared_aln:
                block.ada_gss[:, :, 2:].mul_(init_adaln)
                block.ada_gss[:, :, :2].mul_(init_adaln_gamma)
            else:
                block.ada_lin[-1].weight[2 * c:].mul_(init_adaln)
                block.ada_lin[-1].weight[: 2 * c].mul_(init_adaln_gamma)
