"""LlamaGen's VQ tokenizer (``VQ-16``, ``vq_ds16_c2i.pt``), our own implementation.

Follows ``tokenizer/tokenizer_image/vq_model.py`` of ``FoundationVision/LlamaGen``; parameter names match the released
state dict (``encoder.conv_blocks.{i}.res.{j}.conv1.weight``, ``quantize.embedding.weight``...) including the
``quantize.codebook_used`` buffer, so the official file loads strictly. Every width is read from the state dict, so the
32-channel test fixture and the 128-channel release load alike.

What distinguishes it from the MaskGIT-VQGAN of RAR (``maskgit_vqgan.py``):

* Standard VQGAN residual blocks (the 1x1 ``nin_shortcut`` maps the block *input*), every conv has a bias.
* Single-head attention blocks at the deepest level (after each residual block) and in both middle sections.
* Downsampling: zero-pad right/bottom by 1, 3x3 conv with stride 2; upsampling: nearest x2, 3x3 conv.
* ``quant_conv`` (z -> 8) / ``post_quant_conv`` (8 -> z) around an **l2-normalised** 8-dim codebook: codes are the
  nearest normalised codebook row to the normalised latent, and decoding uses the normalised rows.
* Images enter in [-1, 1] (``(x - 0.5) / 0.5``) and the decoder returns [-1, 1] unclamped; ``encode``/``decode``
  here take and return [0, 1] (``decode`` clamps, as the official samplers do before uint8).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memprune.errors import MempruneError
from memprune.families.common import exact_fp32, load_into
from memprune.families.state_dict import read_state_dict


@dataclass(frozen=True)
class VQConfig:
    """Sizes of a LlamaGen VQ tokenizer (defaults: the released VQ-16).

    Attributes:
        ch: width of level 0 (128 released; 32 in the test fixture).
        encoder_ch_mult, decoder_ch_mult: width multiplier per level; ``2 ** (levels - 1)`` is the downsampling.
        num_res_blocks: residual blocks per encoder level (the decoder has one more per level).
        z_channels: encoder output channels.
        embed_dim: codebook dimension (8).
        codebook_size: number of codes (16384 released).
        usage_buffer: whether the state dict carries ``quantize.codebook_used`` (the released one does).
    """

    ch: int = 128
    encoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    embed_dim: int = 8
    codebook_size: int = 16384
    usage_buffer: bool = True

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, padding: int | None = None) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2 if padding is None else padding)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin), _conv(cin, cout)
        self.norm2, self.conv2 = _gn(cout), _conv(cout, cout)
        self.nin_shortcut = _conv(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, scale c^-1/2, written with bmm like the official block."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _gn(c)
        self.q, self.k, self.v, self.proj_out = (_conv(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        w = torch.bmm(q.reshape(b, c, hh * ww).permute(0, 2, 1), k.reshape(b, c, hh * ww)) * (int(c) ** (-0.5))
        w = F.softmax(w, dim=2)
        out = torch.bmm(v.reshape(b, c, hh * ww), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class _Resample(nn.Module):
    def __init__(self, c: int, down: bool):
        super().__init__()
        self.down = down
        self.conv = _conv(c, c, 3, stride=2, padding=0) if down else _conv(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """``res`` blocks, each followed by its ``attn`` block at the deepest level; then down/upsampling."""

    def __init__(self, cin: int, cout: int, blocks: int, attn: bool, resample: str | None):
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(blocks if attn else 0))
        if resample == "down":
            self.downsample = _Resample(cout, down=True)
        elif resample == "up":
            self.upsample = _Resample(cout, down=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for j, res in enumerate(self.res):
            x = res(x)
            if len(self.attn):
                x = self.attn[j](x)
        for name in ("downsample", "upsample"):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x


def _mid(c: int) -> nn.ModuleList:
    return nn.ModuleList([ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)])


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        mult, n = cfg.encoder_ch_mult, len(cfg.encoder_ch_mult)
        self.conv_in = _conv(3, cfg.ch)
        ins = (1, *mult)
        self.conv_blocks = nn.ModuleList(
            _Level(cfg.ch * ins[i], cfg.ch * mult[i], cfg.num_res_blocks, i == n - 1, "down" if i < n - 1 else None)
            for i in range(n)
        )
        top = cfg.ch * mult[-1]
        self.mid = _mid(top)
        self.norm_out = _gn(top)
        self.conv_out = _conv(top, cfg.z_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.conv_blocks:
            x = level(x)
        for blk in self.mid:
            x = blk(x)
        return self.conv_out(_swish(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        mult, n = cfg.decoder_ch_mult, len(cfg.decoder_ch_mult)
        top = cfg.ch * mult[-1]
        self.conv_in = _conv(cfg.z_channels, top)
        self.mid = _mid(top)
        levels, cin = [], top
        for i in reversed(range(n)):  # conv_blocks[0] is the deepest level
            cout = cfg.ch * mult[i]
            levels.append(_Level(cin, cout, cfg.num_res_blocks + 1, i == n - 1, "up" if i != 0 else None))
            cin = cout
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out = _gn(cin)
        self.conv_out = _conv(cin, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for blk in self.mid:
            x = blk(x)
        for level in self.conv_blocks:
            x = level(x)
        return self.conv_out(_swish(self.norm_out(x)))


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.embed_dim)
        if cfg.usage_buffer:  # carried by the released file; never written in eval mode
            self.register_buffer("codebook_used", torch.zeros(65536))

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.embedding.weight, p=2, dim=-1)

    def codes(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [B, e, h, w] -> codes [B, h*w]: nearest normalised code of the normalised latent, row-major."""
        b = latent.shape[0]
        z = F.normalize(latent.permute(0, 2, 3, 1).reshape(-1, latent.shape[1]), p=2, dim=-1)
        e = self.normalized_codebook()
        d = torch.sum(z**2, dim=1, keepdim=True) + torch.sum(e**2, dim=1) - 2 * (z @ e.t())
        return d.argmin(dim=1).reshape(b, -1)

    def lookup(self, codes: torch.Tensor, grid: int) -> torch.Tensor:
        """Codes [B, grid*grid] -> normalised latent [B, e, grid, grid] (contiguous, like ``get_codebook_entry``)."""
        z = self.normalized_codebook()[codes]
        return z.reshape(codes.shape[0], grid, grid, -1).permute(0, 3, 1, 2).contiguous()


