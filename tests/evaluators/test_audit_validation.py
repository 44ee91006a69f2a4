"""Bad audit inputs: one MempruneError line (exit 2), checked before anything is written, no stray -o folder."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from memprune.cli import app
from memprune.errors import MempruneError
from memprune.evaluators import audit as A
from memprune.evaluators.audit_candidates import read_candidates
from memprune.io import save_safetensors
from tests.evaluators.audit_fakes import ScriptedModel, make_images

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tests.evaluators.test_multi_audit import _tiny_var

    root = tmp_path_factory.mktemp("audit_validation")
    model = _tiny_var()
    save_safetensors({k: v.contiguous() for k, v in model.var.state_dict().items()}, root / "var.safetensors")
    save_safetensors({k: v.contiguous() for k, v in model.vae.state_dict().items()}, root / "vae.safetensors")
    cands, _ = make_images(root / "data" / "class0", 2)
    (root / "c.csv").write_text("path,label\n" + "".join(f"{c.path},0\n" for c in cands))
    return root


def _run(root, out, *args):
    res = runner.invoke(app, ["audit", str(root / "var.safetensors"), "--tokenizer", str(root / "vae.safetensors"),
                              "--device", "cpu", "--sscd", "onnx", "-o", str(out), *map(str, args)])
    return res


def _one_line_error(res, *words):
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert "Traceback" not in res.output and lines[0].startswith("error:"), res.output
    text = " ".join(res.output.split())
    for w in words:
        assert w in text, res.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--threshold", "-1"], ["--threshold -1", "(0, 1)"]),
        (["--threshold", "nan"], ["--threshold nan"]),
        (["--cfg", "nan"], ["--cfg 'nan'"]),
        (["--cfg", "0,0"], ["repeats"]),
        (["--grid-rows", "-1"], ["--grid-rows -1"]),
        (["--per-class", "0"], ["--per-class 0"]),
        (["--prefix", "3"], ["--prefix", "--attack paper"]),
        (["--seed", "1"], ["--seed", "--attack paper"]),
        (["--attack", "paper", "--seeds", "0,1"], ["--seeds", "--attack robust"]),
        (["--attack", "paper", "--cfg", "0,1.5"], ["one condition"]),
        (["--prefixes", "3,x"], ["--prefixes"]),
        (["--prefixes", "9"], ["9 scales"]),
        (["--seeds", "--1"], ["--seeds"]),
        (["--attack", "paper", "--sample", "--temperature", "0"], ["--temperature 0"]),
    ],
)
def test_bad_options(ckpt, tmp_path, args, words):
    out = tmp_path / "out"
    _one_line_error(_run(ckpt, out, "--candidates", ckpt / "c.csv", *args), *words)
    assert not out.exists()


@pytest.mark.parametrize(
    ("row", "words"),
    [("hit_rate=abc", ["hit_rate 'abc'"]), ("label=--1", ["integer label"]), ("label=7", ["label 7", "classes"]),
     ("hit_rate=nan", ["hit_rate 'nan'"]), ("hit_rate=2", ["hit_rate '2'"])],
)
def test_bad_candidate_files_write_nothing(ckpt, tmp_path, row, words):
    key, value = row.split("=")
    path = next((ckpt / "data" / "class0").iterdir())
    fields = {"path": str(path), "label": "0", "hit_rate": "0.5", key: value}
    (tmp_path / "bad.csv").write_text("path,label,hit_rate\n" + ",".join(fields[k] for k in ("path", "label", "hit_rate")) + "\n")
    out = tmp_path / "out"
    _one_line_error(_run(ckpt, out, "--candidates", tmp_path / "bad.csv"), *words)
    assert not out.exists()  # no empty folder, no audit_config.json, no candidates.csv
    out.mkdir()  # a folder the user made is left alone, and stays empty
    _one_line_error(_run(ckpt, out, "--candidates", tmp_path / "bad.csv"), *words)
    assert list(out.iterdir()) == []


def test_unknown_attack_is_a_usage_error(ckpt, tmp_path):
    res = _run(ckpt, tmp_path / "out", "--candidates", ckpt / "c.csv", "--attack", "strong")
    assert res.exit_code == 2 and "'strong' is not one of" in res.output and not (tmp_path / "out").exists()


def test_output_that_is_a_file(ckpt, tmp_path):
    (tmp_path / "f").write_text("x")
    _one_line_error(_run(ckpt, tmp_path / "f", "--candidates", ckpt / "c.csv"), "is a file")


@pytest.fixture(scope="module")
def finished(ckpt, tmp_path_factory):
    """A completed paper audit whose files the resume tests corrupt one at a time."""
    out = tmp_path_factory.mktemp("finished") / "out"
    res = _run(ckpt, out, "--candidates", ckpt / "c.csv", *RESUME)
    assert res.exit_code == 0, res.output
    return out


RESUME = ("--attack", "paper", "--prefix", "2")


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("results.jsonl", '{"a": 1}\n{"b": 2}\n', ["results.jsonl line 1", "not an audit result row"]),
        ("results.jsonl", '{"index": "x", "id": 1, "model": "m", "similarity": "y"}\n{}\n', ["not an audit result row"]),
        ("results.jsonl", "[1]\n[2]\n", ["not an audit result row"]),
        ("audit_config.json", "{not json", ["audit_config.json", "not a readable audit config"]),
        ("candidates.csv", "path,label\nnowhere.png,0\n", ["do not exist"]),
        ("candidates.csv", "path,label,hit_rate\nx.png,0,abc\n", ["hit_rate 'abc'"]),
    ],
)
def test_invalid_resume_state(ckpt, finished, tmp_path, name, content, words):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / name).write_text(content)
    _one_line_error(_run(ckpt, out, "--candidates", ckpt / "c.csv", *RESUME, "--resume"), *words)


def test_scan_log_of_another_format_is_refused(tmp_path):
    (tmp_path / "scan.jsonl").write_text('{"id": "a"}\n{"id": "b", "hit_rate": 0.1}\n')
    cands, _ = make_images(tmp_path / "img", 1)
    with pytest.raises(MempruneError, match="scan.jsonl line 1 is not a scan row"):
        A.scan_hit_rates(ScriptedModel([], []), cands, log=tmp_path / "scan.jsonl")


def test_read_candidates_rejects_non_objects(tmp_path):
    (tmp_path / "c.jsonl").write_text("[1, 2]\n")
    with pytest.raises(MempruneError, match="not an object"):
        read_candidates(tmp_path / "c.jsonl")


def test_settings_are_validated_once():
    with pytest.raises(MempruneError, match="--threshold"):
        A.AuditSettings(threshold=1.0)
    with pytest.raises(MempruneError, match="--prefix"):
        A.AuditSettings(prefix=3)  # robust by default
    assert A.AuditSettings(attack="paper", prefix=3).attack == "paper"


def test_a_run_failing_before_any_result_leaves_nothing(ckpt, tmp_path):
    """An unreadable image surfaces only when the audit loads it: the config and list written so far go again."""
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "c.csv").write_text(f"path,label\n{tmp_path / 'broken.png'},0\n")
    out = tmp_path / "out"
    res = _run(ckpt, out, "--candidates", tmp_path / "c.csv", *RESUME)
    assert res.exit_code == 2 and "Traceback" not in res.output and "broken.png" in res.output, res.output
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    assert _run(ckpt, out, "--candidates", tmp_path / "c.csv", *RESUME).exit_code == 2
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
