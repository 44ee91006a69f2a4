"""``audit`` across 2 gloo ranks and as ``--shard`` parts + merge equals one process, and resumes after a kill."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from typer.testing import CliRunner

from memprune.cli import app
from memprune.errors import MempruneError
from dist_audit_helpers import audit_kwargs, worker, write_setup

pytest.importorskip("onnxruntime")
pytest.importorskip("skimage.data")
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return write_setup(tmp_path_factory.mktemp("dist_audit"))


@pytest.fixture(scope="module")
def single(setup, tmp_path_factory):
    from memprune.evaluators.audit_run import audit

    out = tmp_path_factory.mktemp("single") / "audit"
    summary = audit(setup / "other.safetensors", setup / "vae.safetensors", out, **audit_kwargs(setup))
    return out, summary


def _rows(folder: Path) -> list[dict]:
    return sorted((json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()),
                  key=lambda r: (r["index"], r["model"], r["condition"]))


def _same_run(a: Path, b: Path) -> None:
    assert _rows(a) == _rows(b)  # every per-candidate row, bit for bit
    assert (a / "candidates.csv").read_text() == (b / "candidates.csv").read_text()
    sa, sb = (json.loads((f / "audit_summary.json").read_text()) for f in (a, b))
    for key in ("headline", "counts", "comparison", "candidates"):
        assert sa[key] == sb[key], key
    assert sorted(p.name for p in (a / "extracted").glob("*")) == sorted(p.name for p in (b / "extracted").glob("*")) \
        if (a / "extracted").exists() else not (b / "extracted").exists()


def _spawn(setup: Path, out: Path, extra: dict | None = None) -> None:
    mp.spawn(worker, args=(2, _port(), str(setup), str(out), extra or {}), nprocs=2, join=True)


@pytest.fixture(scope="module")
def two_ranks(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "audit"
    _spawn(setup, out)
    return out


@pytest.mark.slow
def test_two_ranks_equal_one_process(two_ranks, single):
    out = two_ranks
    _same_run(single[0], out)
    scan = lambda f: sorted((f / "scan.jsonl").read_text().splitlines())  # noqa: E731
    assert scan(out) == scan(single[0])  # the selection scan was split and logged once per image


@pytest.mark.slow
def test_killed_distributed_run_resumes(setup, single):
    out = single[0].parent / "killed"
    with pytest.raises(mp.ProcessExitedException):  # rank 0 dies right after writing the first step's rows
        _spawn(setup, out, {"die_after_first_step": True})
    assert len({json.loads(r)["index"] for r in (out / "results.jsonl").read_text().splitlines()}) == 1
    assert not (out / "audit_summary.json").exists()
    _spawn(setup, out, {"resume": True})
    _same_run(single[0], out)


@pytest.mark.slow
def test_shards_merge_to_the_single_run(setup, single, tmp_path):
    from memprune.evaluators.audit_run import audit
    from memprune.evaluators.merge_parts import merge_audits

    parts = []
    for i in range(2):
        part = audit(setup / "other.safetensors", setup / "vae.safetensors", tmp_path / f"p{i}", shard=(i, 2),
                     **audit_kwargs(setup))
        assert part["schema"] == "memprune.audit-part/1" and not (tmp_path / f"p{i}" / "audit_summary.json").exists()
        parts.append(tmp_path / f"p{i}")
    with pytest.raises(MempruneError, match="both shard 0/2"):
        merge_audits([parts[0], parts[0]], tmp_path / "bad")
    merged = merge_audits(parts, tmp_path / "merged")
    assert merged.result["headline"] == single[1]["headline"]
    _same_run(single[0], tmp_path / "merged")
    res = CliRunner().invoke(app, ["merge", *map(str, parts), "-o", str(tmp_path / "cli"), "-q"])
    assert res.exit_code == 0 and "merged 2 audit parts" in res.stdout, res.output
    _same_run(single[0], tmp_path / "cli")
    (parts[1] / "results.jsonl").write_text("")  # an interrupted part
    with pytest.raises(MempruneError, match="--resume"):
        merge_audits(parts, tmp_path / "bad")


@pytest.mark.slow
def test_a_saved_ranking_picks_candidates_without_rescanning(setup, single, tmp_path):
    from memprune.evaluators.audit_run import audit

    scan = [json.loads(line) for line in (single[0] / "scan.jsonl").read_text().splitlines()]
    best = {lab: min((r for r in scan if r["label"] == lab), key=lambda r: (-r["hit_rate"], r["id"]))["id"] for lab in (0, 1)}
    kwargs = {**audit_kwargs(setup), "per_class": 1, "ranking": single[0] / "scan.jsonl"}
    summary = audit(setup / "other.safetensors", setup / "vae.safetensors", tmp_path / "out", **kwargs)
    assert not list((tmp_path / "out").glob("scan*.jsonl"))  # nothing was scanned again
    ids = [line.split(",")[0] for line in (tmp_path / "out" / "candidates.csv").read_text().splitlines()[1:]]
    assert ids == [best[0], best[1]] and summary["candidates"]["ranking"] == str(single[0] / "scan.jsonl")
    with pytest.raises(MempruneError, match="pass one"):
        audit(setup / "other.safetensors", setup / "vae.safetensors", tmp_path / "x",
              **{**kwargs, "candidates_file": single[0] / "candidates.csv"})


# ---------------------------------------------------------------------------------------------- fewer batches than workers
def _one_batch(setup: Path) -> dict:
    """One batch of all 4 candidates under 4 conditions: 2 ranks (or 2 shards) split it by conditions."""
    from memprune.evaluators.audit import AuditSettings

    return {**audit_kwargs(setup), "settings": AuditSettings(prefixes=(1, 2), seeds=(0,), batch_size=4)}


def _pictures(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "extracted").glob("*.png"))}


@pytest.fixture(scope="module")
def single_batch(setup, tmp_path_factory):
    from memprune.evaluators.audit_run import audit

    out = tmp_path_factory.mktemp("one_batch") / "audit"
    audit(setup / "other.safetensors", setup / "vae.safetensors", out, **_one_batch(setup))
    assert _pictures(out)  # something is extracted, so the pictures below are compared
    return out


@pytest.mark.slow
def test_two_ranks_split_one_batch_by_conditions(setup, single_batch, tmp_path):
    out = tmp_path / "dist"
    _spawn(setup, out, {"settings": _one_batch(setup)["settings"]})
    _same_run(single_batch, out)
    # Each extraction's pictures: the generation of the highest cosine over all conditions, chosen across ranks.
    assert _pictures(out) == _pictures(single_batch)


@pytest.mark.slow
def test_shards_split_one_batch_by_conditions_and_merge(setup, single_batch, tmp_path):
    from memprune.evaluators.audit_run import audit
    from memprune.evaluators.merge_parts import merge_audits

    parts = [tmp_path / f"p{i}" for i in range(2)]
    for i, part in enumerate(parts):
        audit(setup / "other.safetensors", setup / "vae.safetensors", part, shard=(i, 2), **_one_batch(setup))
        keys = {json.loads(line)["condition"] for line in (part / "results.jsonl").read_text().splitlines()}
        assert len(keys) == 2  # half of the 4 conditions each, on the same batch
    merge_audits(parts, tmp_path / "merged")
    _same_run(single_batch, tmp_path / "merged")
    assert _pictures(tmp_path / "merged") == _pictures(single_batch)
    # A part that lost rows (killed mid-append) reruns its slice and writes only what is missing.
    log = parts[1] / "results.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:25])
    audit(setup / "other.safetensors", setup / "vae.safetensors", parts[1], shard=(1, 2), resume=True, **_one_batch(setup))
    assert sorted(log.read_text().splitlines()) == sorted(lines)
    merge_audits(parts, tmp_path / "merged_again")
    _same_run(single_batch, tmp_path / "merged_again")
    assert _pictures(tmp_path / "merged_again") == _pictures(single_batch)
