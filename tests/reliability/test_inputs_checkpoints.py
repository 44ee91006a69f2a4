"""Hostile checkpoints: each one ends in one clear line and exit 2, never a traceback or a hang."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import pytest
import torch
from inputs_support import assert_one_line, fifo, invoke, tiny_checkpoint, tiny_scores
from tiny_checkpoints import var_state_dict

from memprune.errors import MempruneError
from memprune.io import open_checkpoint


def _safetensors(path: Path, header: object, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("command", ["inspect", "patch", "convert"])
def test_fifo_named_safetensors_is_refused_not_read(tmp_path, command):
    pipe = fifo(tmp_path / "x.safetensors")  # opening it would block until a writer appears
    args = {"inspect": [pipe], "patch": [pipe, "--scores", tiny_scores(tmp_path), "-o", tmp_path / "o.safetensors"],
            "convert": [pipe, "-o", tmp_path / "o.safetensors"]}[command]
    assert_one_line(invoke(command, *args), "named pipe", "not a regular file")


def test_pth_linked_to_dev_urandom_is_refused(tmp_path):
    link = tmp_path / "model.pth"
    link.symlink_to("/dev/urandom")  # an endless stream: reading it would never finish
    assert_one_line(invoke("inspect", link), "character device")


def test_pickle_renamed_safetensors_is_named_by_its_content(tmp_path):
    torch.save(var_state_dict(), tmp_path / "tok.safetensors")
    assert_one_line(invoke("inspect", tmp_path / "tok.safetensors"), "holds a torch zip checkpoint", "rename it to .pth")


def test_push_include_tokenizer_checks_content_not_suffix(tmp_path):
    from memprune.io import resolve_checkpoint_path

    torch.save({"w": torch.zeros(2)}, tmp_path / "vae.safetensors")
    with pytest.raises(MempruneError, match="holds a torch zip checkpoint"):
        resolve_checkpoint_path(tmp_path / "vae.safetensors")  # what push --include-tokenizer resolves


def test_non_utf8_file_name_is_read_not_called_corrupted(tmp_path):
    name = os.fsdecode(b"mod\xe9le.safetensors")
    good = tiny_checkpoint(tmp_path)
    os.rename(good, tmp_path / name)
    res = invoke("inspect", tmp_path / name, "--format", "json")
    assert res.exit_code == 0, res.stderr
    # and a broken one with such a name says what is wrong with the content, printably
    (tmp_path / name).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    line = assert_one_line(invoke("inspect", tmp_path / name), "not a valid safetensors file", "\\xe9")
    assert "\udce9" not in line


@pytest.mark.parametrize(
    ("header", "data", "needle"),
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "runs past|cover"),
        ({"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, "non-negative"),
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "does not fill"),
        ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
        ([1, 2], b"", "not an object"),
    ],
)
def test_malformed_safetensors_headers(tmp_path, header, data, needle):
    path = _safetensors(tmp_path / "bad.safetensors", header, data)
    line = assert_one_line(invoke("inspect", path), "not a valid safetensors file")
    assert any(n in line for n in needle.split("|")), line


def test_pickle_with_integer_keys(tmp_path):
    torch.save({0: torch.zeros(2), 1: torch.ones(2)}, tmp_path / "m.pth")
    assert_one_line(invoke("inspect", tmp_path / "m.pth"), "int key 0", "state_dict")


def test_pickle_with_sparse_tensor(tmp_path):
    state = var_state_dict()
    state["head.bias"] = state["head.bias"].to_sparse()
    torch.save(state, tmp_path / "m.pth")
    assert_one_line(invoke("inspect", tmp_path / "m.pth"), "head.bias", "to_dense")


def test_pickle_with_meta_tensor(tmp_path):
    state = var_state_dict()
    state["head.bias"] = torch.empty(3, device="meta")
    torch.save(state, tmp_path / "m.pth")
    assert_one_line(invoke("inspect", tmp_path / "m.pth"), "meta device")


@pytest.mark.parametrize("wrap", [lambda o: {"model": o}, lambda o: [o]])
def test_pickle_nested_3000_deep(tmp_path, wrap):
    obj: object = {"w": torch.zeros(1)}
    for _ in range(3000):
        obj = wrap(obj)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50000)  # saving needs the depth; reading must fail cleanly under the default limit
    try:
        torch.save(obj if isinstance(obj, dict) else {"w": obj}, tmp_path / "deep.pth")
    finally:
        sys.setrecursionlimit(limit)
    line = assert_one_line(invoke("inspect", tmp_path / "deep.pth"))
    assert any(n in line for n in ("levels deep", "too deeply", "holds no tensors")), line


def test_prefix_collision_is_refused(tmp_path):
    torch.save({"x": torch.zeros(2), "module.x": torch.ones(2)}, tmp_path / "m.pth")
    assert_one_line(invoke("inspect", tmp_path / "m.pth"), "keep one of them")


def _sharded(tmp_path: Path, index: object) -> Path:
    tiny_checkpoint(tmp_path, "model-00001-of-00001.safetensors")
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(json.dumps(index))
    return path


@pytest.mark.parametrize(
    ("index", "needle"),
    [
        ({"weight_map": ["model-00001-of-00001.safetensors"]}, "weight_map"),
        ({"weight_map": {"head.bias": 3}}, "must be a shard file name"),
        ({"weight_map": {"head.bias": "model-00001-of-00001.safetensors"}, "metadata": "x"}, "metadata"),
        ({"weight_map": {"head.bias": "../../etc/model.safetensors"}}, "outside the index's folder"),
        ({"weight_map": {"head.bias": "/etc/model.safetensors"}}, "outside the index's folder"),
        ("not an object", "not an object"),
    ],
)
def test_malformed_sharded_indexes(tmp_path, index, needle):
    assert_one_line(invoke("inspect", _sharded(tmp_path, index)), needle)


def test_hf_index_with_dotdot_shard_is_refused_before_download(tmp_path, monkeypatch):
    import memprune.hub as hub

    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../other/model.safetensors"}}))
    fetched = []

    def fake_download(ref, revision, *, required, **kwargs):
        fetched.append(ref.path)
        return index if ref.path.endswith(".index.json") else None

    monkeypatch.setattr(hub, "_download", fake_download)
    monkeypatch.setattr(hub, "_card_license", lambda *a: None)
    with pytest.raises(MempruneError, match="outside the index's folder"):
        hub.resolve_hf_uri_with_info("hf://owner/name/sub/model.safetensors.index.json")
    assert fetched == ["sub/model.safetensors.index.json"]


def test_valid_checkpoint_still_reads_the_same(tmp_path):
    state = var_state_dict()
    path = tiny_checkpoint(tmp_path)
    with open_checkpoint(path) as ckpt:
        assert ckpt.keys() == list(state)
        assert all(torch.equal(ckpt.get(k), v) for k, v in state.items())


def test_random_bytes_named_pth_are_unreadable_not_unsafe(tmp_path):
    (tmp_path / "m.pth").write_bytes(bytes(range(256)) * 4)
    line = assert_one_line(invoke("inspect", tmp_path / "m.pth"), "cannot read", "as a torch checkpoint")
    assert "unsafe" not in line


def test_damaged_zip_named_pth(tmp_path):
    (tmp_path / "m.pth").write_bytes(b"PK\x03\x04" + bytes(300))
    line = assert_one_line(invoke("inspect", tmp_path / "m.pth"), "cannot read")
    assert len(line) < 400
