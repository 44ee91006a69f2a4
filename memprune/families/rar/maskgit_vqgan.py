"""The MaskGIT-VQGAN image tokenizer that RAR encodes and decodes with (f16, codebook 1024 x 256).

Our own implementation of the tokenizer RAR ships as ``maskgit-vqgan-imagenet-f16-256.bin``
(``bytedance/1d-tokenizer``: ``modeling/titok.py::PretrainedTokenizer`` over
``modeling/modules/maskgit_vqgan.py``). Module and parameter names follow the released state dict
(``encoder.down.{i}.block.{j}.conv1.weight``...) so the official file loads strictly; every width is
read from the checkpoint, so the 32-channel test fixture and the 128-channel release load alike.

Behaviours of the official network that differ from a textbook VQGAN and are reproduced here:

* A residual block whose width changes returns ``h + nin_shortcut(h)``: the 1x1 shortcut maps the
  *output branch* ``h`` (out -> out channels) and the block input is not added at all.
* No attention layers; the encoder downsamples with 2x2 average pooling (no strided conv); the decoder
  upsamples with nearest x2 followed by a 3x3 conv. ``decoder.up[i]`` is resolution level ``i`` and the
  levels run 4, 3, 2, 1, 0.
* Convolutions inside residual blocks and ``encoder.conv_in`` have no bias.
* Input images are in [0, 1] (no mean/std normalisation); ``decode`` clamps to [0, 1].
* Codes are the argmin of the squared L2 distance to the raw (not normalised) codebook, flattened
  row-major over the latent grid: token ``k`` sits at row ``k // w``, column ``k % w``.
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

_GN_GROUPS = 32  # every GroupNorm of the official network has 32 groups (eps 1e-6, affine)
_GN_EPS = 1e-6


@dataclass(frozen=True)
class MaskGITVQGANConfig:
    """Sizes of a MaskGIT-VQGAN tokenizer (defaults: the released f16-256 model).

    Attributes:
        hidden_channels: width of resolution level 0 (128 released; the test fixture uses 32).
        channel_mult: width multiplier per resolution level; ``len(channel_mult)`` levels, each but the
            last halving the resolution, so the downsampling factor is ``2 ** (len - 1)``.
        num_res_blocks: residual blocks per level (and in each middle section).
        z_channels: latent channels, equal to the codebook dimension (there is no quant_conv).
        codebook_size: number of codes.
        num_channels: image channels.
        resolution: image side in pixels.
    """

    hidden_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_size: int = 1024
    num_channels: int = 3
    resolution: int = 256

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def grid_size(self) -> int:
        """Side of the latent grid (16 for 256-pixel images)."""
        return self.resolution // self.downsample_factor

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2


def _conv(cin: int, cout: int, k: int, bias: bool) -> nn.Conv2d:
    # The official Conv2dSame pads TF-style "same"; at stride 1 with an odd kernel that is symmetric k // 2.
    return nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2, bias=bias)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(_GN_GROUPS, c, eps=_GN_EPS, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; see the module docstring for the shortcut when the width changes."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = _conv(cin, cout, 3, bias=False)
        self.norm2 = _norm(cout)
        self.conv2 = _conv(cout, cout, 3, bias=False)
        self.nin_shortcut = _conv(cout, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        # Official quirk: the shortcut is taken from h itself, so the block input is dropped.
        return h + (self.nin_shortcut(h) if self.nin_shortcut is not None else x)


class _Level(nn.Module):
    """One resolution level: ``block`` (residual blocks) and, in the decoder, an optional ``upsample_conv``."""

    def __init__(self, cin: int, cout: int, num_blocks: int, upsample: bool = False):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(num_blocks))
        self.upsample_conv = _conv(cout, cout, 3, bias=True) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class Encoder(nn.Module):
    """Image [B, 3, H, W] in [0, 1] -> pre-quantisation latent [B, z, H/f, W/f]."""

    def __init__(self, cfg: MaskGITVQGANConfig):
        super().__init__()
        widths = [cfg.hidden_channels * m for m in cfg.channel_mult]
        self.conv_in = _conv(cfg.num_channels, cfg.hidden_channels, 3, bias=False)
        ins = [cfg.hidden_channels, *widths[:-1]]
        self.down = nn.ModuleList(_Level(ins[i], widths[i], cfg.num_res_blocks) for i in range(len(widths)))
        self.mid = nn.ModuleList(ResnetBlock(widths[-1], widths[-1]) for _ in range(cfg.num_res_blocks))
        self.norm_out = _norm(widths[-1])
        self.conv_out = _conv(widths[-1], cfg.z_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        last = len(self.down) - 1
        for i, level in enumerate(self.down):
            x = level(x)
            if i != last:  # every level but the deepest halves the resolution
                x = F.avg_pool2d(x, kernel_size=2, stride=2)
        for blk in self.mid:
            x = blk(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Quantised latent [B, z, h, w] -> unclamped image [B, 3, h*f, w*f]."""

    def __init__(self, cfg: MaskGITVQGANConfig):
        super().__init__()
        widths = [cfg.hidden_channels * m for m in cfg.channel_mult]
        n = len(widths)
        self.conv_in = _conv(cfg.z_channels, widths[-1], 3, bias=True)
        self.mid = nn.ModuleList(ResnetBlock(widths[-1], widths[-1]) for _ in range(cfg.num_res_blocks))
        # up[i] works at resolution level i; it takes the width of level i + 1 (the deepest takes its own).
        ins = [widths[min(i + 1, n - 1)] for i in range(n)]
        self.up = nn.ModuleList(_Level(ins[i], widths[i], cfg.num_res_blocks, upsample=i != 0) for i in range(n))
        self.norm_out = _norm(widths[0])
        self.conv_out = _conv(widths[0], cfg.num_channels, 3, bias=True)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for blk in self.mid:
            x = blk(x)
        for level in reversed(self.up):  # deepest level first
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VectorQuantizer(nn.Module):
    """Nearest-code lookup against ``embedding.weight`` [codebook_size, z]."""

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared L2 distances [N, K] of latent vectors z [N, dim] to every code.

        Written as ``|z|^2 + |e|^2 - 2 z.e`` in one ``addmm``, the same arithmetic as the official
        quantizer, so near-ties resolve the same way.
        """
        e = self.embedding.weight.t()
        base = z.pow(2).sum(dim=1, keepdim=True) + e.pow(2).sum(dim=0, keepdim=True)
        return torch.addmm(base, z, e, alpha=-2.0)

    def codes(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [B, z, h, w] -> codes [B, h*w] (int64, row-major over the grid)."""
        b = latent.shape[0]
        flat = latent.permute(0, 2, 3, 1).reshape(-1, latent.shape[1])  # rows in (b, row, col) order
        return self.distances(flat).argmin(dim=1).reshape(b, -1)

    def lookup(self, codes: torch.Tensor, grid: int) -> torch.Tensor:
        """Codes [B, grid*grid] -> latent [B, z, grid, grid]."""
        z = self.embedding(codes)  # [B, n, dim]
        # Left as a permuted (channels-last) view like the official lookup: the decoder then runs channels-last
        # kernels, which is what makes its output bit-identical to the official one.
        return z.reshape(codes.shape[0], grid, grid, -1).permute(0, 3, 1, 2)


