"""The paper's tables from the workflow's results, with the published values beside ours.

Tables are :class:`pandas.DataFrame` objects written three ways by
:func:`kaem.pipeline.writers.write_table`: CSV (full precision, for machines), Markdown and
LaTeX (``booktabs``; rounded, for people).
The published numbers of Tables 1 and 2 and App. H are kept here, once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from kaem.bench.cases import BENCHMARKS
from kaem.pipeline.references import (
    PAPER_COLUMNS,
    load_references,
    reference_caption,
    reference_columns,
)
from kaem.pipeline.writers import to_latex, to_markdown, write_table

__all__ = [
    "COMPUTE_COLUMNS",
    "EVIDENCE_COLUMNS",
    "EXTRACTOR_COLUMN",
    "METRIC_COLUMNS",
    "PAPER_BENCHMARK_CLAIMS",
    "PAPER_COLUMNS",
    "PAPER_TABLES",
    "R2_FLAG",
    "benchmark_table",
    "cells_table",
    "check_scores",
    "compute_columns",
    "compute_note",
    "curve_records",
    "curve_table",
    "evidence_columns",
    "evidence_note",
    "extractor_flag",
    "extractors_table",
    "likelihood_note",
    "metrics_table",
    "run_record",
    "seeds_note",
    "thermodynamic_note",
    "to_latex",
    "to_markdown",
    "write_table",
]

#: Per-run values of a metrics file (:func:`kaem.pipeline.artifacts.cell_metrics`) by column.
METRIC_COLUMNS: dict[str, str] = {
    "FID_inf": "fid_inf",
    "FID SE": "fid_se",
    "FID R2": "fid_r2",
    "KID_inf": "kid_inf",
    "KID SE": "kid_se",
    "KID R2": "kid_r2",
    # KID is unbiased at any N: its value at the largest N, with the standard deviation of
    # the MMD^2 over its subsets, says as much as KID_inf without the regression.
    "KID": "kid_largest",
    "KID subsets sd": "kid_largest_std",
}

#: A regression whose R^2 is below this is flagged in a metrics table.
R2_FLAG = 0.9

#: The column with the held-out accuracy of the classifier whose features gave the scores.
EXTRACTOR_COLUMN = "extractor accuracy"


def check_scores(metrics: Mapping[str, Any], source: str | os.PathLike) -> None:
    """Refuse a metrics record (:func:`kaem.pipeline.artifacts.cell_metrics`) whose scores
    are missing or not finite: a table never shows a NaN, infinite or blank score.

    Raises
    ------
    ValueError
        Naming ``source`` and each score at fault.
    """
    bad = [
        key
        for key in METRIC_COLUMNS.values()
        if not isinstance(metrics.get(key), int | float) or not math.isfinite(metrics[key])
    ]
    if bad:
        shown = ", ".join(f"{k} = {metrics.get(k)!r}" for k in bad)
        raise ValueError(f"{source}: scores missing or not finite: {shown}; rerun its metrics")


def run_record(
    metrics: str | os.PathLike,
    summary: str | os.PathLike,
    *,
    samples: str | os.PathLike | None = None,
    evidence: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """One training seed as a table reads it, from its files.

    Parameters
    ----------
    metrics
        Its metrics (:func:`kaem.pipeline.artifacts.cell_metrics`), refused if a score is
        missing or not finite (:func:`check_scores`).
    summary
        Its training summary (:func:`kaem.pipeline.artifacts.training_summary`): ``steps``,
        ``train_seconds``, ``parameters``, ``max_seconds``, ``budget_reached``, ``snapshots``.
    samples
        Its generated set (:func:`kaem.data.write_samples`), for ``generate_seconds``,
        ``generated`` (images), ``generate_batch`` and a DDPM's ``sampler``.
    evidence
        Its held-out ``log p(x)`` (:func:`kaem.pipeline.artifacts.held_out_evidence`), kept as
        ``evidence``; None there for a kind without an estimator.
    """
    from kaem.data import samples_metadata
    from kaem.pipeline.artifacts import read_json

    scores = read_json(metrics)
    check_scores(scores, metrics)
    trained = read_json(summary)
    record = {
        **scores,
        "steps": trained["steps"],
        "train_seconds": trained["seconds"],
        "parameters": trained["parameters"],
        "max_seconds": trained["max_seconds"],
        "budget_reached": trained["budget_reached"],
        "snapshots": trained["snapshots"],
        "evidence": None if evidence is None else read_json(evidence),
    }
    if samples is not None:
        meta = samples_metadata(samples)
        record.update(
            generate_seconds=meta["generate_seconds"],
            generated=meta["n"],
            generate_batch=meta["batch_size"],
            sampler=json.loads(meta["sampler"]) if meta.get("sampler") else None,
        )
    return record


def curve_records(
    runs: Sequence[Mapping[str, Any]], snapshots: Mapping[str, Sequence[str | os.PathLike]]
) -> list[dict[str, Any]]:
    """Every point of a cell's curve per seed, for :func:`curve_table`: the metrics of each
    snapshot, where its run's summary says it was taken, then the final model at the budget.

    Parameters
    ----------
    runs
        The cell's seeds (:func:`run_record`), in order.
    snapshots
        Snapshot time (as the summaries name it) -> the seeds' metrics files, in that order.
    """
    from kaem.pipeline.artifacts import read_json

    points = []
    for t, files in snapshots.items():
        for run, path in zip(runs, files, strict=True):
            scores = read_json(path)
            check_scores(scores, path)
            taken = run["snapshots"][t]
            point = {"point": float(t), "seconds": taken["seconds"], "step": taken["step"]}
            points.append({**scores, **point})
    for run in runs:
        final = {"point": run["max_seconds"], "seconds": run["train_seconds"], "step": run["steps"]}
        points.append({**run, **final})
    return points


def _extractor_accuracy(runs: Sequence[Mapping[str, Any]]) -> float:
    """The held-out accuracy of the runs' classifier (NaN for Inception or unrecorded)."""
    qualities = [r.get("extractor_quality") for r in runs]
    values = [q["holdout_accuracy"] for q in qualities if q and "holdout_accuracy" in q]
    return float(min(values)) if values else _NAN


