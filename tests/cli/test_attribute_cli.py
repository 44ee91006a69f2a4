"""`memprune attribute`: score file written, empty forget set is exit 0, bad sets are one line (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memprune.cli import app
from memprune.demo.data import export_data
from memprune.scores import load_scores


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    return export_data(tmp_path_factory.mktemp("demo_data")).root


def _lists(root: Path, tmp: Path) -> tuple[Path, Path]:
    rows = (root / "duplicated.csv").read_text().splitlines()
    ones = (root / "single.csv").read_text().splitlines()
    forget, retain = tmp / "forget.csv", tmp / "retain.csv"
    forget.write_text("\n".join([rows[0], *[f"{root}/{r}" for r in rows[1:3]]]) + "\n")
    retain.write_text("\n".join([ones[0], *[f"{root}/{r}" for r in ones[1:4]]]) + "\n")
    return forget, retain


def _run(root: Path, *args: str):
    return CliRunner().invoke(app, ["attribute", str(root / "var_demo.safetensors"), "-t",
                                    str(root / "vae_demo.safetensors"), *args])


def test_attribute_writes_scores(demo_data: Path, tmp_path: Path) -> None:
    forget, retain = _lists(demo_data, tmp_path)
    out = tmp_path / "attr.safetensors"
    res = _run(demo_data, "--forget", str(forget), "--retain", str(retain), "--data", str(demo_data / "train.csv"),
               "-o", str(out), "--format", "json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["method"] == "attribution" and summary["forget_images"] == 2 and summary["retain_images"] == 3
    s = load_scores(out)
    assert s.info["method"] == "attribution" and s.scores["blocks.0.ffn.fc1"].shape == (6, 2048)


def test_random_method_needs_no_lists(demo_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "rand.safetensors"
    res = _run(demo_data, "--method", "random", "--seed", "3", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert load_scores(out).info == {**load_scores(out).info, "method": "random", "seed": 3}


def test_empty_forget_set_is_nothing_to_do(demo_data: Path, tmp_path: Path) -> None:
    forget, retain = _lists(demo_data, tmp_path)
    empty = tmp_path / "results.csv"
    empty.write_text("index,id,path,label,model,prefix,extracted,counted\n")
    out = tmp_path / "attr.safetensors"
    res = _run(demo_data, "--forget", str(empty), "--retain", str(retain), "-o", str(out))
    assert res.exit_code == 0 and "nothing to do" in res.output and not out.exists()


def test_bad_sets_are_one_line(demo_data: Path, tmp_path: Path) -> None:
    forget, retain = _lists(demo_data, tmp_path)
    out = tmp_path / "attr.safetensors"
    res = _run(demo_data, "--forget", str(forget), "--retain", str(forget), "-o", str(out))
    assert res.exit_code == 2 and "both the forget and the retain" in res.output and not out.exists()
    res = _run(demo_data, "--forget", str(forget), "--retain", str(retain), "--data",
               str(demo_data / "heldout.csv"), "-o", str(out))
    assert res.exit_code == 2 and "not in the training data" in res.output
    res = _run(demo_data, "--retain", str(retain), "-o", str(out))
    assert res.exit_code == 2 and "--forget and --retain" in res.output
