"""RAR generator: reproduces the official model on the reference fixture (tests/fixtures/rar).

The fixture weights (3 blocks, width 96) are rebuilt from their seeded recipe and checked against the
official file's hashes, then written as .bin and .safetensors and loaded through ``load_rar``.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from memprune.families.base import PositionGroup
from memprune.families.rar.maskgit_vqgan import MaskGITVQGAN, MaskGITVQGANConfig
from memprune.families.rar.maskgit_vqgan import init_random_ as init_tokenizer_
from memprune.families.rar.model import RARModel, load_rar, rar_config_from_state_dict
from memprune.families.common import pick_tokens
from memprune.families.rar.sampling import guidance_scale_at
from memprune.families.rar.transformer import (
    RAR_CONFIGS,
    RARConfig,
    RARTransformer,
    init_random_,
)

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "rar"
FIXTURE_CONFIG = RARConfig(hidden_size=96, depth=3, num_heads=4, mlp_hidden=384)
SEED = 8675309
# sha256 of the official fixture file rar.safetensors (its meta.json, "sha256").
OFFICIAL_SAFETENSORS_SHA256 = "d32ae154b5d72641896a3339aa98d253405121e83696ec53c9872740619e9596"
# sha256 over (name, dtype, shape, raw bytes) of every tensor of the official rar.bin in file order (computed once).
OFFICIAL_CONTENT_SHA256 = "922512fc3c7fe997e5a24c9b7bb03ea3501dfec8f581b3ff1f1e050355b32b8a"
TOL = {"rtol": 1e-4, "atol": 1e-5}


def content_sha256(sd: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in sd.items():
        h.update(k.encode() + b"\0" + str(v.dtype).encode() + str(tuple(v.shape)).encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> object:
    # The tiny model's decoding is hundreds of small ops per token; with 2 threads on a shared CPU each op waits
    # for a descheduled worker, so one thread is several times faster here. Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rar")
    sd = init_random_(RARTransformer(FIXTURE_CONFIG), torch.Generator().manual_seed(SEED)).state_dict()
    tok = init_tokenizer_(MaskGITVQGAN(MaskGITVQGANConfig(hidden_channels=32)), torch.Generator().manual_seed(4242))
    paths = {"bin": out / "rar.bin", "safetensors": out / "rar.safetensors", "tokenizer": out / "tok.bin"}
    torch.save(sd, paths["bin"])
    save_file(dict(sd), str(paths["safetensors"]), metadata={"format": "pt"})
    torch.save(tok.state_dict(), paths["tokenizer"])
    return paths


@pytest.fixture(scope="module")
def model(files: dict[str, Path]) -> RARModel:
    return load_rar(files["bin"], files["tokenizer"])


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    z = np.load(FIX / "inputs.npz")
    return torch.from_numpy(z["tokens"]), torch.from_numpy(z["labels"])


def test_regenerated_weights_equal_the_official_file(files: dict[str, Path]) -> None:
    sd = torch.load(files["bin"], map_location="cpu", weights_only=True)
    assert len(sd) == 63 and sum(v.numel() for v in sd.values()) == 1_095_904
    assert content_sha256(sd) == OFFICIAL_CONTENT_SHA256
    assert hashlib.sha256(files["safetensors"].read_bytes()).hexdigest() == OFFICIAL_SAFETENSORS_SHA256


def test_config_inferred_from_checkpoint(files: dict[str, Path], model: RARModel) -> None:
    sd = torch.load(files["bin"], map_location="cpu", weights_only=True)
    assert rar_config_from_state_dict(sd) == FIXTURE_CONFIG
    assert rar_config_from_state_dict(sd, num_heads=4) == FIXTURE_CONFIG
    assert (model.image_size, model.num_classes, model.vocab_size, model.seq_len) == (256, 1000, 1024, 256)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "keys", "params_m"),
    [("rar_b", 441, 260.9), ("rar_l", 441, 461.7), ("rar_xl", 585, 955.4), ("rar_xxl", 729, 1498.5)],
)
def test_released_layouts_round_trip(name: str, keys: int, params_m: float) -> None:
    # Key counts and sizes of the released checkpoints (reference rar.md §1-2); XXL has F = 6144 for D = 1408.
    with torch.device("meta"):
        sd = RARTransformer(RAR_CONFIGS[name]).state_dict()
    assert len(sd) == keys
    assert round(sum(v.numel() for v in sd.values()) / 1e6, 1) == params_m
    assert rar_config_from_state_dict(sd) == RAR_CONFIGS[name]


def test_teacher_forced_logits_match_official(model: RARModel, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    tokens, labels = inputs
    ref = np.load(FIX / "logits.npz")
    with torch.no_grad():
        full = model.transformer(tokens, labels + 1025)  # the official forward_fn output, 257 rows
        ours = model.teacher_forced(tokens, labels)
        uncond = model.transformer(tokens, torch.full_like(labels, 2025))
    np.testing.assert_allclose(full.numpy(), ref["logits_cond"], **TOL)
    # Row p of teacher_forced predicts token p: the official rows 0..255; row 256 (no target) is dropped.
    assert ours.shape == (3, 256, 1024)
    torch.testing.assert_close(ours, full[:, :256], rtol=0, atol=0)
    np.testing.assert_allclose(uncond[:, ref["subset_positions"]].numpy(), ref["logits_uncond_subset"], **TOL)


def test_fc1_hooks_match_official(model: RARModel, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    tokens, labels = inputs
    ref = np.load(FIX / "fc1.npz")
    post: dict[str, torch.Tensor] = {}
    pre: dict[int, torch.Tensor] = {}
    points = model.hook_points("fc1")
    assert list(points) == [f"blocks.{i}.mlp.fc1" for i in range(3)]
    handles = [m.register_forward_hook(lambda _m, _i, o, k=k: post.__setitem__(k, o)) for k, m in points.items()]
    handles += [
        b.mlp.fc1.register_forward_hook(lambda _m, _i, o, i=i: pre.__setitem__(i, o))
        for i, b in enumerate(model.transformer.blocks)
    ]
    try:
        with torch.no_grad():
            model.teacher_forced(tokens, labels)
    finally:
        for h in handles:
            h.remove()
    acts = torch.stack([post[f"blocks.{i}.mlp.fc1"] for i in range(3)], dim=1)  # [image, block, row, unit]
    assert acts.shape == (3, 3, 258, 384)
    (group,) = model.position_groups()
    assert group == PositionGroup("last_token", 256, 257) and list(ref["block_seq_index"]) == [256, 257]
    np.testing.assert_allclose(acts[:, :, group.begin].numpy(), ref["fc1_post_last_pred"], **TOL)
    pre_acts = torch.stack([pre[i] for i in range(3)], dim=1)
    np.testing.assert_allclose(pre_acts[:, :, 256].numpy(), ref["fc1_pre_last_pred"], **TOL)
    np.testing.assert_allclose(acts[:, :, 257].numpy(), ref["fc1_post_final_pos"], **TOL)
    np.testing.assert_allclose(acts[:, :, :32].numpy(), ref["fc1_post_first32"], **TOL)
    np.testing.assert_allclose(acts.abs().mean(2).numpy(), ref["fc1_meanabs_all_positions"], rtol=1e-4, atol=1e-5)
    everything = RARModel(model.transformer, model.tokenizer, positions="all").position_groups()
    assert everything == [PositionGroup("all_tokens", 1, 257)]
    g = everything[0]
    np.testing.assert_allclose(
        acts[:, :, g.begin : g.end].abs().mean(2).numpy(), ref["fc1_meanabs_pred_positions"], rtol=1e-4, atol=1e-5
    )


def test_hook_points_are_state_dict_module_paths(model: RARModel) -> None:
    names = set(model.transformer.state_dict())
    for layer, expected in (("fc1", "act"), ("fc2", "fc2"), ("attn.proj", "proj")):
        points = model.hook_points(layer)
        assert len(points) == 3
        for key, module in points.items():
            assert f"{key}.weight" in names
            assert module is model.transformer.get_submodule(key.rsplit(".", 1)[0] + "." + expected)
    assert isinstance(model.hook_points("fc1")["blocks.0.mlp.fc1"], torch.nn.GELU)
    assert model.hook_points("fc1")["blocks.0.mlp.fc1"].approximate == "none"


def test_greedy_generation_matches_official(model: RARModel, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    tokens, labels = inputs
    ref = np.load(FIX / "generation.npz")
    out30 = model.generate(labels, prefix=tokens[:, :30], greedy=True)
    np.testing.assert_array_equal(out30.numpy(), ref["greedy_nocfg_prefix30"])
    out0 = model.generate(labels, greedy=True)
    np.testing.assert_array_equal(out0.numpy(), ref["greedy_nocfg_prefix0"])
    assert model.generate(labels, prefix=tokens, greedy=True).equal(tokens)  # a full prefix leaves nothing to do


def _naive_generate(model: RARModel, labels: torch.Tensor, prefix: torch.Tensor, cfg: float, pow_: float) -> torch.Tensor:
    """Official loop without a KV cache: a full teacher-forced pass over the prefix every step."""
    t = model.transformer
    cond = labels + 1025
    ids = prefix
    for step in range(prefix.shape[1], 256):
        if cfg != 0:
            lo = t(torch.cat([ids, ids]), torch.cat([cond, torch.full_like(cond, 2025)]))[:, -1]
            c, u = lo.chunk(2)
            lo = u + (c - u) * guidance_scale_at(step, 256, cfg, pow_)
        else:
            lo = t(ids, cond)[:, -1]
        ids = torch.cat([ids, lo.argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize(("cfg", "pow_", "n"), [(0.0, 0.0, 224), (4.0, 0.0, 240), (6.9, 1.5, 232)])
def test_kv_cache_generation_equals_full_recompute(
    model: RARModel, inputs: tuple[torch.Tensor, torch.Tensor], cfg: float, pow_: float, n: int
) -> None:
    tokens, labels = inputs
    with torch.no_grad():
        naive = _naive_generate(model, labels[:2], tokens[:2, :n], cfg, pow_)
    ours = model.generate(labels[:2], prefix=tokens[:2, :n], cfg=cfg, cfg_pow=pow_, greedy=True)
    torch.testing.assert_close(ours, naive, rtol=0, atol=0)
    assert ours[:, :n].equal(tokens[:2, :n])


def test_kv_steps_match_one_shot_logits(model: RARModel, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    from memprune.families.common import KVCache

    tokens, labels = inputs
    t = model.transformer
    cond = labels + 1025
    with torch.no_grad():
        one_shot = t(tokens, cond)
        cache = KVCache(t.config.depth, 258)
        x, c = t.embed(tokens[:, :200], cond)
        rows = [t.head(t.run_blocks(x, c, cache)[:, 1:], c[:, 1:])]  # prefill: cls, class, tokens 0..199
        for k in range(200, 256):
            x, c = t.embed(tokens[:, : k + 1], cond, start=cache.length)
            rows.append(t.head(t.run_blocks(x, c, cache), c))
    stepwise = torch.cat(rows, dim=1)
    torch.testing.assert_close(stepwise, one_shot, rtol=0, atol=2e-5)


def test_guidance_schedule() -> None:
    assert all(float(guidance_scale_at(s, 256, 4.0, 0.0)) == 4.0 for s in (0, 100, 255))  # 0 ** 0 = 1: constant
    assert float(guidance_scale_at(0, 256, 16.0, 2.75)) == 1.0
    for s in (1, 64, 200, 255):
        expected = 15.0 * (1 - math.cos(math.pi * (s / 256) ** 2.75)) / 2 + 1
        assert float(guidance_scale_at(s, 256, 16.0, 2.75)) == pytest.approx(expected, rel=1e-6)


def test_sampling_is_seeded_and_filters_work(model: RARModel, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    tokens, labels = inputs
    kw = {"prefix": tokens[:, :224], "temperature": 1.0}
    a = model.generate(labels, seed=1, **kw)
    assert a.equal(model.generate(labels, seed=1, **kw))
    assert not a.equal(model.generate(labels, seed=2, **kw))
    top1 = model.generate(labels, seed=3, top_k=1, **kw)
    assert top1.equal(model.generate(labels, greedy=True, prefix=tokens[:, :224]))
    nucleus = model.generate(labels, seed=3, top_p=1e-6, **kw)  # the nucleus keeps only the top token
    assert nucleus.equal(top1)
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    picks = {int(pick_tokens(logits, top_k=2, generator=torch.Generator().manual_seed(s))) for s in range(50)}
    assert picks == {2, 3}


def test_encode_decode_through_the_model(model: RARModel) -> None:
    tokens = torch.randint(0, 1024, (1, 256), generator=torch.Generator().manual_seed(0))
    images = model.decode(tokens)
    assert images.shape == (1, 3, 256, 256) and float(images.min()) >= 0 and float(images.max()) <= 1
    codes = model.encode(images)
    assert codes.shape == (1, 256) and codes.dtype == torch.int64


def test_safetensors_and_state_dict_sources_agree(files: dict[str, Path], model: RARModel) -> None:
    tokens = torch.randint(0, 1024, (1, 256), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([7])
    sd = torch.load(files["bin"], map_location="cpu", weights_only=True)
    tok_sd = torch.load(files["tokenizer"], map_location="cpu", weights_only=True)
    with torch.no_grad():
        ref = model.teacher_forced(tokens, labels)
        for other in (load_rar(files["safetensors"], files["tokenizer"]), load_rar(sd, tok_sd)):
            torch.testing.assert_close(other.teacher_forced(tokens, labels), ref, rtol=0, atol=0)
