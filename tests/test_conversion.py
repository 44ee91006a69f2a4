"""memprune convert: pickles to safetensors, checked; unsafe loading only with --trust-pickle."""

from __future__ import annotations

import os

import pytest
import torch
from tiny_checkpoints import var_state_dict

from memprune.conversion import convert
from memprune.errors import MempruneError, UnsafeCheckpointError
from memprune.io import load_state_dict, open_checkpoint


class _Obj:
    def __reduce__(self):
        return (os.getcwd, ())


def test_convert_pth_roundtrip(tmp_path, tiny_var):
    result = convert(tiny_var, tmp_path / "m.safetensors")
    assert result.tensors == len(var_state_dict()) and not result.trusted_pickle
    a, b = load_state_dict(tiny_var), load_state_dict(tmp_path / "m.safetensors")
    assert all(torch.equal(a[k].nan_to_num(), b[k].nan_to_num()) and a[k].dtype == b[k].dtype for k in a)


def test_unsafe_pickle_needs_trust_flag(tmp_path):
    torch.save({"w": torch.ones(2), "extra": _Obj()}, tmp_path / "t.pth")
    with pytest.raises(UnsafeCheckpointError):
        convert(tmp_path / "t.pth", tmp_path / "t.safetensors")
    assert not (tmp_path / "t.safetensors").exists()
    with pytest.warns(UserWarning, match="weights_only=False"):
        result = convert(tmp_path / "t.pth", tmp_path / "t.safetensors", trust_pickle=True)
    assert result.trusted_pickle
    with open_checkpoint(tmp_path / "t.safetensors") as ck:
        assert ck.keys() == ["w"] and ck.metadata["memprune.trusted_pickle"] == "true"


@pytest.mark.parametrize("changed", [-0.0, float("nan"), 1.0000001])
def test_round_trip_refuses_any_changed_float_bit(tmp_path, monkeypatch, changed):
    """A read-back that differs in one float (even -0.0 for 0.0, which torch.equal calls equal) aborts."""
    import memprune.conversion as conversion

    torch.save({"w": torch.tensor([0.0, 1.0, 2.0]), "n": torch.tensor([3, 4])}, tmp_path / "m.pth")
    real = conversion.read_safetensors_file

    def tampered(path):
        back = real(path)
        w = back["w"].clone()
        w[0 if changed != 1.0000001 else 1] = changed
        return back | {"w": w}

    monkeypatch.setattr(conversion, "read_safetensors_file", tampered)
    with pytest.raises(MempruneError, match="round trip changed w"):
        convert(tmp_path / "m.pth", tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
