"""Values: a factor that overflows the dtype is refused, x/module.x collisions are refused, verify compares metadata."""

from __future__ import annotations

import pytest
import torch
from reliability_helpers import inputs, temporaries
from tiny_checkpoints import var_state_dict

from memprune.conversion import convert
from memprune.errors import MempruneError
from memprune.io import load_state_dict, open_checkpoint, save_safetensors
from memprune.patching import patch
from memprune.verify import verify


@pytest.mark.parametrize("verify_output", [True, False])
def test_a_factor_that_overflows_float32_is_refused_and_nothing_written(tmp_path, verify_output):
    ckpt, scores = inputs(tmp_path)
    out = tmp_path / "safe.safetensors"
    with pytest.raises(MempruneError, match="overflows torch.float32.*choose a factor below.*nothing was written"):
        patch(ckpt, scores, output=out, top="10%", factor=1e39, verify=verify_output)
    assert not out.exists() and not (tmp_path / "safe.manifest.json").exists() and temporaries(tmp_path) == []


def test_the_limit_depends_on_the_dtype(tmp_path):
    ckpt, scores = inputs(tmp_path, safetensors=True, dtype=torch.float16)
    with pytest.raises(MempruneError, match="overflows torch.float16"):
        patch(ckpt, scores, output=tmp_path / "h.safetensors", top="10%", factor=1e6)
    # the same factor is finite in float32: accepted, and every edited value stays finite
    ckpt32, scores32 = inputs(tmp_path / "f32")
    patch(ckpt32, scores32, output=tmp_path / "f.safetensors", top="10%", factor=1e6)
    edited = {k: t for k, t in load_state_dict(tmp_path / "f.safetensors").items() if k.endswith("ffn.fc1.weight")}
    assert edited and all(torch.isfinite(t).all() for t in edited.values())


@pytest.mark.parametrize("container", ["safetensors", "pth"])
def test_x_and_module_x_in_one_checkpoint_are_refused(tmp_path, container):
    state = var_state_dict()
    key = next(k for k in state if k.endswith("ffn.fc1.weight"))
    state[f"module.{key}"] = state[key] * 2
    path = tmp_path / f"collide.{container}"
    if container == "pth":
        torch.save(state, path)
    else:
        save_safetensors(state, path)
    with pytest.raises(MempruneError, match=f"holds both .*{key}.*same tensor"):
        open_checkpoint(path)
    with pytest.raises(MempruneError, match="same tensor"):
        convert(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_prefixes_alone_are_still_stripped(tmp_path):
    state = {f"module._orig_mod.{k}": v for k, v in var_state_dict().items()}
    path = tmp_path / "ddp.pth"
    torch.save(state, path)
    with open_checkpoint(path) as ck:
        assert set(ck.keys()) == set(var_state_dict())


def _rewrite_header(path, change):
    with open_checkpoint(path) as ck:
        tensors = {k: ck.get(k) for k in ck.keys()}
        meta = dict(ck.metadata)
    change(meta)
    save_safetensors(tensors, path, meta)


@pytest.mark.parametrize("change", [
    lambda m: m.update({"added": "1"}),
    lambda m: m.update({"memprune.source_sha256": "0" * 64}),
    lambda m: m.pop("origin"),
    lambda m: m.update({"origin": "elsewhere"}),
])
def test_verify_base_compares_header_metadata(tmp_path, change):
    state = var_state_dict()
    base = tmp_path / "base.safetensors"
    save_safetensors(state, base, {"origin": "lab"})
    _, scores = inputs(tmp_path / "s")
    out = tmp_path / "safe.safetensors"
    patch(base, scores, output=out, top="10%", force=True)
    assert verify(out, base).ok
    _rewrite_header(out, change)
    report = verify(out, base, raise_on_failure=False)
    assert any(c.name == "header metadata" and not c.ok for c in report.checks)
