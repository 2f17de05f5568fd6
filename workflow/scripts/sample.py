"""Snakemake job: draw a cell's generated set into HDF5, in batches."""

import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from kaem.data import write_samples
from kaem.kinds import load_model
from kaem.pipeline.config import job_context, resolve_device


def main(
    model: str,
    out: str,
    n: int,
    *,
    batch_size: int,
    seed: int,
    device: str = "auto",
    cell: str = "",
    sampler: dict | None = None,
    progress: bool = True,
) -> Path:
    """Write ``n`` images of the trained ``model`` to ``out``; the seed is stored with them.

    ``sampler`` holds the keywords of a DDPM's ``generate`` (scheduler, steps, eta); they
    are stored with the images too.
    """
    dev = resolve_device(device)
    net = load_model(model, map_location=dev).to(dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    attrs = {"cell": cell, "seed": seed, "model": str(model), "device": str(dev)}
    if sampler:
        attrs["sampler"] = dict(sampler)
    return write_samples(
        net,
        out,
        n,
        generator=generator,
        batch_size=batch_size,
        progress=progress,
        attrs=attrs,
        options=sampler,
    )


if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        main(
            job.input.model,
            job.output[0],
            job.params.n,
            batch_size=job.params.batch_size,
            seed=job.params.seed,
            device=job.params.device,
            cell=f"{job.wildcards.cell}/seed{job.wildcards.seed}",
            sampler=job.params.sampler,
        )
