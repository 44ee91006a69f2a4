"""Converting checkpoints to safetensors (``memprune convert``), checked by reloading every tensor."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from memprune.errors import MempruneError
from memprune.io import check_output_path, open_checkpoint, save_safetensors
from memprune.io.pickles import unsafe_load_trusted
from memprune.io.reader import _strip_prefixes, _unwrap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertResult:
    output: Path
    tensors: int
    source_format: str
    trusted_pickle: bool


def convert(source: str | os.PathLike, output: str | os.PathLike, *, trust_pickle: bool = False) -> ConvertResult:
    """Write ``source``'s tensors to ``output`` (safetensors) and check the round trip bit for bit.

    With ``trust_pickle`` the pickle is loaded with ``weights_only=False``: arbitrary code in it runs. This is
    never done implicitly; it is logged.
    """
    src = Path(source)
    if not str(output).endswith(".safetensors"):
        raise MempruneError(f"output {output} must end in .safetensors")
    out = check_output_path(output, src)
    if trust_pickle:
        state, _, _ = _unwrap(unsafe_load_trusted(src), src)
        tensors = {_strip_prefixes(k): v for k, v in state.items()}
        fmt, meta = "pickle", {}
    else:
        with open_checkpoint(src) as ckpt:
            tensors = {k: ckpt.get(k) for k in ckpt.keys()}
            fmt, meta = ckpt.format, dict(ckpt.metadata)
    meta["memprune.converted_from"] = src.name
    if trust_pickle:
        meta["memprune.trusted_pickle"] = "true"
    # Shared storage (tied weights) must be materialised: safetensors stores each tensor on its own.
    save_safetensors({k: v.detach().clone().contiguous() for k, v in tensors.items()}, out, meta)
    with open_checkpoint(out) as back:
        bad = [k for k in tensors if k not in back or not torch.equal(back.get(k), tensors[k].cpu())
               and not (tensors[k].is_floating_point() and torch.equal(back.get(k).isnan(), tensors[k].isnan()))]
    if bad:
        out.unlink(missing_ok=True)
        raise MempruneError(f"round trip changed {bad[0]}: conversion aborted and the output removed")
    return ConvertResult(out, len(tensors), fmt, trust_pickle)
