"""Snakemake job: the paper's tables and the run's own, as CSV, Markdown and LaTeX."""

import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd

from kaem.workflow.artifacts import read_json
from kaem.workflow.config import job_context
from kaem.workflow.tables import (
    benchmark_table,
    cells_table,
    extractors_table,
    metrics_table,
    thermodynamic_note,
    write_table,
)


def _training(log: str) -> dict:
    df = pd.read_csv(log)
    return {"steps": int(df["step"].max()), "train_seconds": float(df["seconds"].sum())}


def main(
    plan: list[dict],
    out_dir: str,
    *,
    cells: list[dict],
    metrics: dict[str, str],
    logs: dict[str, str],
    classifiers: dict[str, str],
    bench: str | None = None,
) -> dict[str, Path]:
    """Write every table of ``plan`` into ``out_dir`` from the run's result files."""
    scores = {cell: read_json(path) for cell, path in metrics.items()}
    by_name = {c["name"]: c for c in cells}
    written = {}
    for table in plan:
        kind, note = table["kind"], None
        if kind == "metrics":
            rows = {label: (cell, scores[cell]) for label, cell in table["rows"].items()}
            df = metrics_table(rows, table.get("paper"))
            note = thermodynamic_note([by_name[c] for c in table["rows"].values()])
        elif kind == "cells":
            records = [{**c, **_training(logs[c["name"]])} for c in cells]
            df = cells_table(records, scores)
        elif kind == "extractors":
            df = extractors_table({d: read_json(p) for d, p in classifiers.items()})
        elif kind == "benchmark":
            if bench is None:
                raise ValueError("the benchmark table needs the benchmark results")
            df = benchmark_table(read_json(bench))
        else:
            raise ValueError(f"unknown table kind {kind!r}")
        paths = write_table(df, Path(out_dir) / table["name"], title=table["title"], note=note)
        written[table["name"]] = paths["csv"]
        print(f"{table['name']}:\n{df.to_string(index=False)}\n")
    return written


if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        main(
            job.params.plan,
            str(Path(job.output[0]).parent),
            cells=job.params.cells,
            metrics=job.params.metrics,
            logs=job.params.logs,
            classifiers=job.params.classifiers,
            bench=job.input.get("bench"),
        )
