"""Snakemake job: one figure, named by the rule's wildcards (kaem.pipeline.plots)."""

import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kaem.pipeline.config import job_context
from kaem.pipeline.plots import draw_figure

if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        if "plot" in job.wildcards.keys():  # a table's own figure
            figure = job.wildcards.plot
        else:
            figure = job.wildcards.get(
                "figure", "sweep" if "sweep" in job.wildcards.keys() else "benchmark"
            )
        # A named input is one file or, like a cell's metrics of every seed, a list of them.
        inputs = {
            name: str(files) if isinstance(files, str) else [str(f) for f in files]
            for name, files in ((n, job.input[n]) for n in job.input.keys())
        }
        settings = {k: job.params[k] for k in job.params.keys()}
        cell = job.wildcards.get("cell", job.wildcards.get("table", ""))
        draw_figure(figure, job.output[0], inputs, cell=cell, **settings)
        print(f"{figure:<20s} {job.output[0]}")
