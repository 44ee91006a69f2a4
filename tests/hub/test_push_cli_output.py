"""`memprune push` output in a pipe: the commit URL stays whole on one line; -q prints one line and no bars."""

from __future__ import annotations

from hub_helpers import make_patched
from typer.testing import CliRunner

from memprune.cli import app

TOKEN = "hf_test"
REPO = "me/a-long-repository-name-for-the-var-tiny-model-patched-with-memprune-at-ten-percent"


def test_piped_push_prints_the_commit_url_whole_and_quiet_prints_one_line(tmp_path, online):
    _, out = make_patched(tmp_path / "work")
    runner = CliRunner()
    res = runner.invoke(app, ["push", str(out), "-r", REPO, "--token", TOKEN])  # CliRunner's stdout is not a terminal
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("pushed commit "))
    url = line.removeprefix("pushed commit ")
    assert REPO in url and " " not in url and len(line) > 100
    res = runner.invoke(app, ["push", str(out), "-r", REPO, "--token", TOKEN, "--dry-run", "-q"])
    assert res.exit_code == 0, res.output
    assert [ln for ln in res.stdout.splitlines() if ln.strip()] == [f"dry run: would upload 4 files to {REPO}"]
