"""LlamaGen (class-conditional, arXiv 2406.06525) with its VQ-16 tokenizer, as an :class:`IARModel`.

Loads the released ``c2i_{B,L}_{256,384}.pt``, ``c2i_XL_384.pt`` (DDP ``{"model": ...}``, possibly with ``optimizer``,
``args``, ``ema``), ``c2i_XXL_384.pt`` / ``c2i_3B_384.pt`` (bare FSDP state dicts) or safetensors, and
``vq_ds16_c2i.pt``, strictly, every size read from the weights. Conventions (see ``docs/api.md``):

* Tokens [B, n] in raster order (token k = latent row k // G, column k % G); n = 256 (16 x 16) at 256 px, 576 at 384.
* ``teacher_forced`` is the official eval call ``model(tokens[:, :-1], labels, input_pos=arange(n))``: the
  transformer sees n rows (class, tokens 0..n-2) and row p predicts token p. Hooks see the same n rows.
* Units: ``layers.{i}.feed_forward`` = the SwiGLU hidden ``h = silu(w1 x) * (w3 x)`` (input of w2).
* ``cfg`` is LlamaGen's guidance scale: ``uncond + (cond - uncond) * cfg`` when cfg > 1 (the null class is row
  ``num_classes`` of the class table); 1 (or 0) is no guidance, like the official ``cfg_scale > 1.0`` test.

The head count is not in the weights (``wqkv`` is [3 dim, dim] for any count): it is taken from the released sizes,
from a ``freqs_cis`` tensor when a checkpoint carries one, or from ``num_heads``. Neither is the grid: it comes from
``image_size``, a ``freqs_cis`` tensor, a ``_256``/``_384`` file name, or the release default for the width.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from memprune.errors import MempruneError
from memprune.families.common import KVCache, load_into, pick_tokens
from memprune.families.common import amp_dtype as _amp_dtype
from memprune.families.base import IARModel, PositionGroup, PrefixState
from memprune.families.llamagen.spec import SPEC
from memprune.families.llamagen.transformer import (
    HEADS_BY_WIDTH,
    LlamaGenConfig,
    LlamaGenTransformer,
    init_random_,
)
from memprune.families.llamagen.vq import LlamaGenVQ, VQConfig, load_llamagen_vq
from memprune.families.llamagen.vq import init_random_ as init_tokenizer_
from memprune.families.state_dict import read_state_dict

log = logging.getLogger(__name__)

_LAYER_KEY = re.compile(r"^layers\.(\d+)\.attention_norm\.weight$")
_CACHE_KEY = re.compile(r"^layers\.\d+\.attention\.kv_cache\.[kv]_cache$")
_REQUIRED = ("cls_embedding.embedding_table.weight", "tok_embeddings.weight", "output.weight", "norm.weight",
             "layers.0.attention.wqkv.weight", "layers.0.feed_forward.w1.weight")  # fmt: skip
_OTHER_FAMILIES = (  # a key that identifies a file given in the wrong place, and what it is
    ("quant_conv.weight", "the LlamaGen VQ tokenizer; pass it as the tokenizer"),
    ("quantize.embedding.weight", "an image tokenizer; pass it as the tokenizer"),
    ("blocks.0.ffn.fc1.weight", "a VAR checkpoint; use --arch var"),
    ("blocks.0.mlp.fc1.weight", "a RAR checkpoint; use --arch rar"),
)
#: Widths released only at 384 px (XL, XXL, 3B): their default grid is 24 x 24.
_ONLY_384 = (1280, 1536, 3200)
_C2I_DOWNSAMPLE = 16  # every released c2i model was trained on VQ-16 codes
POSITIONS = ("last", "all")


def clean_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Drop KV-cache buffers (left by a model that generated before saving) and a ``freqs_cis`` table.

    Returns the weights and the ``freqs_cis`` tensor if there was one (it tells the grid and the head size).
    """
    stale = [k for k in sd if _CACHE_KEY.match(k)]
    if stale:
        log.warning(
            "the checkpoint carries %d KV-cache buffers (%s...), saved after generation; they are not weights and "
            "were ignored", len(stale), stale[0],
        )  # fmt: skip
    freqs = sd.get("freqs_cis")
    return {k: v for k, v in sd.items() if k not in stale and k != "freqs_cis"}, freqs


