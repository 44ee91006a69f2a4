"""The CLI layer: parsing, rendering, --format json, one-line errors with exit status 2."""

from __future__ import annotations

import json

import torch
from tiny_checkpoints import var_state_dict
from typer.testing import CliRunner

from memprune.cli import app
from memprune.io import checkpoint_sha256
from memprune.scores import ScoreSet, save_scores

runner = CliRunner()


def _scores(tmp_path, ckpt):
    values = {f"blocks.{i}.ffn.fc1": torch.rand(3, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)}
    save_scores(ScoreSet(values, ["scale0", "scale1", "scale2"], checkpoint_sha256(ckpt), "var", ["scale0"]), tmp_path / "s.safetensors")
    return tmp_path / "s.safetensors"


def test_inspect_table_and_json(tiny_var):
    res = runner.invoke(app, ["inspect", str(tiny_var)])
    assert res.exit_code == 0, res.output
    assert "architecture: var" in res.output and "2 x 64 = 128 units" in res.output
    res = runner.invoke(app, ["inspect", str(tiny_var), "--format", "json"])
    info = json.loads(res.stdout)
    assert info["architecture"] == "var" and info["total_units"] == 128 and info["manifest"] is None


def test_patch_then_verify_then_inspect_shows_manifest(tmp_path, tiny_var):
    scores = _scores(tmp_path, tiny_var)
    out = tmp_path / "safe.safetensors"
    res = runner.invoke(app, ["patch", str(tiny_var), "--scores", str(scores), "--top", "10%", "-o", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["verified"] and data["selected"] == 13 and data["manifest"]["selection"]["aggregate"] == "max"
    res = runner.invoke(app, ["verify", str(out), "--base", str(tiny_var)])
    assert res.exit_code == 0 and "verified" in res.output
    res = runner.invoke(app, ["inspect", str(out), "--format", "json"])
    assert json.loads(res.stdout)["manifest"]["selection"]["selected"] == 13


def test_patch_dry_run_prints_plan(tmp_path, tiny_var):
    scores = _scores(tmp_path, tiny_var)
    res = runner.invoke(app, ["patch", str(tiny_var), "--scores", str(scores), "--top", "20", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "would patch 20 of 128 units" in res.output and "blocks.1.ffn.fc1" in res.output


def test_bad_input_is_one_line_on_stderr_with_exit_2(tmp_path, tiny_var):
    scores = _scores(tmp_path, tiny_var)
    for args, needle in [
        (["--top", "abc"], "--top"),
        (["--factor", "nan"], "--factor"),
        (["--factor", "-1"], "--factor"),
        (["-o", str(tiny_var)], "output"),
    ]:
        res = runner.invoke(app, ["patch", str(tiny_var), "--scores", str(scores), *args] + ([] if "-o" in args else ["-o", str(tmp_path / "o.safetensors")]))
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.stderr and "Traceback" not in res.output
        assert len(res.stderr.strip().splitlines()) <= 3  # one message (rich may wrap it)
    res = runner.invoke(app, ["inspect", str(tmp_path / "missing.pth")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_verify_failure_exits_1(tmp_path, tiny_var):
    scores = _scores(tmp_path, tiny_var)
    out = tmp_path / "safe.safetensors"
    runner.invoke(app, ["patch", str(tiny_var), "--scores", str(scores), "-o", str(out)])
    other = tmp_path / "other.pth"
    torch.save(var_state_dict(seed=9), other)
    res = runner.invoke(app, ["verify", str(out), "--base", str(other), "--format", "json"])
    assert res.exit_code == 1 and json.loads(res.stdout)["ok"] is False


def test_every_command_has_examples_format_json_and_quiet():
    names = [c.name for c in app.registered_commands]
    assert {"inspect", "score", "merge", "report", "patch", "verify", "audit", "fid", "fid-stats", "push", "convert", "demo"} <= set(names)
    for name in names:
        res = runner.invoke(app, [name, "--help"], terminal_width=200)
        assert res.exit_code == 0, name
        for needle in ("Examples", "--format", "--quiet", "--verbose"):
            assert needle in res.output, (name, needle)


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("memprune ")