def extractor_flag(runs: Sequence[Mapping[str, Any]], min_accuracy: float | None = None) -> str:
    """A flag for scores whose extractor is below the accuracy they need, or whose quality
    was never measured (a classifier saved before it was recorded); empty otherwise.

    A classifier is flagged below ``min_accuracy`` (``features.min_accuracy``) or, where that
    is None, below :func:`kaem.features.accuracy_threshold` (halfway from chance to perfect),
    with its accuracy and the chance level.
    """
    if not runs or all(r.get("extractor") != "classifier" for r in runs):
        return ""
    qualities = [r.get("extractor_quality") for r in runs]
    if any(not q or "holdout_accuracy" not in q for q in qualities):
        return "extractor accuracy not recorded"
    worst = min(qualities, key=lambda q: q["holdout_accuracy"])
    threshold = worst["threshold"] if min_accuracy is None else min_accuracy
    if worst["holdout_accuracy"] < threshold:
        return (
            f"extractor accuracy {worst['holdout_accuracy']:.3f} < {threshold:.2f} "
            f"(chance {worst['chance']:.2f})"
        )
    return ""


_NAN = math.nan

#: Published FID_inf / KID_inf with standard errors and R^2, by paper table and row label
#: (from :mod:`kaem.pipeline.references`; NaN where the paper gives none).
PAPER_TABLES: dict[str, dict[str, Any]] = {
    name: {
        "title": table["title"],
        "rows": {
            label: {c: float(row.get("paper", {}).get(c, _NAN)) for c in PAPER_COLUMNS}
            for label, row in table["rows"].items()
        },
    }
    for name, table in load_references()["tables"].items()
}