def llamagen_config_from_state_dict(
    sd: Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    block_size: int | None = None,
    freqs_cis: torch.Tensor | None = None,
) -> LlamaGenConfig:
    """Infer a :class:`LlamaGenConfig` from a c2i generator state dict (KV-cache keys already removed).

    Args:
        sd: the generator weights.
        num_heads: the head count; needed for a width that is no release unless ``freqs_cis`` tells it.
        block_size: tokens per image (256 or 576); default from ``freqs_cis`` or the release for the width.
        freqs_cis: the official RoPE table ``[1 + n, head_dim / 2, 2]`` if the checkpoint carried it.

    Raises:
        MempruneError: not a LlamaGen generator, inconsistent shapes, or an unknown/contradicting head count.
    """
    missing = [k for k in _REQUIRED if k not in sd]
    if missing:
        what = next((desc for key, desc in _OTHER_FAMILIES if key in sd), None)
        raise MempruneError(
            f"not a LlamaGen c2i checkpoint: missing {missing[0]} (first key found: {next(iter(sd), '<empty>')})"
            + (f"; this is {what}" if what else "; expected c2i_*.pt from FoundationVision/LlamaGen")
        )
    vocab, dim = (int(s) for s in sd["tok_embeddings.weight"].shape)
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _LAYER_KEY.match(k)))
    if tuple(sd["layers.0.attention.wqkv.weight"].shape) != (3 * dim, dim):
        raise MempruneError(
            f"wqkv has shape {tuple(sd['layers.0.attention.wqkv.weight'].shape)}, expected ({3 * dim}, {dim}): "
            "grouped-query (n_kv_head) LlamaGen variants are not supported"
        )
    if tuple(sd["output.weight"].shape) != (vocab, dim):
        raise MempruneError(f"output.weight {tuple(sd['output.weight'].shape)} does not match tok_embeddings ({vocab}, {dim})")
    heads = _head_count(dim, num_heads, freqs_cis)
    if block_size is None and freqs_cis is not None:
        block_size = int(freqs_cis.shape[0]) - 1
    if block_size is None:
        block_size = 576 if dim in _ONLY_384 else 256
    classes = int(sd["cls_embedding.embedding_table.weight"].shape[0]) - 1  # the last row is the null class
    return LlamaGenConfig(dim, depth, heads, int(sd["layers.0.feed_forward.w1.weight"].shape[0]), vocab, classes, block_size)


def _head_count(dim: int, num_heads: int | None, freqs_cis: torch.Tensor | None) -> int:
    from_table = None
    if freqs_cis is not None and freqs_cis.ndim == 3 and dim % (2 * int(freqs_cis.shape[1])) == 0:
        from_table = dim // (2 * int(freqs_cis.shape[1]))
    if num_heads is not None:
        if num_heads <= 0 or dim % num_heads:
            raise MempruneError(f"--num-heads {num_heads} does not divide the width {dim}: pass a divisor of {dim}")
        if from_table is not None and from_table != num_heads:
            raise MempruneError(
                f"--num-heads {num_heads} contradicts the checkpoint's freqs_cis (head_dim {dim // from_table}, i.e. "
                f"{from_table} heads): omit --num-heads or pass {from_table}"
            )
        return num_heads
    if from_table is not None:
        return from_table
    if dim not in HEADS_BY_WIDTH:
        raise MempruneError(
            f"width {dim} is not a released LlamaGen size, so its head count is unknown (the weights do not store "
            "it): pass --num-heads"
        )
    return HEADS_BY_WIDTH[dim]


