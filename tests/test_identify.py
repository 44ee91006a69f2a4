"""What a file is, by its content: official-layout models, tokenizers and score files are told apart."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import torch

from memprune.identify import FileKind, identify, identify_keys, score_file_shard
from memprune.scores import ScoreSet, save_scores

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _unxz(name: str, dst: Path) -> Path:
    dst.write_bytes(lzma.decompress((FIXTURES / "var" / name).read_bytes()))
    return dst


def test_official_var_model_and_tokenizer_files(tmp_path):
    assert identify(_unxz("var.pth.xz", tmp_path / "var.pth")) == FileKind("model", "var")
    assert identify(_unxz("vae.pth.xz", tmp_path / "vae.pth")) == FileKind("tokenizer", "var")


def test_rar_and_llamagen_tokenizer_layouts():
    rar_keys = json.loads((FIXTURES / "rar_tokenizer" / "full_size_state_dict_shapes.json").read_text())["shapes"]
    assert identify_keys(rar_keys) == FileKind("tokenizer", "rar")
    # LlamaGen VQ-16 (tokenizer/tokenizer_image/vq_model.py): a 1x1 quant_conv and a codebook usage buffer.
    llamagen = {"encoder.conv_in.weight", "quantize.embedding.weight", "quantize.codebook_used", "quant_conv.weight",
                "post_quant_conv.weight", "decoder.conv_out.weight"}
    assert identify_keys(llamagen) == FileKind("tokenizer", "llamagen")


def test_score_files_and_unknown_files(tmp_path):
    save_scores(ScoreSet({"blocks.0.ffn.fc1": torch.rand(1, 4)}, ["all"]), tmp_path / "s.safetensors")
    assert identify(tmp_path / "s.safetensors") == FileKind("scores")
    assert score_file_shard(tmp_path / "s.safetensors") is None
    shard = {"index": 1, "count": 3, "begin": 4, "end": 8}
    save_scores(ScoreSet({"blocks.0.ffn.fc1": torch.rand(1, 4)}, ["all"], info={"shard": shard}), tmp_path / "p.safetensors")
    assert score_file_shard(tmp_path / "p.safetensors") == shard
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    assert identify(tmp_path / "junk.pth") == FileKind("unknown")
    assert identify(tmp_path / "missing.safetensors") == FileKind("unknown")
    assert identify_keys({"h.0.mlp.c_fc.weight"}) == FileKind("unknown")
