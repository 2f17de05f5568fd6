"""Snakemake job: features of real images (a dataset) or of a cell's generated set."""

import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kaem.features import build_extractor
from kaem.pipeline.artifacts import dataset_features, sample_features
from kaem.pipeline.config import job_context, resolve_device


def main(
    out: str,
    kind: str,
    *,
    data: str | None = None,
    samples: str | None = None,
    classifier: str | None = None,
    weights: str | None = None,
    max_images: int | None = None,
    start: int = 0,
    batch_size: int = 200,
    device: str = "auto",
) -> Path:
    """Features of ``data`` (its training split, ``max_images`` images from index ``start``)
    or of ``samples``, by extractor ``kind``."""
    dev = resolve_device(device)
    extractor = build_extractor(kind, classifier=classifier, inception_weights=weights, device=dev)
    common = {"kind": kind, "batch_size": batch_size, "device": dev}
    if data is not None:
        return dataset_features(data, out, extractor, max_images=max_images, start=start, **common)
    if samples is None:
        raise ValueError("give data (real images) or samples (a generated set)")
    return sample_features(samples, out, extractor, **common)


if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        main(
            job.output[0],
            job.params.kind,
            data=job.input.get("data"),
            samples=job.input.get("samples"),
            classifier=job.input.get("classifier"),
            weights=job.params.weights,
            **(job.params.get("range") or {"max_images": job.params.get("max_images")}),
            batch_size=job.params.batch_size,
            device=job.params.device,
        )
