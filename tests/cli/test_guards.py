"""Guards that keep users on the right path: --overwrite, shards, torchrun, amplifying factors, files in the wrong place."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from cli_helpers import write_scores
from tiny_checkpoints import var_state_dict
from typer.testing import CliRunner

from memprune.cli import app
from memprune.errors import MempruneError

runner = CliRunner()


@pytest.fixture
def var_scores(tmp_path, tiny_var):
    return write_scores(tmp_path / "s.safetensors", tiny_var)
SHARD = {"index": 0, "count": 2, "begin": 0, "end": 5}


def test_an_existing_output_is_refused_unless_overwrite(tmp_path, tiny_var, var_scores):
    out = tmp_path / "safe.safetensors"
    out.write_bytes(b"precious")
    base = ["patch", str(tiny_var), "--scores", str(var_scores), "-o", str(out)]
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "already exists: pass --overwrite" in res.stderr and out.read_bytes() == b"precious"
    assert runner.invoke(app, [*base, "--overwrite"]).exit_code == 0 and out.read_bytes() != b"precious"
    conv = tmp_path / "c.safetensors"
    conv.write_bytes(b"x")
    assert runner.invoke(app, ["convert", str(tiny_var), "-o", str(conv)]).exit_code == 2
    assert runner.invoke(app, ["convert", str(tiny_var), "-o", str(conv), "--overwrite"]).exit_code == 0
    report = tmp_path / "report"
    report.mkdir()
    assert runner.invoke(app, ["report", str(var_scores), "-o", str(report)]).exit_code == 0  # an empty folder is fine
    res = runner.invoke(app, ["report", str(var_scores), "-o", str(report)])
    assert res.exit_code == 2 and "already holds report.json from an earlier run: pass --overwrite" in res.stderr
    assert runner.invoke(app, ["report", str(var_scores), "-o", str(report), "--overwrite"]).exit_code == 0


def test_writing_over_the_input_names_the_input_even_with_overwrite(tmp_path, tiny_var, var_scores):
    res = runner.invoke(app, ["patch", str(tiny_var), "--scores", str(var_scores), "-o", str(tiny_var), "--overwrite"])
    assert res.exit_code == 2 and "input" in res.stderr


def test_a_factor_above_one_warns_that_it_amplifies(tmp_path, tiny_var, var_scores):
    res = runner.invoke(app, ["patch", str(tiny_var), "--scores", str(var_scores), "--factor", "2", "--dry-run"])
    assert res.exit_code == 0 and "AMPLIFIES" in res.stderr
    res = runner.invoke(app, ["patch", str(tiny_var), "--scores", str(var_scores), "--factor", "0.5", "--dry-run"])
    assert "AMPLIFIES" not in res.stderr


def test_a_shard_score_file_is_refused_unless_allow_partial(tmp_path, tiny_var):
    part = write_scores(tmp_path / "part0.safetensors", tiny_var, shard=SHARD)
    for args in (["report", str(part), "-o", str(tmp_path / "r")], ["patch", str(tiny_var), "--scores", str(part), "--dry-run"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "shard 0/2" in res.stderr and "memprune merge" in res.stderr, res.output
        assert "--allow-partial" in res.stderr
        assert runner.invoke(app, [*args, "--allow-partial"]).exit_code == 0


def test_after_a_shard_the_hint_names_merge(capsys):
    from memprune.cli import _common
    from memprune.cli.score import _render_score

    scores = SimpleNamespace(scores={"blocks.0.ffn.fc1": torch.rand(2, 4)}, groups=["scale0", "scale1"])
    result = SimpleNamespace(scores=scores, shard=(1, 4), total_images=40, images=10, dead={}, tied={}, seconds=1.0,
                             images_per_second=10.0, world_size=1, output="part1.safetensors")
    _common.fit_console(_common.console)
    _render_score(result, quiet=False)
    out = capsys.readouterr().out
    assert "memprune merge" in out and "memprune report" not in out
    from memprune.cli.score import _score_json

    scores.arch, scores.image_independent, scores.checkpoint_sha256, result.resumed_from = "var", ["scale0"], None, 0
    data = _score_json(result)
    assert data["partial"] is True and data["shard"] == (1, 4) and data["architecture"] == "var"


@pytest.mark.parametrize("command", ["audit", "fid"])
def test_audit_and_fid_check_their_shard_before_any_work(tmp_path, tiny_var, command):
    # They run under torchrun now (tests/evaluators/test_*_distributed.py); a bad --shard is one line, exit 2.
    args = [command, str(tiny_var), "-t", str(tiny_var), "-o", str(tmp_path / "out"), "--device", "cpu", "--shard", "2/2"]
    args += ["--data", str(tmp_path)] if command == "audit" else ["--ref", str(tmp_path)]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "part index" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_patch_with_a_checkpoint_as_scores_says_so(tmp_path, tiny_var):
    res = runner.invoke(app, ["patch", str(tiny_var), "--scores", str(tiny_var), "--dry-run"])
    assert res.exit_code == 2 and "is a VAR model checkpoint, not a score file" in res.stderr, res.output


def _maskgit_tokenizer(path):
    from memprune.families.rar.maskgit_vqgan import MaskGITVQGANConfig, MaskGITVQGAN

    tok = MaskGITVQGAN(MaskGITVQGANConfig(hidden_channels=32, num_res_blocks=1, z_channels=16, codebook_size=64))
    torch.save(tok.state_dict(), path)
    return path


def _var_tokenizer_keys(path):
    t = torch.zeros(2, 2)
    torch.save({"encoder.conv_in.weight": t, "quantize.embedding.weight": t, "quant_conv.weight": t,
                "quantize.quant_resi.qresi_ls.0.weight": t, "decoder.conv_out.weight": t}, path)
    return path


def test_inspect_says_what_a_tokenizer_or_score_file_is(tmp_path, var_scores):
    tok = _maskgit_tokenizer(tmp_path / "tok.bin")
    res = runner.invoke(app, ["inspect", str(tok)])
    assert res.exit_code == 2 and "is a RAR tokenizer checkpoint, not a model checkpoint" in res.stderr, res.output
    assert "--arch" not in res.stderr
    res = runner.invoke(app, ["inspect", str(var_scores)])
    assert res.exit_code == 2 and "is a memprune score file, not a model checkpoint" in res.stderr, res.output


def test_a_model_with_another_familys_tokenizer_names_the_one_it_needs(tmp_path):
    from memprune.families.loading import load_model
    from memprune.families.rar.model import build_random_rar
    from memprune.families.rar.transformer import RARConfig

    rar = build_random_rar(RARConfig(hidden_size=64, depth=2, num_heads=4, mlp_hidden=256, codebook_size=64, num_classes=3))
    torch.save(rar.transformer.state_dict(), tmp_path / "rar.bin")
    var_tok = _var_tokenizer_keys(tmp_path / "vae.pth")
    with pytest.raises(MempruneError, match="is a VAR tokenizer checkpoint, but this RAR model needs the MaskGIT-VQGAN"):
        load_model(tmp_path / "rar.bin", var_tok, device="cpu", dtype="float32")
    torch.save(var_state_dict(), tmp_path / "var.pth")
    rar_tok = _maskgit_tokenizer(tmp_path / "tok.bin")
    with pytest.raises(MempruneError, match="is a RAR tokenizer checkpoint, but this VAR model needs the VAR VQVAE"):
        load_model(tmp_path / "var.pth", rar_tok, device="cpu", dtype="float32")
