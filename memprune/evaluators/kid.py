"""Kernel Inception Distance (Binkowski et al., 2018): an unbiased MMD^2 between Inception features.

KID uses the cubic polynomial kernel ``k(x, y) = (x . y / D + 1)^3`` and the unbiased MMD^2 estimator on
``subsets`` random subsets of ``subset_size`` rows drawn without replacement from each side (the defaults,
100 x 1000, are torch-fidelity's and the paper's). It is reported as the mean and the standard deviation over
the subsets. Unlike FID it has no bias that depends on the number of samples, so it is the figure to compare
when sample counts are small or differ; it needs the feature rows of both sides, not only their mean and
covariance (:class:`~memprune.evaluators.fid.FIDStats` keeps them as ``features`` when asked).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from memprune.errors import MempruneError

DEFAULT_SUBSETS = 100
DEFAULT_SUBSET_SIZE = 1000


@dataclass(frozen=True)
class KIDResult:
    """KID as mean and standard deviation (``ddof=0``) over ``subsets`` subsets of ``subset_size`` rows."""

    mean: float
    std: float
    subsets: int
    subset_size: int
    seed: int

    def to_json(self) -> dict:
        return asdict(self)


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 of two equally sized row sets under ``(x . y / D + 1)^3`` (diagonals left out)."""
    m, d = x.shape
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    same = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(same - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    subsets: int = DEFAULT_SUBSETS,
    subset_size: int = DEFAULT_SUBSET_SIZE,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> KIDResult:
    """KID between two feature sets ``[N1, D]`` and ``[N2, D]``.

    ``subset_size`` is capped at the smaller set (so a 100-image run uses subsets of 100). Subsets are drawn with
    ``numpy.random.default_rng(seed)``: the same inputs and seed give the same number. The kernels are computed
    in float64 on ``device`` (100 subsets of 1000 at 2048 dimensions are about 1.2 TFLOP: seconds on a GPU,
    minutes on a few CPU cores; lower ``subsets`` there).

    Raises:
        MempruneError: Mismatched widths, fewer than 2 rows on a side, or ``subsets < 1``.
    """
    a, b = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise MempruneError(f"KID needs two feature sets [N, D] of the same width; got {a.shape} and {b.shape}")
    if subsets < 1:
        raise MempruneError(f"KID subsets={subsets} must be at least 1")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise MempruneError(f"KID needs at least 2 images on each side, got {a.shape[0]} and {b.shape[0]}")
    rng = np.random.default_rng(seed)
    ta, tb = (torch.from_numpy(v).to(device) for v in (a, b))
    values = np.empty(subsets)
    for k in range(subsets):
        ia = torch.from_numpy(rng.choice(a.shape[0], m, replace=False)).to(ta.device)
        ib = torch.from_numpy(rng.choice(b.shape[0], m, replace=False)).to(tb.device)
        values[k] = polynomial_mmd2(ta[ia], tb[ib])
    return KIDResult(float(values.mean()), float(values.std()), subsets, m, seed)
