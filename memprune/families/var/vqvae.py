"""VAR's multi-scale residual VQVAE: image <-> 10 scales of token maps.

Compatible with the official tokenizer ``vae_ch160v4096z32.pth`` (324 state-dict entries, buffers included).
The residual quantizer is described in FoundationVision/VAR ``models/quant.py``; the facts reproduced here:

* scale ``s`` quantizes an area-downsampled view (``pn_s x pn_s``) of the residual ``f_rest`` by plain L2
  nearest code, and its embedding is bicubic-upsampled to full size and passed through a "Phi" conv
  ``Phi(h) = (1 - r) h + r conv3x3(h)`` with ``r = 0.5``, then added to ``f_hat`` and removed from ``f_rest``;
* which Phi a scale uses is decided by :func:`phi_index_table` (float64 arithmetic, see there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from memprune.families.var.vae_blocks import Decoder, Encoder

__all__ = ["VQVAE", "VQVAEConfig", "MultiScaleQuantizer", "phi_index_table"]


@dataclass(frozen=True)
class VQVAEConfig:
    """Shape facts of a VAR tokenizer (all inferable from its state dict).

    Attributes:
        vocab_size: codebook rows ``V``.
        z_channels: code width ``Cvae``.
        ch: encoder/decoder base width (160 in the release; multiple of 32).
        ch_mult: per-level width multipliers; the downsampling factor is ``2 ** (len(ch_mult) - 1)``.
        num_res_blocks: encoder blocks per level (the decoder has one more).
        quant_conv_ks: kernel size of ``quant_conv`` / ``post_quant_conv``.
        phi_layout: ``"partial"`` (``quant_resi.qresi_ls.{k}``, release), ``"shared"`` (``quant_resi.qresi``)
            or ``"per_scale"`` (``quant_resi.{k}``).
        num_phi: number of Phi convs.
        phi_ratio: the residual ratio ``r`` of Phi (not stored in checkpoints; 0.5 in every release).
        num_hit_scales: rows of the ``quantize.ema_vocab_hit_SV`` usage buffer (kept as loaded).
    """

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    quant_conv_ks: int = 3
    phi_layout: str = "partial"
    num_phi: int = 4
    phi_ratio: float = 0.5
    num_hit_scales: int = 10

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def phi_index_table(num_phi: int, num_scales: int) -> tuple[int, ...]:
    """Which Phi conv each scale uses: ``k(s) = argmin_k |tick_k - s / (S - 1)|``.

    The ticks are ``linspace(1/(3K), 1 - 1/(3K), K)`` for K = 4 and ``linspace(1/(2K), 1 - 1/(2K), K)``
    otherwise. With K = 4 and S = 10 two scales (s = 2 and s = 7) lie exactly halfway between two ticks in
    real arithmetic, so the answer depends on rounding: numpy float64 (what the official code uses) gives
    ``(0, 0, 1, 1, 1, 2, 2, 3, 3, 3)``; float32 gives a different table. Hence numpy float64 here.
    """
    if num_phi == 1:
        return (0,) * num_scales
    if num_scales < 2:
        raise ValueError(f"need at least 2 scales to place Phi convs, got {num_scales}")
    edge = 1 / 3 / num_phi if num_phi == 4 else 1 / 2 / num_phi
    ticks = np.linspace(edge, 1 - edge, num_phi)  # float64
    return tuple(int(np.argmin(np.abs(ticks - s / (num_scales - 1)))) for s in range(num_scales))


class Phi(nn.Conv2d):
    """``Phi(h) = (1 - r) * h + r * conv3x3(h)``; a Conv2d subclass so its keys are ``weight`` / ``bias``."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


class _PhiPartiallyShared(nn.Module):
    def __init__(self, phis: list[Phi]) -> None:
        super().__init__()
        self.qresi_ls = nn.ModuleList(phis)


class _PhiShared(nn.Module):
    def __init__(self, phi: Phi) -> None:
        super().__init__()
        self.qresi = phi


