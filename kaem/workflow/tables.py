"""The paper's tables from the workflow's results, with the published values beside ours.

Tables are :class:`pandas.DataFrame` objects written three ways by :func:`write_table`: CSV
(full precision, for machines), Markdown and LaTeX (``booktabs``; rounded, for people).
The published numbers of Tables 1 and 2 and App. H are kept here, once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kaem.bench.cases import BENCHMARKS
from kaem.io import atomic_write_text

__all__ = [
    "METRIC_COLUMNS",
    "PAPER_BENCHMARK_CLAIMS",
    "PAPER_COLUMNS",
    "PAPER_TABLES",
    "benchmark_table",
    "cells_table",
    "extractors_table",
    "metrics_table",
    "thermodynamic_note",
    "to_latex",
    "to_markdown",
    "write_table",
]

#: Our columns of a metrics table, and the keys of a metrics file
#: (:func:`kaem.workflow.artifacts.cell_metrics`).
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
    "KID std": "kid_largest_std",
}

#: The columns the paper publishes (FID_inf and KID_inf with their regression statistics).
PAPER_COLUMNS = ("FID_inf", "FID SE", "FID R2", "KID_inf", "KID SE", "KID R2")


def _row(fid: float, fid_se: float, fid_r2: float, kid: float, kid_se: float, kid_r2: float):
    return dict(zip(PAPER_COLUMNS, (fid, fid_se, fid_r2, kid, kid_se, kid_r2), strict=True))


_NAN = math.nan

#: Published FID_inf / KID_inf with standard errors and R^2, by paper table and row label.
#: App. H reports no regression statistics (NaN here).
PAPER_TABLES: dict[str, dict[str, Any]] = {
    "table1": {
        "title": "Table 1: SVHN, FID_inf and KID_inf",
        "rows": {
            "MLE": _row(97.61, 0.105, 0.976, 0.0930, 0.00021, 0.411),
            "Thermo": _row(148.84, 0.093, 0.971, 0.1363, 0.00016, 0.091),
            "VAE": _row(62.83, 0.160, 0.959, 0.0532, 0.00018, 0.560),
        },
    },
    "table2": {
        "title": "Table 2: CelebA, FID_inf and KID_inf",
        "rows": {
            "MLE": _row(251.64, 0.176, 0.949, 0.2687, 0.00037, 0.418),
            "Thermo": _row(165.62, 0.152, 0.962, 0.1815, 0.00021, 0.019),
            "VAE": _row(113.33, 0.113, 0.974, 0.1152, 0.00013, 0.591),
        },
    },
    "appendix_h_svhn": {
        "title": "App. H: SVHN with RBF bases",
        "rows": {
            "MLE": _row(78.41, _NAN, _NAN, 0.0627, _NAN, _NAN),
            "Thermo": _row(165.79, _NAN, _NAN, 0.1608, _NAN, _NAN),
        },
    },
    "appendix_h_celeba": {
        "title": "App. H: CelebA with RBF bases",
        "rows": {
            "MLE": _row(130.05, _NAN, _NAN, 0.1427, _NAN, _NAN),
            "Thermo": _row(150.25, _NAN, _NAN, 0.1637, _NAN, _NAN),
        },
    },
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


def metrics_table(
    rows: Mapping[str, tuple[str, Mapping[str, Any]]], paper: str | None = None
) -> pd.DataFrame:
    """FID_inf and KID_inf per row, with the published values of table ``paper`` beside them.

    Parameters
    ----------
    rows
        Row label -> ``(cell name, metrics)``; metrics as written by
        :func:`kaem.workflow.artifacts.cell_metrics`.
    paper
        A key of :data:`PAPER_TABLES`; rows whose label it lists get its numbers in the
        ``paper ...`` columns (NaN elsewhere). None: no paper columns.

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, ``cell``, :data:`METRIC_COLUMNS`, then ``paper <column>`` for each
        of :data:`PAPER_COLUMNS`.
    """
    if paper is not None and paper not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {paper!r}; choose one of {sorted(PAPER_TABLES)}")
    published = PAPER_TABLES[paper]["rows"] if paper is not None else {}
    records = []
    for label, (cell, metrics) in rows.items():
        record: dict[str, Any] = {"model": label, "cell": cell}
        for column, key in METRIC_COLUMNS.items():
            value = metrics.get(key)
            record[column] = _NAN if value is None else float(value)
        if paper is not None:
            for column in PAPER_COLUMNS:
                record[f"paper {column}"] = published.get(label, {}).get(column, _NAN)
        records.append(record)
    return pd.DataFrame.from_records(records)


def cells_table(
    cells: Sequence[Mapping[str, Any]], metrics: Mapping[str, Mapping[str, Any]]
) -> pd.DataFrame:
    """Every cell: what it is (dataset, model, basis, sampler, reference) and its scores.

    Parameters
    ----------
    cells
        One mapping per cell with ``name``, ``dataset``, ``model``, ``basis``, ``sampler``,
        ``reference`` (:class:`kaem.workflow.config.CellInfo` as a dict) and optionally ``steps``
        and ``train_seconds``.
    metrics
        Cell name -> metrics (:func:`kaem.workflow.artifacts.cell_metrics`).
    """
    records = []
    for cell in cells:
        m = metrics.get(cell["name"], {})
        records.append(
            {
                "cell": cell["name"],
                "dataset": cell["dataset"],
                "model": cell["model"],
                "basis": cell.get("basis") or "-",
                "sampler": cell["sampler"],
                "reference": cell.get("reference") or "-",
                "steps": cell.get("steps", _NAN),
                "train seconds": cell.get("train_seconds", _NAN),
                "extractor": m.get("extractor", "-"),
                **{c: _NAN if m.get(k) is None else float(m[k]) for c, k in METRIC_COLUMNS.items()},
            }
        )
    return pd.DataFrame.from_records(records)


def extractors_table(accuracies: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Feature classifiers per dataset: held-out and test accuracy.

    Parameters
    ----------
    accuracies
        Dataset -> the summary :func:`kaem.features.fit_classifier` returns.
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
    ]
    return pd.DataFrame.from_records(records, columns=columns)


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


# ----------------------------------------------------------------------------- writers


def _format(column: str, value: Any) -> str:
    """A cell as text: rounding chosen by the column, missing values as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    name = column.removeprefix("paper ")
    if name == "FID_inf":
        return f"{value:.2f}"
    if name in ("KID_inf", "KID", "KID std"):
        return f"{value:.4f}"
    if name.endswith("SE"):
        return f"{value:.3g}"
    if name.endswith(("R2", "accuracy")):
        return f"{value:.3f}"
    if name == "peak MiB":
        return f"{value:.1f}"
    if name == "speed-up":
        return f"{value:.3g}x"
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.4g}"


