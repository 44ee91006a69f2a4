"""Reading checkpoints: every supported format, wrappers, prefixes, buffers and dtypes."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from tiny_checkpoints import var_state_dict

from memprune.errors import MempruneError
from memprune.io import (
    checkpoint_sha256,
    load_state_dict,
    open_checkpoint,
    save_safetensors,
    sha256_file,
)


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def test_pth_plain_state_dict_keeps_buffers_dtypes_and_order(tmp_path):
    sd = var_state_dict()
    torch.save(sd, tmp_path / "m.pth")
    with open_checkpoint(tmp_path / "m.pth") as ckpt:
        assert ckpt.format == "pickle" and ckpt.container is None
        assert ckpt.dtype("lvl_1L") == torch.int64
        assert ckpt.shape("attn_bias_for_masking") == (1, 1, 30, 30)
    _assert_same(load_state_dict(tmp_path / "m.pth"), sd)


def test_safetensors_lists_keys_in_file_order_and_reads_lazily(tmp_path):
    sd = var_state_dict()
    save_safetensors(sd, tmp_path / "m.safetensors", {"note": "x"})
    with open_checkpoint(tmp_path / "m.safetensors") as ckpt:
        assert ckpt.keys() == list(sd)
        assert ckpt.metadata == {"note": "x", "format": "pt"}
        assert ckpt.dtype("lvl_1L") == torch.int64
    _assert_same(load_state_dict(tmp_path / "m.safetensors"), sd)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_safetensors_roundtrip_other_dtypes(tmp_path, dtype):
    sd = {"a": torch.randn(3, 5).to(dtype), "inf": torch.tensor([float("-inf"), 0.0]).to(dtype), "s": torch.tensor(3.0)}
    save_safetensors(sd, tmp_path / "x.safetensors")
    _assert_same(load_state_dict(tmp_path / "x.safetensors"), sd)


def test_sharded_safetensors_index(tmp_path):
    sd = var_state_dict()
    keys = list(sd)
    half = len(keys) // 2
    parts = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for name, ks in parts.items():
        save_safetensors({k: sd[k] for k in ks}, tmp_path / name)
        weight_map |= {k: name for k in ks}
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    loaded = load_state_dict(index)
    assert set(loaded) == set(sd)
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert load_state_dict(tmp_path).keys() == loaded.keys()  # a folder resolves to its index
    digest = checkpoint_sha256(index)
    assert len(digest) == 64 and digest != sha256_file(index)


def test_sharded_index_with_missing_shard_is_a_clear_error(tmp_path):
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(MempruneError, match="shard gone.safetensors .* missing"):
        open_checkpoint(tmp_path / "m.safetensors.index.json")


@pytest.mark.parametrize(
    "wrap, container",
    [
        (lambda sd: {"model": sd, "args": argparse.Namespace(lr=1.0), "epoch": 3}, "model"),
        (lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}, "state_dict"),
        (lambda sd: {"module": {f"_orig_mod.{k}": v for k, v in sd.items()}}, "module"),
        (lambda sd: {"model_ema": sd, "optimizer": {"step": 1}}, "model_ema"),
    ],
)
def test_wrapped_pickles_are_unwrapped_and_prefixes_stripped(tmp_path, wrap, container):
    sd = var_state_dict()
    torch.save(wrap(sd), tmp_path / "w.pt")
    with open_checkpoint(tmp_path / "w.pt") as ckpt:
        assert ckpt.container == container
        assert ckpt.keys() == list(sd)


def test_legacy_non_zip_pickle_loads(tmp_path):
    sd = {"w": torch.randn(4, 4)}
    torch.save(sd, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    _assert_same(load_state_dict(tmp_path / "old.pth"), sd)


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(MempruneError, match="does not exist"):
        open_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "x.onnx").write_bytes(b"0")
    with pytest.raises(MempruneError, match="unknown extension"):
        open_checkpoint(tmp_path / "x.onnx")


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    save_safetensors(var_state_dict(), tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MempruneError, match="not a valid safetensors file"):
        open_checkpoint(tmp_path / "cut.safetensors")


def test_corrupted_safetensors_header_is_a_clear_error(tmp_path):
    save_safetensors({"a": torch.ones(4)}, tmp_path / "m.safetensors")
    data = bytearray((tmp_path / "m.safetensors").read_bytes())
    data[10:20] = b"\xff" * 10
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(MempruneError, match="not a valid safetensors file"):
        open_checkpoint(tmp_path / "bad.safetensors")


def test_truncated_pickle_is_a_clear_error(tmp_path):
    torch.save(var_state_dict(), tmp_path / "m.pth")
    data = (tmp_path / "m.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(MempruneError, match="cannot read .* truncated"):
        open_checkpoint(tmp_path / "cut.pth")


def test_pickle_without_tensors_names_what_it_found(tmp_path):
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "t.pth")
    with pytest.raises(MempruneError, match="holds no tensors"):
        open_checkpoint(tmp_path / "t.pth")
