"""KV-cached next-scale generation for VAR, with classifier-free guidance and an optional ground-truth prefix.

The loop follows the official ``VAR.autoregressive_infer_cfg`` step for step: at scale s the blocks run on
that scale's token map (attending to the cached keys/values of all earlier scales), the guided logits are
``(1 + t) * cond - t * uncond`` with ``t = cfg * s / (S - 1)`` (VAR's convention: ``cfg = 0`` is no
guidance), a token map is picked, and its embeddings are accumulated into ``f_hat``, whose area-downsampled
view is the next scale's input. For the first k scales of a prefix the ground-truth tokens replace the
picked ones; the blocks still run on those scales to fill the cache.

The loop is split where the first decoding choice is made: :func:`prefill_scales` runs the forced scales and the
blocks of the first free scale (its logits included), :func:`continue_scales` picks from there on. A prefill can
be continued any number of times (greedy, each seed) without running the prefix again: VAR's cache grows by
concatenation, so a continuation never writes into the tensors the prefill left, and ``f_hat`` is copied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from memprune.families.base import PrefixState
from memprune.families.var.transformer import VARTransformer
from memprune.families.var.vqvae import MultiScaleQuantizer


@dataclass(frozen=True)
class SamplingOptions:
    """How a token is picked from guided logits.

    Attributes:
        cfg: VAR guidance weight (0 = none; the official FID setting is 1.5).
        top_k: keep the k largest logits (0 = all).
        top_p: keep the smallest set of tokens whose probability mass reaches p (0 = all).
        temperature: logits are divided by it before filtering (1 = unchanged; the official sampler has none).
        greedy: take the argmax instead of sampling (top_k/top_p/temperature are then irrelevant).
    """

    cfg: float = 0.0
    top_k: int = 0
    top_p: float = 0.0
    temperature: float = 1.0
    greedy: bool = False


def filter_top_k_top_p(logits: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus of mass ``top_p`` (last axis).

    The nucleus rule is the official one: sorting ascending, a token is dropped when the cumulative
    probability up to and including it is at most ``1 - top_p``; the most likely token is always kept.
    """
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p > 0:
        ascending, order = logits.sort(dim=-1)
        drop_sorted = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -torch.inf)
    return logits


def pick_tokens(logits: torch.Tensor, opts: SamplingOptions, generator: torch.Generator | None) -> torch.Tensor:
    """Tokens ``[B, l]`` from logits ``[B, l, V]``: argmax, or a filtered multinomial draw."""
    if opts.greedy:
        return logits.argmax(dim=-1)
    if opts.temperature != 1.0:
        logits = logits / opts.temperature
    logits = filter_top_k_top_p(logits, opts.top_k, opts.top_p)
    b, n, vocab = logits.shape
    probs = logits.softmax(dim=-1).view(-1, vocab)
    return torch.multinomial(probs, num_samples=1, generator=generator).view(b, n)


@dataclass
class VARPrefix(PrefixState):
    """A VAR batch after the scales of its prefix: what every continuation starts from (never modified by one).

    Attributes:
        cond: class embeddings ``[B]`` or ``[2B]`` (conditional, then null) with guidance.
        maps: the forced token maps of the first k scales.
        f_hat: the accumulated ``f_hat`` of those scales (continuations add to a copy).
        caches: each block's cached ``[k, v]`` after scale k (the blocks ran on scale k too).
        logits: float32 ``[B or 2B, pn_k**2, V]`` of scale k before guidance; ``None`` when every scale is forced.
    """

    cond: torch.Tensor | None = None
    maps: list[torch.Tensor] = field(default_factory=list)
    f_hat: torch.Tensor | None = None
    caches: list[list[torch.Tensor]] = field(default_factory=list)
    logits: torch.Tensor | None = None