class LlamaGenVQ(nn.Module):
    """The VQ tokenizer: ``encode`` images [B, 3, S, S] in [0, 1] to codes [B, (S/16)^2]; ``decode`` back."""

    def __init__(self, cfg: VQConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or VQConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = _conv(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = _conv(cfg.embed_dim, cfg.z_channels, 1)

    def _check_images(self, images: torch.Tensor, size: int) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise MempruneError(
                f"images have shape {tuple(images.shape)}, expected [B, 3, {size}, {size}]: this LlamaGen model works "
                f"at {size} px; resize/centre-crop to {size}x{size} first"
            )
        if not images.is_floating_point():
            raise MempruneError(f"images have dtype {images.dtype}, expected float in [0, 1]: divide uint8 pixels by 255")
        lo, hi = float(images.amin()), float(images.amax())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise MempruneError(
                f"image values span [{lo:.3g}, {hi:.3g}], expected [0, 1]: pass unnormalised pixels "
                "(the [-1, 1] mapping of the official scripts is applied here)"
            )

    def encode_latent(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """``quant_conv(encoder(x))`` [B, e, h, w] for images in [0, 1] (x = (images - 0.5) / 0.5, float32)."""
        self._check_images(images, size)
        w = self.quant_conv.weight
        with exact_fp32(w.device):
            # NCHW-contiguous: a channels-last input takes a less precise GroupNorm kernel on CPU.
            x = (images.to(device=w.device, dtype=torch.float32).contiguous() - 0.5) / 0.5
            return self.quant_conv(self.encoder(x.to(w.dtype)))

    @torch.no_grad()
    def encode(self, images: torch.Tensor, size: int) -> torch.Tensor:
        latent = self.encode_latent(images, size)
        with exact_fp32(latent.device):
            return self.quantize.codes(latent)

    @torch.no_grad()
    def decode_raw(self, codes: torch.Tensor, grid: int) -> torch.Tensor:
        """The official ``decode_code`` output (in about [-1, 1], unclamped) for codes [B, grid*grid]."""
        device = self.quant_conv.weight.device
        with exact_fp32(device):
            return self.decoder(self.post_quant_conv(self.quantize.lookup(codes.to(device), grid)))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, grid: int) -> torch.Tensor:
        """Images in [0, 1]: the official output clamped to [-1, 1], mapped by (x + 1) / 2."""
        return (self.decode_raw(codes, grid).clamp(-1.0, 1.0) + 1.0) / 2.0


# -- loading ---------------------------------------------------------------------------------------------------
_ENC_RES = re.compile(r"^encoder\.conv_blocks\.(\d+)\.res\.(\d+)\.conv1\.weight$")
_DEC_RES0 = re.compile(r"^decoder\.conv_blocks\.(\d+)\.res\.0\.conv1\.weight$")
_REQUIRED = ("encoder.conv_in.weight", "encoder.conv_out.weight", "quant_conv.weight", "quantize.embedding.weight",
             "post_quant_conv.weight", "decoder.conv_out.weight")  # fmt: skip


def vq_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> VQConfig:
    """Infer the tokenizer sizes (widths, channel multipliers, blocks, codebook) from its state dict.

    Raises:
        MempruneError: not a LlamaGen VQ tokenizer (naming what it is when it is another family's tokenizer).
    """
    what = None
    if any(".quant_resi." in k for k in sd) or "quantize.ema_vocab_hit_SV" in sd:
        what = "the multi-scale VQVAE of VAR (vae_ch160v4096z32.pth)"
    elif "encoder.down.0.block.0.conv1.weight" in sd:
        what = "the MaskGIT-VQGAN tokenizer of RAR (maskgit-vqgan-imagenet-f16-256.bin)"
    elif "tok_embeddings.weight" in sd:
        what = "a LlamaGen generator; pass it as the checkpoint"
    missing = [k for k in _REQUIRED if k not in sd]
    if what or missing:
        found = missing[0] if missing else "the encoder.conv_blocks layout"
        raise MempruneError(
            f"not a LlamaGen VQ tokenizer: missing {found} (first key found: {next(iter(sd), '<empty>')})"
            + (f"; this is {what}" if what else "")
            + "; LlamaGen needs vq_ds16_c2i.pt from FoundationVision/LlamaGen"
        )
    ch = int(sd["encoder.conv_in.weight"].shape[0])
    enc: dict[int, int] = {}
    blocks = 0
    for key in sd:
        if m := _ENC_RES.match(key):
            lvl, blk = int(m.group(1)), int(m.group(2))
            blocks = max(blocks, blk + 1)
            if blk == 0:
                enc[lvl] = int(sd[key].shape[0])
    dec = {int(m.group(1)): int(sd[k].shape[0]) for k in sd if (m := _DEC_RES0.match(k))}
    if not enc or sorted(enc) != list(range(len(enc))) or sorted(dec) != list(range(len(dec))):
        raise MempruneError(f"tokenizer levels encoder {sorted(enc)} / decoder {sorted(dec)} are not a LlamaGen VQ layout")
    if any(w % ch for w in (*enc.values(), *dec.values())):
        raise MempruneError(f"tokenizer level widths {enc} are not multiples of conv_in's {ch}: not a LlamaGen VQ layout")
    n_dec = len(dec)
    return VQConfig(
        ch=ch,
        encoder_ch_mult=tuple(enc[i] // ch for i in range(len(enc))),
        decoder_ch_mult=tuple(dec[n_dec - 1 - i] // ch for i in range(n_dec)),  # conv_blocks[0] = deepest
        num_res_blocks=blocks,
        z_channels=int(sd["encoder.conv_out.weight"].shape[0]),
        embed_dim=int(sd["quant_conv.weight"].shape[0]),
        codebook_size=int(sd["quantize.embedding.weight"].shape[0]),
        usage_buffer="quantize.codebook_used" in sd,
    )


def load_llamagen_vq(
    source: str | os.PathLike | Mapping[str, torch.Tensor], *, device: str | torch.device = "cpu"
) -> LlamaGenVQ:
    """Build the VQ tokenizer from ``vq_ds16_c2i.pt`` (``{"model": ...}``; safetensors too), strict, eval, frozen."""
    sd = read_state_dict(source, "tokenizer")
    model = LlamaGenVQ(vq_config_from_state_dict(sd))
    load_into(model, sd, "LlamaGen tokenizer")
    return model.to(device=device).eval().requires_grad_(False)


@torch.no_grad()
def init_random_(model: LlamaGenVQ, generator: torch.Generator, usage_seed: int | None = None) -> LlamaGenVQ:
    """Overwrite every parameter (``named_parameters()`` order) with ``mean + std * z``, z ~ N(0, 1) float32.

    The reference fixture's recipe (seed 4343; fan_in = in_channels * kh * kw): codebook std 1 (rows not unit
    norm); ``decoder.conv_out`` weight std 0.5 / sqrt(fan_in), bias std 0.05; attention q and k weights
    std 1.5 / sqrt(fan_in); other conv weights std 1 / sqrt(fan_in); GroupNorm weights mean 1, std 0.2, biases
    std 0.2; other biases std 0.1. With ``usage_seed``, ``codebook_used`` becomes seeded random code ids.
    """
    for name, p in model.named_parameters():
        z = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        mean, std = 0.0, 0.1
        if name == "quantize.embedding.weight":
            std = 1.0
        elif p.ndim == 4:
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            gain = 0.5 if name == "decoder.conv_out.weight" else 1.5 if name.endswith((".q.weight", ".k.weight")) else 1.0
            std = gain / math.sqrt(fan_in)
        elif name == "decoder.conv_out.bias":
            std = 0.05
        elif "norm" in name:
            mean, std = (1.0 if name.endswith("weight") else 0.0), 0.2
        p.copy_(mean + std * z)
    if usage_seed is not None and hasattr(model.quantize, "codebook_used"):
        g = torch.Generator().manual_seed(usage_seed)
        used = torch.randint(0, model.config.codebook_size, (65536,), generator=g).float()
        model.quantize.codebook_used.copy_(used)
    return model
