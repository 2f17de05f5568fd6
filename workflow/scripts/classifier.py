"""Snakemake job: train the feature classifier of a dataset and record its accuracy."""

import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kaem.features import fit_classifier
from kaem.pipeline.artifacts import write_json
from kaem.pipeline.config import job_context, resolve_device


def main(data: str, model_out: str, summary_out: str, settings: dict, device: str = "auto") -> dict:
    """Fit the classifier with ``settings`` (features.classifier of the config); save both."""
    summary = fit_classifier(data, model_out, device=resolve_device(device), **settings)
    summary["dataset"] = str(data)
    write_json(summary, summary_out)
    print(f"holdout accuracy {summary['holdout_accuracy']:.4f}")
    print(f"test accuracy {summary['test_accuracy']:.4f}")
    return summary


if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        main(
            job.input.data,
            job.output.model,
            job.output.summary,
            job.params.settings,
            job.params.device,
        )