#: What the paper says about a benchmark or a ratio of two (App. A, section 4.2). The text
#: copy of the paper kept App. A's statements but lost its numbers, so these are the claims
#: a reader can check against our measurements.
PAPER_BENCHMARK_CLAIMS: dict[str, str] = {
    "generate_kaem_svhn": "KAEM samples faster than the VAE, though it needs more memory",
    "generate_vae_svhn/generate_kaem_svhn": "above 1: KAEM samples faster than the VAE",
    "thermo_step_svhn_nt5/ula_step_svhn": "substantial overhead of the thermodynamic criterion",
    "langevin_prior_svhn/its_mixture_svhn": "above 1: ITS beats Langevin prior sampling",
}


# ----------------------------------------------------------------------------- tables


Runs = Mapping[str, Any] | Sequence[Mapping[str, Any]]


def _runs(runs: Runs) -> list[Mapping[str, Any]]:
    return [runs] if isinstance(runs, Mapping) else list(runs)


def _values(runs: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([_NAN if r.get(key) is None else float(r[key]) for r in runs], dtype=float)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) and not np.isnan(values).all() else _NAN


def _sd(values: np.ndarray) -> float:
    """Standard deviation across seeds (n - 1 in the denominator); NaN below two seeds."""
    return float(values.std(ddof=1)) if len(values) > 1 else _NAN


def _flags(runs: Sequence[Mapping[str, Any]], min_accuracy: float | None = None) -> str:
    """An extractor below its bar (:func:`extractor_flag`), which regressions have R^2 below
    :data:`R2_FLAG` (naming the seeds), a run that stopped before its budget, a single seed."""
    flags = [extractor_flag(runs, min_accuracy)] if extractor_flag(runs, min_accuracy) else []
    for metric in ("fid", "kid"):
        low = [r for r in runs if r.get(f"{metric}_r2") is not None and r[f"{metric}_r2"] < R2_FLAG]
        if low:
            seeds = [str(r["training_seed"]) for r in low if r.get("training_seed") is not None]
            which = f" (seed {', '.join(seeds)})" if seeds else ""
            flags.append(f"{metric.upper()} R2 < {R2_FLAG}{which}")
    short = [r for r in runs if r.get("max_seconds") is not None and not r.get("budget_reached")]
    if short:
        which = ", ".join(
            f"seed {r.get('training_seed')}: {r['train_seconds']:.0f} of {r['max_seconds']:g} s"
            for r in short
        )
        flags.append(f"stopped before its budget ({which})")
    if len(runs) == 1:
        flags.append("single seed")
    return "; ".join(flags)


def _score_columns(
    runs: Sequence[Mapping[str, Any]], min_accuracy: float | None = None
) -> dict[str, Any]:
    """Across a cell's seeds: means, standard deviations across seeds, regression statistics
    (mean standard error, lowest R^2), training seconds and the flags."""
    v = {column: _values(runs, key) for column, key in METRIC_COLUMNS.items()}
    out: dict[str, Any] = {"seeds": len(runs)}
    for name in ("FID_inf", "KID_inf"):
        prefix = name.split("_")[0]
        out[name] = _mean(v[name])
        out[f"{name} sd"] = _sd(v[name])
        out[f"{prefix} SE"] = _mean(v[f"{prefix} SE"])
        r2 = v[f"{prefix} R2"]
        out[f"{prefix} R2"] = float(np.nanmin(r2)) if not np.isnan(r2).all() else _NAN
    out["KID"] = _mean(v["KID"])
    out["KID sd"] = _sd(v["KID"])
    out["KID subsets sd"] = _mean(v["KID subsets sd"])
    out["train seconds"] = _mean(_values(runs, "train_seconds"))
    out[EXTRACTOR_COLUMN] = _extractor_accuracy(runs)
    out["flags"] = _flags(runs, min_accuracy) if runs else ""
    return out


#: What a table at matched seconds adds per row (:func:`compute_columns`).
COMPUTE_COLUMNS = ("parameters", "updates", "s/update", "generation ms/image")


