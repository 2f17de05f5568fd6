"""The workflow's result files: JSON summaries, cached feature files, metrics per cell.

Feature files are ``.npz`` archives holding ``features`` (float32 ``(n, d)``) and ``meta``
(a JSON text: extractor, its quality where measured, source file, image count), written
atomically. Real-data features
are computed once per dataset and shared by every cell; generated features once per cell.
:func:`cell_metrics` turns a pair of feature files into the paper's effectively unbiased
FID_inf and KID_inf (section 4.1; Chong and Forsyth, 2020): the metric on random generated
subsets at each size ``N``, regressed on ``1 / N``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kaem.data import iter_samples, load_images
from kaem.features import extract_features
from kaem.io import atomic_path, atomic_write_text, non_finite, read_checkpoint
from kaem.metrics import (
    extrapolate_to_infinity,
    feature_statistics,
    kid_from_features,
    metric_at_sizes,
)
from kaem.training import TrainResult

__all__ = [
    "cell_metrics",
    "dataset_features",
    "held_out_evidence",
    "load_features",
    "publish_snapshot",
    "read_json",
    "sample_features",
    "save_features",
    "training_summary",
    "write_json",
]


def write_json(data: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON, atomically.

    Raises
    ------
    FloatingPointError
        If a number in ``data`` is NaN or infinite, naming each; nothing is written.
    """
    bad = non_finite(data)
    if bad:
        raise FloatingPointError(
            f"{path}: not written, these results are not finite: {', '.join(bad)}"
        )

    def clean(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, np.generic):
            return clean(v.item())
        return v

    path = Path(path)
    atomic_write_text(json.dumps(clean(dict(data)), indent=2) + "\n", path)
    return path


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON object, naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def training_summary(result: TrainResult, budget: float | None) -> dict[str, Any]:
    """What a training reached, for the tables: updates, training seconds, parameters, its
    budget and whether the budget (not the planned steps) ended it, and the update and
    training seconds at which each snapshot was taken.

    Parameters
    ----------
    result
        What :func:`kaem.train` returned.
    budget
        ``train.max_seconds`` of the run (None: no budget).

    Returns
    -------
    dict
        ``steps``, ``seconds``, ``parameters``, ``max_seconds``, ``budget_reached`` and
        ``snapshots``: snapshot time (as its file names it, ``f"{t:g}"``) -> ``{"step",
        "seconds"}`` of the snapshots the run took.
    """
    snapshots = {}
    for t, path in sorted(result.snapshots.items()):
        if path.exists():
            state = read_checkpoint(path)
            snapshots[f"{t:g}"] = {"step": int(state["step"]), "seconds": float(state["elapsed"])}
    return {
        "steps": int(result.steps),
        "seconds": float(result.seconds),
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "max_seconds": budget,
        "budget_reached": budget is not None and result.seconds >= budget,
        "snapshots": snapshots,
    }


