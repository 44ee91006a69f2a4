"""FID/KID pieces on a CUDA device agree with the CPU (``pytest -m cuda``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memprune.evaluators.fid import FeatureStatsAccumulator, inception_features
from memprune.evaluators.inception import FIDInceptionV3
from memprune.evaluators.kid import kernel_inception_distance
from memprune.plots.grid import render_sample_grid

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_kid_on_cuda_equals_cpu() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 64)), rng.normal(size=(250, 64)) + 0.2
    cpu = kernel_inception_distance(a, b, subsets=5, subset_size=200, seed=3)
    gpu = kernel_inception_distance(a, b, subsets=5, subset_size=200, seed=3, device="cuda")
    assert gpu.mean == pytest.approx(cpu.mean, rel=1e-9) and gpu.std == pytest.approx(cpu.std, rel=1e-6)


def test_inception_features_on_cuda_match_cpu(tmp_path, check_png) -> None:
    net = FIDInceptionV3().eval()  # random weights: the arithmetic, not the number, is under test
    images = torch.rand(3, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    cpu = inception_features(net, images)
    gpu = inception_features(net.cuda(), images.cuda())
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)
    acc = FeatureStatsAccumulator(keep_features=True)
    acc.update(torch.from_numpy(gpu).cuda())
    assert acc.compute().features.shape == (3, 2048)
    check_png(render_sample_grid(list(images.cuda()), ["a", "b", "c"], tmp_path / "g.png"))
