"""memprune push through the real huggingface_hub client against the loopback stand-in Hub."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from hub_helpers import make_patched, tiny_var_state_dict
from huggingface_hub import ModelCard
from typer.testing import CliRunner

import memprune.hub as hub
import memprune.push as hub_push
from memprune.cli import app
from memprune.errors import MempruneError, VerificationError
from memprune.io import save_safetensors
from memprune.verify import self_checks

REPO = "me/var-tiny-memprune"
TOKEN = "hf_test"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def patched(tmp_path):
    base, out = make_patched(tmp_path / "work")
    return base, out


def test_push_uploads_weights_manifest_card_and_tokenizer_reference(patched, online):
    base, out = patched
    result = hub_push.push(out, REPO, token=TOKEN, base=base)
    files = online.files(REPO)
    assert sha(files["safe.safetensors"]) == sha(out.read_bytes())  # the exact bytes arrived
    assert files["safe.manifest.json"] == out.with_name("safe.manifest.json").read_bytes()
    assert result.commit_oid == online.repos[REPO].branches["main"] and result.pr_url is None
    assert online.count("PUT", "/_lfs/") == 1  # the weights went through LFS, once
    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["tags"] == ["memprune", "memorization-mitigation", "var"] and meta["library_name"] == "memprune"
    assert ModelCard(card).data.library_name == "memprune"
    tokenizer = json.loads(files["memprune_tokenizer.json"])
    assert tokenizer["reference"] == "hf://FoundationVision/var/vae_ch160v4096z32.pth" and tokenizer["origin"] == "architecture default"
    assert [c.name for c in result.plan.checks if not c.ok] == []
    assert "base digest" in {c.name for c in result.plan.checks}  # --base ran the full verify
    assert online.created_visibility[REPO] is None  # public unless --private


def test_rerun_after_an_interrupted_push_resumes_without_resending_the_weights(patched, online):
    _, out = patched
    online.failures["commit_api"] = 1  # the connection dies after the LFS upload, before the commit
    with pytest.raises(MempruneError, match="HTTP 500.*re-run resumes"):
        hub_push.push(out, REPO, token=TOKEN)
    assert online.count("PUT", "/_lfs/") == 1 and "safe.safetensors" not in online.files(REPO)
    result = hub_push.push(out, REPO, token=TOKEN)
    assert online.count("PUT", "/_lfs/") == 1  # the server already held the object: not uploaded again
    assert sha(online.files(REPO)["safe.safetensors"]) == sha(out.read_bytes()) and result.commit_oid
    again = hub_push.push(out, REPO, token=TOKEN)  # everything is already there: no new commit
    assert sorted(again.unchanged) == sorted(f.path_in_repo for f in again.plan.files)
    assert online.count("POST", "/commit/") == 2 and again.commit_oid == result.commit_oid


def test_create_pr_revision_and_private(patched, online):
    _, out = patched
    hub_push.push(out, REPO, token=TOKEN, private=True, commit_message="first")
    assert online.created_visibility[REPO] == "private"
    card_before = online.files(REPO)["README.md"]
    out2 = make_patched(out.parent, base=out.parent / "var_tiny.safetensors", name="safe2.safetensors", top="20%")[1]
    result = hub_push.push(out2, REPO, token=TOKEN, create_pr=True)
    assert result.pr_url.endswith(f"/{REPO}/discussions/1")
    assert "safe2.safetensors" in online.files(REPO, "refs/pr/1") and "safe2.safetensors" not in online.files(REPO)
    assert online.files(REPO)["README.md"] == card_before  # main untouched
    hub_push.push(out2, REPO, token=TOKEN, revision="experiments")
    assert "safe2.safetensors" in online.files(REPO, "experiments") and "safe2.safetensors" not in online.files(REPO)
    repo = online.repos[REPO]
    assert repo.messages[repo.branches["main"]] == "first"


def test_dry_run_contacts_nothing_and_prints_the_card(patched, online, monkeypatch):
    from huggingface_hub import constants

    _, out = patched
    monkeypatch.setattr(constants, "ENDPOINT", online.endpoint)
    result = CliRunner().invoke(app, ["push", str(out), "--repo", REPO, "--dry-run", "--token", TOKEN])
    assert result.exit_code == 0, result.output
    assert "would upload" in result.output and "safe.safetensors" in result.output and "memorization-mitigation" in result.output
    assert online.log == []


def test_cli_push_json_and_one_line_errors(patched, online, monkeypatch):
    from huggingface_hub import constants

    _, out = patched
    monkeypatch.setattr(constants, "ENDPOINT", online.endpoint)
    runner = CliRunner()
    res = runner.invoke(app, ["push", str(out), "-r", REPO, "--token", TOKEN, "--format", "json", "-q"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout[res.stdout.index("{"):])
    assert {f["path_in_repo"] for f in info["files"]} == {"safe.safetensors", "safe.manifest.json", "README.md", "memprune_tokenizer.json"}
    assert info["commit_oid"] == online.repos[REPO].branches["main"]
    res = runner.invoke(app, ["push", str(out), "-r", "not-a-repo-id", "--token", TOKEN])
    assert res.exit_code == 2 and "OWNER/NAME" in res.output


def test_push_without_a_token_is_refused_by_the_hub(patched, online):
    _, out = patched
    with pytest.raises(MempruneError, match="log in"):
        hub_push.push(out, REPO)


def test_refuses_pickles(tmp_path, online):
    pth = tmp_path / "model.pth"
    torch.save(tiny_var_state_dict(), pth)
    with pytest.raises(MempruneError, match="refusing to push pickle"):
        hub_push.push(pth, REPO, token=TOKEN, force=True)  # --force does not lift it
    assert online.log == []


def test_refuses_a_tampered_manifest_or_weights_unless_forced(patched, online):
    _, out = patched
    sidecar = out.with_name("safe.manifest.json")
    original = sidecar.read_text()
    manifest = json.loads(original)
    manifest["intervention"]["factor"] = 0.25  # claims another factor than the one applied
    sidecar.write_text(json.dumps(manifest))
    with pytest.raises(VerificationError, match="header copy.*--force"):
        hub_push.push(out, REPO, token=TOKEN)
    sidecar.write_text(original)
    good = out.read_bytes()
    out.write_bytes(good[:-4] + bytes(4))  # last float of the file zeroed: digest no longer matches
    with pytest.raises(VerificationError, match="output digest"):
        hub_push.push(out, REPO, token=TOKEN)
    assert online.log == []
    result = hub_push.push(out, REPO, token=TOKEN, force=True)
    assert any("output digest" in w for w in result.plan.warnings)
    assert sha(online.files(REPO)["safe.safetensors"]) == sha(out.read_bytes())


def test_refuses_when_the_base_does_not_match(patched, tmp_path, online):
    _, out = patched
    other = tmp_path / "other.safetensors"
    save_safetensors(tiny_var_state_dict(seed=5), other)
    with pytest.raises(VerificationError, match="base digest"):
        hub_push.push(out, REPO, token=TOKEN, base=other)


def test_edited_tensor_missing_or_non_finite_fails_the_self_check(patched):
    from memprune.io import open_checkpoint

    _, out = patched
    manifest = json.loads(out.with_name("safe.manifest.json").read_text())
    layer = next(iter(manifest["layers"].values()))
    layer["tensors"]["blocks.9.ffn.fc1.weight"] = {"axis": 0}
    with open_checkpoint(out) as ckpt:
        checks = {c.name: c for c in self_checks(ckpt, manifest)}
    assert not checks["edited tensors exist"].ok and "blocks.9.ffn.fc1.weight missing" in checks["edited tensors exist"].detail
    with open_checkpoint(out) as ckpt:
        sd = {k: v.clone() for k, v in ckpt.items()}
    units = next(iter(manifest["layers"].values()))["units"]
    sd["blocks.0.ffn.fc1.weight"][units[0]] = float("nan")
    bad = out.with_name("nan.safetensors")
    save_safetensors(sd, bad)
    manifest = json.loads(out.with_name("safe.manifest.json").read_text())
    with open_checkpoint(bad) as ckpt:
        checks = {c.name: c for c in self_checks(ckpt, manifest)}
    assert not checks["edited slices finite"].ok


def test_reports_and_tokenizer_file_are_uploaded(patched, tmp_path, online):
    base, out = patched
    manifest = json.loads(out.with_name("safe.manifest.json").read_text())
    (out.parent / "fid.json").write_text(json.dumps({"schema": "memprune.fid/1", "fid": 4.2, "model": {"sha256": manifest["output"]["sha256"]}}))
    tok_pth = tmp_path / "vae.pth"
    torch.save({"w": torch.ones(2)}, tok_pth)
    with pytest.raises(MempruneError, match="refusing to push tokenizer vae.pth.*memprune convert"):
        hub_push.push(out, REPO, token=TOKEN, tokenizer=str(tok_pth), include_tokenizer=True)
    tok = tmp_path / "vae.safetensors"
    save_safetensors({"w": torch.ones(2)}, tok)
    hub_push.push(out, REPO, token=TOKEN, tokenizer=str(tok), include_tokenizer=True, dataset="ImageNet-1k")
    files = online.files(REPO)
    assert files["vae.safetensors"] == tok.read_bytes()
    assert json.loads(files["memprune_tokenizer.json"])["file"] == "vae.safetensors"
    assert json.loads(files["reports/work/fid.json"])["fid"] == 4.2
    assert ModelCard(files["README.md"].decode()).data.eval_results[0].metric_value == 4.2


def test_pushed_checkpoint_loads_back_through_hf_uri_with_provenance(patched, online):
    from memprune.verify import verify

    base, out = patched
    result = hub_push.push(out, REPO, token=TOKEN)
    info = hub.resolve_hf_uri_with_info(f"hf://{REPO}/safe.safetensors", token=TOKEN)
    assert info.commit == result.commit_oid and info.local_path.read_bytes() == out.read_bytes()
    assert hub.hub_provenance(info.local_path) == {"repo": REPO, "path": "safe.safetensors", "revision": "main", "commit": result.commit_oid}
    assert verify(info.local_path, base).ok  # the manifest came along