def _grid_tokens(freqs: torch.Tensor | None, image_size: int | None, ds: int) -> int | None:
    """Tokens per image: from the checkpoint's RoPE table, else from the image size (released c2i models all use a
    16x-downsampling VQ); ``None`` leaves the width's release default. The tokenizer must give that grid."""
    if freqs is not None:
        grid = math.isqrt(int(freqs.shape[0]) - 1)
    elif image_size is not None:
        if image_size % _C2I_DOWNSAMPLE:
            raise MempruneError(f"image size {image_size} is not a multiple of 16: LlamaGen c2i runs at 256 or 384 px")
        grid = image_size // _C2I_DOWNSAMPLE
    elif ds != _C2I_DOWNSAMPLE:
        raise MempruneError(
            f"this tokenizer downsamples {ds}x but LlamaGen c2i models use the 16x VQ-16: pass vq_ds16_c2i.pt"
        )
    else:
        return None
    if image_size is not None and grid * ds != image_size:
        raise MempruneError(
            f"the checkpoint's {grid}x{grid} grid at {image_size} px needs a tokenizer that downsamples "
            f"{image_size // grid}x, but this one downsamples {ds}x: pass the matching tokenizer (vq_ds16_c2i.pt) "
            "or image size"
        )
    return grid * grid


def image_size_from_name(path: str | os.PathLike) -> int | None:
    """256 or 384 from a released file name (``c2i_B_384.pt``), else None."""
    m = re.search(r"(?:^|[_-])(256|384)(?:[_.-]|$)", Path(str(path)).name)
    return int(m.group(1)) if m else None


@dataclass
class LlamaGenPrefix(PrefixState):
    """A LlamaGen batch after the class row and its prefix: the cache and the raw logits of token N.

    ``cache`` and ``last`` (float32 ``[B or 2B, V]``, before guidance) are ``None`` when the prefix is whole.
    """

    cache: KVCache | None = None
    last: torch.Tensor | None = None


