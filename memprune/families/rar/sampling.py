"""KV-cached RAR generation in raster order: the official guidance schedule, temperature, greedy, prefixes.

Mirrors ``RAR.generate`` of ``bytedance/1d-tokenizer`` (``modeling/rar.py``) and extends it with a
ground-truth prefix (the extraction audit forces the first N tokens) and optional top-k / top-p filtering
(both off by default; the official sampler has neither).

Generation is split in two so that the audit runs a prefix once for many decodings: :func:`prefill_tokens` is
the official loop's first step (cls, class and the prefix in one causal call), :func:`continue_tokens` the
remaining steps on a fork of that cache. One after the other they are the official loop, step for step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from memprune.errors import MempruneError
from memprune.families.base import PrefixState
from memprune.families.common import KVCache, pick_tokens
from memprune.families.rar.transformer import RARTransformer


def guidance_scale_at(
    step: int, seq_len: int, scale: float, power: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The official CFG schedule ``(scale - 1) * (1 - cos(pi * (step / n) ** power)) / 2 + 1``.

    Computed in float32 tensors exactly as the official loop does. With ``power > 0`` the scale rises from 1
    at step 0 to about ``scale`` at the end; with ``power = 0`` torch's ``0 ** 0 = 1`` makes it the constant
    ``scale`` at every step.

    Returns:
        A float32 tensor of shape [1] on ``device``.
    """
    pow_t = torch.ones(1, device=device) * power
    ramp = (1 - torch.cos(((step / seq_len) ** pow_t) * torch.pi)) * 1 / 2
    return (scale - 1) * ramp + 1


@dataclass
class RARPrefix(PrefixState):
    """A RAR batch after its prefix: the cache (cls, class, prefix rows) and the raw logits of the first free token.

    Attributes:
        cond_ids: class embedding rows ``[B]``, or ``[2B]`` (conditional, then null) with guidance.
        cache: the KV cache after the prefix; continuations fork it.
        logits: float32 ``[B or 2B, V]`` for token ``N`` before guidance, or ``None`` when the prefix is whole.
    """

    cond_ids: torch.Tensor | None = None
    cache: KVCache | None = None
    logits: torch.Tensor | None = None


@torch.no_grad()
def prefill_tokens(model: RARTransformer, labels: torch.Tensor, cond_ids: torch.Tensor, prefix: torch.Tensor,
                   cfg: float = 0.0) -> RARPrefix:
    """Feed cls, class and ``prefix`` [B, N] in one causal call (the official loop's first step); keep the cache
    and the logits of token N.

    Args:
        model: the generator.
        labels: raw class ids [B] (recorded in the state).
        cond_ids: [B] class embedding rows (label + class offset).
        prefix: [B, N] forced first tokens (N may be 0).
        cfg: guidance scale as in the official code: 0 runs the conditional model only; any other value batches
            [cond, null] (the mix itself happens per step in :func:`continue_tokens`).
    """
    cfgn = model.config
    n, ids = cfgn.image_seq_len, prefix.long()
    if cfg != 0:
        cond_ids = torch.cat([cond_ids, torch.full_like(cond_ids, cfgn.null_class_id)])
    cache = KVCache(cfgn.depth, max_len=n + 1)  # rows 0..n: cls, class, tokens 0..n-2 are ever fed
    logits = _step(model, ids, cond_ids, cache, cfg) if ids.shape[1] < n else None
    return RARPrefix(labels, ids, cfg, cond_ids, cache, logits)


def _step(model: RARTransformer, ids: torch.Tensor, cond_ids: torch.Tensor, cache: KVCache, cfg: float) -> torch.Tensor:
    """One forward over the rows not yet cached; the raw float32 logits of the newest row (it predicts the next token)."""
    seq = torch.cat([ids, ids]) if cfg != 0 else ids
    x, c = model.embed(seq, cond_ids, start=cache.length)
    h = model.run_blocks(x, c, cache)
    return model.head(h[:, -1:], c[:, -1:])[:, 0].float()


@torch.no_grad()
def continue_tokens(
    model: RARTransformer,
    state: RARPrefix,
    *,
    cfg: float | None = None,
    cfg_pow: float = 0.0,
    temperature: float = 1.0,
    greedy: bool = False,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Complete ``state`` to [B, n] tokens, one token per step, on a fork of its cache (``state`` is unchanged).

    Args:
        model: the generator that made ``state``.
        state: :func:`prefill_tokens` output.
        cfg: the guidance scale (default the prefill's; 0 = conditional only, any other value mixes
            ``uncond + (cond - uncond) * guidance_scale_at(step)`` and needs a guided prefill).
        cfg_pow: the schedule power (``guidance_scale_pow``).
        temperature, greedy, top_k, top_p, generator: see :func:`pick_tokens`.
    """
    n, ids = model.config.image_seq_len, state.prefix
    cfg = state.cfg if cfg is None else cfg
    if (cfg != 0) != (state.cfg != 0):
        raise MempruneError(f"guidance {cfg} needs a prefill with{'' if cfg else 'out'} the null-class rows: prefill again")
    if state.logits is None:
        return ids
    assert state.cache is not None and state.cond_ids is not None
    cache, logits, b, first = state.cache.fork(), state.logits, ids.shape[0], ids.shape[1]
    for step in range(first, n):
        if step > first:  # the prefill computed the first step's logits
            logits = _step(model, ids, state.cond_ids, cache, cfg)
        if cfg != 0:
            cond_logits, uncond_logits = logits[:b], logits[b:]
            scale = guidance_scale_at(step, n, cfg, cfg_pow, device=logits.device).to(logits.dtype)
            logits = uncond_logits + (cond_logits - uncond_logits) * scale
        nxt = pick_tokens(logits, temperature=temperature, greedy=greedy, top_k=top_k, top_p=top_p, generator=generator)
        ids = torch.cat([ids, nxt], dim=1)
    return ids
