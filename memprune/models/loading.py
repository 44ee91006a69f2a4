"""Building a runnable model from checkpoint files, on the requested device and precision.

Shared by ``score``, ``audit``, ``fid`` and ``demo``: architecture detection picks the adapter, whose
``load_model`` builds our implementation of the network and its tokenizer from the official state dicts.
"""

from __future__ import annotations

import os

import torch

from memprune.errors import MempruneError
from memprune.models.base import IARModel

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """``auto`` -> bfloat16 on CUDA (mixed precision; statistics stay float32/64), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise MempruneError(f"--dtype {dtype!r} is unknown: choose auto, float32, bfloat16 or float16") from None


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available; a CUDA device without CUDA is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MempruneError(f"--device {device!r} is not a torch device: use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MempruneError(f"--device {device} was asked for but CUDA is not available here: use --device cpu")
    return device


def load_model(
    checkpoint: str | os.PathLike | IARModel,
    tokenizer: str | os.PathLike | None,
    *,
    device: str,
    dtype: str | torch.dtype,
    arch: str | None = None,
    digest: str | None = None,
) -> tuple[IARModel, str | None]:
    """The runnable model (network + tokenizer) in eval mode on ``device``, and the checkpoint's digest.

    A checkpoint path goes through adapter detection and ``adapter.load_model``; a model object is used as
    is (moved to ``device``), with ``digest`` recorded as its identity.
    """
    device = resolve_device(device)
    if isinstance(checkpoint, IARModel):
        return checkpoint.to(device).eval(), digest
    from memprune.adapters import detect_adapter
    from memprune.io import checkpoint_sha256, open_checkpoint, resolve_checkpoint_path

    if tokenizer is None:
        raise MempruneError("running the model needs its tokenizer too: pass --tokenizer TOKENIZER_CHECKPOINT")
    path = resolve_checkpoint_path(checkpoint)
    with open_checkpoint(path) as ckpt:
        adapter = detect_adapter(ckpt, arch)
    try:
        model = adapter.load_model(path, tokenizer, device=device, dtype=resolve_dtype(dtype, device))
    except MempruneError as exc:  # another family's tokenizer: name the one this model needs
        from memprune.identify import tokenizer_mismatch_message

        message = tokenizer_mismatch_message(adapter.name, tokenizer)
        if message is None:
            raise
        raise MempruneError(message) from exc
    return model.eval(), digest or checkpoint_sha256(path)
