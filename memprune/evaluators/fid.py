"""Frechet Inception Distance: preprocessing, streaming statistics, reference files and the distance.

Protocol (``PROTOCOL = "pytorch-fid"``): images as floats in [0, 1] (uint8 divided by 255), torch bilinear
resize to 299 x 299 with ``align_corners=False`` and no antialiasing, then ``2x - 1``; pool3 features of
:class:`~memprune.evaluators.inception.FIDInceptionV3` with the TF ``inception-2015-12-05`` weights. This is
pytorch-fid's pipeline, so statistics ``.npz`` files written by pytorch-fid (``mu``, ``sigma``) can be
used as references. torch-fidelity, clean-fid and OpenAI's TF evaluator (the one behind the published
VAR/RAR/LlamaGen FIDs) resize differently and give different numbers: only compare FIDs computed with the
same protocol, sample count, labels, seeds and reference.

Statistics are accumulated in float64 as a running sum and sum of outer products of the features
(shifted by the first batch's mean to avoid cancellation), so memory stays ``O(D^2)`` however many images
are seen; the covariance equals ``np.cov(features, rowvar=False)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from memprune.errors import MempruneError
from memprune.evaluators.images import (
    ImageInput,
    iter_image_batches,
    list_image_files,
    stack_resized,
)
from memprune.evaluators.inception import FIDInceptionV3
from memprune.io import atomic_write

PROTOCOL = "pytorch-fid"
INCEPTION_SIZE = 299
FEATURE_DIM = 2048


def preprocess_for_inception(images: torch.Tensor) -> torch.Tensor:
    """Float ``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, 299, 299]`` in [-1, 1] (pytorch-fid protocol)."""
    x = images
    if tuple(x.shape[-2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    return 2.0 * x - 1.0


@torch.inference_mode()
def inception_features(model: FIDInceptionV3, images: ImageInput, batch_size: int = 50) -> np.ndarray:
    """Pool3 features ``[N, 2048]`` (float64) of any images (tensors, arrays, PIL images, paths).

    Each image is resized on its own (so sizes may differ); the result equals resizing a same-size batch.
    """
    param = next(model.parameters())
    rows = []
    for batch in iter_image_batches(images, batch_size):
        x = stack_resized([img.to(param.device) for img in batch], preprocess_for_inception)
        rows.append(model(x.to(param.dtype)).double().cpu().numpy())
    if not rows:
        raise MempruneError("no images given to the Inception network; pass at least one image")
    return np.concatenate(rows)


@dataclass(frozen=True)
class FIDStats:
    """Mean and covariance of Inception features, and optionally the features themselves (for KID).

    Attributes:
        mu: float64 ``[D]``.
        sigma: float64 ``[D, D]``.
        num_images: Images the statistics were computed from (0 if unknown, e.g. a pytorch-fid file).
        protocol: Preprocessing protocol (``pytorch-fid``) or ``unknown`` for foreign files.
        features: float32 ``[N, D]`` feature rows, or ``None`` (pytorch-fid files hold only mu and sigma).
    """

    mu: np.ndarray
    sigma: np.ndarray
    num_images: int = 0
    protocol: str = PROTOCOL
    features: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        mu, sigma = np.atleast_1d(self.mu), np.atleast_2d(self.sigma)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise MempruneError(f"FID statistics need mu [D] and sigma [D, D]; got {mu.shape} and {sigma.shape}")
        f = self.features
        if f is not None and (f.ndim != 2 or f.shape[1] != mu.shape[0]):
            raise MempruneError(f"FID features must be [N, {mu.shape[0]}], got {f.shape}; recompute the statistics")

    def save(self, path: str | os.PathLike) -> None:
        """Write ``mu``/``sigma`` (pytorch-fid's keys) plus ``num_images``/``protocol`` (and ``features``) atomically."""
        extra = {"num_images": np.int64(self.num_images), "protocol": np.array(self.protocol)}
        if self.features is not None:
            extra["features"] = self.features.astype(np.float32)
        with atomic_write(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, mu=self.mu, sigma=self.sigma, **extra)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FIDStats:
        """Read an ``.npz`` holding ``mu`` and ``sigma`` (ours, pytorch-fid's or the guided-diffusion reference batch).

        Files without a ``protocol`` entry are marked ``unknown``: they may come from another resize protocol.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
                n = int(data["num_images"]) if "num_images" in data else 0
                protocol = str(data["protocol"]) if "protocol" in data else "unknown"
                features = data["features"].astype(np.float32) if "features" in data else None
        except KeyError:
            raise MempruneError(f"{str(path)!r} has no mu/sigma arrays; pass a statistics .npz or a folder of images") from None
        except (OSError, ValueError) as exc:
            raise MempruneError(f"cannot read FID statistics {str(path)!r} ({exc}); pass an .npz with mu, sigma") from None
        return cls(mu, sigma, n, protocol, features)


@dataclass
class FeatureStatsAccumulator:
    """Streaming mean/covariance of feature rows in float64: ``update(features)``, ``compute()``, ``reset()``.

    ``dim`` fixes the feature width; ``None`` takes it from the first batch. ``keep_features`` also keeps the
    rows (float32, 8 KB per image at 2048 dimensions) so that KID can be computed from the statistics.
    """

    dim: int | None = None
    protocol: str = PROTOCOL
    keep_features: bool = False
    count: int = field(default=0, init=False)
    _shift: np.ndarray | None = field(default=None, init=False, repr=False)
    _sum: np.ndarray | None = field(default=None, init=False, repr=False)
    _outer: np.ndarray | None = field(default=None, init=False, repr=False)
    _rows: list[np.ndarray] = field(default_factory=list, init=False, repr=False)

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.count, self._shift, self._sum, self._outer, self._rows = 0, None, None, None, []

    def update(self, features: np.ndarray | torch.Tensor) -> None:
        """Add feature rows ``[B, dim]``."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().double().numpy()
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != (self.dim or x.shape[1]):
            raise MempruneError(f"expected features of shape [B, {self.dim or 'D'}], got {x.shape}")
        self.dim = x.shape[1]
        if not np.isfinite(x).all():
            raise MempruneError("non-finite Inception features (NaN/Inf); check the images and the model dtype")
        if self._shift is None:
            # Covariance is shift-invariant; centring on a first estimate of the mean keeps the
            # sum-of-outer-products formula from cancelling catastrophically.
            self._shift = x.mean(axis=0)
            self._sum = np.zeros(self.dim)
            self._outer = np.zeros((self.dim, self.dim))
        centred = x - self._shift
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred
        self.count += x.shape[0]
        if self.keep_features:  # float32 halves the memory; KID is computed in float64 from these rows
            self._rows.append(x.astype(np.float32))

    def compute(self) -> FIDStats:
        """Mean and unbiased covariance (``np.cov(rowvar=False)``) of all rows seen."""
        if self.count < 2:
            raise MempruneError(f"FID statistics need at least 2 images, got {self.count}")
        mean_c = self._sum / self.count
        sigma = (self._outer - self.count * np.outer(mean_c, mean_c)) / (self.count - 1)
        features = np.concatenate(self._rows) if self.keep_features else None
        return FIDStats(self._shift + mean_c, (sigma + sigma.T) / 2, self.count, self.protocol, features)


def frechet_distance(s1: FIDStats, s2: FIDStats) -> float:
    """FID between two statistics: ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)``.

    Raises:
        MempruneError: On mismatched dimensions or protocols, or a covariance that is not positive semi-definite.
    """
    _check_compatible(s1, s2)
    return frechet_distance_arrays(s1.mu, s1.sigma, s2.mu, s2.sigma)


def frechet_distance_arrays(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """:func:`frechet_distance` on raw arrays."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise MempruneError(
            f"FID inputs disagree in shape (mu {mu1.shape}/{mu2.shape}, sigma {sigma1.shape}/{sigma2.shape}); "
            "use statistics from the same feature extractor"
        )
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))


def trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """``tr sqrt(A B)`` for symmetric positive semi-definite ``A``, ``B``, by symmetric eigen-decompositions.

    ``A B`` is similar to ``sqrt(A) B sqrt(A)``, which is symmetric PSD, so its square-root trace is the sum of
    the square roots of that matrix's eigenvalues. Two ``eigh`` calls replace ``scipy.linalg.sqrtm`` (a Schur
    decomposition of a non-symmetric matrix: 77 of 96 s of a small run at 2048 dimensions), stay real, and
    need no ``eps`` retry when the covariances are singular (fewer images than dimensions).

    Raises:
        MempruneError: ``A`` or ``B`` has a clearly negative eigenvalue (not a covariance).
    """
    a, b = (np.asarray(m, np.float64) for m in (a, b))
    a, b = (a + a.T) / 2, (b + b.T) / 2
    w, v = np.linalg.eigh(a)
    _check_psd(w, "first")
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root @ b @ root
    ev = np.linalg.eigvalsh((inner + inner.T) / 2)
    _check_psd(ev, "second")
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def _check_psd(eigenvalues: np.ndarray, which: str) -> None:
    # Round-off leaves eigenvalues of about -1e-16 x the largest; anything well below that is a real defect.
    scale = float(np.abs(eigenvalues).max(initial=0.0))
    if eigenvalues.size and float(eigenvalues.min()) < -1e-6 * max(scale, 1e-300):
        raise MempruneError(
            f"FID: the {which} covariance is not positive semi-definite (eigenvalue {eigenvalues.min():.3g}); "
            "recompute the statistics from images"
        )


def _check_compatible(s1: FIDStats, s2: FIDStats) -> None:
    if s1.mu.shape != s2.mu.shape:
        raise MempruneError(
            f"FID statistics have different dimensions ({s1.mu.shape[0]} vs {s2.mu.shape[0]}); "
            "use the same feature extractor"
        )
    if "unknown" not in (s1.protocol, s2.protocol) and s1.protocol != s2.protocol:
        raise MempruneError(f"FID statistics use different protocols ({s1.protocol} vs {s2.protocol}); recompute one side")


def compute_stats(model: FIDInceptionV3, images: Iterable[ImageInput] | ImageInput, batch_size: int = 50) -> FIDStats:
    """Statistics of the Inception features of ``images`` (one input, or an iterable of batches)."""
    acc = FeatureStatsAccumulator()
    for batch in _as_batches(images):
        acc.update(inception_features(model, batch, batch_size))
    return acc.compute()


def compute_stats_for_folder(
    folder: str | os.PathLike,
    model: FIDInceptionV3,
    batch_size: int = 50,
    recursive: bool = True,
    keep_features: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> FIDStats:
    """Statistics of every image file in ``folder`` (any mode and size; see :mod:`~memprune.evaluators.images`).

    ``keep_features`` keeps the feature rows for KID; ``progress(done, total)`` is called after every batch.
    """
    files = list_image_files(folder, recursive=recursive)
    acc = FeatureStatsAccumulator(keep_features=keep_features)
    for start in range(0, len(files), batch_size):
        acc.update(inception_features(model, files[start : start + batch_size], batch_size))
        if progress:
            progress(min(start + batch_size, len(files)), len(files))
    return acc.compute()


def save_stats(stats: FIDStats, path: str | os.PathLike) -> None:
    """Write statistics atomically to ``path`` (``.npz``, readable by pytorch-fid)."""
    stats.save(path)


def load_reference(spec: str | os.PathLike, model: FIDInceptionV3 | None = None, batch_size: int = 50) -> FIDStats:
    """Reference statistics from an ``.npz`` (``mu``/``sigma``) or a folder of images (needs ``model``).

    Raises:
        MempruneError: If ``spec`` does not exist, or is a folder and no model was given.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        if model is None:
            raise MempruneError(
                f"reference {str(path)!r} is a folder of images: pass an Inception model to compute its statistics"
            )
        return compute_stats_for_folder(path, model, batch_size=batch_size)
    if not path.is_file():
        raise MempruneError(f"FID reference {str(path)!r} does not exist; pass a statistics .npz or a folder of images")
    return FIDStats.load(path)


def _as_batches(images: Iterable[ImageInput] | ImageInput) -> Iterable[ImageInput]:
    # A tensor/array/PIL image/path is one input; a list is one input too (its items are images); anything
    # else iterable (a generator, a DataLoader) yields batches.
    if isinstance(images, (torch.Tensor, np.ndarray, Image.Image, str, os.PathLike, list, tuple)):
        return [images]
    return images


class FIDMetric:
    """FID against fixed reference statistics, accumulated batch by batch: ``update``/``compute``/``reset``.

    Args:
        model: The FID Inception network (:func:`~memprune.evaluators.inception.load_inception`).
        reference: Reference :class:`FIDStats` (see :func:`load_reference`).
        batch_size: Images per Inception forward pass inside :meth:`update`.
    """

    def __init__(self, model: FIDInceptionV3, reference: FIDStats, batch_size: int = 50) -> None:
        self.model, self.reference, self.batch_size = model, reference, batch_size
        # Keep the sample features when the reference has its own, so that KID can be computed beside FID.
        self._acc = FeatureStatsAccumulator(dim=reference.mu.shape[0], keep_features=reference.features is not None)

    @property
    def num_images(self) -> int:
        return self._acc.count

    def update(self, images: ImageInput) -> None:
        """Add generated images (tensors ``[B,3,H,W]`` in [0, 1], uint8, PIL, paths...)."""
        self._acc.update(inception_features(self.model, images, self.batch_size))

    def stats(self) -> FIDStats:
        """Statistics of the images seen so far."""
        return self._acc.compute()

    def compute(self) -> float:
        """FID of the images seen so far against the reference."""
        return frechet_distance(self.stats(), self.reference)

    def reset(self) -> None:
        """Forget the images seen so far (the reference stays)."""
        self._acc.reset()
