"""The LlamaGen class-conditional GPT (``FoundationVision/LlamaGen``: ``autoregressive/models/gpt.py``), our own code.

Module and parameter names follow the released ``c2i_*.pt`` state dicts, so they load strictly:
``cls_embedding.embedding_table``, ``tok_embeddings``, ``layers.{i}.{attention.{wqkv,wo}, feed_forward.{w1,w3,w2},
attention_norm, ffn_norm}``, ``norm``, ``output`` (no biases anywhere).

Sequence for a grid of ``n`` tokens (teacher forcing feeds the class and tokens ``0..n-2``, i.e. ``n`` rows)::

    row 0      class embedding (row ``num_classes`` is the null class used for guidance)
    row 1 + k  tok_embeddings[token k]                    row p predicts token p

Behaviours of the official network reproduced here (each one changes the numbers if missed):

* RMSNorm computes in float32 and multiplies by the weight *after* casting back.
* 2-D RoPE on interleaved pairs ``(2i, 2i+1)`` of each head: the first half of the pairs rotates with the token's
  grid row, the second half with its column (base 10000); the class row's table is **all zeros**, so q and k at
  the class position are exactly zero, not unrotated.
* The SwiGLU hidden ``h = silu(w1 x) * (w3 x)`` passes through an identity module ``feed_forward.hidden`` (absent
  from the official code and from the state dict) so that a forward hook sees the units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memprune.errors import MempruneError
from memprune.families.common import KVCache

_ROPE_BASE = 10000
_NORM_EPS = 1e-5


def ffn_hidden_size(dim: int, multiple_of: int = 256) -> int:
    """The official SwiGLU width: ``int(2 * 4 * dim / 3)`` rounded up to a multiple of 256."""
    hidden = int(2 * (4 * dim) / 3)
    return hidden if hidden % multiple_of == 0 else hidden + multiple_of - hidden % multiple_of


@dataclass(frozen=True)
class LlamaGenConfig:
    """Sizes of a LlamaGen c2i generator (defaults: LlamaGen-B at 256 px).

    Attributes:
        dim: model width.
        n_layer: transformer blocks.
        n_head: attention heads (not stored in the weights; see ``HEADS_BY_WIDTH``).
        ffn_hidden: SwiGLU hidden size F (``ffn_hidden_size(dim)`` for every release).
        vocab_size: image-token vocabulary (16384 released).
        num_classes: classes; the class table has one more row, the null class.
        block_size: image tokens per image (256 for a 16 x 16 grid, 576 for 24 x 24).
    """

    dim: int = 768
    n_layer: int = 12
    n_head: int = 12
    ffn_hidden: int = 2048
    vocab_size: int = 16384
    num_classes: int = 1000
    block_size: int = 256

    def __post_init__(self) -> None:
        if self.n_head <= 0 or self.dim % self.n_head:
            raise MempruneError(
                f"{self.n_head} heads do not divide the width {self.dim}: pass a --num-heads that divides it"
            )
        if (self.dim // self.n_head) % 4:
            raise MempruneError(f"head_dim {self.dim // self.n_head} is not a multiple of 4, which 2-D RoPE needs")
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            raise MempruneError(f"block_size {self.block_size} is not a square grid")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def null_class_id(self) -> int:
        return self.num_classes


#: Head counts of the official ``GPT_models`` factories, by width (the weights cannot tell).
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 20, 1536: 24, 2048: 32, 2560: 40, 3200: 32, 4096: 32}

#: The released c2i sizes (``GPT-B`` ... ``GPT-3B``) and their published parameter counts (llamagen.md).
LLAMAGEN_CONFIGS: dict[str, LlamaGenConfig] = {
    "GPT-B": LlamaGenConfig(768, 12, 12, 2048),
    "GPT-L": LlamaGenConfig(1024, 24, 16, 2816),
    "GPT-XL": LlamaGenConfig(1280, 36, 20, 3584, block_size=576),
    "GPT-XXL": LlamaGenConfig(1536, 48, 24, 4096, block_size=576),
    "GPT-3B": LlamaGenConfig(3200, 24, 32, 8704, block_size=576),
}
PUBLISHED_PARAMS_M = {"GPT-B": 110.9, "GPT-L": 342.9, "GPT-XL": 774.7, "GPT-XXL": 1411.0, "GPT-3B": 3096.7}


def rope_table_2d(grid: int, head_dim: int, base: float = _ROPE_BASE) -> torch.Tensor:
    """The official 2-D RoPE table ``[1 + grid**2, head_dim // 2, 2]`` (cos, sin); row 0 (class) is all zeros."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(grid), freqs)  # [grid, head_dim // 4]
    both = torch.cat(
        [angles[:, None, :].expand(-1, grid, -1), angles[None, :, :].expand(grid, -1, -1)], dim=-1
    )  # [row, col, head_dim // 2]: first half by row, second half by column
    table = torch.stack([torch.cos(both), torch.sin(both)], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(1, half, 2), table])


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x ``[B, S, H, hd]`` by ``table`` ``[S, hd // 2, 2]``, in float32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    t = table.view(1, pairs.shape[1], 1, pairs.shape[3], 2)
    out = torch.stack(
        [
            pairs[..., 0] * t[..., 0] - pairs[..., 1] * t[..., 1],
            pairs[..., 1] * t[..., 0] + pairs[..., 0] * t[..., 1],
        ],
        dim=-1,
    )
    return out.flatten(3).type_as(x)


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps)`` in float32, cast back, then times the weight (official order)."""

    def __init__(self, dim: int, eps: float = _NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    """Fused ``wqkv`` (no bias), 2-D RoPE on q and k, causal SDPA, ``wo``."""

    def __init__(self, dim: int, n_head: int):
        super().__init__()
        self.dim, self.n_head, self.head_dim = dim, n_head, dim // n_head
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (t.view(b, s, self.n_head, self.head_dim) for t in self.wqkv(x).split(self.dim, dim=-1))
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache is None:  # teacher forcing: the official eval path (no mask given -> is_causal)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            past = cache.length
            k, v = cache.update(layer, k, v)
            mask = None
            if s > 1:  # a chunk (prefill of a prefix): row i sits at past + i and sees keys 0..past + i
                mask = torch.ones(s, past + s, dtype=torch.bool, device=x.device).tril_(past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).contiguous().view(b, s, self.dim))


class FeedForward(nn.Module):
    """SwiGLU ``w2(silu(w1 x) * w3 x)``; ``hidden`` is an identity whose output is the unit vector h."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.hidden = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.hidden(F.silu(self.w1(x)) * self.w3(x)))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: LlamaGenConfig):
        super().__init__()
        # Registration order = the official named_parameters() order (the fixture recipes depend on it).
        self.attention = Attention(cfg.dim, cfg.n_head)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_hidden)
        self.attention_norm = RMSNorm(cfg.dim)
        self.ffn_norm = RMSNorm(cfg.dim)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, cache, layer)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """``embedding_table`` with ``num_classes + 1`` rows; the last one is the null (guidance) class."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)


class LlamaGenTransformer(nn.Module):
    """The LlamaGen c2i generator. Class ids given here are embedding rows (``num_classes`` = null class)."""

    def __init__(self, cfg: LlamaGenConfig):
        super().__init__()
        self.config = cfg
        self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self._rope: torch.Tensor | None = None  # built on first use, on the input's device (see rope())

    def rope(self, device: torch.device) -> torch.Tensor:
        """The RoPE table on ``device``, float32 whatever the weights' dtype (the official one is a plain
        float32 attribute, never cast with the model, and not in the state dict)."""
        if self._rope is None or self._rope.device != device:
            cfg = self.config
            with torch.device("cpu"):  # also when the module was built under a meta-device context
                table = rope_table_2d(cfg.grid_size, cfg.head_dim)
            self._rope = table.to(device)
        return self._rope

    def forward(
        self, tokens: torch.Tensor, cond_ids: torch.Tensor | None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits (float32) for the rows after those already in ``cache``.

        Args:
            tokens: [B, L] tokens to feed (L may be 0).
            cond_ids: [B] class rows; the class row is fed first when the cache is empty (or there is none).
            cache: ``None`` for teacher forcing (rows start at 0), or the generation cache.

        Returns:
            [B, rows, V]: row r is sequence row ``start + r`` and predicts token ``start + r``.
        """
        start = 0 if cache is None else cache.length
        parts = []
        if start == 0:
            if cond_ids is None:
                raise MempruneError("the first call of a sequence needs the class ids")
            parts.append(self.cls_embedding.embedding_table(cond_ids).unsqueeze(1))
        if tokens.shape[1]:
            parts.append(self.tok_embeddings(tokens))
        h = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        rows = h.shape[1]
        table = self.rope(h.device)
        if start + rows > table.shape[0]:
            raise MempruneError(f"{start + rows} rows exceed the model's sequence of {table.shape[0]}")
        rope = table[start : start + rows]
        for i, layer in enumerate(self.layers):
            h = layer(h, rope, cache, i)
        if cache is not None:
            cache.length += rows
        return self.output(self.norm(h)).float()


@torch.no_grad()
def init_random_(model: LlamaGenTransformer, generator: torch.Generator) -> LlamaGenTransformer:
    """Overwrite every parameter (``named_parameters()`` order, one ``randn`` draw z each, float32).

    Recipe of the reference fixture (seed 1618033): RMSNorm weights ``1 + 0.1 z``; embedding tables ``z``;
    Linear weights ``z / sqrt(in_features)``. The official init zeroes ``output`` (all logits 0); this does not.
    """
    for name, p in model.named_parameters():
        z = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        if p.ndim == 1:
            p.copy_(1 + 0.1 * z)
        elif "embed" in name:
            p.copy_(z)
        else:
            p.copy_(z / math.sqrt(p.shape[1]))
    return model
