"""KV-cached next-scale generation for VAR, with classifier-free guidance and an optional ground-truth prefix.

The loop follows the official ``VAR.autoregressive_infer_cfg`` step for step: at scale s the blocks run on
that scale's token map (attending to the cached keys/values of all earlier scales), the guided logits are
``(1 + t) * cond - t * uncond`` with ``t = cfg * s / (S - 1)`` (VAR's convention: ``cfg = 0`` is no
guidance), a token map is picked, and its embeddings are accumulated into ``f_hat``, whose area-downsampled
view is the next scale's input. For the first k scales of a prefix the ground-truth tokens replace the
picked ones; the blocks still run on those scales to fill the cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

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


@torch.no_grad()
def generate_scales(
    var: VARTransformer,
    quant: MultiScaleQuantizer,
    labels: torch.Tensor,
    prefix: Sequence[torch.Tensor],
    opts: SamplingOptions,
    generator: torch.Generator | None = None,
    amp_dtype: torch.dtype | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the cached generation loop.

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
    cfg = var.config
    pns, num_scales, b = cfg.patch_nums, len(cfg.patch_nums), labels.shape[0]
    guided = opts.cfg != 0
    # With guidance the batch is doubled: conditional rows, then the same images under the null class.
    cond_labels = torch.cat((labels, torch.full_like(labels, cfg.num_classes))) if guided else labels
    device = labels.device
    amp = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
           else contextlib.nullcontext())
    cond = var.class_cond(cond_labels)
    lvl_pos = var.lvl_pos()
    token_map = var.start_tokens(cond)
    f_hat = torch.zeros(b, cfg.cvae, pns[-1], pns[-1], device=device, dtype=torch.float32)
    chosen: list[torch.Tensor] = []
    with var.kv_cache():
        for s, pn in enumerate(pns):
            with amp:
                h = var.run_blocks(token_map, cond, None)
            if s < len(prefix):
                idx = prefix[s]  # the blocks ran only to fill the cache
            else:
                logits = var.logits(h, cond)
                if guided:
                    t = opts.cfg * s / (num_scales - 1)
                    logits = (1 + t) * logits[:b] - t * logits[b:]
                idx = pick_tokens(logits, opts, generator)
            chosen.append(idx)
            f_hat = quant.add_scale(f_hat, quant.embed_map(idx, pn), s, pns)
            if s != num_scales - 1:
                begin, end = cfg.begin_ends[s + 1]
                token_map = var.word_embed(quant.next_input(f_hat, pns[s + 1])) + lvl_pos[:, begin:end]
                if guided:
                    token_map = token_map.repeat(2, 1, 1)
    return chosen, f_hat
