"""Snakemake job: train one cell, resuming from its work folder, and publish the result."""

import shutil
import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from kaem.config import TrainConfig, from_dict
from kaem.data import load_images
from kaem.io import atomic_path
from kaem.pipeline.artifacts import training_summary, write_json
from kaem.pipeline.config import build_cell_model, job_context, resolve_device, write_yaml
from kaem.training import data_record, train


def main(
    data: str,
    settings: dict,
    workdir: str,
    model_out: str,
    log_out: str,
    config_out: str,
    summary_out: str,
    device: str = "auto",
    progress: bool = True,
) -> int:
    """Train the cell ``settings`` ({model, train}) on ``data``; return the steps done.

    The run lives in ``workdir`` (checkpoint.pt, log.csv, its snapshots) and resumes from it;
    the finished checkpoint, log and resolved settings are copied to the outputs, with a
    summary of what it reached (updates, seconds, snapshots).
    """
    train_cfg = from_dict(TrainConfig, settings["train"], "train")
    model = build_cell_model(settings)
    images, _ = load_images(data, "train")
    work = Path(workdir)
    result = train(
        model,
        torch.from_numpy(images),
        train_cfg,
        work,
        device=resolve_device(device),
        progress=progress,
        data=data_record(images, data),
    )
    for src, dst in ((result.log, log_out), (result.checkpoint, model_out)):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    write_yaml(settings, config_out)
    summary = write_json(training_summary(result, train_cfg.max_seconds), summary_out)
    print(f"trained {result.steps} steps in {result.seconds:.1f} s in {work}; {summary}")
    return result.steps


if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        main(
            job.input.data,
            job.params.settings,
            job.params.workdir,
            job.output.model,
            job.output.log,
            job.output.config,
            job.output.summary,
            job.params.device,
        )
