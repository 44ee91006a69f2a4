"""`memprune --help` is fast (no torch), groups commands in workflow order, and names things plainly."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from memprune.cli import UTILITIES_PANEL, WORKFLOW_PANEL, app

runner = CliRunner()
HEAVY = ("torch", "numpy", "PIL", "huggingface_hub", "safetensors", "onnxruntime", "matplotlib")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def test_help_version_and_usage_errors_do_not_import_torch():
    code = (
        "import sys\n"
        "from memprune.cli import app\n"
        "for argv in (['--help'], ['-h'], ['--version'], ['patch', '-h'], ['score', '--help'], ['nonsense'], ['patch']):\n"
        "    try:\n"
        "        app(argv, prog_name='memprune')\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('light')\n"
    )
    res = _run("-c", code)
    assert res.returncode == 0 and "light" in res.stdout, res.stderr[-2000:]


def test_dash_h_is_help_everywhere():
    for args in (["-h"], ["patch", "-h"], ["convert", "-h"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0 and "Usage" in res.output, args


def test_commands_are_listed_in_workflow_order_in_two_panels():
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    out = res.output
    assert out.index(WORKFLOW_PANEL) < out.index(UTILITIES_PANEL)
    workflow = out[out.index(WORKFLOW_PANEL) : out.index(UTILITIES_PANEL)]
    order = [name for name in ("inspect", "score", "report", "patch", "verify", "audit", "fid", "push")]
    positions = [workflow.index(f"│ {name} ") for name in order]
    assert positions == sorted(positions)
    utilities = out[out.index(UTILITIES_PANEL) :]
    for name in ("merge", "convert", "demo", "fid-stats"):
        assert f"│ {name} " in utilities


def test_positionals_are_capitals_and_fixed_values_show_their_choices():
    res = runner.invoke(app, ["patch", "--help"], env={"COLUMNS": "200"})
    assert "[OPTIONS] CHECKPOINT" in res.output and "{checkpoint}" not in res.output
    assert "global|layer" in res.output and "max|mean|sum" in res.output and "fc1|fc2" in res.output
    res = runner.invoke(app, ["merge", "--help"], env={"COLUMNS": "200"})
    assert "SHARDS..." in res.output


def test_convert_takes_dash_o_and_score_takes_dash_t():
    res = runner.invoke(app, ["convert", "--help"], env={"COLUMNS": "200"})
    assert "--output" in res.output and "-o" in res.output and "[OPTIONS] SOURCE" in res.output
    res = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "200"})
    assert "--tokenizer" in res.output and " -t " in res.output
