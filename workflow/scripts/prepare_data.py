"""Snakemake job: prepare one dataset into an HDF5 file (kaem.data.prepare_dataset)."""

import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kaem.data import prepare_dataset
from kaem.pipeline.config import job_context


def main(name: str, out: str, settings: dict, progress: bool = True) -> Path:
    """Prepare dataset ``name`` into ``out`` with the workflow's dataset settings."""
    return prepare_dataset(
        name,
        out,
        source=settings.get("source"),
        n_train=settings.get("n_train"),
        n_test=settings.get("n_test"),
        seed=settings.get("seed", 0),
        download=settings.get("download", True),
        progress=progress,
    )


if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        main(job.wildcards.dataset, job.output[0], job.params.settings)