def _amp(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def prefill_scales(
    var: VARTransformer,
    quant: MultiScaleQuantizer,
    labels: torch.Tensor,
    prefix: Sequence[torch.Tensor],
    cfg: float = 0.0,
    amp_dtype: torch.dtype | None = None,
) -> VARPrefix:
    """Run the blocks on the k forced scales and on scale k, the part of the loop that no decoding choice touches.

    Args:
        var: the transformer (eval mode).
        quant: the tokenizer's quantizer (codebook and Phi convs).
        labels: ``[B]`` class indices.
        prefix: ground-truth token maps ``[B, pn_s**2]`` of the first k scales (k may be 0).
        cfg: guidance weight; any value but 0 doubles the batch with the null class (applied per continuation).
        amp_dtype: autocast dtype for the blocks, or ``None`` for float32.
    """
    cfgv = var.config
    pns, num_scales, b = cfgv.patch_nums, len(cfgv.patch_nums), labels.shape[0]
    guided = cfg != 0
    # With guidance the batch is doubled: conditional rows, then the same images under the null class.
    cond_labels = torch.cat((labels, torch.full_like(labels, cfgv.num_classes))) if guided else labels
    cond = var.class_cond(cond_labels)
    token_map = var.start_tokens(cond)
    f_hat = torch.zeros(b, cfgv.cvae, pns[-1], pns[-1], device=labels.device, dtype=torch.float32)
    logits = None
    with var.kv_cache():
        for s, pn in enumerate(pns):
            with _amp(labels.device, amp_dtype):
                h = var.run_blocks(token_map, cond, None)
            if s == len(prefix):  # the first free scale: its logits end the shared part
                logits = var.logits(h, cond)
                break
            f_hat = quant.add_scale(f_hat, quant.embed_map(prefix[s], pn), s, pns)  # the blocks ran to fill the cache
            if s != num_scales - 1:
                token_map = _next_map(var, quant, f_hat, s, guided)
        caches = var.cache_state()
    return VARPrefix(labels, torch.cat(list(prefix), dim=1) if prefix else labels.new_zeros(b, 0), cfg, cond,
                     list(prefix), f_hat, caches, logits)


def _next_map(var: VARTransformer, quant: MultiScaleQuantizer, f_hat: torch.Tensor, s: int, guided: bool) -> torch.Tensor:
    """Block input of scale ``s + 1``: the area-downsampled ``f_hat`` embedded, plus scale and position embeddings."""
    pns = var.config.patch_nums
    begin, end = var.config.begin_ends[s + 1]
    token_map = var.word_embed(quant.next_input(f_hat, pns[s + 1])) + var.lvl_pos()[:, begin:end]
    return token_map.repeat(2, 1, 1) if guided else token_map


@torch.no_grad()
def continue_scales(
    var: VARTransformer,
    quant: MultiScaleQuantizer,
    state: VARPrefix,
    opts: SamplingOptions,
    generator: torch.Generator | None = None,
    amp_dtype: torch.dtype | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Decode the free scales of ``state`` (:func:`prefill_scales`) with ``opts``; ``state`` is left unchanged.

    ``opts.cfg`` may be any weight of the prefill's batch layout (0 for an unguided prefill, any other value for a
    guided one): the guidance mix happens here, per scale.

    Returns:
        The token maps of all S scales and the final ``f_hat`` ``[B, Cvae, pn_last, pn_last]`` (float32).
    """
    cfgv = var.config
    pns, num_scales = cfgv.patch_nums, len(cfgv.patch_nums)
    assert state.f_hat is not None and state.cond is not None and (opts.cfg != 0) == (state.cfg != 0)
    b, guided, cond = state.f_hat.shape[0], opts.cfg != 0, state.cond
    chosen, f_hat = list(state.maps), state.f_hat.clone()  # add_scale adds in place
    if state.logits is None:
        return chosen, f_hat
    logits: torch.Tensor = state.logits
    with var.kv_cache(state.caches):
        for s in range(len(state.maps), num_scales):
            if s > len(state.maps):  # the prefill ran the blocks of the first free scale
                with _amp(f_hat.device, amp_dtype):
                    h = var.run_blocks(token_map, cond, None)
                logits = var.logits(h, cond)
            if guided:
                t = opts.cfg * s / (num_scales - 1)
                logits = (1 + t) * logits[:b] - t * logits[b:]
            idx = pick_tokens(logits, opts, generator)
            chosen.append(idx)
            f_hat = quant.add_scale(f_hat, quant.embed_map(idx, pns[s]), s, pns)
            if s != num_scales - 1:
                token_map = _next_map(var, quant, f_hat, s, guided)
    return chosen, f_hat


def generate_scales(
    var: VARTransformer,
    quant: MultiScaleQuantizer,
    labels: torch.Tensor,
    prefix: Sequence[torch.Tensor],
    opts: SamplingOptions,
    generator: torch.Generator | None = None,
    amp_dtype: torch.dtype | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The whole cached generation loop: :func:`prefill_scales`, then :func:`continue_scales`.

    Args:
        var: the transformer (eval mode).
        quant: the tokenizer's quantizer (codebook and Phi convs).
        labels: ``[B]`` class indices.
        prefix: ground-truth token maps ``[B, pn_s**2]`` of the first k scales (k may be 0).
        opts: guidance and sampling options.
        generator: random generator on the model's device (``None``: torch's default generator).
        amp_dtype: autocast dtype for the blocks, or ``None`` for float32.

    Returns:
        The token maps of all S scales and the final ``f_hat`` ``[B, Cvae, pn_last, pn_last]`` (float32).
    """
    state = prefill_scales(var, quant, labels, prefix, opts.cfg, amp_dtype)
    return continue_scales(var, quant, state, opts, generator, amp_dtype)
