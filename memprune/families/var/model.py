"""VAR (Visual AutoRegressive modeling, next-scale prediction) behind the architecture-independent API.

:func:`load_var` builds the transformer and its multi-scale VQVAE from the official state dicts alone
(``var_d16.pth`` ... ``var_d36.pth`` and ``vae_ch160v4096z32.pth``) and returns a :class:`VARModel`.
Tokens are the flat ``gt_BL`` ``[B, L]``: the scales' token maps concatenated, row-major within a scale
(L = 680 at 256 px, 2240 at 512 px). ``cfg`` follows VAR's convention: 0 = no guidance.

Example:
    >>> model = load_var("var_d16.pth", "vae_ch160v4096z32.pth", device="cuda")
    >>> tokens = model.encode(images)                     # images [B, 3, 256, 256] in [0, 1]
    >>> logits = model.teacher_forced(tokens, labels)     # [B, 680, 4096]
    >>> cont = model.generate(labels, prefix=tokens[:, :30], greedy=True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from memprune.errors import MempruneError
from memprune.families.base import IARModel, PositionGroup
from memprune.families.var.checkpoint import (
    check_tokenizer_fits,
    load_strict,
    read_var_state_dict,
    var_config_from_state_dict,
    vqvae_config_from_state_dict,
)
from memprune.families.var.generate import SamplingOptions, VARPrefix, continue_scales, prefill_scales
from memprune.families.var.transformer import VARConfig, VARTransformer
from memprune.families.var.spec import SPEC
from memprune.families.var.vqvae import VQVAE, VQVAEConfig

__all__ = ["VARModel", "VARConfig", "VQVAEConfig", "load_var", "build_var_model", "var_config_from_state_dict",
           "vqvae_config_from_state_dict"]

_AMP_DTYPES = (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def _exact_fp32() -> Iterator[None]:
    # TF32 convolutions (on by default for cuDNN) perturb features by ~1e-3 relative, enough to flip
    # nearest-code choices; the tokenizer runs in true float32 so GPU tokens match CPU ones up to real ties.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class VARModel(IARModel):
    """A VAR transformer (``self.var``) with its VQVAE (``self.vae``), both registered submodules.

    Args:
        var_config: transformer shape.
        vae_config: tokenizer shape.
        amp_dtype: ``torch.bfloat16`` / ``torch.float16`` to run the transformer blocks under autocast
            (weights, tokenizer and logits stay float32), or ``None`` for float32 throughout.
    """

    arch = "var"

    def __init__(self, var_config: VARConfig, vae_config: VQVAEConfig, amp_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check_tokenizer_fits(var_config, vae_config)
        self.var = VARTransformer(var_config)
        self.vae = VQVAE(vae_config)
        self.patch_nums = var_config.patch_nums
        self.image_size = var_config.patch_nums[-1] * vae_config.downsample
        self.num_classes = var_config.num_classes
        self.vocab_size = var_config.vocab_size
        self.seq_len = var_config.seq_len
        self.amp_dtype = amp_dtype
        self.eval()

    @property
    def config(self) -> VARConfig:
        return self.var.config

    # ------------------------------------------------------------------------------------------ validation
    def _check_images(self, images: torch.Tensor) -> None:
        size = self.image_size
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise MempruneError(f"images have shape {shape}, expected [B, 3, {size}, {size}]; resize/crop to "
                                f"{size} px (the VAR training view is resize {round(1.125 * size)} + center crop)")
        if not images.is_floating_point():
            raise MempruneError(f"images have dtype {images.dtype}, expected float in [0, 1]; divide uint8 by 255")
        lo, hi = images.min().item(), images.max().item()
        if lo < 0 or hi > 1:
            raise MempruneError(f"image values span [{lo:.3g}, {hi:.3g}], expected [0, 1]; "
                                "map [-1, 1] inputs with (x + 1) / 2")

    def _check_labels(self, labels: torch.Tensor | Sequence[int] | int, batch: int | None) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=self.device)
        if labels.ndim == 0 and batch is not None:
            labels = labels.expand(batch)
        if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
            raise MempruneError(f"labels have shape {tuple(labels.shape)} / dtype {labels.dtype}, expected an "
                                "integer tensor [B]")
        if batch is not None and labels.shape[0] != batch:
            raise MempruneError(f"{labels.shape[0]} labels for a batch of {batch}; pass one label per image")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise MempruneError(f"labels span [{labels.min().item()}, {labels.max().item()}], outside the "
                                f"{self.num_classes} classes [0, {self.num_classes - 1}]; the null class is "
                                "used internally for guidance and cannot be passed")
        return labels.long()

    def _check_tokens(self, tokens: torch.Tensor, length: int | None = None, what: str = "tokens") -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise MempruneError(f"{what} have shape/type {shape}, expected an integer tensor [B, {self.seq_len}]")
        if length is not None and tokens.shape[1] != length:
            raise MempruneError(f"{what} have {tokens.shape[1]} positions, expected {length} "
                                f"(the {len(self.patch_nums)} scales {self.patch_nums} flattened)")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise MempruneError(f"{what} span [{tokens.min().item()}, {tokens.max().item()}], outside the "
                                f"vocabulary [0, {self.vocab_size - 1}]; tokenize with this model's encode()")
        return tokens.to(self.device, torch.long)

    # ------------------------------------------------------------------------------------------ tokenizer
    def split_scales(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Split flat tokens ``[B, n]`` (n a scale boundary) into per-scale maps ``[B, pn_s**2]``."""
        return [tokens[:, b:e] for b, e in self.var.begin_ends if e <= tokens.shape[1]]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Tokenize images ``[B, 3, H, W]`` in [0, 1] to ``gt_BL`` ``[B, L]`` (int64)."""
        self._check_images(images)
        x = images.to(self.device, torch.float32)
        x = x + x - 1  # the official normalisation, bit-exact for uint8/255 inputs
        with _exact_fp32(), torch.autocast(self.device.type, enabled=False):
            indices = self.vae.img_to_indices(x, self.patch_nums)
        return torch.cat(indices, dim=1)

    @torch.no_grad()
    def teacher_forcing_input(self, tokens: torch.Tensor) -> torch.Tensor:
        """``x_BLCv_wo_first_l`` ``[B, L - first_l, Cvae]`` (float32) built from ``gt_BL``."""
        tokens = self._check_tokens(tokens, self.seq_len)
        with torch.autocast(self.device.type, enabled=False):
            return self.vae.quantize.teacher_forcing_input(self.split_scales(tokens), self.patch_nums)

    @torch.no_grad()
    def tokens_to_fhat(self, tokens: torch.Tensor) -> torch.Tensor:
        """Cumulative reconstruction ``f_hat`` ``[B, Cvae, pn_last, pn_last]`` of ``gt_BL``."""
        tokens = self._check_tokens(tokens, self.seq_len)
        with torch.autocast(self.device.type, enabled=False):
            return self.vae.quantize.indices_to_fhat(self.split_scales(tokens), self.patch_nums)

    @torch.no_grad()
    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Decode ``f_hat`` to images ``[B, 3, H, W]`` in [0, 1]."""
        with _exact_fp32(), torch.autocast(self.device.type, enabled=False):
            return self.vae.fhat_to_img(f_hat.to(self.device, torch.float32)).add_(1).mul_(0.5)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode ``gt_BL`` ``[B, L]`` to images ``[B, 3, H, W]`` in [0, 1]."""
        return self.decode_fhat(self.tokens_to_fhat(tokens))

    # ------------------------------------------------------------------------------------------ transformer
    @torch.no_grad()
    def teacher_forced(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Class-conditional teacher-forced logits ``[B, L, V]`` (float32); row p predicts ``tokens[:, p]``.

        Label dropout is off: every row is conditioned on its label.
        """
        x_in = self.teacher_forcing_input(tokens)
        labels = self._check_labels(labels, tokens.shape[0])
        with self._autocast():
            return self.var(labels, x_in)

    def generate_with_fhat(
        self,
        labels: torch.Tensor | Sequence[int] | int,
        *,
        prefix: torch.Tensor | None = None,
        cfg: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`generate`, also returning the final ``f_hat`` ``[B, Cvae, pn_last, pn_last]``."""
        return self._continue(self.prefill(labels, prefix, cfg=cfg), top_k, top_p, temperature, greedy, seed)

    def prefill(
        self,
        labels: torch.Tensor | Sequence[int] | int,
        prefix: torch.Tensor | None,
        *,
        cfg: float = 0.0,
    ) -> VARPrefix:
        """Run the forced scales of ``prefix`` and the blocks of the first free scale once, for any number of
        continuations by :meth:`generate_from` (``cfg != 0`` doubles the batch with the null class)."""
        batch = prefix.shape[0] if isinstance(prefix, torch.Tensor) and prefix.ndim == 2 else None
        labels = self._check_labels(labels, batch)
        prefix_maps: list[torch.Tensor] = []
        if prefix is not None:
            prefix = self._check_tokens(prefix, what="prefix tokens")
            if prefix.shape[1] not in self.valid_prefix_lengths():
                raise MempruneError(f"prefix has {prefix.shape[1]} tokens; a VAR prefix must end on a scale "
                                    f"boundary, one of {self.valid_prefix_lengths()}")
            prefix_maps = self.split_scales(prefix)
        return prefill_scales(self.var, self.vae.quantize, labels, prefix_maps, cfg, self.amp_dtype)

    def prefill_group(self, cfg: float) -> object:
        """A prefill serves every guidance weight of its layout: conditional only (0) or [cond, null] (any other)."""
        return cfg != 0

    def generate_from(
        self,
        state: VARPrefix,
        *,
        cfg: float | None = None,
        top_k: int = 0,
        top_p: float = 0.0,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Continue a :meth:`prefill` state (left unchanged) to ``gt_BL`` ``[B, L]``; options as in :meth:`generate`
        (``cfg``: any weight of the prefill's layout, default the prefill's)."""
        return self._continue(state, top_k, top_p, temperature, greedy, seed, self._guidance_for(state, cfg))[0]

    def _continue(self, state: VARPrefix, top_k: int, top_p: float, temperature: float, greedy: bool,
                  seed: int | None, cfg: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if top_k < 0 or not 0 <= top_p <= 1 or temperature <= 0:
            raise MempruneError(f"invalid sampling options top_k={top_k}, top_p={top_p}, temperature={temperature}; "
                                "need top_k >= 0, 0 <= top_p <= 1, temperature > 0")
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        opts = SamplingOptions(cfg=state.cfg if cfg is None else cfg, top_k=top_k, top_p=top_p, temperature=temperature, greedy=greedy)
        maps, f_hat = continue_scales(self.var, self.vae.quantize, state, opts, generator, self.amp_dtype)
        return torch.cat(maps, dim=1), f_hat

    def generate(
        self,
        labels: torch.Tensor | Sequence[int] | int,
        *,
        prefix: torch.Tensor | None = None,
        cfg: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Generate ``gt_BL`` ``[B, L]``, forcing the first ``prefix.shape[1]`` tokens to ``prefix``.

        Args:
            labels: ``[B]`` class indices (an int is broadcast over the prefix batch).
            prefix: ground-truth tokens of the first k scales, ``[B, n]`` with n a scale boundary
                (:meth:`valid_prefix_lengths`); ``None`` generates from scratch.
            cfg: VAR guidance weight; logits ``(1 + t) cond - t uncond`` with ``t = cfg * s / (S - 1)``.
                0 = no guidance; the official FID setting is 1.5.
            top_k: keep the k most likely tokens (0 = all); official FID setting 900.
            top_p: nucleus mass (0 = off); official FID setting 0.96.
            temperature: divide the guided logits by it before filtering.
            greedy: argmax instead of sampling.
            seed: seeds a ``torch.Generator`` on the model's device; ``None`` uses torch's global RNG.
        """
        return self.generate_with_fhat(labels, prefix=prefix, cfg=cfg, top_k=top_k, top_p=top_p,
                                       temperature=temperature, greedy=greedy, seed=seed)[0]

    # ------------------------------------------------------------------------------------------ scoring API
    def hook_points(self, layer: str = "fc1") -> dict[str, nn.Module]:
        """``blocks.{i}.ffn.fc1`` -> the block's ``ffn.act`` (post-GELU units); ``fc2`` / ``attn.proj`` likewise.

        Names and modules both come from the family spec's unit templates.
        """
        return SPEC.hook_points(self.var, layer)

    def position_groups(self) -> list[PositionGroup]:
        """One group per scale, ``scale0`` .. ``scale{S-1}``. Scale 0 depends only on the label."""
        return [PositionGroup(f"scale{s}", b, e) for s, (b, e) in enumerate(self.var.begin_ends)]

    def image_independent_groups(self) -> list[str]:
        """Scale 0 (the start token) attends only to itself, so its activations depend on the class alone."""
        return ["scale0"]

    def valid_prefix_lengths(self) -> list[int]:
        """Scale boundaries: 0, 1, 5, 14, ..., L (256 px)."""
        return [0] + [e for _, e in self.var.begin_ends]


def _check_dtype(dtype: torch.dtype) -> torch.dtype | None:
    if dtype == torch.float32:
        return None
    if dtype in _AMP_DTYPES:
        return dtype
    raise MempruneError(f"dtype {dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16")


def load_var(
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    tokenizer: str | Path | Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    patch_nums: Sequence[int] | None = None,
) -> VARModel:
    """Build a :class:`VARModel` from a VAR checkpoint and its tokenizer, inferring every shape.

    Args:
        checkpoint: ``var_d*.pth`` (or safetensors) path, or its state dict (left unmodified).
        tokenizer: ``vae_ch160v4096z32.pth`` path, or its state dict.
        device: where the model lives.
        dtype: ``torch.float32`` (exact), or ``torch.bfloat16`` / ``torch.float16`` to run the transformer
            blocks under autocast (weights stay float32; tokenizer and logits are float32).
        patch_nums: optional explicit scale schedule; must agree with the checkpoint.

    Raises:
        MempruneError: a file is missing or not the expected kind, the tokenizer does not fit the
            transformer, or keys/shapes do not match.
    """
    amp_dtype = _check_dtype(dtype)
    var_sd = read_var_state_dict(checkpoint, "VAR checkpoint")
    vae_sd = read_var_state_dict(tokenizer, "tokenizer")
    var_cfg = var_config_from_state_dict(var_sd, patch_nums=patch_nums)
    vae_cfg = vqvae_config_from_state_dict(vae_sd)
    check_tokenizer_fits(var_cfg, vae_cfg)
    with torch.device("meta"):  # no memory for weights that are about to be replaced
        model = VARModel(var_cfg, vae_cfg, amp_dtype=amp_dtype)
    # Tensors read from a file belong to us and are used in place; a caller's dict is copied.
    load_strict(model.var, var_sd, "VAR checkpoint", device, copy=isinstance(checkpoint, Mapping))
    load_strict(model.vae, vae_sd, "tokenizer", device, copy=isinstance(tokenizer, Mapping))
    model.vae.requires_grad_(False)
    return model.eval()


def build_var_model(
    var_config: VARConfig,
    vae_config: VQVAEConfig | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VARModel:
    """A randomly initialised :class:`VARModel` (official VAR init; PyTorch default init for the VQVAE).

    For tests, benchmarks and small models trained from scratch. The tokenizer defaults to the release
    layout with the transformer's vocabulary and code width.
    """
    amp_dtype = _check_dtype(dtype)
    if vae_config is None:
        vae_config = VQVAEConfig(vocab_size=var_config.vocab_size, z_channels=var_config.cvae,
                                 num_hit_scales=len(var_config.patch_nums))
    with torch.random.fork_rng(devices=[]):  # the default layer inits draw from the global CPU RNG
        torch.manual_seed(seed)
        model = VARModel(var_config, vae_config, amp_dtype=amp_dtype)
    model.var.init_weights(generator=torch.Generator().manual_seed(seed))
    model.vae.requires_grad_(False)
    return model.to(device).eval()
