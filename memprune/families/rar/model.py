"""RAR (Randomized AutoRegressive, arXiv 2411.00776) with its MaskGIT-VQGAN tokenizer, as an :class:`IARModel`.

Loads the official ``rar_{b,l,xl,xxl}.bin`` (Hugging Face ``yucornetto/RAR``) and
``maskgit-vqgan-imagenet-f16-256.bin`` (``fun-research/TiTok``) strictly, with every size read from the
checkpoints. Conventions (see ``docs/api.md``):

* Tokens [B, 256] in raster order (token k = latent row k // 16, column k % 16); images [B, 3, 256, 256] in [0, 1].
* Labels are raw ImageNet classes 0..999; the class offset (+1025 for the released vocabulary) is applied here.
* ``teacher_forced`` runs the official ``forward_fn(tokens, labels + 1025, orders=None)`` (raster order, no
  label dropout, eval mode). The official output has 257 rows; row j predicts token j and row 256 has no
  target, so it is dropped: our row p = official row p = block-sequence row p + 1.
* Hooks see the **block sequence** of 258 rows: 0 = cls, 1 = class token (predicts token 0), 2 + k = token k
  (predicts token k + 1), 257 = token 255 (predicts nothing). Position groups index these rows.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from memprune.errors import MempruneError
from memprune.families.base import IARModel, PositionGroup
from memprune.families.common import amp_dtype as _amp_dtype
from memprune.families.common import load_into
from memprune.families.rar.maskgit_vqgan import (
    MaskGITVQGAN,
    MaskGITVQGANConfig,
    load_maskgit_vqgan,
)
from memprune.families.rar.maskgit_vqgan import init_random_ as init_tokenizer_
from memprune.families.rar.sampling import RARPrefix, continue_tokens, prefill_tokens
from memprune.families.rar.spec import SPEC
from memprune.families.rar.transformer import RARConfig, RARTransformer, init_random_
from memprune.families.state_dict import read_state_dict

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.norm1\.weight$")
_REQUIRED = (
    "cls_token",
    "pos_embed",
    "target_aware_pos_embed",
    "timesteps_embeddings",
    "embeddings.weight",
    "lm_head.weight",
    "blocks.0.mlp.fc1.weight",
    "blocks.0.attn.q_norm.weight",
)
_OTHER_FAMILIES = (  # a key that identifies a checkpoint given in the wrong place, and what it is
    ("quantize.embedding.weight", "the MaskGIT-VQGAN tokenizer; pass it as `tokenizer`"),
    ("blocks.0.ffn.fc1.weight", "a VAR checkpoint; use the VAR loader"),
    ("layers.0.feed_forward.w1.weight", "a LlamaGen checkpoint; use the LlamaGen loader"),
)
POSITIONS = ("last", "all")


def rar_config_from_state_dict(sd: Mapping[str, torch.Tensor], num_heads: int | None = None) -> RARConfig:
    """Infer a :class:`RARConfig` from a RAR generator state dict.

    Width, depth, MLP hidden size, vocabulary, classes and sequence length come from tensor shapes; the head
    count from the per-head ``q_norm`` (its length is the head dimension).

    Args:
        sd: the generator state dict (``rar_*.bin``).
        num_heads: optional explicit head count; must agree with the checkpoint's head dimension.

    Raises:
        MempruneError: not a RAR generator, inconsistent shapes, or a contradicting ``num_heads``.
    """
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        what = next((desc for key, desc in _OTHER_FAMILIES if key in sd), None)
        found = next(iter(sd), "<empty>")
        raise MempruneError(
            f"not a RAR generator checkpoint: missing {missing[0]} (first key found: {found})"
            + (f"; this is {what}" if what else "; expected rar_b/l/xl/xxl.bin from yucornetto/RAR")
        )
    d = int(sd["cls_token"].shape[-1])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k)))
    head_dim = int(sd["blocks.0.attn.q_norm.weight"].shape[0])
    if d % head_dim:
        raise MempruneError(f"q_norm length {head_dim} does not divide the hidden size {d}: not a RAR layout")
    heads = d // head_dim
    if num_heads is not None and num_heads != heads:
        raise MempruneError(
            f"num_heads={num_heads} contradicts the checkpoint: q_norm has head_dim {head_dim}, i.e. {heads} heads "
            f"for hidden size {d}; omit num_heads or pass {heads}"
        )
    vocab = int(sd["lm_head.weight"].shape[0])
    classes = int(sd["embeddings.weight"].shape[0]) - vocab - 2  # rows: V image tokens, mask, classes, null
    n = int(sd["timesteps_embeddings"].shape[1]) - 100
    if classes <= 0 or n <= 0 or int(sd["pos_embed"].shape[1]) != n + 1024:
        raise MempruneError(
            f"RAR embedding sizes are inconsistent (embeddings {tuple(sd['embeddings.weight'].shape)}, lm_head "
            f"{tuple(sd['lm_head.weight'].shape)}, pos_embed {tuple(sd['pos_embed'].shape)}, timesteps "
            f"{tuple(sd['timesteps_embeddings'].shape)}): pass an unmodified official checkpoint"
        )
    return RARConfig(d, depth, heads, int(sd["blocks.0.mlp.fc1.weight"].shape[0]), vocab, classes, n)


def load_rar_transformer(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    num_heads: int | None = None,
) -> RARTransformer:
    """Build the RAR generator from its checkpoint (strict load, eval mode, frozen); see :func:`load_rar`.

    ``dtype`` is the parameter dtype of the returned module (``load_rar`` keeps float32 weights and uses autocast).
    """
    sd = read_state_dict(checkpoint, "RAR checkpoint")
    cfg = rar_config_from_state_dict(sd, num_heads)
    with torch.device("meta"):  # no throwaway random init of a multi-GB model
        model = RARTransformer(cfg)
    if isinstance(checkpoint, Mapping):  # a caller's tensors are copied, never aliased
        load_into(model.to_empty(device="cpu"), sd, "RAR checkpoint")
    else:  # our own freshly read tensors become the parameters: one copy of the weights in memory, not two
        load_into(model, sd, "RAR checkpoint", assign=True)
    del sd
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class RARModel(IARModel):
    """RAR generator + MaskGIT-VQGAN tokenizer behind the architecture-independent :class:`IARModel` API.

    Args:
        transformer: the generator (submodule ``transformer``; hook keys omit this prefix).
        tokenizer: the image tokenizer (submodule ``tokenizer``).
        positions: ``"last"`` (default) scores block row n (= 256: input token n-2, the last supervised
            step, predicting the last token); ``"all"`` averages rows 1..n, the n rows that predict tokens.
        amp_dtype: ``None`` (exact float32) or ``torch.bfloat16`` / ``torch.float16`` to run the generator
            under autocast (weights stay float32; logits are returned as float32; the tokenizer is float32).
    """

    arch = "rar"

    def __init__(
        self,
        transformer: RARTransformer,
        tokenizer: MaskGITVQGAN,
        positions: str = "last",
        amp_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        cfg, tcfg = transformer.config, tokenizer.config
        if cfg.codebook_size != tcfg.codebook_size:
            raise MempruneError(
                f"tokenizer has {tcfg.codebook_size} codes but the RAR checkpoint predicts {cfg.codebook_size}: "
                "pass the tokenizer the generator was trained with (maskgit-vqgan-imagenet-f16-256.bin)"
            )
        if cfg.image_seq_len != tcfg.num_tokens:
            raise MempruneError(
                f"tokenizer makes {tcfg.num_tokens} tokens per image but the RAR checkpoint expects {cfg.image_seq_len}: "
                "pass the matching tokenizer/resolution"
            )
        if positions not in POSITIONS:
            raise MempruneError(f"positions={positions!r} is not one of {POSITIONS}")
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.positions = positions
        self.amp_dtype = amp_dtype if amp_dtype is None else _amp_dtype(amp_dtype)
        self.image_size = tcfg.resolution
        self.num_classes = cfg.num_classes
        self.vocab_size = cfg.codebook_size
        self.seq_len = cfg.image_seq_len
        self.eval()  # inference only: dropout-free anyway, but eval() is the official state

    # -- input checks ---------------------------------------------------------------------------------------
    def class_ids(self, labels: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """Raw labels [B] (0..num_classes-1) -> embedding rows (label + class offset) on the model's device."""
        offset = self.transformer.config.class_offset
        return self._raw_class_ids(labels, batch, f" (the +{offset} offset is applied internally)") + offset

    # -- IARModel ---------------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Tokenize images [B, 3, 256, 256] in [0, 1] to raster-order tokens [B, 256]."""
        return self.tokenizer.encode(images)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode tokens [B, 256] to images [B, 3, 256, 256] in [0, 1]."""
        return self.tokenizer.decode(tokens)

    def teacher_forced(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Conditional teacher-forced logits [B, 256, V]; row p predicts ``tokens[:, p]``.

        The blocks see 258 rows (hooks fire once with [B, 258, F]); the official 257th logits row, which has
        no target, is dropped.
        """
        tokens = self._whole_image_tokens(tokens)
        cond = self.class_ids(labels, tokens.shape[0])
        with self._autocast():
            logits = self.transformer(tokens, cond)
        return logits[:, : self.seq_len].float()

    def generate(
        self,
        labels: torch.Tensor,
        *,
        prefix: torch.Tensor | None = None,
        cfg: float = 0.0,
        top_k: int = 0,
        top_p: float = 0.0,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
        cfg_pow: float = 0.0,
    ) -> torch.Tensor:
        """Generate tokens [B, 256] in raster order with a KV cache, optionally from a ground-truth prefix.

        Args:
            labels: raw class ids [B].
            prefix: [B, N] tokens forced at the start (N <= 256); the audit uses N = 30.
            cfg: guidance scale, official convention: 0 = conditional only (the official ``guidance_scale=0``
                branch; 1 is also no guidance, but runs the [cond, null] batch like the official code);
                otherwise [cond, null] are batched and mixed with the official schedule. The released
                FID settings are B 16.0/2.75, L 15.5/2.5, XL 6.9/1.5, XXL 8.0/1.2 (scale/``cfg_pow``).
            top_k, top_p: optional filters (0 = off; the official sampler has neither).
            temperature: logits divisor (the official ``randomize_temperature``).
            greedy: argmax instead of sampling (temperature and filters are then irrelevant).
            seed: seeds a private generator for the draws; ``None`` uses the global torch RNG.
            cfg_pow: guidance schedule power (``guidance_scale_pow``); 0 = constant scale.
        """
        state = self.prefill(labels, prefix, cfg=cfg)
        return self.generate_from(state, top_k=top_k, top_p=top_p, temperature=temperature, greedy=greedy, seed=seed,
                                  cfg_pow=cfg_pow)

    def prefill(self, labels: torch.Tensor, prefix: torch.Tensor | None, *, cfg: float = 0.0) -> RARPrefix:
        """The first step of :meth:`generate` (cls, class and ``prefix`` in one causal call), kept for any number
        of continuations by :meth:`generate_from`; ``cfg != 0`` batches [cond, null]."""
        cond = self.class_ids(labels)
        b = cond.shape[0]
        if prefix is None:
            prefix = torch.zeros(b, 0, dtype=torch.long)
        prefix = self._token_ids(prefix, "prefix", f": a prefix may hold at most {self.seq_len} tokens")
        if prefix.shape[0] != b:
            raise MempruneError(f"prefix has {prefix.shape[0]} rows for {b} labels: pass one prefix row per label")
        with self._autocast():
            return prefill_tokens(self.transformer, labels, cond, prefix, cfg)

    def prefill_group(self, cfg: float) -> object:
        """A prefill serves every guidance scale of its layout: conditional only (0) or [cond, null] (any other)."""
        return cfg != 0

    def generate_from(
        self,
        state: RARPrefix,
        *,
        cfg: float | None = None,
        top_k: int = 0,
        top_p: float = 0.0,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
        cfg_pow: float = 0.0,
    ) -> torch.Tensor:
        """Continue a :meth:`prefill` state (left unchanged) to tokens [B, 256]; options as in :meth:`generate`
        (``cfg``: any scale of the prefill's layout, default the prefill's)."""
        cfg = self._guidance_for(state, cfg)
        if temperature <= 0 and not greedy:
            raise MempruneError(f"temperature must be > 0 (got {temperature}); use greedy=True for argmax decoding")
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(seed)
        with self._autocast():
            return continue_tokens(
                self.transformer, state, cfg=cfg, cfg_pow=cfg_pow, temperature=temperature, greedy=greedy, top_k=top_k,
                top_p=top_p, generator=gen,
            )  # fmt: skip

    def hook_points(self, layer: str = "fc1") -> dict[str, nn.Module]:
        """``blocks.{i}.mlp.fc1`` -> ``mlp.act`` (post-GELU), ``blocks.{i}.mlp.fc2``, ``blocks.{i}.attn.proj``.

        In ``teacher_forced`` the hooked outputs are [B, 258, units] (block-sequence rows). During ``generate``
        they fire once per step with only the new rows ([B or 2B with CFG, rows, units]).
        """
        return SPEC.hook_points(self.transformer, layer)  # names and modules from the spec's unit templates

    def position_groups(self) -> list[PositionGroup]:
        """Rows of the 258-row block sequence: ``last`` = [256, 257), ``all`` = [1, 257)."""
        n = self.seq_len
        if self.positions == "last":
            return [PositionGroup("last_token", n, n + 1)]  # row n holds token n-2 and predicts token n-1
        return [PositionGroup("all_tokens", 1, n + 1)]  # rows 1..n predict tokens 0..n-1


