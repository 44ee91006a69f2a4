"""The RAR generator network (``bytedance/1d-tokenizer``: ``modeling/rar.py``), our own implementation.

Module and parameter names follow the released ``rar_{b,l,xl,xxl}.bin`` state dicts so they load strictly.
Only raster order is implemented: the released weights finished training with the permutation annealed
to zero, and memprune always evaluates in raster order, so the shuffling machinery of the official class
has no counterpart here.

Block sequence for ``L`` image tokens (``T = L + 2`` rows; teacher forcing uses ``L = n = 256``)::

    row 0      cls_token               + pos_embed[0]
    row 1      E[class id]             + pos_embed[1]   + tape[2]
    row 2 + k  E[token k]              + pos_embed[2+k] + tape[3 + k]   (tape term 0 at row n + 1)

``E`` is the shared embedding table (image tokens 0..V-1, mask V, classes V+1.., null class last) and
``tape = target_aware_pos_embed[0]``: each row also carries the position embedding of the token it predicts.
Every row is modulated (AdaLN) by ``c[p] = E[class id] + timesteps_embeddings[p]``.
Row ``p >= 1`` predicts token ``p - 1``; the head drops row 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memprune.errors import MempruneError
from memprune.families.common import KVCache

_LN_EPS = 1e-6


@dataclass(frozen=True)
class RARConfig:
    """Sizes of a RAR generator (defaults: RAR-B).

    Attributes:
        hidden_size: model width D.
        depth: number of transformer blocks.
        num_heads: attention heads (head_dim = D / heads; 16 for every release).
        mlp_hidden: FFN hidden size F (4·D except RAR-XXL: 6144 for D = 1408).
        codebook_size: image vocabulary V (tokenizer codebook size).
        num_classes: class-conditional classes.
        image_seq_len: image tokens n per image.
    """

    hidden_size: int = 768
    depth: int = 24
    num_heads: int = 16
    mlp_hidden: int = 3072
    codebook_size: int = 1024
    num_classes: int = 1000
    image_seq_len: int = 256

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def class_offset(self) -> int:
        """Embedding row of class 0 (label + V + 1; V is the unused mask token)."""
        return self.codebook_size + 1

    @property
    def null_class_id(self) -> int:
        """Embedding row of the unconditional (CFG) class."""
        return self.codebook_size + 1 + self.num_classes

    @property
    def embedding_rows(self) -> int:
        return self.codebook_size + 1 + self.num_classes + 1

    @property
    def block_seq_len(self) -> int:
        """Rows the blocks see in teacher forcing: cls, class, n image tokens."""
        return self.image_seq_len + 2

    @property
    def pos_rows(self) -> int:
        return self.image_seq_len + 1024  # the official class allocates n + 1024 rows, only n + 2 are used

    @property
    def timestep_rows(self) -> int:
        return self.image_seq_len + 100


#: The released configurations (Hugging Face ``yucornetto/RAR``).
RAR_CONFIGS: dict[str, RARConfig] = {
    "rar_b": RARConfig(768, 24, 16, 3072),
    "rar_l": RARConfig(1024, 24, 16, 4096),
    "rar_xl": RARConfig(1280, 32, 16, 5120),
    "rar_xxl": RARConfig(1408, 40, 16, 6144),
}


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias, per-head LayerNorm on q and k, and a causal mask."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=_LN_EPS)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=_LN_EPS)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, n, d = x.shape
        # [B, N, 3D] -> (q, k, v) each [B, H, N, hd]
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)
        mask = None
        if n > 1:
            # Additive -inf above the (shifted) diagonal, the same mask the official model adds; query row i
            # sits at absolute row past + i and sees keys 0..past + i.
            mask = torch.full((n, past + n), float("-inf"), device=x.device, dtype=q.dtype).triu_(past + 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2; ``act`` is its own module so a hook on it sees the post-GELU units."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # approximate="none": RAR uses the erf GELU (unlike VAR's tanh form)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Block(nn.Module):
    """Pre-LN block with AdaLN: (shift, scale, gate) for attention, then for the MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, mlp_hidden)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_a * self.attn(_modulate(self.norm1(x), shift_a, scale_a), cache, layer)
        return x + gate_m * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """Head AdaLN; note its chunk order is (scale, shift), the reverse of the blocks'."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=_LN_EPS, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.adaLN_modulation(c).chunk(2, dim=-1)
        return _modulate(self.norm_final(x), shift, scale)


class RARTransformer(nn.Module):
    """The RAR generator; parameter names match the official state dict.

    Class ids given to this module are **embedding rows** (label + ``class_offset``, or ``null_class_id``);
    :class:`memprune.families.rar.model.RARModel` takes raw labels and offsets them.
    """

    def __init__(self, cfg: RARConfig):
        super().__init__()
        if cfg.hidden_size % cfg.num_heads:
            raise MempruneError(f"hidden size {cfg.hidden_size} is not divisible by {cfg.num_heads} heads")
        self.config = cfg
        d = cfg.hidden_size
        # Direct parameters first, in the official order, so named_parameters() follows the state-dict order.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_rows, d))
        self.target_aware_pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_rows, d))
        self.timesteps_embeddings = nn.Parameter(torch.zeros(1, cfg.timestep_rows, d))
        self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_hidden) for _ in range(cfg.depth))
        self.embeddings = nn.Embedding(cfg.embedding_rows, d)
        self.adaln_before_head = FinalLayer(d)
        self.lm_head = nn.Linear(d, cfg.codebook_size)

    def embed(self, tokens: torch.Tensor, cond_ids: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Block-sequence rows ``start..T-1`` for ``tokens`` [B, L] (T = L + 2) and their AdaLN conditions.

        Returns:
            ``(x, c)``, both [B, T - start, D]: the block inputs and ``E[cond] + timesteps_embeddings``.
        """
        b, length = tokens.shape
        t = length + 2
        n = self.config.image_seq_len
        ids = torch.cat([cond_ids.view(b, 1), tokens], dim=1)  # block rows 1..T-1
        x = self.embeddings(ids[:, max(start, 1) - 1 :])
        if start == 0:
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = x + self.pos_embed[:, start:t]
        # Target-aware term: rows 1..n get tape rows 2..n+1 (the position of the token each row predicts);
        # row 0 (cls) and row n + 1 (the last token, which predicts nothing) get none.
        zero = self.target_aware_pos_embed.new_zeros(1, 1, x.shape[-1])
        tape = torch.cat([zero, self.target_aware_pos_embed[:, 2 : 2 + n], zero], dim=1)
        x = x + tape[:, start:t]
        c = self.embeddings(cond_ids.view(b, 1)) + self.timesteps_embeddings[:, start:t]
        return x, c

    def run_blocks(self, x: torch.Tensor, c: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """All blocks over rows ``x`` [B, N, D] (appended after the cached rows when ``cache`` is given)."""
        for i, blk in enumerate(self.blocks):
            x = blk(x, c, cache, i)
        if cache is not None:
            cache.length += x.shape[1]
        return x

    def head(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Final AdaLN + ``lm_head``: logits [B, N, V] for block rows ``x`` [B, N, D]."""
        return self.lm_head(self.adaln_before_head(x, c))

    def forward(self, tokens: torch.Tensor, cond_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits exactly as the official ``forward_fn(tokens, cond_ids, orders=None)``.

        Args:
            tokens: [B, L] image tokens in raster order (L = n in teacher forcing).
            cond_ids: [B] embedding rows of the classes (label + ``class_offset``, or ``null_class_id``).

        Returns:
            [B, L + 1, V]: index j sits at block row j + 1 and predicts token j; the last has no target.
        """
        x, c = self.embed(tokens, cond_ids)
        x = self.run_blocks(x, c)
        return self.head(x[:, 1:], c[:, 1:])  # drop the cls row


@torch.no_grad()
def init_random_(model: RARTransformer, generator: torch.Generator) -> RARTransformer:
    """Overwrite every parameter, in ``named_parameters()`` order, with seeded values that keep all paths active.

    Recipe (one ``torch.randn`` draw z per parameter, float32): LayerNorm weights ``1 + 0.1 z``; biases
    ``0.1 z``; ``embeddings.weight`` and ``cls_token`` ``z``; ``pos_embed``, ``target_aware_pos_embed`` and
    ``timesteps_embeddings`` ``0.5 z``; Linear weights ``z / sqrt(in_features)``. The official adaLN-zero init
    would make every block an identity; this one gives O(1) activations in every block. It is the recipe of
    the reference fixture (seed 8675309), so tests can rebuild those weights.
    """
    for name, p in model.named_parameters():
        z = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        if name in ("cls_token", "embeddings.weight"):
            v = z
        elif p.ndim == 3:
            v = 0.5 * z
        elif p.ndim == 2:
            v = z / math.sqrt(p.shape[1])
        elif name.endswith("weight"):
            v = 1 + 0.1 * z
        else:
            v = 0.1 * z
        p.copy_(v)
    return model
