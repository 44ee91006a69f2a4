"""Helpers of the distributed audit/FID tests: a tiny VAR on disk and the worker that 2 gloo ranks run.

Importable by ``torch.multiprocessing.spawn`` children (they receive the parent's ``sys.path``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def write_setup(root: Path) -> Path:
    """Baseline and zeroed-half checkpoints, the tokenizer and six photos in two classes under ``root``."""
    import skimage.data as skimage_data
    from test_audit_cli import _tiny_var

    from memprune.io import save_safetensors

    model = _tiny_var()
    save_safetensors({k: v.contiguous() for k, v in model.var.state_dict().items()}, root / "var.safetensors")
    save_safetensors({k: v.contiguous() for k, v in model.vae.state_dict().items()}, root / "vae.safetensors")
    other = _tiny_var(seed=1)
    save_safetensors({k: v.contiguous() for k, v in other.var.state_dict().items()}, root / "other.safetensors")
    for k, name in enumerate(PHOTOS):
        folder = root / "data" / f"class{k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        img = getattr(skimage_data, name)()
        Image.fromarray(img).convert("RGB").save(folder / f"{name}.png")
    return root


def audit_kwargs(root: Path) -> dict:
    from memprune.evaluators.audit import AuditSettings

    settings = AuditSettings(prefixes=(2,), seeds=(0,), batch_size=1)  # 2 conditions, greedy and sampled
    return dict(settings=settings, data=root / "data", baseline=root / "var.safetensors", per_class=2,
                sscd_spec="onnx", device="cpu", grid_rows=4)


def worker(rank: int, world: int, port: int, root: str, out: str, extra: dict) -> None:
    """One gloo rank of a distributed audit (or FID when ``extra['fid']``)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        if extra.get("fid"):
            from test_fid_cmd import PooledPixels

            from memprune.evaluators import fid_run

            fid_run.load_inception = lambda spec, device: PooledPixels()  # a cheap stand-in in this child only
            fid_run.fid(**{**extra["fid"], "output": out})
        else:
            from memprune.evaluators import audit as A
            from memprune.evaluators.audit_run import audit

            if extra.pop("die_after_first_step", False) and rank == 0:
                append = A.append_jsonl

                def append_then_die(path, rows):  # noqa: ANN001, ANN202 - a hard kill once the first step is on disk
                    append(path, rows)
                    if str(path).endswith("results.jsonl"):
                        os._exit(9)

                A.append_jsonl = append_then_die
            kwargs = {**audit_kwargs(Path(root)), **extra}
            audit(Path(root) / "other.safetensors", Path(root) / "vae.safetensors", out, **kwargs)
    finally:
        dist.destroy_process_group()
