"""Tables written for machines and for people: CSV at full precision, Markdown and LaTeX
(``booktabs``) with each column rounded the way its quantity is read."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kaem.io import atomic_write_text

__all__ = ["to_latex", "to_markdown", "write_table"]


def _decimals(value: float, places: int) -> str:
    """``value`` to ``places`` decimals, or to three significant digits where those decimals
    would show a value that is not zero as zero (an FID of 0.0012 is not 0.00)."""
    if value != 0 and abs(value) < 0.5 * 10.0**-places:
        return f"{value:.3g}"
    return f"{value:.{places}f}"


def _format(column: str, value: Any) -> str:
    """A cell as text: rounding chosen by the column, missing values as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    name = column.removeprefix("paper ")
    if name == "FID_inf":
        return _decimals(value, 2)
    if name in ("KID_inf", "KID", "KID_inf sd", "KID sd", "KID subsets sd"):
        return _decimals(value, 4)
    if name in ("FID_inf sd", "later FID_inf", "logs FID_inf min", "logs FID_inf max"):
        return _decimals(value, 2)
    if name.endswith("SE"):
        return f"{value:.3g}"
    if name.endswith(("R2", "accuracy")) or name in ("chance", "bar"):
        return f"{value:.3f}"
    if name in ("log p(x)", "log p(x) sd"):
        return f"{value:.1f}"
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
