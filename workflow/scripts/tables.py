"""Snakemake job: one table (a paper table or the run's own) as CSV, Markdown and LaTeX."""

import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pandas as pd

from kaem.pipeline.artifacts import read_json
from kaem.pipeline.config import job_context
from kaem.pipeline.costs import sweep_table
from kaem.pipeline.tables import (
    benchmark_table,
    cells_table,
    check_scores,
    extractors_table,
    likelihood_note,
    metrics_table,
    seeds_note,
    thermodynamic_note,
    write_table,
)


def _training(log: str) -> dict:
    df = pd.read_csv(log)
    return {"steps": int(df["step"].max()), "train_seconds": float(df["seconds"].sum())}


def _scores(path: str) -> dict:
    """A metrics file, refused if a score in it is missing or not finite."""
    metrics = read_json(path)
    check_scores(metrics, path)
    return metrics


def _runs(table: dict, cell: str) -> list[dict]:
    """Per seed of ``cell``: its metrics with the training steps and seconds of its log."""
    return [
        {**_scores(metrics), **_training(log)}
        for metrics, log in zip(table["metrics"][cell], table["logs"][cell], strict=True)
    ]


def main(table: dict, stem: Path, bench: str | None = None) -> dict[str, Path]:
    """Write ``table`` (its spec, cell records and file maps) to ``stem``.csv/.md/.tex."""
    scores = {cell: _runs(table, cell) for cell in table["metrics"]}
    kind, note = table["kind"], None
    if kind == "metrics":
        rows = {label: (cell, scores[cell]) for label, cell in table["rows"].items()}
        real = _scores(table["real_metrics"]) if table.get("real_metrics") else None
        df = metrics_table(rows, table.get("paper"), real=real)
        notes = (
            seeds_note(rows, table.get("paper")),
            likelihood_note(table["rows"], table["cells"]),
            thermodynamic_note(table["cells"]),
        )
        note = " ".join(n for n in notes if n)
    elif kind == "cells":
        records = [
            {
                **c,
                "runs": [
                    {"seed": run["training_seed"], **_training(log)}
                    for run, log in zip(scores[c["name"]], table["logs"][c["name"]], strict=True)
                ],
            }
            for c in table["cells"]
        ]
        df = cells_table(records, scores)
    elif kind == "extractors":
        df = extractors_table({d: read_json(p) for d, p in table["classifiers"].items()})
    elif kind == "benchmark":
        if bench is None:
            raise ValueError("the benchmark table needs the benchmark results")
        df = benchmark_table(read_json(bench))
    elif kind == "sweep":
        if bench is None:
            raise ValueError("a sweep table needs the sweep's results")
        sweep = read_json(bench)
        df = sweep_table(sweep)
        timing = (
            " The timing column says which chains were timed over their first steps (at most "
            f"{sweep.get('timed_image_steps')} images x steps a call) and scaled by the step "
            "count: each step costs the same."
            if "timing" in df
            else ""
        )
        note = (
            f"{sweep['x_label']} in the value column; median seconds over the repeats with the "
            f"fastest and slowest, peak MiB of the first call, on {sweep['device_name']} "
            f"({sweep['threads']} threads). {sweep.get('notes') or ''}{timing}"
        ).strip()
    else:
        raise ValueError(f"unknown table kind {kind!r}")
    print(f"{table['name']}:\n{df.to_string(index=False)}\n")
    return write_table(df, stem, title=table["title"], note=note)


if "snakemake" in globals():
    job = globals()["snakemake"]  # defined by the preamble Snakemake puts before this file
    with job_context(job.log[0], job.threads):
        stem = Path(job.output.csv).with_suffix("")
        main(job.params.table, stem, bench=job.input.get("bench"))