def compute_columns(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """What a row's seeds reached on their budget, as means over the seeds: the model's
    parameters, the updates, the training seconds per update and the generation time per
    image of its sampling job.

    Parameters
    ----------
    runs
        One mapping per seed with ``parameters``, ``steps``, ``train_seconds`` (the training
        summary, :func:`kaem.pipeline.artifacts.training_summary`) and ``generate_seconds``
        with ``generated`` (the images its generated set holds and the seconds its
        ``generate`` calls took, :func:`kaem.data.write_samples`); a missing value gives NaN.
    """
    steps = _values(runs, "steps")
    per_image = 1e3 * _values(runs, "generate_seconds") / _values(runs, "generated")
    return {
        "parameters": _mean(_values(runs, "parameters")),
        "updates": _mean(steps),
        "s/update": _mean(_values(runs, "train_seconds") / steps),
        "generation ms/image": _mean(per_image),
    }


#: What a table with held-out log p(x) adds per row (:func:`evidence_columns`).
EVIDENCE_COLUMNS = ("log p(x)", "log p(x) sd", "log p(x) SE", "estimator")

_ESTIMATORS = {"importance": "IS, S = {samples}", "iwae_bound": "IWAE bound, K = {samples}"}


def evidence_columns(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Held-out ``log p(x)`` of a row: the mean over its seeds, the standard deviation across
    them, the mean Monte Carlo standard error, and the estimator; ``no estimator`` where the
    kind has none.

    Parameters
    ----------
    runs
        One mapping per seed whose ``evidence`` is the record of
        :func:`kaem.pipeline.artifacts.held_out_evidence`, or None for a kind without an
        estimator.
    """
    records = [r.get("evidence") for r in runs]
    if not records or any(e is None for e in records):
        return {c: _NAN for c in EVIDENCE_COLUMNS[:3]} | {"estimator": "no estimator"}
    means = np.array([e["mean"] for e in records], dtype=float)
    errors = np.array([_NAN if e["stderr"] is None else e["stderr"] for e in records])
    names = {_ESTIMATORS[e["estimator"]].format(samples=e["samples"]) for e in records}
    return {
        "log p(x)": _mean(means),
        "log p(x) sd": _sd(means),
        "log p(x) SE": _mean(errors),
        "estimator": "; ".join(sorted(names)),
    }


#: The label of a table's real-vs-real row.
REAL_ROW = "Real (held-out)"


def metrics_table(
    rows: Mapping[str, tuple[str, Runs]],
    paper: str | None = None,
    real: Mapping[str, Any] | None = None,
    *,
    min_accuracy: float | None = None,
    compute: bool = False,
    evidence: bool = False,
) -> pd.DataFrame:
    """FID_inf and KID_inf per row across its seeds, with the reference values beside them.

    Parameters
    ----------
    rows
        Row label -> ``(cell name, runs)``: one metrics mapping per training seed (or one
        mapping), as written by :func:`kaem.pipeline.artifacts.cell_metrics`, optionally with
        ``training_seed``, ``train_seconds`` and the training summary's ``max_seconds`` and
        ``budget_reached``.
    paper
        A table of :mod:`kaem.pipeline.references`: rows whose label it lists get the paper's
        values, the authors' later value and the range of their logged runs (NaN elsewhere).
        None: no reference columns.
    real
        The metrics of held-out real images against the same reference features
        (a real-vs-real row, last), or None.
    min_accuracy
        The held-out accuracy below which the extractor is flagged (``features.min_accuracy``;
        None: halfway from chance to perfect).
    compute
        Add :data:`COMPUTE_COLUMNS` after ``seeds`` (:func:`compute_columns`): a table of
        models trained for the same seconds.
    evidence
        Add :data:`EVIDENCE_COLUMNS` before the extractor's accuracy
        (:func:`evidence_columns`).

    Returns
    -------
    pandas.DataFrame
        ``model``, ``cell``, ``seeds``; per metric the mean across seeds, its standard
        deviation across seeds (``sd``, NaN for one seed), the mean regression standard error
        and the lowest R^2; ``KID`` at the largest N with ``KID sd`` across seeds and ``KID
        subsets sd`` over its subsets; ``train seconds``; ``extractor accuracy`` (the
        held-out accuracy of the classifier whose features gave the scores, NaN for
        Inception); ``flags`` (an extractor below its bar, an R^2 below :data:`R2_FLAG`, a
        run stopped before its budget, a single seed); then the reference columns.
    """
    if paper is not None and paper not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {paper!r}; choose one of {sorted(PAPER_TABLES)}")
    entries = [(label, cell, _runs(runs)) for label, (cell, runs) in rows.items()]
    if real is not None:
        entries.append((REAL_ROW, "-", [real]))
    records = []
    for label, cell, runs in entries:
        scores = _score_columns(runs, min_accuracy)
        record = {"model": label, "cell": cell, "seeds": scores.pop("seeds")}
        if compute:
            record.update(compute_columns(runs))
        record.update(scores)
        if evidence:
            columns = evidence_columns(runs)
            if label == REAL_ROW:
                columns["estimator"] = "-"
            at = list(record).index(EXTRACTOR_COLUMN)
            items = list(record.items())
            record = dict(items[:at] + list(columns.items()) + items[at:])
        if label == REAL_ROW:  # real images: no training, no seeds
            record["seeds"] = _NAN
            record["flags"] = record["flags"].replace("single seed", "").strip("; ")
        records.append({**record, **reference_columns(paper, label)})
    return pd.DataFrame.from_records(records)


def seeds_note(
    rows: Mapping[str, tuple[str, Runs]],
    paper: str | None = None,
    min_accuracy: float | None = None,
) -> str:
    """What a metrics table's columns mean, the extractor's bar, which cells have a single
    seed, and the sources."""
    single = [cell for cell, runs in rows.values() if len(_runs(runs)) == 1]
    bar = (
        "halfway from chance to perfect (0.55 for ten classes)"
        if min_accuracy is None
        else f"{min_accuracy:g} (features.min_accuracy)"
    )
    parts = [
        "Per cell: the mean over its training seeds, the standard deviation across seeds (sd), "
        "the mean standard error of the 1/N regression (SE) and its lowest R^2; KID at the "
        "largest N is unbiased, so a KID_inf regression with R^2 near 0 is expected and KID "
        f"is the column to read. Flags mark an R^2 below {R2_FLAG}. The extractor accuracy is "
        "the held-out accuracy of the classifier whose features gave the scores (a dash: the "
        f"Inception network); below {bar} it is flagged, as its features cannot be trusted to "
        "tell the classes apart and the scores mean less."
    ]
    if single:
        parts.append(f"A single seed, so no spread across seeds: {', '.join(single)}.")
    caption = reference_caption(paper, rows)
    if caption:
        parts.append(caption)
    return " ".join(parts)


def cells_table(
    cells: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Runs],
    min_accuracy: float | None = None,
) -> pd.DataFrame:
    """Every run (cell and seed): what it is (dataset, model, basis, sampler, reference) and
    its scores.

    Parameters
    ----------
    cells
        One mapping per cell with ``name``, ``dataset``, ``model``, ``basis``, ``sampler``,
        ``reference`` (:class:`kaem.pipeline.config.CellInfo` as a dict) and optionally
        ``runs``: per seed, ``seed``, ``steps`` and ``train_seconds``.
    metrics
        Cell name -> its runs' metrics, in the order of its ``runs``.
    min_accuracy
        The extractor's bar (:func:`extractor_flag`).
    """
    records = []
    for cell in cells:
        scores = _runs(metrics.get(cell["name"], {}))
        runs = cell.get("runs") or [{"seed": s} for s in cell.get("seeds", (None,))]
        for run, m in zip(runs, scores, strict=False):
            records.append(
                {
                    "cell": cell["name"],
                    "seed": run.get("seed", _NAN),
                    "dataset": cell["dataset"],
                    "model": cell["model"],
                    "basis": cell.get("basis") or "-",
                    "sampler": cell["sampler"],
                    "reference": cell.get("reference") or "-",
                    "steps": run.get("steps", _NAN),
                    "train seconds": run.get("train_seconds", _NAN),
                    "extractor": m.get("extractor", "-"),
                    EXTRACTOR_COLUMN: _extractor_accuracy([m]),
                    **{
                        c: _NAN if m.get(k) is None else float(m[k])
                        for c, k in METRIC_COLUMNS.items()
                    },
                    "flags": extractor_flag([m], min_accuracy),
                }
            )
    return pd.DataFrame.from_records(records)


def extractors_table(
    accuracies: Mapping[str, Mapping[str, Any]], min_accuracy: float | None = None
) -> pd.DataFrame:
    """Feature classifiers per dataset: held-out and test accuracy, chance, and a flag below
    ``min_accuracy`` (None: :func:`kaem.features.accuracy_threshold`).

    Parameters
    ----------
    accuracies
        Dataset -> the summary :func:`kaem.features.fit_classifier` returns.
    min_accuracy
        The bar of ``features.min_accuracy``.
    """
    records = [
        {
            "dataset": name,
            "extractor": "classifier",
            "feature dim": acc.get("feature_dim", _NAN),
            "train images": acc.get("n_train", _NAN),
            "holdout accuracy": acc.get("holdout_accuracy", _NAN),
            "test images": acc.get("n_test", _NAN),
            "test accuracy": acc.get("test_accuracy", _NAN),
            "chance": acc.get("chance", _NAN),
            "bar": acc.get("threshold", _NAN) if min_accuracy is None else min_accuracy,
            "flags": extractor_flag(
                [{"extractor": "classifier", "extractor_quality": acc}], min_accuracy
            ),
        }
        for name, acc in accuracies.items()
    ]
    columns = [
        "dataset",
        "extractor",
        "feature dim",
        "train images",
        "holdout accuracy",
        "test images",
        "test accuracy",
        "chance",
        "bar",
        "flags",
    ]
    return pd.DataFrame.from_records(records, columns=columns)


def curve_table(
    rows: Mapping[str, tuple[str, Sequence[Mapping[str, Any]]]],
    min_accuracy: float | None = None,
) -> pd.DataFrame:
    """FID_inf and KID along training seconds: per row and point of its curve, across seeds.

    Parameters
    ----------
    rows
        Row label -> ``(cell name, records)``: one record per seed and point, its metrics
        (:func:`kaem.pipeline.artifacts.cell_metrics`) with ``point`` (the training seconds
        the point stands for: a snapshot time, or the budget for the final model), ``seconds``
        and ``step`` (where the snapshot or the final model was taken: after the first update
        past ``point``) and ``training_seed``.
    min_accuracy
        The extractor's bar (:func:`extractor_flag`).

    Returns
    -------
    pandas.DataFrame
        One row per label and point, in order of the points: ``model``, ``cell``, ``point
        s``, ``seeds``, the means over the seeds of ``seconds`` and ``updates``, ``FID_inf``
        with its ``sd`` across seeds, mean ``SE`` and lowest ``R2``, ``KID`` with its ``sd``,
        and ``flags``.
    """
    records = []
    for label, (cell, points) in rows.items():
        for point in sorted({float(p["point"]) for p in points}):
            runs = [p for p in points if float(p["point"]) == point]
            scores = _score_columns(runs, min_accuracy)
            records.append(
                {
                    "model": label,
                    "cell": cell,
                    "point s": point,
                    "seeds": len(runs),
                    "seconds": _mean(_values(runs, "seconds")),
                    "updates": _mean(_values(runs, "step")),
                    **{
                        k: scores[k]
                        for k in ("FID_inf", "FID_inf sd", "FID SE", "FID R2", "KID", "KID sd")
                    },
                    "flags": scores["flags"],
                }
            )
    return pd.DataFrame.from_records(records)


def compute_note(cells: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]]) -> str:
    """What the columns of a table at matched seconds mean, with the budget and the
    generation settings its runs record.

    Parameters
    ----------
    cells
        The table's cells as :class:`kaem.pipeline.config.CellInfo` mappings.
    runs
        Every run of the table with ``max_seconds`` (its summary), ``generate_batch`` and
        ``sampler`` (its generated set's ``batch_size`` and DDPM sampler, if any), ``sizes``
        (its regression sizes: named where the rows differ) and ``cell``.
    """
    budgets = sorted({float(r["max_seconds"]) for r in runs if r.get("max_seconds") is not None})
    batches = sorted({int(r["generate_batch"]) for r in runs if r.get("generate_batch")})
    samplers = {r["cell"]: r["sampler"] for r in runs if r.get("sampler")}
    text = [
        f"Matched compute: every row trained for {' and '.join(f'{b:g}' for b in budgets)} s "
        "(train.max_seconds: the wall time of its updates, grid updates included, checkpoints, "
        "logs and snapshots not; a run stops after the first update that reaches it). "
        "Parameters are the model's (prior or encoder or energy, and generator; the DDPM's "
        "UNet), updates the updates it reached, s/update its training seconds per update, and "
        "generation ms/image the time its sampling job's generate calls took per image at "
        f"batch {' and '.join(map(str, batches))}; all are means over the seeds."
    ]
    sizes: dict[tuple[int, ...], list[str]] = {}
    for r in runs:
        if r.get("sizes") and r["cell"] not in sizes.get(tuple(r["sizes"]), []):
            sizes.setdefault(tuple(r["sizes"]), []).append(r["cell"])
    if len(sizes) > 1:
        shown = "; ".join(
            f"{', '.join(cells)}: {', '.join(map(str, n))}" for n, cells in sizes.items()
        )
        text.append(f"The rows are regressed over generated sets of different sizes ({shown}).")
    for cell, sampler in samplers.items():
        steps = sampler.get("steps")
        text.append(
            f"{cell} draws with {sampler.get('scheduler', 'ddpm').upper()}"
            + (f", {steps} steps" if steps else "")
            + " (its sampler setting)."
        )
    kinds = {c["name"]: c["model"] for c in cells}
    if "DDPM" in kinds.values():
        text.append(
            "The DDPM shares no generator with the others: its UNet is its whole model, where "
            "KAEM, the VAE and the LEBM share one generator and differ in the prior."
        )
    return " ".join(text)


def evidence_note(settings: Mapping[str, Any], reasons: Mapping[str, str]) -> str:
    """What the held-out ``log p(x)`` columns mean, and why some rows have none.

    Parameters
    ----------
    settings
        The ``evidence`` section of the configuration (images, n_samples, iwae_samples).
    reasons
        Cell name -> why its kind has no estimator (the class's ``no_evidence``).
    """
    text = [
        f"log p(x): held-out log-likelihood per image in nats on the first {settings['images']} "
        "test images, the same for every row (mean over the seeds, sd across them, SE the mean "
        "Monte Carlo standard error of one estimate); KAEM by importance sampling with "
        f"S = {settings['n_samples']} exact prior draws shared by each batch (eq. 36), the VAE "
        f"by its importance-weighted bound with K = {settings['iwae_samples']} encoder draws "
        "per image (a lower bound on log p(x)), both with the likelihood's constant."
    ]
    for cell, why in reasons.items():
        text.append(f"{cell}: no estimator, as {why}.")
    return " ".join(text)


def benchmark_table(
    bench: Mapping[str, Any], published: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """App. A: median seconds and peak memory per benchmark, then the speed-ups.

    Parameters
    ----------
    bench
        The JSON written by ``python -m kaem.bench --json`` (``results``, ``ratios``,
        ``device``...).
    published
        Benchmark or ratio name -> what the paper says about it, printed in the ``paper``
        column (default :data:`PAPER_BENCHMARK_CLAIMS`).

    Returns
    -------
    pandas.DataFrame
        One row per benchmark (``seconds``, ``peak MiB``, ``repeats``) and one per ratio
        ``slow/fast`` of two of them (``speed-up``).
    """
    published = PAPER_BENCHMARK_CLAIMS if published is None else published
    records = []
    for r in bench.get("results", []):
        records.append(
            {
                "benchmark": r["name"],
                "what": BENCHMARKS[r["name"]].description if r["name"] in BENCHMARKS else "",
                "device": r.get("device", bench.get("device", "")),
                "seconds": float(r["seconds"]),
                "peak MiB": float(r["peak_mib"]),
                "repeats": int(r.get("repeats", 0)),
                "speed-up": _NAN,
                "paper": published.get(r["name"], ""),
            }
        )
    for name, value in (bench.get("ratios") or {}).items():
        records.append(
            {
                "benchmark": name,
                "what": "time of the first over time of the second",
                "device": bench.get("device", ""),
                "seconds": _NAN,
                "peak MiB": _NAN,
                "repeats": _NAN,
                "speed-up": float(value),
                "paper": published.get(name, ""),
            }
        )
    columns = ["benchmark", "what", "device", "seconds", "peak MiB", "repeats", "speed-up"]
    return pd.DataFrame.from_records(records, columns=[*columns, "paper"])


def thermodynamic_note(cells: Sequence[Mapping[str, Any]]) -> str | None:
    """What one chain per temperature means, for a table with such thermodynamic cells.

    Parameters
    ----------
    cells
        The table's cells as :class:`kaem.pipeline.config.CellInfo` mappings.
    """
    single = [
        c["name"] for c in cells if c.get("criterion") == "thermodynamic" and c["n_chains"] == 1
    ]
    if not single:
        return None
    return (
        f"Thermodynamic cells ({', '.join(single)}) use one chain per temperature "
        "(train.thermodynamic.n_chains = 1, the paper's setting): their training gradient is the "
        "Riemann sum sum_k (t_k - t_(k-1)) grad log p(x | z^(k-1)), not the maximum-likelihood "
        "gradient; with S chains the steppingstone weights bring it there as S grows."
    )


#: Pang et al.'s likelihood, ``sigma = 0.3`` on images in ``[-1, 1]``, as a variance on ``[0, 1]``.
PANG_VARIANCE = 0.0225


def likelihood_note(rows: Mapping[str, str], cells: Sequence[Mapping[str, Any]]) -> str | None:
    """Which likelihood each row's model was trained with, and why they may differ.

    Parameters
    ----------
    rows
        Row label -> cell name.
    cells
        The table's cells as :class:`kaem.pipeline.config.CellInfo` mappings (with ``model``
        and ``likelihood_variance``).

    Returns
    -------
    str or None
        E.g. "Likelihood per row: MLE, Thermo, VAE Gaussian of variance 0.25 on images in
        [0, 1]; LEBM 0.0225; DDPM none ..."; None for a table without such cells.
    """
    by_name = {c["name"]: c for c in cells}
    groups: dict[str, list[str]] = {}
    for label, cell in rows.items():
        info = by_name.get(cell)
        if info is None:
            continue
        variance = info.get("likelihood_variance")
        key = "none" if variance is None else f"{variance:g}"
        groups.setdefault(key, []).append(label)
    if not groups:
        return None
    parts = [
        f"{', '.join(labels)}: "
        + ("none" if key == "none" else f"Gaussian of variance {key} on images in [0, 1]")
        for key, labels in groups.items()
    ]
    text = [f"Likelihood per row: {'; '.join(parts)}."]
    kinds = {by_name[c]["model"]: by_name[c] for c in rows.values() if c in by_name}
    lebm = kinds.get("LEBM")
    if lebm is not None and lebm.get("likelihood_variance") == PANG_VARIANCE and len(groups) > 1:
        text.append(
            "The LEBM keeps Pang et al.'s likelihood (sigma 0.3 on [-1, 1]): their 20 posterior "
            "Langevin steps of 0.005 were tuned for it and barely move from the base under a "
            "weaker one; the other rows keep their own papers' variance, so the generator is "
            "shared but the likelihood is each model's operating point."
        )
    if "DDPM" in kinds:
        text.append(
            "The DDPM has no latent variable and no likelihood of this kind: it is trained by "
            "noise prediction (Ho et al. 2020, eq. 14) in pixel space."
        )
    return " ".join(text)
