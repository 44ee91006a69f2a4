"""Ctrl-C and unexpected failures: one line on stderr and a meaningful exit status, never a traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import tomllib

import pytest
from inputs_support import REPO, invoke

from memprune._entry import describe, guarded

_INTERRUPT_IMPORT = textwrap.dedent(
    """
    import sys

    class Interrupt:  # behaves like Ctrl-C arriving while typer is being imported
        def find_spec(self, name, path=None, target=None):
            if name == "typer":
                raise KeyboardInterrupt
            return None

    sys.meta_path.insert(0, Interrupt())
    from memprune._entry import main
    sys.argv = ["memprune", "inspect", "x.safetensors"]
    main()
    """
)


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


def test_ctrl_c_during_imports_is_one_line_and_130():
    proc = _python(_INTERRUPT_IMPORT)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "interrupted" and "Traceback" not in proc.stderr


def test_console_script_is_the_guarded_entry_point():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["memprune"] == "memprune._entry:main"


def test_unexpected_exception_is_one_line_exit_1(capsys):
    def bug() -> None:
        raise ZeroDivisionError("division by zero\nsecond line")

    assert guarded(bug) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("internal error: ZeroDivisionError: division by zero second line")
    assert "this is a bug in memprune; rerun with MEMPRUNE_DEBUG=1" in err


def test_debug_variable_shows_the_traceback():
    proc = _python("from memprune._entry import guarded\nguarded(lambda: 1 / 0)", MEMPRUNE_DEBUG="1")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr


def test_operating_system_errors_name_the_fix():
    line, code = describe(OSError(errno.ENOSPC, "No space left on device", "/data/out.safetensors"))
    assert code == 2 and "/data/out.safetensors" in line and "disk is full" in line
    line, code = describe(PermissionError(errno.EACCES, "Permission denied", "/ro/x"))
    assert code == 2 and "permission" in line.lower()


def test_exit_status_passes_through():
    def ok() -> None:
        raise SystemExit(0)

    def usage() -> None:
        raise SystemExit(2)

    assert guarded(ok) == 0 and guarded(usage) == 2 and guarded(lambda: None) == 0


@pytest.mark.parametrize("every", [0, 5])
def test_ctrl_c_in_score_says_what_was_kept(tmp_path, monkeypatch, every):
    import memprune.scoring.engine as engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "score", interrupted)
    if every:  # what a run killed after its first checkpoint leaves beside -o
        (tmp_path / "s.safetensors.partial.safetensors").write_bytes(b"")
    res = invoke("score", "m.safetensors", "--tokenizer", "t.safetensors", "--data", tmp_path,
                 "-o", tmp_path / "s.safetensors", "--checkpoint-every", every)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 130 and len(lines) == 1 and "Traceback" not in res.stderr
    if every:
        assert "--resume" in lines[0] and "kept" in lines[0] and "nothing partial" not in lines[0]
    else:
        assert "nothing partial is left behind" in lines[0]