def load_rar(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    tokenizer: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    num_heads: int | None = None,
    positions: str = "last",
) -> RARModel:
    """Load an official RAR generator and its MaskGIT-VQGAN tokenizer as a :class:`RARModel`.

    Args:
        checkpoint: ``rar_{b,l,xl,xxl}.bin`` (a plain state dict; safetensors also accepted) or a state dict.
        tokenizer: ``maskgit-vqgan-imagenet-f16-256.bin`` or a state dict.
        device: where to place both.
        dtype: ``torch.float32`` (exact), or ``torch.bfloat16`` / ``torch.float16`` to run the generator under
            autocast (weights stay float32; logits float32). The tokenizer always runs in true float32 (TF32
            off): its codes are argmins that lower precision flips.
        num_heads: optional check of the head count (it is inferred from the checkpoint).
        positions: ``"last"`` or ``"all"``, see :meth:`RARModel.position_groups`.

    Raises:
        MempruneError: not a RAR checkpoint, missing/unexpected keys, or a tokenizer that does not fit.
    """
    amp = _amp_dtype(dtype)
    model = load_rar_transformer(checkpoint, device=device, num_heads=num_heads)
    tok = load_maskgit_vqgan(tokenizer, device=device)
    return RARModel(model, tok, positions=positions, amp_dtype=amp)


def build_random_rar(
    config: RARConfig,
    tokenizer_config: MaskGITVQGANConfig | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    positions: str = "last",
) -> RARModel:
    """A randomly initialised RARModel (benchmarks, tests); the generator uses :func:`init_random_`.

    Args:
        config: generator sizes, e.g. ``RAR_CONFIGS["rar_b"]``.
        tokenizer_config: tokenizer sizes (default: the released 128-channel tokenizer, with the codebook
            size of ``config``).
        seed: seeds one CPU generator drawn for the transformer, then the tokenizer.
        dtype: as in :func:`load_rar` (autocast dtype; weights are float32).
    """
    g = torch.Generator().manual_seed(seed)
    transformer = init_random_(RARTransformer(config), g)
    tcfg = tokenizer_config or MaskGITVQGANConfig(codebook_size=config.codebook_size)
    tokenizer = init_tokenizer_(MaskGITVQGAN(tcfg), g)
    model = RARModel(transformer, tokenizer, positions=positions, amp_dtype=_amp_dtype(dtype))
    return model.to(device=device).eval().requires_grad_(False)
