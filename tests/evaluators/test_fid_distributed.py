"""``fid`` across 2 gloo ranks, and as ``--shard`` parts + merge, gives the single-process statistics bit for bit."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dist_audit_helpers import worker
from test_fid_cmd import PooledPixels, _tiny_var

from typer.testing import CliRunner

from memprune.cli import app
from memprune.errors import MempruneError
from memprune.evaluators.fid import FeatureStatsAccumulator, FIDStats
from memprune.io import save_safetensors

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_dist")
    model = _tiny_var()
    save_safetensors({k: v.contiguous() for k, v in model.var.state_dict().items()}, root / "var.safetensors")
    save_safetensors({k: v.contiguous() for k, v in model.vae.state_dict().items()}, root / "vae.safetensors")
    acc = FeatureStatsAccumulator(dim=12, keep_features=True)
    acc.update(torch.rand(9, 12, generator=torch.Generator().manual_seed(3)))
    acc.compute().save(root / "ref.npz")
    return root


def _kwargs(root) -> dict:
    # The tiny VAR has 3 classes: 3 per class = 9 images in 5 batches of 2 (the last one short).
    return dict(checkpoint=root / "var.safetensors", tokenizer=root / "vae.safetensors", ref=root / "ref.npz",
                per_class=3, batch_size=2, seed=5, device="cpu", kid_subsets=2)


@pytest.fixture(scope="module")
def single(files, tmp_path_factory):
    from memprune.evaluators import fid_run

    out = tmp_path_factory.mktemp("single") / "fid"
    real = fid_run.load_inception
    fid_run.load_inception = lambda spec, device: PooledPixels()
    try:
        result = fid_run.fid(output=out, **_kwargs(files))
    finally:
        fid_run.load_inception = real
    return out, result


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same(a, b) -> None:
    sa, sb = FIDStats.load(a / "samples_stats.npz"), FIDStats.load(b / "samples_stats.npz")
    assert np.array_equal(sa.mu, sb.mu) and np.array_equal(sa.sigma, sb.sigma)
    assert np.array_equal(sa.features, sb.features) and sa.num_images == sb.num_images == 9
    ja, jb = (json.loads((f / "fid.json").read_text()) for f in (a, b))
    assert ja["fid"] == jb["fid"] and ja["kid"] == jb["kid"]


@pytest.mark.slow
def test_two_ranks_give_the_single_process_statistics(files, single, tmp_path):
    out = tmp_path / "dist"
    mp.spawn(worker, args=(2, _port(), str(files), str(out), {"fid": _kwargs(files)}), nprocs=2, join=True)
    _same(single[0], out)


def test_shards_merge_to_the_single_run(files, single, tmp_path, monkeypatch):
    from memprune.evaluators import fid_run
    from memprune.evaluators.merge_parts import merge_fids

    monkeypatch.setattr(fid_run, "load_inception", lambda spec, device: PooledPixels())
    parts = [tmp_path / f"p{i}" for i in range(2)]
    for i, p in enumerate(parts):
        part = fid_run.fid(output=p, shard=(i, 2), **_kwargs(files))
        assert part["schema"] == "memprune.fid-part/1" and not (p / "fid.json").exists()
    assert json.loads((parts[0] / "fid_part.json").read_text())["images"]["model"] == 5  # batches 0, 2, 4 (2 + 2 + 1)
    merged = merge_fids(parts, tmp_path / "merged")
    assert merged.result["fid"] == single[1]["fid"]
    _same(single[0], tmp_path / "merged")
    res = CliRunner().invoke(app, ["merge", *map(str, parts), "-o", str(tmp_path / "cli"), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["result"]["fid"] == single[1]["fid"]
    res = CliRunner().invoke(app, ["merge", *map(str, parts), "-o", str(tmp_path / "cli")])
    assert res.exit_code == 2 and "--overwrite" in res.output
    with pytest.raises(MempruneError, match="both shard 0/2"):
        merge_fids([parts[0], tmp_path / "p0"], tmp_path / "bad")
    with np.load(parts[1] / "samples_features.npz") as z:  # what an interrupted part would lack: its last batch
        cut = {"features": z["features"][:-2], "batches": z["batches"][:-1], "sizes": z["sizes"][:-1]}
    np.savez(parts[1] / "samples_features.npz", **cut)
    with pytest.raises(MempruneError, match="batch 3"):
        merge_fids(parts, tmp_path / "bad")
    with pytest.raises(MempruneError, match="statistics .npz"):
        fid_run.fid(output=tmp_path / "x", shard=(0, 2), **{**_kwargs(files), "ref": files})
