"""The engine and the CLI on the official tiny VAR (tests/fixtures/var) against stored per-scale means.

``reference.npz["fc1_meanabs"]`` holds, from the official VAR code, mean over the positions of each scale of
|post-GELU fc1| for 3 images x 3 blocks. UnitMem is computed from it directly here and compared with
``memprune score --no-augment`` on the same three PNGs (at the model resolution, so they go in unchanged).
"""

from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from memprune.cli import app
from memprune.scores import load_scores

VAR = Path(__file__).resolve().parents[1] / "fixtures" / "var"
runner = CliRunner()


@pytest.fixture(scope="module")
def var_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("var_scoring")
    files = {}
    for name in ("var.pth", "vae.pth"):
        with lzma.open(VAR / f"{name}.xz", "rb") as fin, open(root / name, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        files[name.split(".")[0]] = root / name
    labels = np.load(VAR / "labels.npy")
    for i, label in enumerate(labels):  # folder names map to the fixture's labels through a class index
        (root / "data" / f"class{label}").mkdir(parents=True)
        shutil.copy(VAR / f"image_{i}.png", root / "data" / f"class{label}" / f"image_{i}.png")
    (root / "classes.json").write_text(json.dumps({f"class{label}": int(label) for label in labels}))
    files["data"], files["classes"], files["root"] = root / "data", root / "classes.json", root
    return files


def _direct(meanabs: np.ndarray, order: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """UnitMem straight from Algorithm 1: for each entry, mean of the images other than the argmax."""
    v = meanabs[:, :, order].astype(np.float64)  # [blocks, scales, images, units]
    mx, arg = v.max(2), v.argmax(2)
    rest = np.zeros_like(mx)
    for i in range(v.shape[2]):
        rest += np.where(arg == i, 0.0, v[:, :, i]) / (v.shape[2] - 1)
    return (mx - rest) / (mx + rest), arg


def _score_args(s: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["score", str(s["var"]), "--tokenizer", str(s["vae"]), "--data", str(s["data"]), "--class-index",
            str(s["classes"]), "--no-augment", "-o", str(out), "--batch-size", "2", "--device", "cpu", *extra]


def test_cli_scores_match_official_per_scale_means(var_setup: dict[str, Path]) -> None:
    out = var_setup["root"] / "scores.safetensors"
    res = runner.invoke(app, _score_args(var_setup, out, "--format", "json"))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["images"] == 3 and summary["groups"][0] == "scale0"
    scores = load_scores(out)
    # Images are ordered by class id: labels [238, 433, 330] -> fixture images 0, 2, 1.
    assert scores.images == ["class238/image_0.png", "class330/image_2.png", "class433/image_1.png"]
    meanabs = np.load(VAR / "reference.npz")["fc1_meanabs"]
    want, arg = _direct(meanabs, [0, 2, 1])
    for b in range(3):
        name = f"blocks.{b}.ffn.fc1"
        assert scores.scores[name].shape == (10, 768)
        np.testing.assert_allclose(scores.scores[name].numpy(), want[b], atol=1e-4)
        np.testing.assert_array_equal(scores.stats[f"argmax.{name}"].numpy(), arg[b])
    assert scores.image_independent == ["scale0"] and scores.arch == "var"
    assert len(scores.checkpoint_sha256) == 64

    report_dir = var_setup["root"] / "report"
    res = runner.invoke(app, ["report", str(out), "-o", str(report_dir)])
    assert res.exit_code == 0, res.output
    data = json.loads((report_dir / "report.json").read_text())
    assert data["blocks"] == [0, 1, 2] and len(data["heatmap"]["ffn.fc1"][0]) == 10
    assert sum(data["num_mem_units"]) == round(0.1 * 3 * 768)


@pytest.mark.slow
def test_cli_shards_merge_to_full_run(var_setup: dict[str, Path]) -> None:
    full = var_setup["root"] / "full.safetensors"
    assert runner.invoke(app, _score_args(var_setup, full, "-q")).exit_code == 0
    parts = []
    for i in range(2):
        part = var_setup["root"] / f"part{i}.safetensors"
        res = runner.invoke(app, _score_args(var_setup, part, "--shard", f"{i}/2", "-q"))
        assert res.exit_code == 0, res.output
        parts.append(str(part))
    merged = var_setup["root"] / "merged.safetensors"
    res = runner.invoke(app, ["merge", *parts, "-o", str(merged)])
    assert res.exit_code == 0, res.output
    a, b = load_scores(full), load_scores(merged)
    for name, value in a.scores.items():
        torch.testing.assert_close(b.scores[name], value, rtol=1e-5, atol=1e-5)
        assert torch.equal(b.stats[f"argmax.{name}"], a.stats[f"argmax.{name}"])


def test_cli_errors_are_one_line(var_setup: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "data" / "class1").mkdir(parents=True)
    (tmp_path / "data" / "class1" / "bad.png").write_bytes(b"garbage")
    args = _score_args(var_setup, tmp_path / "s.safetensors")
    args[args.index("--data") + 1] = str(tmp_path / "data")
    args[args.index("--class-index") + 1] = str(tmp_path / "ci.json")
    (tmp_path / "ci.json").write_text(json.dumps({"class1": 1}))
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "bad.png" in res.output and "Traceback" not in res.output