def _phi_container(cfg: VQVAEConfig) -> tuple[nn.Module, list[Phi]]:
    # The container class only decides the state-dict names; lookup goes through the returned list.
    phis = [Phi(cfg.z_channels, cfg.phi_ratio) for _ in range(cfg.num_phi)]
    if cfg.phi_layout == "partial":
        return _PhiPartiallyShared(phis), phis
    if cfg.phi_layout == "shared":
        return _PhiShared(phis[0]), phis
    if cfg.phi_layout == "per_scale":
        return nn.ModuleList(phis), phis
    raise ValueError(f"unknown phi_layout {cfg.phi_layout!r}")


class MultiScaleQuantizer(nn.Module):
    """Residual multi-scale quantizer (``quantize.*`` keys). Works on full-size features ``[B, Cvae, h, w]``."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.vocab_size, self.z_channels = cfg.vocab_size, cfg.z_channels
        self.quant_resi, self._phis = _phi_container(cfg)
        # Usage statistics from tokenizer training; unused by every forward pass but kept for strict round trips.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(cfg.num_hit_scales, cfg.vocab_size))
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.z_channels)

    def phi(self, scale: int, num_scales: int) -> Phi:
        """The Phi conv used by ``scale`` out of ``num_scales``."""
        return self._phis[phi_index_table(len(self._phis), num_scales)[scale]]

    def nearest_code(self, z_nc: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook row for each row of ``z_nc`` ``[N, Cvae]`` (squared L2)."""
        codebook = self.embedding.weight
        # ||z||^2 + ||e||^2 - 2 z.e, accumulated in the same order as upstream (addmm into the norm sums).
        dist = torch.sum(z_nc.square(), dim=1, keepdim=True) + torch.sum(codebook.square(), dim=1)
        dist.addmm_(z_nc, codebook.T, alpha=-2, beta=1)
        return torch.argmin(dist, dim=1)

    def _upsampled_phi(self, h: torch.Tensor, scale: int, patch_nums: Sequence[int]) -> torch.Tensor:
        # Every scale but the last is bicubic-upsampled (a = -0.75, align_corners=False) to full size first.
        full = patch_nums[-1]
        if scale != len(patch_nums) - 1:
            h = F.interpolate(h, size=(full, full), mode="bicubic")
        return self.phi(scale, len(patch_nums))(h)

    def embed_map(self, idx_bl: torch.Tensor, pn: int) -> torch.Tensor:
        """Codebook vectors of a flat row-major token map ``[B, pn*pn]`` as ``[B, Cvae, pn, pn]``."""
        b = idx_bl.shape[0]
        # A strided view (not a copy), as upstream: the memory layout picks the interpolation kernel, and the
        # same kernel keeps results bit-identical.
        return self.embedding(idx_bl).transpose(1, 2).view(b, self.z_channels, pn, pn)

    def quantize(self, f: torch.Tensor, patch_nums: Sequence[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residual-quantize features ``f`` ``[B, Cvae, pn_last, pn_last]``.

        Returns:
            The per-scale indices (``[B, pn_s**2]`` each, row-major) and the final ``f_hat``.
        """
        b, c, _, _ = f.shape
        f_rest, f_hat = f.clone(), torch.zeros_like(f)
        indices: list[torch.Tensor] = []
        for s, pn in enumerate(patch_nums):
            # 'area' = adaptive average pooling (overlapping windows when pn does not divide the size).
            z = f_rest if s == len(patch_nums) - 1 else F.interpolate(f_rest, size=(pn, pn), mode="area")
            idx = self.nearest_code(z.permute(0, 2, 3, 1).reshape(-1, c))
            h = self._upsampled_phi(self.embedding(idx.view(b, pn, pn)).permute(0, 3, 1, 2).contiguous(),
                                    s, patch_nums)
            f_hat.add_(h)
            f_rest.sub_(h)
            indices.append(idx.reshape(b, pn * pn))
        return indices, f_hat

    def add_scale(self, f_hat: torch.Tensor, h: torch.Tensor, scale: int, patch_nums: Sequence[int]) -> torch.Tensor:
        """``f_hat + Phi(upsample(h))`` for the embeddings ``h`` ``[B, Cvae, pn_s, pn_s]`` of one scale."""
        return f_hat.add_(self._upsampled_phi(h, scale, patch_nums))

    def indices_to_fhat(self, indices: Sequence[torch.Tensor], patch_nums: Sequence[int]) -> torch.Tensor:
        """Cumulative reconstruction ``f_hat`` ``[B, Cvae, pn_last, pn_last]`` from all scales' indices."""
        full = patch_nums[-1]
        f_hat = torch.zeros(indices[0].shape[0], self.z_channels, full, full,
                            device=indices[0].device, dtype=self.embedding.weight.dtype)
        for s, (idx, pn) in enumerate(zip(indices, patch_nums, strict=True)):
            self.add_scale(f_hat, self.embed_map(idx, pn), s, patch_nums)
        return f_hat

    def teacher_forcing_input(self, indices: Sequence[torch.Tensor], patch_nums: Sequence[int]) -> torch.Tensor:
        """``x_BLCv_wo_first_l`` ``[B, L - pn_0**2, Cvae]``: input rows of scales 1..S-1.

        The input of scale s is the area-downsampled *cumulative* reconstruction of scales < s (not the
        embeddings of scale s-1 alone). Row j belongs to sequence position ``j + pn_0**2``.
        """
        full = patch_nums[-1]
        b = indices[0].shape[0]
        f_hat = torch.zeros(b, self.z_channels, full, full, device=indices[0].device,
                            dtype=self.embedding.weight.dtype)
        rows = []
        for s in range(len(patch_nums) - 1):
            self.add_scale(f_hat, self.embed_map(indices[s], patch_nums[s]), s, patch_nums)
            rows.append(self.next_input(f_hat, patch_nums[s + 1]))
        return torch.cat(rows, dim=1)

    @staticmethod
    def next_input(f_hat: torch.Tensor, pn: int) -> torch.Tensor:
        """Area-downsample ``f_hat`` to ``pn x pn`` and flatten it row-major to ``[B, pn*pn, Cvae]``."""
        b, c = f_hat.shape[:2]
        return F.interpolate(f_hat, size=(pn, pn), mode="area").view(b, c, -1).transpose(1, 2)


class VQVAE(nn.Module):
    """Encoder + multi-scale quantizer + decoder. Images here are in [-1, 1] (the model's own range)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        if cfg.ch % 32:
            raise ValueError(f"ch must be a multiple of 32 (GroupNorm with 32 groups), got {cfg.ch}")
        self.config = cfg
        self.encoder = Encoder(cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels)
        self.decoder = Decoder(cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.z_channels)
        self.quantize = MultiScaleQuantizer(cfg)
        pad = cfg.quant_conv_ks // 2
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, cfg.quant_conv_ks, padding=pad)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, cfg.quant_conv_ks, padding=pad)

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """Continuous features ``f = quant_conv(encoder(img))`` for images in [-1, 1]."""
        return self.quant_conv(self.encoder(img))

    def img_to_indices(self, img: torch.Tensor, patch_nums: Sequence[int]) -> list[torch.Tensor]:
        """Images ``[B, 3, H, W]`` in [-1, 1] to per-scale indices ``[B, pn_s**2]``."""
        return self.quantize.quantize(self.features(img), patch_nums)[0]

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decode ``f_hat`` to images in [-1, 1] (clamped, as upstream)."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def indices_to_img(self, indices: Sequence[torch.Tensor], patch_nums: Sequence[int]) -> torch.Tensor:
        """Decode all scales' indices to images in [-1, 1] (upstream ``idxBl_to_img(same_shape=True)``)."""
        return self.fhat_to_img(self.quantize.indices_to_fhat(indices, patch_nums))
