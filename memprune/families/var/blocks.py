"""Transformer blocks of VAR: AdaLN self-attention blocks and the AdaLN layer before the head.

Module and parameter names match the official checkpoints (``blocks.{i}.attn.mat_qkv``,
``blocks.{i}.ffn.fc1`` ...). There are deliberately no fused kernels: the FFN always calls ``fc1``,
``act`` and ``fc2`` as modules, so forward hooks on them always fire.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FFN(nn.Module):
    """``fc2(GELU_tanh(fc1(x)))``; ``act`` is its own module so a hook on it sees the post-activation units."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """Multi-head attention with VAR's l2-normalised queries/keys and a learned per-head temperature.

    With ``l2_norm`` (every release): ``q <- normalize(q) * exp(min(scale_mul, ln 100))``, ``k <- normalize(k)``
    and the dot product is not rescaled further. Without it the scale is ``0.25 / sqrt(head_dim)``.
    The key bias is a zero buffer (``zero_k_bias``), so the qkv bias is ``cat(q_bias, 0, v_bias)``.

    For cached generation call :meth:`set_kv_cache`; each forward then appends its keys/values (already
    normalised) and attends over everything cached, which is the block-causal visibility of training.
    """

    def __init__(self, width: int, num_heads: int, l2_norm: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.l2_norm = l2_norm
        if l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100.0)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))
        self.proj = nn.Linear(width, width)
        self._cache: list[torch.Tensor] | None = None

    def set_kv_cache(self, enabled: bool, start: list[torch.Tensor] | None = None) -> None:
        """Start (``True``, empty or from the cached ``[k, v]`` of ``start``) or drop (``False``) the cache."""
        self._cache = (list(start) if start else []) if enabled else None

    def cached(self) -> list[torch.Tensor]:
        """The cached ``[k, v]`` (empty before the first cached forward)."""
        if self._cache is None:
            raise RuntimeError("the key/value cache is off: call set_kv_cache(True) first")
        return self._cache

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        b, n, width = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, head_dim]
        if self.l2_norm:
            # The temperature is clamped at ln(100) before exp: large learned values saturate at 100.
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if self._cache is not None:
            if self._cache:
                k = torch.cat((self._cache[0], k), dim=2)
                v = torch.cat((self._cache[1], v), dim=2)
            self._cache = [k, v]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=0.0, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, width))


class AdaLNSelfAttn(nn.Module):
    """One VAR block: AdaLN-modulated attention and FFN, each gated, with residual connections.

    The six modulation vectors come from ``ada_lin(cond)`` (or ``ada_gss + shared_ada_lin(cond)`` with shared
    AdaLN) in the order gamma1, gamma2, scale1, scale2, shift1, shift2.
    """

    def __init__(self, width: int, num_heads: int, hidden: int, l2_norm: bool, shared_aln: bool,
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.width = width
        self.attn = SelfAttention(width, num_heads, l2_norm)
        self.ffn = FFN(width, hidden)
        self.ln_wo_grad = nn.LayerNorm(width, eps=norm_eps, elementwise_affine=False)
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, width) / width**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        """``cond`` is ``[B, C]`` (per-block AdaLN) or the shared ``[B, 1, 6, C]`` (shared AdaLN)."""
        if self.shared_aln:
            mods = self.ada_gss + cond
        else:
            mods = self.ada_lin(cond).view(-1, 1, 6, self.width)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mods.unbind(2)  # each [B, 1, C]
        h = self.ln_wo_grad(x).mul(scale1.add(1)).add_(shift1)
        x = x + self.attn(h, attn_bias=attn_bias).mul_(gamma1)
        h = self.ln_wo_grad(x).mul(scale2.add(1)).add_(shift2)
        return x + self.ffn(h).mul(gamma2)


class SharedAdaLin(nn.Linear):
    """Shared AdaLN projection (VAR-d36): ``[B, C] -> [B, 1, 6, C]``."""

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(cond).view(-1, 1, 6, self.weight.shape[0] // 6)


class AdaLNBeforeHead(nn.Module):
    """``LN(x) * (1 + scale) + shift`` with (scale, shift) from ``ada_lin(cond)``; always the raw class cond."""

    def __init__(self, width: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.width = width
        self.ln_wo_grad = nn.LayerNorm(width, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.width).unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add_(shift)
