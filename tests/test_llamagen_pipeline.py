"""A LlamaGen checkpoint goes through every command: inspect, score, report, patch, verify, audit, fid and push.

The model is a small random LlamaGen (official key layout, saved in the released DDP form ``{"model": ...}``) with a
small VQ tokenizer. Its width (64) is no release, so every loading command needs ``--num-heads``. Exactness of the
implementation itself is proven against the official fixture in tests/families/llamagen/test_llamagen_model.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from memprune.cli import app
from memprune.families.llamagen.model import build_random_llamagen, load_llamagen
from memprune.families.llamagen.transformer import LlamaGenConfig
from memprune.families.llamagen.vq import VQConfig

runner = CliRunner()
pytestmark = pytest.mark.slow


def _invoke(*args: str) -> dict:
    res = runner.invoke(app, [*args, "--format", "json", "-q"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamagen")
    config = LlamaGenConfig(dim=64, n_layer=2, n_head=4, ffn_hidden=256, vocab_size=64, num_classes=3)
    tok = VQConfig(ch=32, num_res_blocks=1, z_channels=32, codebook_size=64)
    model = build_random_llamagen(config, tok, seed=3)
    torch.save({"model": model.transformer.state_dict()}, root / "c2i_tiny.pt")
    torch.save({"model": model.tokenizer.state_dict()}, root / "vq.pt")
    rng = np.random.default_rng(0)
    data = root / "train"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for i in range(2):
            base = rng.uniform(0, 255, size=(1, 1, 3))
            img = np.clip(base + rng.normal(0, 40, size=(256, 256, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(data / cls / f"{i}.png")
    return root


def test_llamagen_through_every_command(files, tmp_path):
    ckpt, tok, data = files / "c2i_tiny.pt", files / "vq.pt", files / "train"
    info = _invoke("inspect", str(ckpt))
    assert info["architecture"] == "llamagen" and info["total_units"] == 2 * 256

    res = runner.invoke(app, ["score", str(ckpt), "--tokenizer", str(tok), "--data", str(data), "--device", "cpu",
                              "-o", str(tmp_path / "x.safetensors")])  # fmt: skip
    assert res.exit_code == 2 and "--num-heads" in res.output  # width 64 is no release: one line naming the fix

    scores = tmp_path / "scores.safetensors"
    _invoke("score", str(ckpt), "--tokenizer", str(tok), "--data", str(data), "--no-augment", "-b", "2",
            "--device", "cpu", "--num-heads", "4", "-o", str(scores))
    from memprune.scores import load_scores

    loaded = load_scores(scores)
    assert loaded.groups == ["last_token"] and loaded.arch == "llamagen"
    assert set(loaded.scores) == {"layers.0.feed_forward", "layers.1.feed_forward"}
    assert all(v.shape == (1, 256) and torch.isfinite(v).all() for v in loaded.scores.values())
    assert _invoke("report", str(scores), "-o", str(tmp_path / "report"))

    safe = tmp_path / "safe.safetensors"
    patched = _invoke("patch", str(ckpt), "--scores", str(scores), "--top", "10%", "-o", str(safe))
    assert patched["verified"] and patched["selected"] == round(0.1 * 512)
    assert _invoke("verify", str(safe), "--base", str(ckpt))["ok"]
    safe2 = tmp_path / "safe_fc2.safetensors"
    _invoke("patch", str(ckpt), "--scores", str(scores), "--top", "10%", "--target", "fc2", "-o", str(safe2))
    # Scaling w3 rows (default) and w2 columns (--target fc2) are the same intervention on h: equal logits.
    a, b = (load_llamagen(p, tok, num_heads=4) for p in (safe, safe2))
    tokens, labels = torch.randint(0, 64, (2, 256), generator=torch.Generator().manual_seed(0)), torch.tensor([0, 2])
    torch.testing.assert_close(a.teacher_forced(tokens, labels), b.teacher_forced(tokens, labels), rtol=1e-5, atol=1e-5)

    audit = _invoke("audit", str(safe), "--tokenizer", str(tok), "--data", str(data), "--baseline", str(ckpt),
                    "--per-class", "1", "--attack", "paper", "--sscd", "onnx", "--device", "cpu", "--num-heads", "4",
                    "-o", str(tmp_path / "audit"))  # fmt: skip
    assert audit["headline"]["candidates"] >= 2  # the union of both models' picks
    assert audit["headline"]["conditions"] == ["p30-greedy"] and audit["settings"]["prefix_unit"] == "tokens"
    assert audit["settings"]["conditions"][0]["prefix_tokens"] == 30  # the paper condition: RAR's 30 tokens
    assert set(audit["counts"]) == {"model", "baseline"}

    fid = _invoke("fid", str(safe), "--tokenizer", str(tok), "--ref", str(data), "--per-class", "1",
                  "--batch-size", "3", "--device", "cpu", "--num-heads", "4", "-o", str(tmp_path / "fid"))
    assert fid["num_images"] == 3 and np.isfinite(fid["fid"]) and fid["model"]["arch"] == "llamagen"
    assert fid["sampling"]["cfg"] == 2.0  # nearest release (B) published setting, recorded as such

    pushed = _invoke("push", str(safe), "--repo", "me/llamagen-memprune", "--dry-run", "--token", "hf_x")
    assert pushed["dry_run"] and any(f["kind"] for f in pushed["files"])
