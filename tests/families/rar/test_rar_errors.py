"""RAR loader and model: every bad input is a one-line MempruneError that names what was found and what was expected."""

from __future__ import annotations

import pytest
import torch

from memprune.errors import MempruneError
from memprune.families.rar.maskgit_vqgan import MaskGITVQGAN, MaskGITVQGANConfig
from memprune.families.rar.model import (
    RARModel,
    build_random_rar,
    load_rar,
    rar_config_from_state_dict,
)
from memprune.families.rar.transformer import RARConfig, RARTransformer

SMALL = RARConfig(hidden_size=32, depth=2, num_heads=2, mlp_hidden=80)
TOK = MaskGITVQGANConfig(hidden_channels=32)


@pytest.fixture(scope="module")
def rar_sd() -> dict[str, torch.Tensor]:
    return RARTransformer(SMALL).state_dict()


@pytest.fixture(scope="module")
def tok_sd() -> dict[str, torch.Tensor]:
    return MaskGITVQGAN(TOK).state_dict()


@pytest.fixture(scope="module")
def model() -> RARModel:
    return build_random_rar(SMALL, TOK, seed=0)


def _one_line(exc: pytest.ExceptionInfo[MempruneError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_small_model_loads(rar_sd: dict[str, torch.Tensor], tok_sd: dict[str, torch.Tensor]) -> None:
    m = load_rar(rar_sd, tok_sd)
    assert m.transformer.config == SMALL and m.transformer.config.mlp_hidden == 80  # ratio 2.5, read from shapes


def test_not_a_rar_checkpoint(tok_sd: dict[str, torch.Tensor]) -> None:
    with pytest.raises(MempruneError, match="not a RAR generator checkpoint: missing cls_token.*tokenizer") as e:
        load_rar(tok_sd, tok_sd)
    _one_line(e)
    var_like = {"blocks.0.ffn.fc1.weight": torch.zeros(4, 2), "class_emb.weight": torch.zeros(3, 2)}
    with pytest.raises(MempruneError, match="VAR checkpoint"):
        rar_config_from_state_dict(var_like)
    with pytest.raises(MempruneError, match=r"first key found: <empty>.*yucornetto/RAR"):
        rar_config_from_state_dict({})


def test_tokenizer_as_generator_and_generator_as_tokenizer(rar_sd: dict[str, torch.Tensor]) -> None:
    with pytest.raises(MempruneError, match="not a MaskGIT-VQGAN tokenizer.*RAR generator"):
        load_rar(rar_sd, rar_sd)


def test_tokenizer_vocabulary_must_match(rar_sd: dict[str, torch.Tensor]) -> None:
    small_book = MaskGITVQGAN(MaskGITVQGANConfig(hidden_channels=32, codebook_size=512)).state_dict()
    with pytest.raises(MempruneError, match="tokenizer has 512 codes but the RAR checkpoint predicts 1024") as e:
        load_rar(rar_sd, small_book)
    _one_line(e)


def test_tokenizer_token_count_must_match() -> None:
    transformer = RARTransformer(SMALL)
    with pytest.raises(MempruneError, match="tokenizer makes 64 tokens per image but the RAR checkpoint expects 256"):
        RARModel(transformer, MaskGITVQGAN(MaskGITVQGANConfig(hidden_channels=32, resolution=128)))


def test_missing_unexpected_and_misshapen_keys(rar_sd: dict[str, torch.Tensor], tok_sd: dict[str, torch.Tensor]) -> None:
    missing = {k: v for k, v in rar_sd.items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(MempruneError, match=r"1 missing \(first: blocks.1.mlp.fc2.bias\)"):
        load_rar(missing, tok_sd)
    with pytest.raises(MempruneError, match=r"1 unexpected \(first: blocks.0.mlp.fc3.weight\)"):
        load_rar({**rar_sd, "blocks.0.mlp.fc3.weight": torch.zeros(2)}, tok_sd)
    bad = dict(rar_sd)
    bad["blocks.1.mlp.fc1.weight"] = torch.zeros(64, 32)  # block 1 narrower than block 0
    with pytest.raises(MempruneError, match=r"blocks.1.mlp.fc1.weight has shape \(64, 32\), expected \(80, 32\)"):
        load_rar(bad, tok_sd)
    bad = dict(rar_sd)
    bad["pos_embed"] = torch.zeros(1, 300, 32)
    with pytest.raises(MempruneError, match=r"inconsistent.*pos_embed \(1, 300, 32\)"):
        load_rar(bad, tok_sd)


def test_num_heads_must_agree(rar_sd: dict[str, torch.Tensor]) -> None:
    with pytest.raises(MempruneError, match="num_heads=4 contradicts the checkpoint: q_norm has head_dim 16, i.e. 2 heads"):
        rar_config_from_state_dict(rar_sd, num_heads=4)


def test_wrong_image_size(model: RARModel) -> None:
    with pytest.raises(MempruneError, match=r"images have shape \(2, 3, 224, 224\), expected \[B, 3, 256, 256\]"):
        model.encode(torch.rand(2, 3, 224, 224))


def test_labels_out_of_range_or_malformed(model: RARModel) -> None:
    tokens = torch.zeros(2, 256, dtype=torch.long)
    with pytest.raises(MempruneError, match=r"label 1000 is out of range \[0, 999\].*\+1025 offset"):
        model.teacher_forced(tokens, torch.tensor([3, 1000]))
    with pytest.raises(MempruneError, match=r"label -1 is out of range"):
        model.generate(torch.tensor([-1]), greedy=True)
    with pytest.raises(MempruneError, match="1-D integer tensor, got torch.float32"):
        model.teacher_forced(tokens, torch.tensor([1.0, 2.0]))
    with pytest.raises(MempruneError, match="3 labels for a batch of 2"):
        model.teacher_forced(tokens, torch.tensor([1, 2, 3]))


def test_bad_tokens_and_prefixes(model: RARModel) -> None:
    labels = torch.tensor([1, 2])
    with pytest.raises(MempruneError, match="prefix has shape \\(2, 257\\).*at most 256 tokens"):
        model.generate(labels, prefix=torch.zeros(2, 257, dtype=torch.long), greedy=True)
    with pytest.raises(MempruneError, match="prefix has 1 rows for 2 labels"):
        model.generate(labels, prefix=torch.zeros(1, 30, dtype=torch.long), greedy=True)
    with pytest.raises(MempruneError, match=r"prefix values span \[0, 1024\], expected \[0, 1023\]"):
        model.generate(labels, prefix=torch.tensor([[0, 1024], [5, 6]]), greedy=True)
    with pytest.raises(MempruneError, match="tokens have 255 columns, expected 256"):
        model.teacher_forced(torch.zeros(2, 255, dtype=torch.long), labels)
    with pytest.raises(MempruneError, match="temperature must be > 0"):
        model.generate(labels, temperature=0.0)


def test_bad_options(model: RARModel) -> None:
    with pytest.raises(MempruneError, match="unknown hook layer 'ffn'"):
        model.hook_points("ffn")
    with pytest.raises(MempruneError, match=r"positions='first' is not one of \('last', 'all'\)"):
        RARModel(model.transformer, model.tokenizer, positions="first")


def test_missing_file_is_a_memprune_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MempruneError, match="does not exist"):
        load_rar(tmp_path / "rar_b.bin", tmp_path / "tok.bin")


def test_reduced_precision_runs_under_autocast(rar_sd: dict[str, torch.Tensor], tok_sd: dict[str, torch.Tensor]) -> None:
    exact = load_rar(rar_sd, tok_sd)
    amp = load_rar(rar_sd, tok_sd, dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in amp.parameters())  # weights stay float32 (patching is exact)
    tokens = torch.randint(0, 1024, (2, 256), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 4])
    seen: list[torch.dtype] = []
    h = amp.hook_points("fc1")["blocks.1.mlp.fc1"].register_forward_hook(lambda _m, _i, o: seen.append(o.dtype))
    try:
        lo = amp.teacher_forced(tokens, labels)
    finally:
        h.remove()
    assert lo.dtype == torch.float32 and seen == [torch.bfloat16]
    ref = exact.teacher_forced(tokens, labels)
    assert (lo - ref).abs().max() < 0.1 * ref.abs().max()
    assert amp.generate(labels, prefix=tokens[:, :250], cfg=2.0, greedy=True).shape == (2, 256)
    with pytest.raises(MempruneError, match="dtype torch.int8 is not supported"):
        load_rar(rar_sd, tok_sd, dtype=torch.int8)
