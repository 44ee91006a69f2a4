"""Convolutional encoder and decoder of VAR's multi-scale VQVAE (the VQGAN f16 layout).

Module names match the official checkpoint ``vae_ch160v4096z32.pth`` (``encoder.down.0.block.1.conv2`` ...),
so its state dict loads strictly. Every norm is ``GroupNorm(32, eps=1e-6)``, which is why the base width
``ch`` must be a multiple of 32. Only the inference path exists here: no dropout, no loss.

The operations and their order follow the official code (FoundationVision/VAR ``models/basic_vae.py``) so
that features, and therefore the nearest-code choices made on them, agree bit for bit on the same build.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: ``shortcut(x) + conv2(silu(gn2(conv1(silu(gn1(x))))))``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # A 1x1 projection only where the width changes; otherwise the checkpoint has no such key.
        self.nin_shortcut: nn.Module = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map, with a residual connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        c, n = self.channels, height * width
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, height, width).unbind(1)
        # scores[b, i, j] = <q_i, k_j> / sqrt(C); softmax over the key axis j.
        scores = torch.bmm(q.reshape(b, c, n).permute(0, 2, 1).contiguous(), k.reshape(b, c, n).contiguous())
        weights = F.softmax(scores.mul_(c**-0.5), dim=2)
        # out[b, c, i] = sum_j v[b, c, j] * weights[b, i, j]
        out = torch.bmm(v.reshape(b, c, n).contiguous(), weights.permute(0, 2, 1).contiguous())
        return x + self.proj_out(out.view(b, c, height, width))


class Downsample2x(nn.Module):
    """Stride-2 3x3 convolution after padding one zero row/column on the bottom/right (asymmetric, as upstream)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    # A bare container so that the parameter names read ``down.{i}.block.{j}`` / ``down.{i}.attn.{j}``.
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    return level


def _mid(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels)
    mid.attn_1 = AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


class Encoder(nn.Module):
    """Image ``[B, 3, H, W]`` in [-1, 1] to features ``[B, z_channels, H/2^(n-1), W/2^(n-1)]``.

    Args:
        ch: base width; level ``i`` has ``ch * ch_mult[i]`` channels.
        ch_mult: width multipliers per resolution level (release: ``(1, 1, 2, 2, 4)``).
        num_res_blocks: residual blocks per level (release: 2).
        z_channels: output channels (``Cvae``).
    """

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        self.num_levels = len(ch_mult)
        self.conv_in = nn.Conv2d(3, ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        width = ch
        for level_idx, mult in enumerate(ch_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(width, ch * mult))
                width = ch * mult
                if level_idx == self.num_levels - 1:  # attention only at the coarsest level
                    attns.append(AttnBlock(width))
            level = _level(blocks, attns)
            if level_idx != self.num_levels - 1:
                level.downsample = Downsample2x(width)
            self.down.append(level)
        self.mid = _mid(width)
        self.norm_out = _group_norm(width)
        self.conv_out = nn.Conv2d(width, z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level_idx, level in enumerate(self.down):
            for block_idx, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[block_idx](h)
            if level_idx != self.num_levels - 1:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Features ``[B, z_channels, h, w]`` to an (unclamped) image ``[B, 3, h*2^(n-1), w*2^(n-1)]``.

    Mirrors :class:`Encoder` with ``num_res_blocks + 1`` blocks per level. ``up`` is indexed by resolution
    level (``up.0`` is the finest), but runs from the coarsest level to the finest.
    """

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int) -> None:
        super().__init__()
        self.num_levels = len(ch_mult)
        width = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, kernel_size=3, padding=1)
        self.mid = _mid(width)
        levels: list[nn.Module] = []
        for level_idx in reversed(range(self.num_levels)):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(width, ch * ch_mult[level_idx]))
                width = ch * ch_mult[level_idx]
                if level_idx == self.num_levels - 1:
                    attns.append(AttnBlock(width))
            level = _level(blocks, attns)
            if level_idx != 0:
                level.upsample = Upsample2x(width)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(width)
        self.conv_out = nn.Conv2d(width, 3, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level_idx in reversed(range(self.num_levels)):
            level = self.up[level_idx]
            for block_idx, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[block_idx](h)
            if level_idx != 0:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
