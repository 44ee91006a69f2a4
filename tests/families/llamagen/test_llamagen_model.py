"""LlamaGen generator: reproduces the official model on the reference fixture (tests/fixtures/llamagen).

The fixture weights (2 layers, width 64, 4 heads, vocabulary 2048) are rebuilt from their seeded recipe and checked
against the official files' hashes, then written in both released forms (``{"model": sd}`` .pt and bare
.safetensors) and loaded through ``load_llamagen``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from memprune.families.base import PositionGroup
from memprune.families.llamagen.model import LlamaGenModel, load_llamagen
from memprune.families.llamagen.transformer import LlamaGenConfig, LlamaGenTransformer, init_random_
from memprune.families.llamagen.vq import LlamaGenVQ, VQConfig
from memprune.families.llamagen.vq import init_random_ as init_vq_

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "llamagen"
FIXTURE_CONFIG = LlamaGenConfig(dim=64, n_layer=2, n_head=4, ffn_hidden=256, vocab_size=2048)
SEED = 1618033
# sha256 over (name, dtype, shape, raw bytes) of every tensor of the official llamagen.pt["model"], in order.
OFFICIAL_CONTENT_SHA256 = "6a41ce2a39fbe8794ff9d862fcbe06268c306d318164e39e4ff9d28894f15905"
# sha256 of the official fixture file llamagen.safetensors (bare state dict, metadata {"format": "pt"}).
OFFICIAL_SAFETENSORS_SHA256 = "fb71f800414b59c6bf9654095e8845de6fda62a733c736dec47194272325a5d2"
TOL = {"rtol": 1e-4, "atol": 1e-4}  # the fixture README's tolerances (our CPU float32 run is bit-identical)


def content_sha256(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in sd.items():
        h.update(k.encode() + b"\0" + str(v.dtype).encode() + str(tuple(v.shape)).encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> object:
    before = torch.get_num_threads()  # tiny ops: one thread is faster than two contended ones
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("llamagen")
    sd = init_random_(LlamaGenTransformer(FIXTURE_CONFIG), torch.Generator().manual_seed(SEED)).state_dict()
    assert content_sha256(sd) == OFFICIAL_CONTENT_SHA256, "the rebuilt weights are not the official fixture's"
    torch.save({"model": sd}, out / "llamagen.pt")
    save_file(sd, out / "llamagen.safetensors", metadata={"format": "pt"})
    digest = hashlib.sha256((out / "llamagen.safetensors").read_bytes()).hexdigest()
    assert digest == OFFICIAL_SAFETENSORS_SHA256
    # The fixture's generator has a 2048-code vocabulary: pair it with a small random VQ of that codebook.
    vq = init_vq_(LlamaGenVQ(VQConfig(ch=32, num_res_blocks=1, z_channels=32, codebook_size=2048)), torch.Generator().manual_seed(1))
    torch.save({"model": vq.state_dict()}, out / "vq.pt")
    return {"pt": out / "llamagen.pt", "safetensors": out / "llamagen.safetensors", "vq": out / "vq.pt"}


@pytest.fixture(scope="module", params=["pt", "safetensors"])
def model(request: pytest.FixtureRequest, files: dict[str, Path]) -> LlamaGenModel:
    return load_llamagen(files[request.param], files["vq"], num_heads=4)


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    out = {}
    for name in ("inputs", "logits", "swiglu_h", "generation"):
        with np.load(FIX / f"{name}.npz") as data:
            out.update(data)
    return out


def _inputs(ref: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(ref["tokens"]), torch.from_numpy(ref["labels"])


def test_teacher_forced_logits_match_official(model: LlamaGenModel, ref: dict[str, np.ndarray]) -> None:
    tokens, labels = _inputs(ref)
    logits = model.teacher_forced(tokens, labels)
    assert logits.shape == (2, 256, 2048) and logits.dtype == torch.float32
    np.testing.assert_allclose(logits.numpy(), ref["logits"], **TOL)
    # The null class (row 1000, the guidance branch) through the transformer directly.
    null = torch.full_like(labels, model.transformer.config.null_class_id)
    uncond = model.transformer(tokens[:, :-1], null)[:, ref["subset_positions"]]
    np.testing.assert_allclose(uncond.numpy(), ref["logits_uncond_subset"], **TOL)


def test_swiglu_hidden_hooks_match_official(model: LlamaGenModel, ref: dict[str, np.ndarray]) -> None:
    tokens, labels = _inputs(ref)
    points = model.hook_points("fc1")
    assert list(points) == ["layers.0.feed_forward", "layers.1.feed_forward"]
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, o, k=k: seen.__setitem__(k, o)) for k, m in points.items()]
    try:
        model.teacher_forced(tokens, labels)
    finally:
        for h in handles:
            h.remove()
    h = torch.stack([seen["layers.0.feed_forward"], seen["layers.1.feed_forward"]], dim=1)
    np.testing.assert_allclose(h.numpy(), ref["h"], **TOL)
    (group,) = model.position_groups()
    assert group == PositionGroup("last_token", 255, 256)
    np.testing.assert_allclose(h[:, :, group.begin].numpy(), ref["h_last_pred"], **TOL)
    np.testing.assert_allclose(h.abs().mean(dim=2).numpy(), ref["h_meanabs"], atol=1e-5)


@pytest.mark.parametrize(("prefix", "cfg"), [(30, 1.0), (30, 2.0), (0, 1.0), (0, 2.0)])
def test_greedy_generation_matches_official(model: LlamaGenModel, ref: dict[str, np.ndarray], prefix: int, cfg: float) -> None:
    tokens, labels = _inputs(ref)
    out = model.generate(labels, prefix=tokens[:, :prefix] if prefix else None, cfg=cfg, greedy=True)
    np.testing.assert_array_equal(out.numpy(), ref[f"greedy_prefix{prefix}_cfg{int(cfg)}"])


def test_generation_leaves_no_cache_behind(model: LlamaGenModel, ref: dict[str, np.ndarray]) -> None:
    tokens, labels = _inputs(ref)
    keys = list(model.state_dict())
    model.generate(labels, prefix=tokens[:, :250], cfg=2.0, greedy=True)
    assert list(model.state_dict()) == keys  # no kv_cache buffers, unlike the official setup_caches
    np.testing.assert_allclose(model.teacher_forced(tokens, labels).numpy(), ref["logits"], **TOL)


def test_sampling_is_seeded_and_cfg_is_checked(model: LlamaGenModel, ref: dict[str, np.ndarray]) -> None:
    tokens, labels = _inputs(ref)
    a = model.generate(labels, prefix=tokens[:, :250], cfg=1.5, top_k=50, seed=3)
    b = model.generate(labels, prefix=tokens[:, :250], cfg=1.5, top_k=50, seed=3)
    assert torch.equal(a, b) and torch.equal(a[:, :250], tokens[:, :250])
    from memprune.errors import MempruneError

    with pytest.raises(MempruneError, match="guidance scale"):
        model.generate(labels, cfg=0.5)
    with pytest.raises(MempruneError, match="out of range"):
        model.generate(torch.tensor([1000]))


def test_w3_rows_and_w2_columns_scale_the_unit_exactly(files: dict[str, Path], ref: dict[str, np.ndarray]) -> None:
    tokens, labels = _inputs(ref)
    units = [3, 17, 200]
    logits = {}
    for target in ("w3", "w2", "w1"):
        m = load_llamagen(files["safetensors"], files["vq"], num_heads=4)
        ff = m.transformer.layers[1].feed_forward
        with torch.no_grad():
            if target == "w2":
                ff.w2.weight[:, units] *= 0.5
            else:
                getattr(ff, target).weight[units] *= 0.5
        logits[target] = m.teacher_forced(tokens[:1], labels[:1])
    torch.testing.assert_close(logits["w3"], logits["w2"], rtol=1e-5, atol=1e-5)
    assert (logits["w1"] - logits["w3"]).abs().max() > 1e-3  # scaling the gate row is not a scaling
