"""Pieces shared by several families: KV cache, token sampling, exact-float32 context, strict loading, autocast dtype.

Family-specific code lives in ``memprune/families/<name>/``; what two families compute the same way lives here
once (RAR and LlamaGen share the cache, the sampler and the loaders; every family's tokenizer runs in exact
float32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from memprune.errors import MempruneError


class KVCache:
    """Per-layer key/value buffers for incremental decoding, preallocated to ``max_len`` rows.

    Held by the caller, not by the modules, so an exception can never leave a model in cached mode.
    """

    def __init__(self, depth: int, max_len: int):
        self.max_len = max_len
        self.length = 0  # rows already stored (identical for every layer between forward calls)
        self._k: list[torch.Tensor | None] = [None] * depth
        self._v: list[torch.Tensor | None] = [None] * depth

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values [B, H, N, hd] after the cached rows; return all rows so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise MempruneError(f"KV cache holds {self.max_len} rows, {end} requested: start a new cache")
        if self._k[layer] is None:
            shape = (k.shape[0], k.shape[1], self.max_len, k.shape[3])
            self._k[layer] = k.new_empty(shape)
            self._v[layer] = v.new_empty(shape)
        kb, vb = self._k[layer], self._v[layer]
        assert kb is not None and vb is not None
        kb[:, :, self.length : end] = k
        vb[:, :, self.length : end] = v
        return kb[:, :, :end], vb[:, :, :end]

    def fork(self) -> KVCache:
        """An independent cache holding the same rows, to continue from here without touching this one.

        Buffers of the same shape (hence the same strides) receive the stored rows; the rows after them are
        written before they are ever read, as in the original. Attention over the copy therefore computes
        exactly what it computes over this cache.
        """
        other = KVCache(len(self._k), self.max_len)
        other.length = self.length
        for layer, (kb, vb) in enumerate(zip(self._k, self._v)):
            if kb is None or vb is None:
                continue
            other._k[layer], other._v[layer] = kb.new_empty(kb.shape), vb.new_empty(vb.shape)
            other._k[layer][:, :, : self.length] = kb[:, :, : self.length]  # type: ignore[index]
            other._v[layer][:, :, : self.length] = vb[:, :, : self.length]  # type: ignore[index]
        return other


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) sets to -inf; 0 disables either filter."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def pick_tokens(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    greedy: bool = False,
    top_k: int = 0,
    top_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next tokens [B, 1] from logits [B, V]: argmax when greedy, else softmax(logits / T) sampling."""
    if greedy:
        return logits.argmax(dim=-1, keepdim=True)
    logits = _filter_top_k_top_p(logits / temperature, top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """True float32 inside: autocast off and, on CUDA, TF32 off (restored afterwards).

    TF32 convolutions (cuDNN's default) perturb latents by ~1e-3, enough to flip nearest-code choices.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def load_into(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str, assign: bool = False) -> None:
    """Strictly load ``sd`` into ``module``; any missing/unexpected key or shape mismatch is a MempruneError.

    ``assign=True`` makes the tensors of ``sd`` the parameters (no copy; needed for a module built on ``meta``).
    """
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise MempruneError(
            f"{what} keys do not match the inferred architecture: {', '.join(parts)}; pass an unmodified official checkpoint"
        )
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise MempruneError(
                f"{what} tensor {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)} for this architecture"
            )
    module.load_state_dict({k: sd[k] for k in own}, strict=True, assign=assign)


def amp_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """The autocast dtype for a model dtype: ``None`` (no autocast) for float32, bf16 / fp16 themselves."""
    if dtype == torch.float32:
        return None
    if dtype in (torch.bfloat16, torch.float16):
        return dtype
    raise MempruneError(f"dtype {dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16")