class MaskGITVQGAN(nn.Module):
    """The MaskGIT-VQGAN tokenizer: ``encode`` images to codes and ``decode`` codes to images.

    Submodules ``encoder``, ``decoder`` and ``quantize`` carry the official parameter names.
    """

    def __init__(self, cfg: MaskGITVQGANConfig | None = None):
        super().__init__()
        self.config = cfg or MaskGITVQGANConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        self.quantize = VectorQuantizer(self.config.codebook_size, self.config.z_channels)

    def _check_images(self, images: torch.Tensor) -> None:
        c, r = self.config.num_channels, self.config.resolution
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, r, r):
            raise MempruneError(
                f"images have shape {tuple(images.shape)}, expected [B, {c}, {r}, {r}]: resize/centre-crop to {r}x{r} first"
            )
        if not images.is_floating_point():
            raise MempruneError(f"images have dtype {images.dtype}, expected float in [0, 1]: divide uint8 pixels by 255")
        lo, hi = float(images.amin()), float(images.amax())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise MempruneError(
                f"image values span [{lo:.3g}, {hi:.3g}], expected [0, 1]: the tokenizer takes unnormalised pixels "
                "(map [-1, 1] inputs with (x + 1) / 2)"
            )

    def _check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        n, k = self.config.num_tokens, self.config.codebook_size
        if codes.ndim == 3:  # [B, h, w] grids are accepted like the official decode
            codes = codes.reshape(codes.shape[0], -1)
        if codes.ndim != 2 or codes.shape[1] != n:
            raise MempruneError(
                f"codes have shape {tuple(codes.shape)}, expected [B, {n}]: pass one row of {n} tokens per image"
            )
        if codes.is_floating_point() or codes.dtype == torch.bool:
            raise MempruneError(f"codes have dtype {codes.dtype}, expected an integer tensor")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise MempruneError(
                f"codes span [{int(codes.min())}, {int(codes.max())}], expected [0, {k - 1}]: "
                "they are not tokens of this tokenizer"
            )
        return codes.long()

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-quantisation latent [B, z, h, w] of images [B, 3, H, W] in [0, 1]."""
        self._check_images(images)
        w = self.quantize.embedding.weight
        with exact_fp32(w.device):
            # NCHW-contiguous input: a channels-last tensor takes a less precise GroupNorm kernel on CPU.
            return self.encoder(images.to(device=w.device, dtype=w.dtype).contiguous())

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Tokenize images [B, 3, H, W] in [0, 1] to codes [B, h*w] (int64, row-major over the grid)."""
        latent = self.encode_latent(images)
        with exact_fp32(latent.device):
            return self.quantize.codes(latent)

    @torch.no_grad()
    def decode_raw(self, codes: torch.Tensor) -> torch.Tensor:
        """Decoder output for codes [B, h*w] (or [B, h, w]) before the [0, 1] clamp."""
        device = self.quantize.embedding.weight.device
        codes = self._check_codes(codes).to(device)
        with exact_fp32(device):
            return self.decoder(self.quantize.lookup(codes, self.config.grid_size))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Decode codes [B, h*w] (or [B, h, w]) to images [B, 3, H, W] clamped to [0, 1]."""
        return self.decode_raw(codes).clamp(0.0, 1.0)


# -- loading ---------------------------------------------------------------------------------------------------
_DOWN_CONV1 = re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight$")
_REQUIRED = ("encoder.conv_in.weight", "encoder.conv_out.weight", "decoder.conv_out.weight", "quantize.embedding.weight")


def maskgit_config_from_state_dict(sd: Mapping[str, torch.Tensor], resolution: int = 256) -> MaskGITVQGANConfig:
    """Infer the tokenizer sizes from a state dict (widths, levels, blocks, codebook).

    Args:
        sd: a MaskGIT-VQGAN state dict (``encoder.*``, ``decoder.*``, ``quantize.embedding.weight``).
        resolution: image side in pixels; not stored in the checkpoint (256 for the released model).

    Raises:
        MempruneError: the state dict is not a MaskGIT-VQGAN tokenizer.
    """
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        hint = " (this looks like a RAR generator; pass it as the checkpoint)" if "lm_head.weight" in sd else ""
        first = next(iter(sd), "<empty>")
        raise MempruneError(
            f"not a MaskGIT-VQGAN tokenizer state dict: missing {missing[0]} (first key found: {first}){hint}; "
            "expected maskgit-vqgan-imagenet-f16-256.bin from fun-research/TiTok"
        )
    if "quant_conv.weight" in sd and "encoder.conv_blocks.0.res.0.conv1.weight" in sd:
        raise MempruneError(
            "this tokenizer is LlamaGen's VQ (vq_ds16_c2i.pt), not RAR's: pass maskgit-vqgan-imagenet-f16-256.bin "
            "from fun-research/TiTok, or use a LlamaGen checkpoint with it"
        )
    hidden = int(sd["encoder.conv_in.weight"].shape[0])
    levels: dict[int, int] = {}
    blocks = 0
    for key in sd:
        m = _DOWN_CONV1.match(key)
        if m:
            lvl, blk = int(m.group(1)), int(m.group(2))
            blocks = max(blocks, blk + 1)
            if blk == 0:
                levels[lvl] = int(sd[key].shape[0])
    if not levels or sorted(levels) != list(range(len(levels))) or any(w % hidden for w in levels.values()):
        raise MempruneError(f"tokenizer encoder levels {sorted(levels)} with widths {levels} are not a MaskGIT-VQGAN layout")
    mult = tuple(levels[i] // hidden for i in range(len(levels)))
    emb = sd["quantize.embedding.weight"]
    return MaskGITVQGANConfig(
        hidden_channels=hidden,
        channel_mult=mult,
        num_res_blocks=blocks,
        z_channels=int(sd["encoder.conv_out.weight"].shape[0]),
        codebook_size=int(emb.shape[0]),
        num_channels=int(sd["encoder.conv_in.weight"].shape[1]),
        resolution=resolution,
    )


def load_maskgit_vqgan(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    resolution: int = 256,
) -> MaskGITVQGAN:
    """Build a MaskGIT-VQGAN tokenizer from its checkpoint, sizes inferred, loaded strictly, eval mode, frozen.

    Args:
        source: ``maskgit-vqgan-imagenet-f16-256.bin`` (or safetensors), or an already loaded state dict.
        device: where to place the model.
        dtype: parameter dtype (float32 reproduces the official outputs).
        resolution: image side in pixels (256 for the released tokenizer).

    Raises:
        MempruneError: not a tokenizer checkpoint, or keys/shapes that do not fit.
    """
    sd = read_state_dict(source, "tokenizer")
    model = MaskGITVQGAN(maskgit_config_from_state_dict(sd, resolution))
    load_into(model, sd, "tokenizer")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


@torch.no_grad()
def init_random_(model: MaskGITVQGAN, generator: torch.Generator) -> MaskGITVQGAN:
    """Overwrite every parameter, in ``named_parameters()`` order, with ``mean + std * z`` (z ~ N(0, 1), float32).

    Recipe (fan_in = in_channels * kh * kw): codebook std 0.25; ``decoder.conv_out`` weight std
    0.3 / sqrt(fan_in) and bias mean 0.5, std 0.05 (so decoded pixels mostly fall inside [0, 1]); other conv
    weights std 1 / sqrt(fan_in); GroupNorm weights mean 1, std 0.2 and biases std 0.2; other conv biases
    std 0.1; every other mean is 0. It is the recipe of the reference fixture (seed 4242).
    """
    for name, p in model.named_parameters():
        z = torch.randn(p.shape, generator=generator, dtype=torch.float32)
        mean, std = 0.0, 0.1
        if name == "quantize.embedding.weight":
            std = 0.25
        elif p.ndim == 4:
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            std = (0.3 if name == "decoder.conv_out.weight" else 1.0) / math.sqrt(fan_in)
        elif name == "decoder.conv_out.bias":
            mean, std = 0.5, 0.05
        elif ".norm" in name:  # GroupNorm affine parameters (norm1, norm2, norm_out)
            mean, std = (1.0 if name.endswith("weight") else 0.0), 0.2
        p.copy_(mean + std * z)
    return model
