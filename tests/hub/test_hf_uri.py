"""hf:// references: parsing, offline loads from a hand-built cache, online loads and errors via the stand-in Hub."""

from __future__ import annotations

import json

import pytest
import torch
from hub_helpers import COMMIT, fill_cache, make_patched, tiny_var_state_dict

import memprune.hub as hub
from memprune.errors import MempruneError
from memprune.io import (
    load_state_dict,
    open_checkpoint,
    resolve_checkpoint_path,
    save_safetensors,
)
from memprune.manifest import read_manifest
from memprune.verify import verify


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://FoundationVision/var/var_d16.pth", ("FoundationVision/var", "var_d16.pth", None)),
        ("hf://me/model/sub/dir/model.safetensors@v1.0", ("me/model", "sub/dir/model.safetensors", "v1.0")),
        ("hf://me/model/model.safetensors@refs/pr/3", ("me/model", "model.safetensors", "refs/pr/3")),
        (f"hf://me/model@{COMMIT}/a/b.safetensors", ("me/model", "a/b.safetensors", COMMIT)),
        ("hf://me/model@refs/pr/12/b.safetensors", ("me/model", "b.safetensors", "refs/pr/12")),
        ("hf://models/me/model/b.safetensors", ("me/model", "b.safetensors", None)),
    ],
)
def test_parse_accepts_both_uri_forms(uri, expected):
    ref = hub.parse_hf_uri(uri)
    assert (ref.repo_id, ref.path, ref.revision) == expected
    assert hub.parse_hf_uri(ref.uri()) == ref  # the canonical form round-trips


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("hf://", "OWNER/NAME"),
        ("hf://owner", "OWNER/NAME"),
        ("hf://owner/name", "names no file"),
        ("hf://owner/name/", "names no file"),
        ("hf://owner/name/folder/", "names no file"),
        ("hf://owner/name/model.safetensors@", "revision"),
        ("hf://datasets/owner/name/x.json", "model repositories"),
        ("hf://owner/name/../x.safetensors", "relative"),
        ("hf://own er/name/x.safetensors", "invalid repository id"),
        ("https://huggingface.co/owner/name/x", "hf://"),
    ],
)
def test_malformed_uris_get_one_line_errors_naming_the_form(uri, why):
    with pytest.raises(MempruneError) as err:
        hub.parse_hf_uri(uri)
    msg = str(err.value)
    assert why in msg and "hf://OWNER/NAME/PATH[@REVISION]" in msg and "\n" not in msg


def _cached_patched(tmp_path, cache, repo="me/var-safe"):
    """A patched checkpoint with its manifest and a licensed README, laid out in the cache by hand."""
    base, out = make_patched(tmp_path / "src")
    readme = b"---\nlicense: mit\ntags:\n- var\n---\n# card\n"
    files = {"safe.safetensors": out.read_bytes(), "safe.manifest.json": (tmp_path / "src/safe.manifest.json").read_bytes(), "README.md": readme}
    snapshot = fill_cache(cache, repo, files, COMMIT)
    return base, out, snapshot


def test_offline_load_from_a_hand_filled_cache_records_provenance(tmp_path, offline):
    base, out, snapshot = _cached_patched(tmp_path, offline)
    uri = "hf://me/var-safe/safe.safetensors"
    path = resolve_checkpoint_path(uri)
    assert path == snapshot / "safe.safetensors" and path.read_bytes() == out.read_bytes()
    expected = {"repo": "me/var-safe", "path": "safe.safetensors", "revision": "main", "commit": COMMIT, "license": "mit"}
    assert hub.hub_provenance(uri) == expected and hub.hub_provenance(path) == expected
    # the manifest beside it resolves too, so verify and stacked patches work on hf:// inputs
    assert read_manifest(path)["output"]["sha256"] == read_manifest(out)["output"]["sha256"]
    assert verify(uri, base).ok
    pinned = hub.resolve_hf_uri_with_info(f"hf://me/var-safe/safe.safetensors@{COMMIT}")
    assert pinned.local_path == path and pinned.provenance()["revision"] == COMMIT


