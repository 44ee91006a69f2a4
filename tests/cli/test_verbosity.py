"""-q and -v mean the same in every command; only memprune's own loggers are configured."""

from __future__ import annotations

import logging

import pytest
import torch
from cli_helpers import write_scores
from typer.testing import CliRunner

from memprune.cli import _common, app

runner = CliRunner()


@pytest.fixture
def var_scores(tmp_path, tiny_var):
    return write_scores(tmp_path / "s.safetensors", tiny_var)


class _Obj:  # a global that weights_only loading refuses, so converting needs --trust-pickle
    pass


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_quiet_is_one_line_and_verbose_adds_detail(tmp_path, tiny_var, var_scores):
    out = tmp_path / "safe.safetensors"
    res = runner.invoke(app, ["patch", str(tiny_var), "--scores", str(var_scores), "-o", str(out), "-q"])
    assert res.exit_code == 0 and len(_lines(res.stdout)) == 1 and str(out) in res.stdout, res.output
    for args in (["verify", str(out), "--base", str(tiny_var)], ["inspect", str(out)]):
        quiet = runner.invoke(app, [*args, "-q"])
        normal = runner.invoke(app, args)
        assert quiet.exit_code == 0 and normal.exit_code == 0
        assert len(_lines(quiet.stdout)) == 1, (args, quiet.stdout)
        assert len(_lines(normal.stdout)) > 3
    normal = runner.invoke(app, ["inspect", str(tiny_var)])
    verbose = runner.invoke(app, ["inspect", str(tiny_var), "-v"])
    assert "blocks.1." not in normal.stdout and "blocks.1." in verbose.stdout  # every block, not the first only
    normal = runner.invoke(app, ["patch", str(tiny_var), "--scores", str(var_scores), "--dry-run"])
    verbose = runner.invoke(app, ["patch", str(tiny_var), "--scores", str(var_scores), "--dry-run", "-v"])
    assert "selection: top" not in normal.stdout and "selection: top 10%" in verbose.stdout


def test_quiet_and_verbose_together_is_an_error(tiny_var):
    res = runner.invoke(app, ["inspect", str(tiny_var), "-q", "-v"])
    assert res.exit_code == 2 and "-q/--quiet and -v/--verbose" in res.stderr


def test_root_logger_is_left_alone_so_http_libraries_stay_silent(tiny_var):
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    res = runner.invoke(app, ["inspect", str(tiny_var)])
    assert res.exit_code == 0
    assert (root.level, list(root.handlers)) == before
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO) or root.level > logging.INFO or not root.handlers
    assert logging.getLogger("memprune").level == logging.INFO and not logging.getLogger("memprune").propagate


def test_quiet_silences_huggingface_progress_bars_and_normal_restores_them():
    from huggingface_hub.utils import are_progress_bars_disabled

    _common.setup_logging(quiet=True, verbose=False)
    assert are_progress_bars_disabled()
    _common.setup_logging(quiet=False, verbose=False)
    assert not are_progress_bars_disabled()


def test_trust_pickle_warns_once(tmp_path):
    torch.save({"w": torch.ones(2), "extra": _Obj()}, tmp_path / "t.pth")
    res = runner.invoke(app, ["convert", str(tmp_path / "t.pth"), "-o", str(tmp_path / "t.safetensors"), "--trust-pickle"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("weights_only=False") == 1, res.stderr
    assert res.stderr.startswith("warning: ")


def test_fid_verbose_shows_what_the_number_depends_on_and_quiet_only_the_number(tmp_path, monkeypatch):
    import memprune.evaluators.fid_run as fid_run

    result = {
        "fid": 12.3456, "num_images": 30, "per_class": 10, "seed": 0, "batch_size": 25, "device": "cpu", "dtype": "float32",
        "sampling": {"cfg": 1.5, "top_k": 900, "top_p": 0.96, "temperature": 1.0, "cfg_pow": None, "source": "published"},
        "timing": {"seconds": 3.0, "images_per_second": 10.0, "sampling_seconds": 3.0, "distance_seconds": 0.1},
        "kid": None, "warnings": [], "files": {"samples_stats": "samples_stats.npz"}, "model": {"arch": "var", "path": "m.pth"},
        "reference": {"path": "ref.npz", "num_images": 50000, "protocol": "pytorch-fid"},
        "inception": {"spec": "auto", "weights_id": "inception-2015-12-05"}, "comparability": "same protocol only",
    }
    monkeypatch.setattr(fid_run, "fid", lambda *args, **kwargs: result)  # the rendering, not the measurement
    args = ["fid", "m.pth", "-t", "t.pth", "--ref", "ref.npz", "-o", str(tmp_path / "o"), "--device", "cpu"]
    normal, verbose, quiet = (runner.invoke(app, [*args, *extra]) for extra in ([], ["-v"], ["-q"]))
    assert normal.exit_code == verbose.exit_code == quiet.exit_code == 0, normal.output
    assert "inception-2015-12-05" in verbose.stdout and "inception-2015-12-05" not in normal.stdout
    assert len(_lines(quiet.stdout)) == 1 and "FID 12.346" in quiet.stdout
