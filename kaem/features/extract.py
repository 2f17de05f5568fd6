"""Features of image sets: any extractor, batched, from arrays, streams or files.

Every extractor is a callable ``uint8 images (n, C, H, W) -> float32 features (n, dim)``
(:class:`~kaem.features.InceptionFeatures`, :class:`~kaem.features.ClassifierFeatures`);
:func:`extract_features` batches images (an array, or batches streamed from a sampler)
through one. Metrics on the features are in :mod:`kaem.metrics`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kaem.data import as_uint8_images, to_uint8

__all__ = ["EXTRACTORS", "build_extractor", "extract_features", "sample_batches"]

ImageArray = np.ndarray | torch.Tensor
Extractor = Callable[[torch.Tensor], torch.Tensor]

#: Feature extractors a dataset may use.
EXTRACTORS = ("inception", "classifier")


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
            batch = as_uint8_images(batch)
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


def build_extractor(
    kind: str,
    *,
    classifier: str | os.PathLike | None = None,
    inception_weights: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """A feature extractor, uint8 ``(n, C, H, W)`` -> ``(n, d)``.

    Parameters
    ----------
    kind
        ``inception`` (2048-d pool3 features, clean-fid ``mode="clean"``) or ``classifier``
        (the penultimate layer of a classifier written by :func:`fit_classifier`).
    classifier
        The classifier file, for ``kind="classifier"``.
    inception_weights
        An explicit Inception TorchScript file; otherwise the caches are searched.
    device
        Where the network runs.
    """
    from kaem.features.classifier import ClassifierFeatures
    from kaem.features.inception import InceptionFeatures

    if kind == "inception":
        return InceptionFeatures(inception_weights, device=device)
    if kind == "classifier":
        if classifier is None:
            raise ValueError("the classifier extractor needs the classifier file")
        return ClassifierFeatures.from_file(classifier, device)
    raise ValueError(f"unknown feature extractor {kind!r}; choose one of {list(EXTRACTORS)}")
