"""The family contract, run for every registered runnable family (the way timm tests every registered model).

detect -> unit layers -> load -> hook names equal unit names (and hook widths equal unit widths) -> the spec's
declarations agree with the model -> score two images -> patch -> verify -> flip one byte of an edited row ->
verify fails. A new family registers its spec and adds a tiny builder to ``BUILDERS``; the first test fails until
it does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memprune.errors import MempruneError, VerificationError
from memprune.families import UNIT_KINDS, detect_family, known_families
from memprune.families.loading import load_model
from memprune.io import open_checkpoint
from memprune.io.reader import read_header
from memprune.patching import patch
from memprune.scoring.engine import score
from memprune.verify import verify


def _var(root: Path) -> tuple[Path, Path]:
    from memprune.families.var.model import VARConfig, build_var_model
    from memprune.families.var.vqvae import VQVAEConfig

    cfg = VARConfig(depth=2, width=64, num_heads=2, mlp_hidden=128, vocab_size=64, cvae=8, num_classes=2,
                    patch_nums=(1, 2, 4))  # fmt: skip
    model = build_var_model(cfg, VQVAEConfig(vocab_size=64, z_channels=8, ch=32, num_hit_scales=3), seed=0)
    torch.save(model.var.state_dict(), root / "var.pth")  # the released form: a bare state dict
    torch.save(model.vae.state_dict(), root / "vae.pth")
    return root / "var.pth", root / "vae.pth"


def _rar(root: Path) -> tuple[Path, Path]:
    from memprune.families.rar.maskgit_vqgan import MaskGITVQGANConfig
    from memprune.families.rar.model import build_random_rar
    from memprune.families.rar.transformer import RARConfig

    config = RARConfig(hidden_size=64, depth=2, num_heads=4, mlp_hidden=256, codebook_size=64, num_classes=2)
    tok = MaskGITVQGANConfig(hidden_channels=32, num_res_blocks=1, z_channels=16, codebook_size=64)
    model = build_random_rar(config, tok, seed=3)
    torch.save(model.transformer.state_dict(), root / "rar.bin")
    torch.save(model.tokenizer.state_dict(), root / "tokenizer.bin")
    return root / "rar.bin", root / "tokenizer.bin"


def _llamagen(root: Path) -> tuple[Path, Path]:
    from memprune.families.llamagen.model import build_random_llamagen
    from memprune.families.llamagen.transformer import LlamaGenConfig
    from memprune.families.llamagen.vq import VQConfig

    config = LlamaGenConfig(dim=64, n_layer=2, n_head=4, ffn_hidden=256, vocab_size=64, num_classes=2)
    tok = VQConfig(ch=32, num_res_blocks=1, z_channels=32, codebook_size=64)
    model = build_random_llamagen(config, tok, seed=3)
    torch.save({"model": model.transformer.state_dict()}, root / "c2i.pt")  # the released DDP form
    torch.save({"model": model.tokenizer.state_dict()}, root / "vq.pt")
    return root / "c2i.pt", root / "vq.pt"


# Tiny random models in each family's released file layout; the load options they need (width 64 is no release).
BUILDERS: dict[str, tuple[Callable[[Path], tuple[Path, Path]], dict]] = {
    "var": (_var, {}),
    "rar": (_rar, {"num_heads": 4}),
    "llamagen": (_llamagen, {"num_heads": 4}),
}
FAMILIES = sorted(name for name, spec in known_families().items() if spec.runnable)


def test_every_runnable_family_has_a_contract_builder():
    assert {"var", "rar", "llamagen"} <= set(FAMILIES)
    assert set(FAMILIES) <= set(BUILDERS), "a new family adds a tiny builder to BUILDERS"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("contract_data")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir()
        base = rng.uniform(0, 255, size=(1, 1, 3))
        img = np.clip(base + rng.normal(0, 40, size=(96, 96, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / cls / "0.png")
    return root


def _flip_byte_in_row(path: Path, tensor: str, row: int) -> None:
    header = read_header(path)
    entry = header.tensors[tensor]
    row_bytes = (entry.end - entry.begin) // entry.shape[0]
    offset = header.data_start + entry.begin + row * row_bytes
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


@pytest.mark.parametrize("name", FAMILIES)
def test_family_contract(name, tmp_path, images):
    spec = known_families()[name]
    build, options = BUILDERS[name]
    ckpt_path, tok_path = build(tmp_path)

    # detect, and unit layers of every kind the spec declares; inspect names the official code it reproduces
    from memprune.inspection import inspect_checkpoint

    assert spec.official_repo and inspect_checkpoint(ckpt_path).official_code == f"https://github.com/{spec.official_repo}"
    with open_checkpoint(ckpt_path) as ckpt:
        assert detect_family(ckpt) is spec
        layers = {kind: spec.unit_layers(ckpt, kind) for kind in UNIT_KINDS if kind in spec.units}
        assert "fc1" in layers and len(layers["fc1"]) == 2
        for unit in layers["fc1"]:
            assert all(t in ckpt for t in unit.rows) and unit.out_columns in ckpt

    # load through the entry point every command uses; options a family does not take are refused
    model, _ = load_model(ckpt_path, tok_path, device="cpu", dtype="float32", **options)
    assert model.arch == name
    if "num_heads" not in spec.load_options:
        with pytest.raises(MempruneError, match="--num-heads does not apply"):
            load_model(ckpt_path, tok_path, device="cpu", dtype="float32", num_heads=4)

    # hook names are the unit names, and each hooked output has one entry per unit
    tokens = model.encode(torch.rand(1, 3, model.image_size, model.image_size))
    for kind, units in layers.items():
        points = model.hook_points(kind)
        assert list(points) == [u.name for u in units], kind
        widths: dict[str, int] = {}
        handles = [m.register_forward_hook(lambda _m, _i, out, n=n: widths.__setitem__(n, out.shape[-1]))
                   for n, m in points.items()]  # fmt: skip
        with torch.no_grad():
            model.teacher_forced(tokens, torch.zeros(1, dtype=torch.long))
        for h in handles:
            h.remove()
        assert widths == {u.name: u.width for u in units}, kind

    # the spec's declarations agree with the model and cover what the commands ask for
    assert spec.need("prefix_unit") == ("scales" if model.valid_prefix_lengths() is not None else "tokens")
    for field in ("training_view", "audit_view", "decode_note", "guidance", "paper_prefix", "robust_prefixes",
                  "prefix_sweep", "ranked_predictions", "tokenizer_name", "official_repo"):  # fmt: skip
        spec.need(field)
    assert spec.sampling is not None and spec.sampling(model).source

    # score two images, patch the top units, verify; one flipped byte in an edited row fails verification
    scores = tmp_path / "scores.safetensors"
    result = score(ckpt_path, images, tokenizer=tok_path, output=scores, augs=1, batch_size=2, device="cpu",
                   dtype="float32", workers=1, **options)  # fmt: skip
    assert result.total_images == 2 and result.scores.arch == name
    assert {n: v.shape[-1] for n, v in result.scores.scores.items()} == {u.name: u.width for u in layers["fc1"]}
    patched = tmp_path / "patched.safetensors"
    done = patch(ckpt_path, scores, output=patched, top="10%", factor=0.0)
    assert done.verified and done.edits
    rows = {t for u in layers["fc1"] for t in u.rows}
    assert {e.tensor for e in done.edits} <= rows  # the default target is the rows the spec declares
    assert verify(patched, ckpt_path).ok
    edit = done.edits[0]
    _flip_byte_in_row(patched, edit.tensor, edit.units[0])
    with pytest.raises(VerificationError):
        verify(patched, ckpt_path)