def test_offline_sharded_index_brings_its_shards(tmp_path, offline):
    sd = tiny_var_state_dict()
    keys = list(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    files = {}
    for name, names in shards.items():
        save_safetensors({k: sd[k] for k in names}, tmp_path / name)
        files[name] = (tmp_path / name).read_bytes()
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    fill_cache(offline, "me/sharded", files, COMMIT)
    loaded = load_state_dict("hf://me/sharded/model.safetensors.index.json")
    assert set(loaded) == set(sd) and all((loaded[k] == sd[k]).all() for k in sd)


def test_offline_with_an_empty_cache_says_what_to_do(offline):
    with pytest.raises(MempruneError, match="HF_HUB_OFFLINE") as err:
        resolve_checkpoint_path("hf://me/absent/model.safetensors")
    assert "not in the Hub cache" in str(err.value) and "\n" not in str(err.value)


def test_provenance_is_inferred_from_the_cache_layout_in_a_new_process(tmp_path, offline):
    _, _, snapshot = _cached_patched(tmp_path, offline, repo="org/model-x")
    # nothing resolved in this process: the layout models--org--model-x/snapshots/<commit>/<path> says it all
    assert hub.hub_provenance(snapshot / "safe.safetensors") == {
        "repo": "org/model-x", "path": "safe.safetensors", "revision": COMMIT, "commit": COMMIT}
    assert hub.hub_provenance(tmp_path / "src" / "safe.safetensors") is None
    assert hub.hub_provenance("hf://org/model-x/safe.safetensors") is None


def test_online_download_and_errors(tmp_path, online):
    base, out = make_patched(tmp_path / "src")
    commit = online.add_repo("me/var-safe", {"safe.safetensors": out.read_bytes(), "safe.manifest.json": (tmp_path / "src/safe.manifest.json").read_bytes()})
    info = hub.resolve_hf_uri_with_info("hf://me/var-safe/safe.safetensors")
    assert info.commit == commit and info.local_path.read_bytes() == out.read_bytes() and info.license is None
    with open_checkpoint("hf://me/var-safe/safe.safetensors") as ckpt:  # resolved again, now from the cache
        assert "blocks.0.ffn.fc1.weight" in ckpt
    for uri, message in [
        ("hf://me/nothing/safe.safetensors", "repository not found"),
        ("hf://me/var-safe/other.safetensors", "no such file"),
        ("hf://me/var-safe/safe.safetensors@no-such-branch", "revision 'no-such-branch' does not exist"),
    ]:
        with pytest.raises(MempruneError, match=message):
            resolve_checkpoint_path(uri)


def test_unreachable_hub_with_nothing_cached(hf_env, monkeypatch):
    import socket
    import types

    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    # the client retries a refused connection 5 times with 1-8 s back-off: skip the waiting, not the retries
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda seconds: None))

    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    with pytest.raises(MempruneError, match="could not be reached"):
        resolve_checkpoint_path("hf://me/var-safe/safe.safetensors")


def test_model_loaders_read_hf_references_for_checkpoint_and_tokenizer(tmp_path, offline):
    # load_var / load_rar receive the tokenizer argument as given, so an hf:// string must reach memprune.io
    from memprune.families.state_dict import read_state_dict
    from memprune.families.var.checkpoint import read_var_state_dict

    sd = tiny_var_state_dict()
    save_safetensors(sd, tmp_path / "vae.safetensors")
    fill_cache(offline, "me/tok", {"vae.safetensors": (tmp_path / "vae.safetensors").read_bytes()}, COMMIT)
    for loaded in (read_var_state_dict("hf://me/tok/vae.safetensors", "tokenizer"),
                   read_state_dict("hf://me/tok/vae.safetensors", "tokenizer")):
        assert list(loaded) == list(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
