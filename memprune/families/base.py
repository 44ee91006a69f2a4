"""The architecture-independent model API that scoring, auditing and FID are written against.

Every runnable architecture (VAR, RAR, ...) wraps its transformer and its tokenizer in an
:class:`IARModel`. The commands never special-case an architecture: they only use what is declared here.

Conventions shared by all implementations:

* Images are float tensors ``[B, 3, H, W]`` in ``[0, 1]`` at ``image_size``.
* Tokens are one flat LongTensor ``[B, seq_len]`` in generation order (VAR: the scales concatenated,
  row-major within a scale; RAR/LlamaGen: raster order).
* ``teacher_forced(tokens, labels)`` returns logits ``[B, seq_len, V]`` where **row p predicts
  ``tokens[:, p]``**, class-conditional, label dropout off, eval mode.
* FFN hook points are named by their state-dict module paths (``blocks.3.ffn.fc1``), so a score file,
  a patch and a hook all speak of the same unit. The module returned for ``fc1`` outputs the
  *post-activation* value of fc1 (the ``act`` module), which is what UnitMem measures.
* ``position_groups()`` says which rows of the block sequence the statistics of a unit are taken over
  (VAR: one group per scale; RAR: the position predicting the last token). Row indices are into the
  sequence the transformer blocks see during ``teacher_forced``.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from memprune.errors import MempruneError


@dataclass(frozen=True)
class PositionGroup:
    """A half-open range ``[begin, end)`` of block-sequence rows whose activations are averaged together."""

    name: str
    begin: int
    end: int


@dataclass
class PrefixState:
    """A batch after its ground-truth prefix pass: what every continuation of that prefix starts from.

    :meth:`IARModel.prefill` makes it and :meth:`IARModel.generate_from` continues it, any number of times
    (greedy, each seed): a continuation never changes the state. This base form only records the inputs, so a
    family without its own prefill reruns the prefix inside :meth:`IARModel.generate` (correct, not shared);
    VAR, RAR and LlamaGen subclass it with their KV caches and the logits of the first generated position.

    Attributes:
        labels: raw class ids ``[B]``.
        prefix: forced tokens ``[B, N]``.
        cfg: guidance in the family's convention; fixed by the prefill (with guidance the batch is doubled).
    """

    labels: torch.Tensor
    prefix: torch.Tensor
    cfg: float


class IARModel(nn.Module, ABC):
    """A class-conditional image autoregressive model together with its tokenizer."""

    arch: str
    image_size: int
    num_classes: int
    vocab_size: int
    seq_len: int
    #: ``None`` (exact float32) or the reduced-precision dtype the generator runs under (see :meth:`_autocast`).
    amp_dtype: torch.dtype | None = None

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Tokenize images ``[B, 3, H, W]`` in [0, 1] to tokens ``[B, seq_len]`` (int64)."""

    @abstractmethod
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode tokens ``[B, seq_len]`` to images ``[B, 3, H, W]`` in [0, 1]."""

    @abstractmethod
    def teacher_forced(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Class-conditional teacher-forced logits ``[B, seq_len, V]`` (row p predicts ``tokens[:, p]``)."""

    @abstractmethod
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
    ) -> torch.Tensor:
        """Generate tokens ``[B, seq_len]``; the first ``prefix.shape[1]`` tokens are forced to ``prefix``.

        ``cfg`` follows the family's own published convention (VAR: guidance weight, 0 = none;
        RAR/LlamaGen: guidance scale, 1 = none); each implementation documents it.
        """

    def prefill(self, labels: torch.Tensor, prefix: torch.Tensor, *, cfg: float = 0.0) -> PrefixState:
        """Run the ground-truth ``prefix`` ``[B, N]`` once, for any number of continuations by :meth:`generate_from`.

        ``generate(labels, prefix=p, cfg=c, ...)`` equals ``generate_from(prefill(labels, p, cfg=c), ...)`` bit
        for bit, and so does every further continuation of the same state. The default keeps the inputs only
        (the prefix then runs again in each continuation); a family overrides it to share the prefix pass.
        """
        return PrefixState(labels, prefix, cfg)

    def prefill_group(self, cfg: float) -> object:
        """Which guidance values one :meth:`prefill` serves: equal groups share a state (default: each value alone).

        A family whose prefix pass depends only on the batch layout (conditional rows, or conditional and null rows
        under guidance) returns that layout, so one guided prefill serves every guidance weight.
        """
        return cfg

    def generate_from(
        self,
        state: PrefixState,
        *,
        cfg: float | None = None,
        top_k: int = 0,
        top_p: float = 0.0,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Continue ``state`` (:meth:`prefill`) to whole sequences ``[B, seq_len]``; ``state`` is left unchanged.

        ``cfg`` (default: the prefill's) may be any value of the prefill's :meth:`prefill_group`.
        """
        return self.generate(state.labels, prefix=state.prefix, cfg=self._guidance_for(state, cfg), top_k=top_k, top_p=top_p,
                             temperature=temperature, greedy=greedy, seed=seed)

    def _guidance_for(self, state: PrefixState, cfg: float | None) -> float:
        """``cfg`` (or the prefill's) after checking that the prefill's batch layout serves it."""
        cfg = state.cfg if cfg is None else cfg
        if self.prefill_group(cfg) != self.prefill_group(state.cfg):
            raise MempruneError(f"guidance {cfg} cannot continue a prefix pass made for guidance {state.cfg}: "
                                "prefill again with it")
        return cfg

    @abstractmethod
    def hook_points(self, layer: str = "fc1") -> dict[str, nn.Module]:
        """Map unit-layer names (``blocks.{i}.ffn.fc1``) to the module whose forward output holds the units.

        ``layer`` is one of ``fc1`` (post-activation), ``fc2`` or ``attn.proj``. The output's last axis is
        the unit axis and its second axis the block-sequence row.
        """

    @abstractmethod
    def position_groups(self) -> list[PositionGroup]:
        """The row groups over which per-unit statistics are averaged (one score per group)."""

    def image_independent_groups(self) -> list[str]:
        """Position groups whose activations cannot depend on the image (VAR: scale 0 sees only the class).

        Their per-image statistics measure class selectivity, not memorization of an image, so selection
        leaves them out when it aggregates over groups.
        """
        return []

    def valid_prefix_lengths(self) -> list[int] | None:
        """Token counts a prefix may have (VAR: scale boundaries); ``None`` means any length."""
        return None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- helpers shared by the family wrappers ---------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to ``amp_dtype`` on the model's device, or nothing when it is ``None``."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _raw_class_ids(self, labels: torch.Tensor, batch: int | None, hint: str = "") -> torch.Tensor:
        """Check raw labels [B] (one per image when ``batch`` is given, each in 0..num_classes-1) -> int64 on device.

        ``hint`` ends the out-of-range message (a family that offsets ids says so there).
        """
        labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.ndim != 1:
            raise MempruneError(f"labels must be a 1-D integer tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
        if batch is not None and labels.shape[0] != batch:
            raise MempruneError(f"{labels.shape[0]} labels for a batch of {batch}: pass one label per image")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise MempruneError(f"label {bad} is out of range [0, {self.num_classes - 1}]: pass raw class ids{hint}")
        return labels.to(self.device).long()

    def _token_ids(self, tokens: torch.Tensor, what: str, hint: str = "") -> torch.Tensor:
        """Check integer tokens [B, <= seq_len] in the vocabulary -> int64 on device; ``hint`` ends the shape error."""
        tokens = torch.as_tensor(tokens)
        if tokens.ndim != 2 or tokens.shape[1] > self.seq_len or tokens.is_floating_point():
            raise MempruneError(
                f"{what} has shape {tuple(tokens.shape)} ({tokens.dtype}), expected an integer [B, <= {self.seq_len}] "
                f"tensor{hint}"
            )
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise MempruneError(
                f"{what} values span [{int(tokens.min())}, {int(tokens.max())}], expected [0, {self.vocab_size - 1}]: "
                "they are not tokens of this tokenizer"
            )
        return tokens.to(self.device).long()

    def _whole_image_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """:meth:`_token_ids` for a full sequence of ``seq_len`` tokens per image."""
        tokens = self._token_ids(tokens, "tokens")
        if tokens.shape[1] != self.seq_len:
            raise MempruneError(f"tokens have {tokens.shape[1]} columns, expected {self.seq_len}: pass whole images")
        return tokens