def _text_rows(df: pd.DataFrame) -> list[list[str]]:
    return [[_format(c, v) for c, v in zip(df.columns, row, strict=True)] for row in df.values]


def to_markdown(df: pd.DataFrame, title: str | None = None, note: str | None = None) -> str:
    """A GitHub-flavoured Markdown table (numbers rounded by column), after a title line and
    before an optional note."""
    header = [str(c) for c in df.columns]
    rows = _text_rows(df)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    rule = "|" + "|".join("---:" if n else "---" for n in numeric) + "|"
    out = [f"**{title}**", ""] if title else []
    out += [line(header), rule, *(line(r) for r in rows)]
    if note:
        out += ["", f"*Note.* {note}"]
    return "\n".join(out) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(
    df: pd.DataFrame,
    caption: str | None = None,
    label: str | None = None,
    note: str | None = None,
) -> str:
    """A LaTeX ``table`` with ``booktabs`` rules (numbers rounded by column); a note joins the
    caption."""
    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    spec = "".join("r" if n else "l" for n in numeric)
    lines = ["\\begin{table}[ht]", "\\centering"]
    caption = " ".join(part for part in (caption, note) if part) or None
    if caption:
        lines.append(f"\\caption{{{_latex_escape(caption)}}}")
    if label:
        lines.append(f"\\label{{{label}}}")
    lines += [f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    lines.append(" & ".join(_latex_escape(str(c)) for c in df.columns) + " \\\\")
    lines.append("\\midrule")
    for row in _text_rows(df):
        lines.append(" & ".join(_latex_escape(c) for c in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(
    df: pd.DataFrame,
    stem: str | os.PathLike,
    *,
    title: str | None = None,
    note: str | None = None,
) -> dict[str, Path]:
    """Write ``stem.csv``, ``stem.md`` and ``stem.tex`` atomically; return them by suffix."""
    stem = Path(stem)
    paths = {ext: stem.with_name(f"{stem.name}.{ext}") for ext in ("csv", "md", "tex")}
    atomic_write_text(df.to_csv(index=False), paths["csv"])
    atomic_write_text(to_markdown(df, title, note), paths["md"])
    atomic_write_text(to_latex(df, title, f"tab:{stem.name}", note), paths["tex"])
    return paths


def thermodynamic_note(cells: Sequence[Mapping[str, Any]]) -> str | None:
    """What one chain per temperature means, for a table with such thermodynamic cells.

    Parameters
    ----------
    cells
        The table's cells as :class:`kaem.workflow.config.CellInfo` mappings.
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
