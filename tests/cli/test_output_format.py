"""Output for programs: piped text is never wrapped or cut; --format json is one schema-versioned object, errors too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import write_scores
from tiny_checkpoints import var_state_dict
from typer.testing import CliRunner

from memprune.cli import app

runner = CliRunner()


@pytest.fixture
def var_scores(tmp_path, tiny_var):
    return write_scores(tmp_path / "s.safetensors", tiny_var)


def _long_dir(tmp_path: Path) -> Path:
    deep = tmp_path / ("a_rather_long_folder_name_for_testing_" * 3) / ("and_another_nested_level_" * 3)
    deep.mkdir(parents=True)
    return deep


def test_piped_output_is_never_wrapped_or_truncated(tmp_path):
    deep = _long_dir(tmp_path)
    ckpt = deep / "var_tiny_with_a_long_name.pth"
    torch.save(var_state_dict(), ckpt)
    scores = write_scores(deep / "scores_with_a_long_name.safetensors", ckpt)
    out = deep / "patched_with_a_long_name.safetensors"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    res = subprocess.run([sys.executable, "-m", "memprune", "patch", str(ckpt), "--scores", str(scores), "-o", str(out), "-v"],
                         capture_output=True, text=True, env=env, timeout=300)  # stdout is a pipe, not a terminal
    assert res.returncode == 0, res.stderr
    assert len(str(out)) > 200
    assert f"wrote {out} and" in res.stdout  # the whole path on one line
    assert ckpt.name in res.stdout  # manifests name inputs by file name (no local paths)
    assert "…" not in res.stdout


def _json(res) -> dict:
    data = json.loads(res.stdout)
    assert isinstance(data, dict)
    return data


def test_every_command_answers_one_schema_versioned_object(tmp_path, tiny_var, var_scores):
    out = tmp_path / "safe.safetensors"
    cases = [
        ("inspect", ["inspect", str(tiny_var)]),
        ("patch", ["patch", str(tiny_var), "--scores", str(var_scores), "-o", str(out)]),
        ("verify", ["verify", str(out), "--base", str(tiny_var)]),
        ("report", ["report", str(var_scores), "-o", str(tmp_path / "report")]),
        ("convert", ["convert", str(tiny_var), "-o", str(tmp_path / "c.safetensors")]),
    ]
    for name, args in cases:
        res = runner.invoke(app, [*args, "--format", "json"])
        assert res.exit_code == 0, (name, res.output)
        data = _json(res)
        assert data["schema"] == f"memprune.{name}/1", name
        assert "arch" not in data, name
    patch = _json(runner.invoke(app, ["patch", str(tiny_var), "--scores", str(var_scores), "-o", str(tmp_path / "p2.safetensors"), "--format", "json"]))
    assert patch["architecture"] == "var" and patch["output"].endswith("p2.safetensors")
    assert patch["files"] == [patch["output"], patch["manifest_path"]]
    report = _json(runner.invoke(app, ["report", str(var_scores), "-o", str(tmp_path / "r2"), "--format", "json"]))
    assert report["architecture"] == "var" and report["output"].endswith("report.json") and report["output"] in report["files"]
    converted = _json(runner.invoke(app, ["convert", str(tiny_var), "-o", str(tmp_path / "c2.safetensors"), "--format", "json"]))
    assert converted["output"].endswith("c2.safetensors")


@pytest.mark.parametrize("args", [
    ["inspect", "{missing}"],
    ["patch", "{ckpt}", "--scores", "{missing}", "-o", "{tmp}/o.safetensors"],
    ["verify", "{missing}"],
    ["report", "{missing}", "-o", "{tmp}/r"],
    ["convert", "{missing}", "-o", "{tmp}/c.safetensors"],
    ["merge", "{missing}", "-o", "{tmp}/m.safetensors"],
    ["score", "{missing}", "-t", "{missing}", "--data", "{tmp}", "-o", "{tmp}/s.safetensors", "--device", "cpu"],
    ["audit", "{missing}", "-t", "{missing}", "--data", "{tmp}", "-o", "{tmp}/a", "--device", "cpu"],
    ["fid", "{missing}", "-t", "{missing}", "--ref", "{tmp}", "-o", "{tmp}/f", "--device", "cpu"],
    ["push", "{missing}", "--repo", "me/x", "--dry-run"],
])
def test_errors_under_format_json_are_an_error_object_with_the_same_exit_status(tmp_path, tiny_var, args):
    fill = {"missing": str(tmp_path / "missing.pth"), "ckpt": str(tiny_var), "tmp": str(tmp_path)}
    res = runner.invoke(app, [a.format(**fill) for a in args] + ["--format", "json"])
    assert res.exit_code == 2, res.output
    data = _json(res)
    assert data["schema"] == "memprune.error/1" and data["exit_code"] == 2 and data["error"]
    assert "Traceback" not in res.output


def test_usage_errors_under_format_json_are_an_error_object_too(tiny_var):
    res = runner.invoke(app, ["patch", str(tiny_var), "--format", "json"])  # --scores missing
    assert res.exit_code == 2
    data = _json(res)
    assert data["schema"] == "memprune.error/1" and "--scores" in data["error"] and data["exit_code"] == 2
    res = runner.invoke(app, ["patch", str(tiny_var), "--scope", "nowhere", "--scores", "x", "--format=json"])
    assert res.exit_code == 2 and _json(res)["schema"] == "memprune.error/1"
    res = runner.invoke(app, ["patch", str(tiny_var)])  # without --format json: no JSON on stdout
    assert res.exit_code == 2 and res.stdout.strip() == ""
    res = runner.invoke(app, ["--bogus", "--format", "json"])  # a root-level option error, before any command
    assert res.exit_code == 2 and _json(res)["schema"] == "memprune.error/1" and "--bogus" in _json(res)["error"]