class LlamaGenModel(IARModel):
    """LlamaGen c2i generator + VQ tokenizer behind the architecture-independent :class:`IARModel` API.

    Args:
        transformer: the generator (hook keys omit the ``transformer.`` prefix).
        tokenizer: the VQ tokenizer.
        positions: ``"last"`` (default) scores row n - 1 (input token n - 2, predicting the last token);
            ``"all"`` averages the n rows.
        amp_dtype: ``None`` (exact float32) or bfloat16 / float16 autocast for the generator.
    """

    arch = "llamagen"

    def __init__(
        self,
        transformer: LlamaGenTransformer,
        tokenizer: LlamaGenVQ,
        positions: str = "last",
        amp_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        cfg, tcfg = transformer.config, tokenizer.config
        if tcfg.codebook_size != cfg.vocab_size:
            raise MempruneError(
                f"the tokenizer has {tcfg.codebook_size} codes but the checkpoint's tok_embeddings has {cfg.vocab_size} "
                "rows: pass the tokenizer the model was trained with (vq_ds16_c2i.pt)"
            )
        if positions not in POSITIONS:
            raise MempruneError(f"positions={positions!r} is not one of {POSITIONS}")
        self.transformer, self.tokenizer = transformer, tokenizer
        self.positions = positions
        self.amp_dtype = amp_dtype if amp_dtype is None else _amp_dtype(amp_dtype)
        self.grid = cfg.grid_size
        self.image_size = cfg.grid_size * tcfg.downsample_factor
        self.num_classes = cfg.num_classes
        self.vocab_size = cfg.vocab_size
        self.seq_len = cfg.block_size
        self.eval()

    # -- input checks ---------------------------------------------------------------------------------------
    def class_ids(self, labels: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """Raw labels [B] (0..num_classes-1) -> class-table rows on the model's device (LlamaGen adds no offset)."""
        return self._raw_class_ids(labels, batch)

    # -- IARModel ---------------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Tokenize images [B, 3, S, S] in [0, 1] to raster-order tokens [B, n]."""
        return self.tokenizer.encode(images, self.image_size)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode tokens [B, n] to images [B, 3, S, S] in [0, 1] (the official [-1, 1] output, clamped)."""
        tokens = self._whole_image_tokens(tokens)
        return self.tokenizer.decode(tokens, self.grid)

    def teacher_forced(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Conditional logits [B, n, V] (float32); row p predicts ``tokens[:, p]`` (the last token is never fed)."""
        tokens = self._whole_image_tokens(tokens)
        cond = self.class_ids(labels, tokens.shape[0])
        with self._autocast():
            return self.transformer(tokens[:, :-1], cond)

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        *,
        prefix: torch.Tensor | None = None,
        cfg: float = 1.0,
        top_k: int = 0,
        top_p: float = 0.0,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Generate tokens [B, n] with a KV cache, the official way, optionally from a ground-truth prefix.

        Args:
            labels: raw class ids [B].
            prefix: [B, N] tokens forced first; they are fed in one chunk after the class row, and the chunk's last
                logits give token N (the official ``prefill`` of a prompt).
            cfg: guidance scale; > 1 batches [cond, null] and mixes ``uncond + (cond - uncond) * cfg`` at every
                step; 0 or 1 is no guidance. Published FID settings: 2.0 (B, L), 1.75 (XL, XXL), 1.65 (3B).
            top_k, top_p: filters (0 = off; top_p 1.0 is off too).
            temperature: logits divisor; greedy: argmax (the official ``sample_logits=False``).
            seed: seeds a private generator for the draws; ``None`` uses the global torch RNG.

        The cache lives only inside this call, so the model never keeps KV buffers (no state-dict pollution).
        """
        state = self.prefill(labels, prefix, cfg=cfg)
        return self.generate_from(state, top_k=top_k, top_p=top_p, temperature=temperature, greedy=greedy, seed=seed)

    @torch.no_grad()
    def prefill(self, labels: torch.Tensor, prefix: torch.Tensor | None, *, cfg: float = 1.0) -> LlamaGenPrefix:
        """The class row and the ``prefix`` chunk of :meth:`generate` (the official prefill), kept with the logits
        of token N for any number of continuations by :meth:`generate_from`; ``cfg > 1`` batches [cond, null]."""
        if cfg < 0 or 0 < cfg < 1:
            raise MempruneError(f"cfg {cfg} is not a LlamaGen guidance scale: use 1 (none) or a value > 1 (e.g. 2.0)")
        cond = self.class_ids(labels)
        b, n = cond.shape[0], self.seq_len
        ids = self._token_ids(prefix if prefix is not None else torch.zeros(b, 0, dtype=torch.long), "prefix")
        if ids.shape[0] != b:
            raise MempruneError(f"prefix has {ids.shape[0]} rows for {b} labels: pass one prefix row per label")
        guided = cfg > 1.0
        if guided:
            cond = torch.cat([cond, torch.full_like(cond, self.transformer.config.null_class_id)])
        if ids.shape[1] == n:  # the whole image is forced: nothing to predict
            return LlamaGenPrefix(labels, ids, cfg)
        cache = KVCache(len(self.transformer.layers), max_len=n)  # rows: class + tokens 0..n-2
        with self._autocast():
            logits = self.transformer(ids[:, :0].repeat(2 if guided else 1, 1), cond, cache)  # class row
            if ids.shape[1]:
                chunk = torch.cat([ids, ids]) if guided else ids
                logits = self.transformer(chunk, None, cache)
        return LlamaGenPrefix(labels, ids, cfg, cache, logits[:, -1])

    def prefill_group(self, cfg: float) -> object:
        """A prefill serves every guidance scale of its layout: none (0 or 1) or [cond, null] (> 1)."""
        return cfg > 1.0

    @torch.no_grad()
    def generate_from(
        self,
        state: LlamaGenPrefix,
        *,
        cfg: float | None = None,
        top_k: int = 0,
        top_p: float = 0.0,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Continue a :meth:`prefill` state (left unchanged: its cache is forked) to tokens [B, n]; ``cfg``: any
        scale of the prefill's layout (default the prefill's)."""
        if cfg is not None and (cfg < 0 or 0 < cfg < 1):
            raise MempruneError(f"cfg {cfg} is not a LlamaGen guidance scale: use 1 (none) or a value > 1 (e.g. 2.0)")
        cfg = self._guidance_for(state, cfg)
        if temperature <= 0 and not greedy:
            raise MempruneError(f"temperature must be > 0 (got {temperature}); use greedy=True for argmax decoding")
        ids, n = state.prefix, self.seq_len
        if state.cache is None or state.last is None:
            return ids
        b, guided = ids.shape[0], cfg > 1.0
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        cache, last = state.cache.fork(), state.last
        with self._autocast():
            while True:
                if guided:
                    last = last[b:] + (last[:b] - last[b:]) * cfg
                nxt = pick_tokens(last, temperature=temperature, greedy=greedy, top_k=top_k, top_p=top_p, generator=gen)
                ids = torch.cat([ids, nxt], dim=1)
                if ids.shape[1] == n:
                    return ids
                last = self.transformer(torch.cat([nxt, nxt]) if guided else nxt, None, cache)[:, -1]

    def hook_points(self, layer: str = "fc1") -> dict[str, nn.Module]:
        """``layers.{i}.feed_forward`` -> ``feed_forward.hidden`` (h), ``...w2`` (fc2), ``...attention.wo``."""
        return SPEC.hook_points(self.transformer, layer)  # names and modules from the spec's unit templates

    def position_groups(self) -> list[PositionGroup]:
        """``last`` = row n - 1 (predicts the last token); ``all`` = rows 0..n-1."""
        n = self.seq_len
        if self.positions == "last":
            return [PositionGroup("last_token", n - 1, n)]
        return [PositionGroup("all_tokens", 0, n)]


def load_llamagen(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    tokenizer: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    num_heads: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    image_size: int | None = None,
    positions: str = "last",
) -> LlamaGenModel:
    """Load an official LlamaGen c2i checkpoint and its VQ tokenizer as a :class:`LlamaGenModel`.

    Args:
        checkpoint: ``c2i_*.pt`` (``{"model": ...}`` or bare), safetensors, or a state dict.
        tokenizer: ``vq_ds16_c2i.pt`` or a state dict.
        num_heads: head count, required for widths that are no release (768/1024/1280/1536/3200 are known).
        device: where to place both.
        dtype: float32 (exact) or bfloat16 / float16 autocast for the generator (weights stay float32).
        image_size: 256 or 384 px; default from a ``freqs_cis`` tensor, the file name, or the width's release.
        positions: see :class:`LlamaGenModel`.

    Raises:
        MempruneError: not a LlamaGen checkpoint or tokenizer, or the two do not fit each other.
    """
    amp = _amp_dtype(dtype)
    sd, freqs = clean_state_dict(read_state_dict(checkpoint, "LlamaGen checkpoint"))
    vq = load_llamagen_vq(tokenizer, device=device)
    if image_size is None and not isinstance(checkpoint, Mapping):
        image_size = image_size_from_name(checkpoint)
    block = _grid_tokens(freqs, image_size, vq.config.downsample_factor)
    cfg = llamagen_config_from_state_dict(sd, num_heads=num_heads, block_size=block, freqs_cis=freqs)
    with torch.device("meta"):  # no throwaway random init of a multi-GB model
        model = LlamaGenTransformer(cfg)
    if isinstance(checkpoint, Mapping):  # a caller's tensors are copied, never aliased
        load_into(model.to_empty(device="cpu"), sd, "LlamaGen checkpoint")
    else:
        load_into(model, sd, "LlamaGen checkpoint", assign=True)
    del sd
    model = model.to(device=device).eval().requires_grad_(False)
    return LlamaGenModel(model, vq, positions=positions, amp_dtype=amp)


def build_random_llamagen(
    config: LlamaGenConfig,
    tokenizer_config: VQConfig | None = None,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    positions: str = "last",
) -> LlamaGenModel:
    """A randomly initialised LlamaGenModel (tests, benchmarks): one generator, transformer then tokenizer."""
    g = torch.Generator().manual_seed(seed)
    transformer = init_random_(LlamaGenTransformer(config), g)
    tcfg = tokenizer_config or VQConfig(codebook_size=config.vocab_size)
    tokenizer = init_tokenizer_(LlamaGenVQ(tcfg), g)
    return LlamaGenModel(transformer, tokenizer, positions=positions).to(device).eval().requires_grad_(False)
