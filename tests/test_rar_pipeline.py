"""A RAR checkpoint goes through every command: inspect, score, report, patch, verify, audit and fid.

The model is a small random RAR (official key layout, saved as the released ``.bin`` pickles) with a small
MaskGIT-VQGAN tokenizer, so this checks the wiring of the commands on the second architecture; exactness of
the RAR implementation itself is proven against the official fixture in tests/families/rar/test_rar_model.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from memprune.cli import app
from memprune.families.rar.maskgit_vqgan import MaskGITVQGANConfig
from memprune.families.rar.model import build_random_rar
from memprune.families.rar.transformer import RARConfig

runner = CliRunner()
pytestmark = pytest.mark.slow


def _invoke(*args: str) -> dict:
    res = runner.invoke(app, [*args, "--format", "json", "-q"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def rar_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("rar")
    config = RARConfig(hidden_size=64, depth=2, num_heads=4, mlp_hidden=256, codebook_size=64, num_classes=3)
    tok = MaskGITVQGANConfig(hidden_channels=32, num_res_blocks=1, z_channels=16, codebook_size=64)
    model = build_random_rar(config, tok, seed=3)
    torch.save(model.transformer.state_dict(), root / "rar.bin")
    torch.save(model.tokenizer.state_dict(), root / "tokenizer.bin")
    rng = np.random.default_rng(0)
    data = root / "train"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for i in range(2):
            base = rng.uniform(0, 255, size=(1, 1, 3))
            img = np.clip(base + rng.normal(0, 40, size=(256, 256, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(data / cls / f"{i}.png")
    return root


def test_rar_through_every_command(rar_files, tmp_path):
    ckpt, tok, data = rar_files / "rar.bin", rar_files / "tokenizer.bin", rar_files / "train"
    info = _invoke("inspect", str(ckpt))
    assert info["architecture"] == "rar" and info["total_units"] == 2 * 256

    scores = tmp_path / "scores.safetensors"
    _invoke("score", str(ckpt), "--tokenizer", str(tok), "--data", str(data), "--no-augment", "-b", "2",
            "--device", "cpu", "-o", str(scores))
    from memprune.scores import load_scores

    loaded = load_scores(scores)
    assert loaded.groups == ["last_token"] and loaded.arch == "rar"
    assert set(loaded.scores) == {"blocks.0.mlp.fc1", "blocks.1.mlp.fc1"}
    assert all(v.shape == (1, 256) and torch.isfinite(v).all() for v in loaded.scores.values())
    report = _invoke("report", str(scores), "-o", str(tmp_path / "report"))
    assert report  # the report command renders RAR scores without special cases

    safe = tmp_path / "safe.safetensors"
    patched = _invoke("patch", str(ckpt), "--scores", str(scores), "--top", "10%", "-o", str(safe))
    assert patched["verified"] and patched["selected"] == round(0.1 * 512)
    assert _invoke("verify", str(safe), "--base", str(ckpt))["ok"]

    audit = _invoke("audit", str(safe), "--tokenizer", str(tok), "--data", str(data), "--baseline", str(ckpt),
                    "--per-class", "1", "--prefixes", "64", "--seeds", "", "--sscd", "onnx", "--device", "cpu",
                    "-o", str(tmp_path / "audit"))
    assert audit["headline"]["candidates"] >= 2  # the union of both models' picks
    assert audit["headline"]["conditions"] == ["p64-greedy"] and audit["settings"]["prefix_unit"] == "tokens"
    assert audit["settings"]["conditions"][0]["prefix_tokens"] == 64
    assert set(audit["counts"]) == {"model", "baseline"}

    fid = _invoke("fid", str(safe), "--tokenizer", str(tok), "--ref", str(data), "--per-class", "1",
                  "--batch-size", "3", "--device", "cpu", "-o", str(tmp_path / "fid"))
    assert fid["num_images"] == 3 and np.isfinite(fid["fid"]) and fid["model"]["arch"] == "rar"
