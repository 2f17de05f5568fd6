"""Snakemake job: one table (a paper table or the run's own) as CSV, Markdown and LaTeX."""

import sys
from pathlib import Path

# kaem is imported from this repository, whatever environment runs the job (see
# workflow/envs/kaem.yaml for why it is not installed there).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kaem.kinds import MODEL_KINDS
from kaem.pipeline.artifacts import read_json
from kaem.pipeline.config import job_context
from kaem.pipeline.costs import sweep_table
from kaem.pipeline.tables import (
    benchmark_table,
    cells_table,
    check_scores,
    compute_note,
    curve_records,
    curve_table,
    evidence_note,
    extractors_table,
    likelihood_note,
    metrics_table,
    run_record,
    seeds_note,
    thermodynamic_note,
    write_table,
)


def _runs(table: dict, cell: str) -> list[dict]:
    """Per seed of ``cell``: its metrics, training summary and, where the table reads them,
    its generated set and held-out log p(x)."""
    samples = table.get("sample_files", {}).get(cell)
    evidence = table.get("evidence_files", {}).get(cell)
    return [
        {
            "cell": cell,
            **run_record(
                metrics,
                table["summaries"][cell][k],
                samples=samples[k] if samples else None,
                evidence=evidence[k] if evidence else None,
            ),
        }
        for k, metrics in enumerate(table["metrics"][cell])
    ]


def _scores(path: str) -> dict:
    """A metrics file, refused if a score in it is missing or not finite."""
    metrics = read_json(path)
    check_scores(metrics, path)
    return metrics


def main(table: dict, stem: Path, bench: str | None = None) -> dict[str, Path]:
    """Write ``table`` (its spec, cell records and file maps) to ``stem``.csv/.md/.tex."""
    scores = {cell: _runs(table, cell) for cell in table["metrics"]}
    kind, note, bar = table["kind"], None, table.get("min_accuracy")
    if kind == "metrics":
        rows = {label: (cell, scores[cell]) for label, cell in table["rows"].items()}
        real = _scores(table["real_metrics"]) if table.get("real_metrics") else None
        compute = table.get("matched") == "seconds"
        df = metrics_table(
            rows,
            table.get("paper"),
            real=real,
            min_accuracy=bar,
            compute=compute,
            evidence=table.get("evidence", False),
        )
        runs = [run for cell in table["metrics"] for run in scores[cell]]
        reasons = {  # the kinds without an estimator of log p(x) say why
            c["name"]: MODEL_KINDS[c["model"]].cls.no_evidence
            for c in table["cells"]
            if table.get("evidence") and table["evidence_files"].get(c["name"]) is None
        }
        notes = (
            seeds_note(rows, table.get("paper"), bar),
            compute_note(table["cells"], runs) if compute else None,
            evidence_note(table["evidence_settings"], reasons) if table.get("evidence") else None,
            likelihood_note(table["rows"], table["cells"]),
            thermodynamic_note(table["cells"]),
        )
        note = " ".join(n for n in notes if n)
    elif kind == "curve":
        rows = {
            label: (cell, curve_records(scores[cell], table["curve_files"][cell]))
            for label, cell in table["rows"].items()
        }
        df = curve_table(rows, bar)
        real = _scores(table["real_metrics"]) if table.get("real_metrics") else None
        note = (
            "FID_inf along training seconds: the point is the training seconds of a snapshot "
            "(train.snapshot_seconds) or, last, of the budget (the final model); seconds and "
            "updates are where the snapshot was taken (after the first update past the point), "
            "means over the seeds; FID_inf is the mean over the seeds with its sd across them, "
            "the mean regression SE and the lowest R^2."
        )
        if real:
            note += f" Real (held-out) FID_inf at the same sizes: {real['fid_inf']:.3g}."
    elif kind == "cells":
        records = [
            {
                **c,
                "runs": [{**run, "seed": run["training_seed"]} for run in scores[c["name"]]],
            }
            for c in table["cells"]
        ]
        df = cells_table(records, scores, bar)
    elif kind == "extractors":
        df = extractors_table({d: read_json(p) for d, p in table["classifiers"].items()}, bar)
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
