"""Published and logged values beside which the workflow's tables print ours.

The numbers live in ``references.yaml`` next to this module, as data: per published table and
row, the paper's FID_inf / KID_inf with their regression statistics (``paper``), the authors'
later FID_inf (``later``), and the FID_inf of the authors' own logged runs by source
(``logs``). :func:`reference_columns` turns one row into table columns and
:func:`reference_caption` names the sources a table used, for its caption.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from kaem.config import load_yaml

__all__ = [
    "PAPER_COLUMNS",
    "REFERENCE_COLUMNS",
    "load_references",
    "reference_caption",
    "reference_columns",
]

#: The columns the paper publishes (FID_inf and KID_inf with their regression statistics).
PAPER_COLUMNS = ("FID_inf", "FID SE", "FID R2", "KID_inf", "KID SE", "KID R2")

#: The reference columns of a metrics table, after ``paper <column>`` for each paper column.
REFERENCE_COLUMNS = ("later FID_inf", "logs FID_inf min", "logs FID_inf max", "logs runs")

_FILE = Path(__file__).with_name("references.yaml")


@cache
def load_references(path: str | None = None) -> dict[str, Any]:
    """The reference data: ``{"sources": {key: text}, "tables": {name: {title, rows}}}``.

    Raises
    ------
    ValueError
        If a row names a source that ``sources`` does not describe, or a paper column that
        is not one of :data:`PAPER_COLUMNS`.
    """
    data = load_yaml(Path(path or _FILE))
    sources, tables = data["sources"], data["tables"]
    for name, table in tables.items():
        for label, row in table["rows"].items():
            where = f"{path or _FILE.name}: tables.{name}.rows.{label}"
            bad = sorted(set(row.get("paper", {})) - set(PAPER_COLUMNS))
            if bad:
                raise ValueError(f"{where}.paper: unknown columns {bad}")
            unknown = sorted(set(row.get("logs", {})) - set(sources))
            if unknown:
                raise ValueError(f"{where}.logs: sources {unknown} are not described in sources")
    return data


def reference_columns(table: str | None, label: str) -> dict[str, float]:
    """The reference columns of row ``label`` of published table ``table`` (NaN: unknown).

    Returns
    -------
    dict
        ``paper <column>`` for each of :data:`PAPER_COLUMNS`, then :data:`REFERENCE_COLUMNS`:
        the authors' later FID_inf, the lowest and highest FID_inf of their logged runs and
        how many runs were logged. Empty when ``table`` is None.
    """
    if table is None:
        return {}
    tables = load_references()["tables"]
    if table not in tables:
        raise ValueError(f"unknown paper table {table!r}; choose one of {sorted(tables)}")
    row = tables[table]["rows"].get(label, {})
    paper = row.get("paper", {})
    out = {f"paper {c}": float(paper.get(c, math.nan)) for c in PAPER_COLUMNS}
    logs = [float(v) for values in row.get("logs", {}).values() for v in values]
    out["later FID_inf"] = float(row.get("later", math.nan))
    out["logs FID_inf min"] = min(logs) if logs else math.nan
    out["logs FID_inf max"] = max(logs) if logs else math.nan
    out["logs runs"] = float(len(logs)) if logs else math.nan
    return out


def reference_caption(table: str | None, labels: Iterable[str]) -> str | None:
    """Where the reference columns of rows ``labels`` of ``table`` come from, or None."""
    if table is None:
        return None
    data = load_references()
    rows: Mapping[str, Any] = data["tables"][table]["rows"]
    used = [rows[label] for label in labels if label in rows]
    parts = []
    if any("paper" in r for r in used):
        parts.append(f"paper: {data['sources']['paper']}")
    if any("later" in r for r in used):
        parts.append(f"later: {data['sources']['later']}")
    logged = list(dict.fromkeys(s for r in used for s in r.get("logs", {})))
    if logged:
        described = "; ".join(f"{s}, {data['sources'][s]}" for s in logged)
        parts.append(f"logs (lowest and highest FID_inf and the number of runs): {described}")
    return ("Reference columns. " + ". ".join(parts) + ".") if parts else None
