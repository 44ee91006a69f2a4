"""The architecture-independent API on VAR: hooks, groups, prefixes, sampling, input validation, devices."""

from __future__ import annotations

import pytest
import torch

from memprune.errors import MempruneError
from memprune.families.base import IARModel, PositionGroup
from memprune.families.var.model import VARConfig, build_var_model
from memprune.families.var.generate import filter_top_k_top_p
from memprune.families.var.vqvae import VQVAEConfig

BOUNDARIES = [0, 1, 5, 14, 30, 55, 91, 155, 255, 424, 680]


@pytest.fixture(scope="module")
def tiny_random():
    """A random model unlike the releases: 2 blocks, 2 heads of 32, 20 classes, V 64, 3 scales."""
    cfg = VARConfig(depth=2, width=64, num_heads=2, mlp_hidden=96, vocab_size=64, cvae=8, num_classes=20,
                    patch_nums=(1, 2, 4))
    vae = VQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, num_hit_scales=3)
    return build_var_model(cfg, vae, seed=1)


def test_is_an_iar_model(var_model):
    assert isinstance(var_model, IARModel) and var_model.arch == "var"
    names = {n for n, _ in var_model.named_children()}
    assert names == {"var", "vae"}


@pytest.mark.parametrize(("layer", "path", "module"), [
    ("fc1", "ffn.fc1", lambda b: b.ffn.act), ("fc2", "ffn.fc2", lambda b: b.ffn.fc2),
    ("attn.proj", "attn.proj", lambda b: b.attn.proj),
])
def test_hook_points_and_that_they_fire(var_model, var_ref, var_labels, layer, path, module):
    points = var_model.hook_points(layer)
    assert list(points) == [f"blocks.{i}.{path}" for i in range(3)]
    assert all(m is module(var_model.var.blocks[i]) for i, m in enumerate(points.values()))
    # the keys are module paths of the checkpoint: fc1 hooks name the fc1 whose rows are the units
    state = var_model.var.state_dict()
    assert all(f"{name}.weight" in state for name in points)
    shapes = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape)))
               for n, m in points.items()]
    var_model.teacher_forced(torch.from_numpy(var_ref["gt_BL"][:1]), var_labels[:1])
    for h in handles:
        h.remove()
    width = 768 if layer == "fc1" else 192
    assert shapes == {n: (1, 680, width) for n in points}


def test_hook_points_reject_unknown_layer(var_model):
    with pytest.raises(MempruneError, match="unknown hook layer 'mlp'"):
        var_model.hook_points("mlp")


def test_position_groups_and_prefix_lengths(var_model):
    groups = var_model.position_groups()
    assert groups[0] == PositionGroup("scale0", 0, 1) and groups[-1] == PositionGroup("scale9", 424, 680)
    assert [g.end for g in groups] == BOUNDARIES[1:] and [g.name for g in groups] == [f"scale{s}" for s in range(10)]
    assert var_model.valid_prefix_lengths() == BOUNDARIES


def test_scale0_logits_depend_only_on_the_label(var_model, var_ref, var_labels):
    tokens = torch.from_numpy(var_ref["gt_BL"][:2])
    same = torch.stack([var_labels[0], var_labels[0]])
    logits = var_model.teacher_forced(tokens, same)
    torch.testing.assert_close(logits[0, 0], logits[1, 0], atol=1e-6, rtol=0)
    assert (logits[0, 1:] - logits[1, 1:]).abs().max() > 1e-3


def test_prefix_is_kept_and_full_prefix_returns_it(var_model, var_ref, var_labels):
    gt = torch.from_numpy(var_ref["gt_BL"][1:])
    for n in (0, 14, 680):
        out = var_model.generate(var_labels[1:], prefix=gt[:, :n], greedy=True)
        assert out.shape == (2, 680) and torch.equal(out[:, :n], gt[:, :n])


