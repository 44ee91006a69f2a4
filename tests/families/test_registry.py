"""The family registry: detection and unit-layer discovery from names and shapes; the generic --layers spec."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoints import llamagen_state_dict, rar_state_dict, var_state_dict

from memprune.families import detect_family as detect_adapter
from memprune.families import generic_spec, known_families
from memprune.errors import MempruneError
from memprune.io import open_checkpoint, save_safetensors


def _ckpt(tmp_path, sd, name="m.safetensors"):
    save_safetensors(sd, tmp_path / name)
    return open_checkpoint(tmp_path / name)


@pytest.mark.parametrize(
    "sd, arch, first, width, out",
    [
        (var_state_dict(depth=3), "var", "blocks.0.ffn.fc1", 64, "blocks.0.ffn.fc2.weight"),
        (rar_state_dict(depth=3), "rar", "blocks.0.mlp.fc1", 64, "blocks.0.mlp.fc2.weight"),
        (llamagen_state_dict(depth=3), "llamagen", "layers.0.feed_forward", 48, "layers.0.feed_forward.w2.weight"),
    ],
)
def test_detects_architecture_and_fc1_units(tmp_path, sd, arch, first, width, out):
    ckpt = _ckpt(tmp_path, sd)
    adapter = detect_adapter(ckpt)
    assert adapter.name == arch
    layers = adapter.unit_layers(ckpt)
    assert len(layers) == 3 and layers[0].name == first and layers[0].width == width
    assert layers[0].out_columns == out
    assert [layer.block for layer in layers] == [0, 1, 2]
    assert adapter.describe(ckpt)["depth"] == 3


def test_swiglu_default_rows_are_w3(tmp_path):
    layer = detect_adapter(ckpt := _ckpt(tmp_path, llamagen_state_dict())).unit_layers(ckpt)[0]
    assert layer.rows == ("layers.0.feed_forward.w3.weight",) and layer.bias is None


def test_var_describe_reads_sizes(tmp_path):
    ckpt = _ckpt(tmp_path, var_state_dict(depth=2, width=16, vocab=32, classes=10))
    info = detect_adapter(ckpt).describe(ckpt)
    assert info | {} == info and info["width"] == 16 and info["ffn_hidden"] == 64
    assert info["vocab_size"] == 32 and info["num_classes"] == 10 and info["heads"] == 2


@pytest.mark.parametrize("kind, name", [("fc2", "blocks.1.ffn.fc2"), ("attn.proj", "blocks.1.attn.proj")])
def test_other_unit_kinds(tmp_path, kind, name):
    ckpt = _ckpt(tmp_path, var_state_dict())
    layers = detect_adapter(ckpt).unit_layers(ckpt, kind)
    assert layers[1].name == name and layers[1].width == 16 and layers[1].out_columns is None


def test_unknown_architecture_names_known_ones(tmp_path, monkeypatch):
    import memprune.families.spec as spec_module

    # only the released families (other test modules register fake ones in this process)
    monkeypatch.setattr(spec_module, "_REGISTRY", {k: spec_module._REGISTRY[k] for k in ("var", "rar", "llamagen")})
    ckpt = _ckpt(tmp_path, {"encoder.weight": torch.ones(2, 2)})
    with pytest.raises(MempruneError, match="known: llamagen, rar, var.*--layers"):
        detect_adapter(ckpt)


def test_generic_adapter_from_regex(tmp_path):
    sd = {f"h.{i}.mlp.c_fc.weight": torch.ones(8, 4) for i in range(2)} | {"h.0.mlp.c_fc.bias": torch.ones(8)}
    ckpt = _ckpt(tmp_path, sd)
    layers = detect_adapter(ckpt, layers=r"h\.(\d+)\.mlp\.c_fc\.weight").unit_layers(ckpt)
    assert [(u.name, u.block, u.width, u.bias) for u in layers] == [
        ("h.0.mlp.c_fc", 0, 8, "h.0.mlp.c_fc.bias"),
        ("h.1.mlp.c_fc", 1, 8, None),
    ]
    with pytest.raises(MempruneError, match="matched no tensor"):
        detect_adapter(ckpt, layers=r"nothing").unit_layers(ckpt)
    with pytest.raises(MempruneError, match="not a valid regular expression"):
        detect_adapter(ckpt, layers=r"(").unit_layers(ckpt)


def test_explicit_arch_that_does_not_fit(tmp_path):
    ckpt = _ckpt(tmp_path, rar_state_dict())
    with pytest.raises(MempruneError, match="does not look like a var checkpoint"):
        detect_adapter(ckpt, arch="var")
    with pytest.raises(MempruneError, match="unknown architecture"):
        detect_adapter(ckpt, arch="dit")


def test_registry_lists_every_family():
    assert {"var", "rar", "llamagen"} <= set(known_families())
    assert "generic" not in known_families()  # built from --layers, never detected


def test_generic_spec_names_units_and_hooks_but_cannot_run(tmp_path):
    sd = {f"h.{i}.mlp.c_fc.weight": torch.ones(8, 4) for i in range(2)}
    ckpt = _ckpt(tmp_path, sd)
    spec = detect_adapter(ckpt, layers=r"h\.(\d+)\.mlp\.c_fc\.weight")
    assert spec.name == "generic" and spec.layers_regex == generic_spec(r"h\.(\d+)\.mlp\.c_fc\.weight").layers_regex
    net = torch.nn.Module()
    net.h = torch.nn.ModuleList(torch.nn.Module() for _ in range(2))
    for block in net.h:
        block.mlp = torch.nn.Module()
        block.mlp.c_fc = torch.nn.Linear(4, 8)
    hooks = spec.hook_points(net)
    assert list(hooks) == [u.name for u in spec.unit_layers(ckpt)] == ["h.0.mlp.c_fc", "h.1.mlp.c_fc"]
    assert not spec.runnable
    with pytest.raises(MempruneError, match="cannot run them"):
        spec.load_model(ckpt.path, None)
    with pytest.raises(MempruneError, match="needs --layers"):
        detect_adapter(ckpt, arch="generic")


def test_a_family_without_a_declaration_fails_loudly():
    from dataclasses import replace

    from memprune.data import ViewPipeline
    from memprune.families import get_family, register_family

    register_family(replace(get_family("rar"), name="undeclared", display_name="undeclared", required_keys=("undeclared.fake",), tokenizer_detect=None, training_view=None, audit_view=None))
    with pytest.raises(MempruneError, match="undeclared family declares no training view"):
        ViewPipeline.for_arch("undeclared", 32)
    from memprune.evaluators.audit_candidates import canonical_view
    from PIL import Image

    with pytest.raises(MempruneError, match="declares no audit view"):
        canonical_view(Image.new("RGB", (40, 40)), "undeclared", 32)
    with pytest.raises(MempruneError, match="unknown architecture 'dit'"):
        ViewPipeline.for_arch("dit", 32)


def test_old_module_paths_are_aliases_of_the_family_modules():
    """memprune.models.* and memprune.adapters keep working for existing code (same objects, not copies)."""
    import memprune.families.llamagen.model as llamagen_model
    from memprune.adapters import detect_adapter as old_detect
    from memprune.families import detect_family
    from memprune.families.llamagen import load_llamagen
    from memprune.models.llamagen import load_llamagen as old_load
    from memprune.models.var_checkpoint import read_var_state_dict

    assert old_load is load_llamagen is llamagen_model.load_llamagen
    assert old_detect is detect_family and read_var_state_dict.__module__ == "memprune.families.var.checkpoint"