def held_out_evidence(
    model: nn.Module,
    images: torch.Tensor,
    *,
    n_samples: int,
    iwae_samples: int,
    batch_size: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Held-out ``log p(x)`` of a trained KAEM or VAE by its own estimator, for a table.

    A KAEM's importance sampling draws ``n_samples`` exact prior samples shared by each
    batch of images; the VAE's importance-weighted bound draws ``iwae_samples`` from its
    encoder per image (so it costs ``images x iwae_samples`` decoder passes, and is a lower
    bound). :func:`kaem.inference.evidence.evaluate_log_evidence` does the work, without the
    steppingstone estimator.

    Parameters
    ----------
    model
        A :class:`~kaem.model.KAEM` or :class:`~kaem.baselines.vae.VAE`.
    images
        Float images in ``[0, 1]``, ``(N, C, H, W)``.

    Returns
    -------
    dict
        ``estimator`` (``importance`` or ``iwae_bound``), ``samples``, ``mean`` (average
        ``log p(x)`` per image, nats), ``stderr`` (its Monte Carlo standard error),
        ``per_pixel``, ``images``, and a KAEM's ``quadrature`` record.

    Raises
    ------
    ValueError
        For a model kind without an estimator (:func:`kaem.inference.evidence.check_estimable`).
    """
    from kaem.baselines.vae import VAE
    from kaem.inference.evidence import check_estimable, evaluate_log_evidence

    check_estimable(model)
    vae = isinstance(model, VAE)
    samples = iwae_samples if vae else n_samples
    result = evaluate_log_evidence(
        model, images, n_samples=samples, steppingstone=False, batch_size=batch_size, seed=seed
    )
    estimator = "iwae_bound" if vae else "importance"
    out = {"estimator": estimator, "samples": samples, **result[estimator]}
    if "quadrature" in result:
        out["quadrature"] = result["quadrature"]
    return out


def publish_snapshot(
    summary: str | os.PathLike,
    source: str | os.PathLike,
    out: str | os.PathLike,
    seconds: float,
    log: str | os.PathLike | None = None,
) -> Path:
    """Copy the snapshot a run took at ``seconds`` of training (``source``, in its work folder)
    to ``out``, atomically; ``log``, if given, records where it came from and when it was
    taken.

    Raises
    ------
    FileNotFoundError
        When the run's summary (:func:`training_summary`) records no snapshot at ``seconds``:
        the run ended by its steps before it, which the message says with what to raise.
    """
    record = read_json(summary)
    key = f"{seconds:g}"
    if key not in record["snapshots"]:
        raise FileNotFoundError(
            f"{source}: the run took no snapshot at {key} s of training; it stopped after "
            f"{record['steps']} updates and {record['seconds']:.1f} s, before it: raise "
            "train.epochs or train.max_steps so that its budget, train.max_seconds, ends it"
        )
    with atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)
    if log is not None:
        taken = record["snapshots"][key]
        text = f"{source} -> {out}: update {taken['step']}, {taken['seconds']:.3f} s\n"
        atomic_write_text(text, log)
    return Path(out)


def save_features(
    features: np.ndarray, path: str | os.PathLike, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write features ``(n, d)`` and their metadata to an ``.npz`` file, atomically."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"features must have shape (n, d), got {features.shape}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, features=features, meta=np.asarray(json.dumps(dict(meta or {}))))
    return path


def load_features(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Features ``(n, d)`` float32 and metadata of a file written by :func:`save_features`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no features file")
    with np.load(path, allow_pickle=False) as data:
        if "features" not in data or "meta" not in data:
            raise ValueError(f"{path}: not a features file (needs features and meta)")
        return data["features"], json.loads(str(data["meta"]))


def dataset_features(
    data: str | os.PathLike,
    out: str | os.PathLike,
    extractor: nn.Module,
    *,
    kind: str,
    split: str = "train",
    max_images: int | None = None,
    start: int = 0,
    batch_size: int = 200,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Path:
    """Features of ``max_images`` images (all: None) of a prepared dataset's split, from
    index ``start``.

    The split is a seeded random draw from its source (:func:`kaem.data.prepare_dataset`),
    so any run of its images is a random subset; ``start`` past the reference images gives
    a held-out real set (a real-vs-real row of a table).
    """
    images, _ = load_images(data, split)
    stop = None if max_images is None else start + max_images
    if start < 0 or (stop is not None and stop > len(images)):
        raise ValueError(
            f"{data}: images {start} to {stop} asked of a {split} split of {len(images)}"
        )
    images = images[start:stop]
    feats = extract_features(
        images, extractor, batch_size=batch_size, device=device, progress=progress
    )
    meta = {
        "extractor": kind,
        "extractor_quality": getattr(extractor, "quality", None),
        "source": str(data),
        "split": split,
        "start": start,
        "n": int(feats.shape[0]),
    }
    return save_features(feats, out, meta)


def sample_features(
    samples: str | os.PathLike,
    out: str | os.PathLike,
    extractor: nn.Module,
    *,
    kind: str,
    batch_size: int = 200,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> Path:
    """Features of a generated set (:func:`kaem.data.write_samples`), streamed in batches."""
    batches = iter_samples(samples, batch_size)
    feats = extract_features(
        batches, extractor, batch_size=batch_size, device=device, progress=progress
    )
    meta = {
        "extractor": kind,
        "extractor_quality": getattr(extractor, "quality", None),
        "source": str(samples),
        "n": int(feats.shape[0]),
    }
    return save_features(feats, out, meta)


def cell_metrics(
    real: str | os.PathLike,
    generated: str | os.PathLike,
    sizes: Sequence[int],
    *,
    seed: int,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """FID and KID at each size and their extrapolations FID_inf and KID_inf (section 4.1).

    For every ``N`` in ``sizes`` a random subset of ``N`` generated images is scored against
    all real features (:func:`kaem.metrics.metric_at_sizes`); an ordinary least-squares fit
    on ``1 / N`` gives the intercept, its standard error and ``R^2``
    (:func:`kaem.metrics.extrapolate_to_infinity`).

    Parameters
    ----------
    real, generated
        Feature files (:func:`save_features`) of the real and generated images, with the
        same extractor.
    sizes
        At least three distinct sizes, none above the generated count.
    seed
        Seed of the subset draws.

    Returns
    -------
    dict
        ``sizes``, ``fid`` and ``kid`` (one value per size), ``fid_inf``, ``fid_se``,
        ``fid_r2``, ``kid_inf``, ``kid_se``, ``kid_r2``, the slopes, the extractor, its
        quality (``extractor_quality``: a classifier's accuracy, None for Inception) and
        counts, and ``kid_largest`` with ``kid_largest_std``: the unbiased KID of a fresh
        subset of the largest size and the standard deviation of its MMD^2 over the KID
        subsets.
    """
    real_feats, real_meta = load_features(real)
    gen_feats, gen_meta = load_features(generated)
    if real_meta.get("extractor") != gen_meta.get("extractor"):
        raise ValueError(
            f"{real} holds {real_meta.get('extractor')!r} features but {generated} holds "
            f"{gen_meta.get('extractor')!r} features"
        )
    if real_meta.get("extractor_quality") != gen_meta.get("extractor_quality"):
        raise ValueError(
            f"{real} and {generated} hold features of two different extractors (qualities "
            f"{real_meta.get('extractor_quality')} and {gen_meta.get('extractor_quality')})"
        )
    for path, feats in ((real, real_feats), (generated, gen_feats)):
        bad = int((~np.isfinite(feats)).sum())
        if bad:
            raise FloatingPointError(f"{path}: {bad} of {feats.size} feature values are not finite")
    sizes = sorted(int(s) for s in sizes)
    g = torch.Generator().manual_seed(seed)
    fid = metric_at_sizes(
        feature_statistics(real_feats),
        gen_feats,
        sizes,
        metric="fid",
        generator=g,
        progress=progress,
    )
    kid = metric_at_sizes(
        real_feats,
        gen_feats,
        sizes,
        metric="kid",
        generator=g,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        progress=progress,
    )
    largest = gen_feats[torch.randperm(len(gen_feats), generator=g)[: sizes[-1]].numpy()]
    kid_largest, kid_largest_std = kid_from_features(
        real_feats, largest, n_subsets=kid_subsets, subset_size=kid_subset_size, generator=g
    )
    out: dict[str, Any] = {
        "extractor": real_meta.get("extractor"),
        "extractor_quality": real_meta.get("extractor_quality"),
        "n_real": int(real_feats.shape[0]),
        "n_generated": int(gen_feats.shape[0]),
        "sizes": sizes,
        "fid": fid.tolist(),
        "kid": kid.tolist(),
        "kid_largest": kid_largest,
        "kid_largest_std": kid_largest_std,
        "seed": seed,
    }
    for name, values in (("fid", fid), ("kid", kid)):
        fit = extrapolate_to_infinity(sizes, values)
        out.update(
            {
                f"{name}_inf": fit.intercept,
                f"{name}_se": fit.stderr,
                f"{name}_r2": fit.r2,
                f"{name}_slope": fit.slope,
            }
        )
    return out
