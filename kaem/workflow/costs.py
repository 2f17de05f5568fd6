"""App. A's cost curves in the workflow: a sweep's figure and table.

A sweep's JSON (:func:`kaem.bench.sweeps.run_sweep`) holds one point per series and value
(median, fastest and slowest repeat, peak memory) and optionally a reference measured once.
:func:`plot_sweep` draws time and memory against the swept value, the spread of the repeats
as error bars and the reference as a dashed line; :func:`sweep_table` lists the points, then
the speed-ups of the sweep's peer pairs and the ratios to the reference.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["plot_sweep", "sweep_table"]


def _series(sweep: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for p in sweep["points"]:
        out.setdefault(p["series"], []).append(p)
    return {k: sorted(v, key=lambda p: p["value"]) for k, v in out.items()}


def plot_sweep(sweep: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Seconds (median, with the fastest and slowest repeat as bars) and peak MiB against the
    swept value, one line per series, the reference as a dashed line.

    Parameters
    ----------
    sweep
        The JSON of :func:`kaem.bench.sweeps.run_sweep`.
    path
        Output image.
    """
    from kaem.workflow.plots import _save

    fig = Figure(figsize=(9.0, 3.4))
    time_ax, mem_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for k, (label, points) in enumerate(_series(sweep).items()):
        x = np.array([p["value"] for p in points], dtype=float)
        y = np.array([p["seconds"] for p in points])
        low = y - np.array([p.get("seconds_min") or p["seconds"] for p in points])
        high = np.array([p.get("seconds_max") or p["seconds"] for p in points]) - y
        colour = f"C{k % 10}"
        time_ax.errorbar(
            x, y, yerr=[low, high], fmt="o-", ms=3, capsize=2, color=colour, label=label
        )
        mem_ax.plot(x, [p["peak_mib"] for p in points], "o-", ms=3, color=colour, label=label)
    reference = sweep.get("reference")
    if reference:
        time_ax.axhline(reference["seconds"], color="0.4", ls="--", lw=1, label=reference["series"])
    for ax in (time_ax, mem_ax):
        ax.set_xlabel(sweep["x_label"])
        if sweep.get("log_x"):
            ax.set_xscale("log")
    time_ax.set_yscale("log")
    time_ax.set_ylabel("seconds per call")
    mem_ax.set_ylabel("peak MiB (first call)")
    time_ax.legend(fontsize=6)
    time_ax.set_title(sweep["title"], fontsize=8)
    mem_ax.set_title(f"on {sweep.get('device_name', sweep.get('device', ''))}", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def sweep_table(sweep: Mapping[str, Any]) -> pd.DataFrame:
    """One row per series and value, then per value the speed-up of each peer pair and the
    ratio of each series to the reference.

    Returns
    -------
    pandas.DataFrame
        Columns ``series``, ``value``, ``seconds``, ``seconds min``, ``seconds max``,
        ``peak MiB``, ``repeats`` and ``speed-up`` (the ratio rows).
    """
    by = _series(sweep)
    records = [
        {
            "series": label,
            "value": p["value"],
            "seconds": p["seconds"],
            "seconds min": p.get("seconds_min", math.nan),
            "seconds max": p.get("seconds_max", math.nan),
            "peak MiB": p["peak_mib"],
            "repeats": p["repeats"],
            "speed-up": math.nan,
        }
        for label, points in by.items()
        for p in points
    ]
    seconds = {(p["series"], p["value"]): p["seconds"] for p in sweep["points"]}
    for slow, fast in sweep.get("ratios", []):
        for value in sorted({v for s, v in seconds if s == fast}):
            if (slow, value) in seconds:
                ratio = seconds[(slow, value)] / seconds[(fast, value)]
                records.append(_ratio_row(f"{slow} / {fast}", value, ratio))
    reference = sweep.get("reference")
    if reference:
        records.append(
            {
                **_ratio_row(reference["series"], math.nan, math.nan),
                **{
                    "seconds": reference["seconds"],
                    "seconds min": reference.get("seconds_min", math.nan),
                    "seconds max": reference.get("seconds_max", math.nan),
                    "peak MiB": reference["peak_mib"],
                    "repeats": reference["repeats"],
                },
            }
        )
        for label, points in by.items():
            for p in points:
                ratio = p["seconds"] / reference["seconds"]
                records.append(_ratio_row(f"{label} / {reference['series']}", p["value"], ratio))
    return pd.DataFrame.from_records(records)


def _ratio_row(series: str, value: float, ratio: float) -> dict[str, Any]:
    return {
        "series": series,
        "value": value,
        "seconds": math.nan,
        "seconds min": math.nan,
        "seconds max": math.nan,
        "peak MiB": math.nan,
        "repeats": math.nan,
        "speed-up": ratio,
    }
