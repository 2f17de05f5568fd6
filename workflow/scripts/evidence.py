"""Snakemake job: held-out log p(x) of a trained model, by its kind's estimator."""

import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from kaem.data import load_images
from kaem.kinds import load_model
from kaem.pipeline.artifacts import held_out_evidence, write_json
from kaem.pipeline.config import job_context, resolve_device


def main(
    model: str,
    data: str,
    out: str,
    *,
    images: int,
    n_samples: int,
    iwae_samples: int,
    batch_size: int,
    seed: int,
    device: str = "auto",
) -> dict:
    """Score the first ``images`` test images of ``data`` under ``model``; write the JSON."""
    dev = resolve_device(device)
    net = load_model(model, map_location=dev).to(dev)
    test, _ = load_images(data, "test")
    x = torch.from_numpy(test[:images]).float().div_(255.0)
    result = held_out_evidence(
        net, x, n_samples=n_samples, iwae_samples=iwae_samples, batch_size=batch_size, seed=seed
    )
    write_json(result, out)
    print(f"log p(x) {result['mean']:.2f} +- {result['stderr']:.2f} ({result['estimator']})")
    return result


if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        main(
            job.input.model,
            job.input.data,
            job.output[0],
            **job.params.settings,
            device=job.params.device,
        )