def test_seeded_sampling_is_reproducible(var_model, var_labels):
    a = var_model.generate(var_labels[:1], cfg=1.5, top_k=50, top_p=0.9, seed=3)
    b = var_model.generate(var_labels[:1], cfg=1.5, top_k=50, top_p=0.9, seed=3)
    c = var_model.generate(var_labels[:1], cfg=1.5, top_k=50, top_p=0.9, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert var_model.generate(7, prefix=a[:, :5], seed=1).shape == (1, 680)  # an int label is broadcast


def test_top_k_one_equals_greedy(var_model, var_ref, var_labels):
    prefix = torch.from_numpy(var_ref["gt_BL"][:1, :14])
    sampled = var_model.generate(var_labels[:1], prefix=prefix, cfg=1.0, top_k=1, seed=0)
    assert torch.equal(sampled, var_model.generate(var_labels[:1], prefix=prefix, cfg=1.0, greedy=True))


def test_filter_top_k_top_p():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    kept = lambda out: (out > -torch.inf).squeeze().tolist()  # noqa: E731
    assert kept(filter_top_k_top_p(logits.clone(), top_k=2)) == [True, True, False, False]
    # ascending cumulative mass: 0.05, 0.20, 0.50, 1.0; drop while <= 1 - p
    assert kept(filter_top_k_top_p(logits.clone(), top_p=0.8)) == [True, True, False, False]
    assert kept(filter_top_k_top_p(logits.clone(), top_p=0.01)) == [True, False, False, False]
    assert kept(filter_top_k_top_p(logits.clone())) == [True] * 4


def test_image_validation(var_model, var_images):
    with pytest.raises(MempruneError, match=r"shape \(1, 3, 128, 128\), expected \[B, 3, 256, 256\]"):
        var_model.encode(torch.zeros(1, 3, 128, 128))
    with pytest.raises(MempruneError, match=r"expected \[0, 1\]"):
        var_model.encode(var_images[:1] * 2 - 1)
    with pytest.raises(MempruneError, match="dtype torch.uint8"):
        var_model.encode((var_images[:1] * 255).to(torch.uint8))


def test_label_and_token_validation(var_model, var_ref, var_labels):
    gt = torch.from_numpy(var_ref["gt_BL"])
    with pytest.raises(MempruneError, match=r"labels span \[5, 1000\], outside the 1000 classes \[0, 999\]"):
        var_model.teacher_forced(gt, torch.tensor([238, 1000, 5]))
    with pytest.raises(MempruneError, match="labels span"):
        var_model.generate(torch.tensor([-1]))
    with pytest.raises(MempruneError, match="2 labels for a batch of 3"):
        var_model.teacher_forced(gt, var_labels[:2])
    with pytest.raises(MempruneError, match="expected 680"):
        var_model.teacher_forced(gt[:, :679], var_labels)
    with pytest.raises(MempruneError, match=r"outside the vocabulary \[0, 511\]"):
        var_model.teacher_forced(torch.full((3, 680), 512), var_labels)
    with pytest.raises(MempruneError, match="integer tensor"):
        var_model.decode(gt.float())


def test_prefix_validation(var_model, var_ref, var_labels):
    gt = torch.from_numpy(var_ref["gt_BL"])
    with pytest.raises(MempruneError, match="prefix has 20 tokens; .* scale boundary, one of"):
        var_model.generate(var_labels, prefix=gt[:, :20])
    with pytest.raises(MempruneError, match="prefix has 681 tokens"):
        var_model.generate(var_labels, prefix=torch.cat((gt, gt[:, :1]), 1))
    with pytest.raises(MempruneError, match="invalid sampling options"):
        var_model.generate(var_labels, top_p=1.5)


def test_random_model_runs_end_to_end(tiny_random):
    m = tiny_random
    assert (m.seq_len, m.image_size, m.vocab_size) == (21, 16, 64)
    tokens = m.encode(torch.rand(2, 3, 16, 16))
    assert tokens.shape == (2, 21) and int(tokens.max()) < 64
    labels = torch.tensor([0, 19])
    assert m.teacher_forced(tokens, labels).shape == (2, 21, 64)
    gen = m.generate(labels, prefix=tokens[:, :5], cfg=2.0, top_k=10, seed=0)
    assert torch.equal(gen[:, :5], tokens[:, :5])
    img = m.decode(gen)
    assert img.shape == (2, 3, 16, 16) and 0 <= float(img.min()) and float(img.max()) <= 1
    # official init: gammas are ~1e-5 of the other AdaLN rows; head scaled by 0.02
    ada = m.var.blocks[0].ada_lin[1].weight
    assert ada[:128].abs().mean() / ada[128:].abs().mean() < 1e-4
    assert m.var.head.weight.std() < 0.02 * (1 / (3 * 64)) ** 0.5 * 1.5


def test_random_models_are_seeded(tiny_random):
    again = build_var_model(tiny_random.config, tiny_random.vae.config, seed=1)
    for a, b in zip(again.state_dict().values(), tiny_random.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_autocast_bf16_keeps_logits_float32(tiny_random):
    cfg = tiny_random.config
    fast = build_var_model(cfg, tiny_random.vae.config, seed=1, dtype=torch.bfloat16)
    tokens = tiny_random.encode(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    labels = torch.tensor([1, 2])
    seen = {}
    handle = fast.hook_points("fc1")["blocks.0.ffn.fc1"].register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("dtype", out.dtype))
    low = fast.teacher_forced(tokens, labels)
    handle.remove()
    assert low.dtype == torch.float32 and seen["dtype"] == torch.bfloat16
    torch.testing.assert_close(low, tiny_random.teacher_forced(tokens, labels), atol=0.05, rtol=0.05)
    assert torch.equal(fast.encode(torch.zeros(1, 3, 16, 16)), tiny_random.encode(torch.zeros(1, 3, 16, 16)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(var_model, var_files, var_images, var_ref, var_labels):
    from memprune.families.var.model import load_var

    gpu = load_var(var_files["var"], var_files["vae"], device="cuda")
    assert gpu.device.type == "cuda" and gpu.vae.quantize.embedding.weight.is_cuda
    tokens = gpu.encode(var_images.cuda())
    assert torch.equal(tokens.cpu(), torch.from_numpy(var_ref["gt_BL"]))
    logits = gpu.teacher_forced(tokens, var_labels.cuda())
    torch.testing.assert_close(logits.cpu(), var_model.teacher_forced(tokens.cpu(), var_labels), atol=1e-4, rtol=1e-4)
    gen = gpu.generate(var_labels.cuda(), prefix=tokens[:, :30], cfg=1.5, greedy=True)
    assert torch.equal(gen.cpu(), torch.from_numpy(var_ref["gen_cfg1_5"]))
    assert gpu.generate(var_labels.cuda(), cfg=1.5, top_k=50, seed=0).is_cuda
    amp = load_var(var_files["var"], var_files["vae"], device="cuda", dtype=torch.bfloat16)
    assert amp.teacher_forced(tokens, var_labels.cuda()).dtype == torch.float32
