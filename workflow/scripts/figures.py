"""Snakemake job: every figure of the run, as planned by the workflow (kaem.workflow.plots)."""

import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd
import torch
import yaml

from kaem.workflow import plots
from kaem.config import TrainConfig, from_dict
from kaem.data import read_samples
from kaem.kinds import load_model
from kaem.workflow.artifacts import read_json
from kaem.workflow.config import job_context


def draw(fig: dict, *, grid_images: int, prior_rows: int | None, seed: int) -> Path:
    """Draw one planned figure: ``fig`` holds its kind, output path and input files."""
    kind, path, cell = fig["kind"], fig["path"], fig.get("cell") or ""
    if kind == "samples":
        images = torch.from_numpy(read_samples(fig["samples"], 0, grid_images)).float() / 255.0
        return plots.plot_image_grid(images, path)
    if kind == "training_curve":
        return plots.plot_training_curve(fig["log"], path)
    if kind == "extrapolation":
        return plots.plot_extrapolation(read_json(fig["metrics"]), path, title=cell)
    if kind in ("prior_grid", "prior_top"):
        prior = load_model(fig["model"]).prior
        if kind == "prior_grid":
            return plots.plot_prior_grid(prior, path, max_rows=prior_rows)
        samples = prior.sample(20_000, torch.Generator().manual_seed(seed))
        return plots.plot_prior_top(prior, path, samples=samples)
    if kind == "schedule":
        settings = yaml.safe_load(Path(fig["config"]).read_text())
        thermo = from_dict(TrainConfig, settings["train"], "train").thermodynamic
        steps = int(pd.read_csv(fig["log"])["step"].max())
        return plots.plot_temperature_schedule(
            thermo.n_temps, thermo.p_start, thermo.p_end, thermo.n_cycles, steps, path
        )
    if kind == "benchmark":
        bench = read_json(fig["bench"])
        title = f"kaem.bench on {bench.get('device_name', bench.get('device', ''))}"
        return plots.plot_benchmarks(bench["results"], path, title=title)
    raise ValueError(f"unknown figure kind {kind!r} for {path}")


def main(plan: list[dict], *, grid_images: int, prior_rows: int | None, seed: int) -> list[Path]:
    """Draw every figure of ``plan``."""
    done = []
    for fig in plan:
        done.append(draw(fig, grid_images=grid_images, prior_rows=prior_rows, seed=seed))
        print(f"{fig['kind']:<15s} {fig['path']}")
    return done


if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        main(
            job.params.plan,
            grid_images=job.params.grid_images,
            prior_rows=job.params.prior_rows,
            seed=job.params.seed,
        )
