"""App. A's cost curves in the workflow: a sweep's figure and table.

A sweep's JSON (:func:`kaem.bench.sweeps.run_sweep`) holds one point per series and value
(median, fastest and slowest repeat, peak memory), optionally a reference measured once, and
extras measured once (training steps). :func:`plot_sweep` draws time (per call, or per sample
for a per-sample sweep) and memory against the swept value, the spread of the repeats as
error bars, points timed over part of a chain and scaled as open markers, the reference as a
dashed line and the extras as bars; :func:`sweep_table` lists the points, the speed-ups of
the sweep's peer pairs, the ratios to the reference, the extras and their ratios, with how
each point was timed and what the authors claim.
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

from kaem.figures import save_figure

__all__ = ["plot_sweep", "sweep_table"]


def _series(sweep: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for p in sweep["points"]:
        out.setdefault(p["series"], []).append(p)
    return {k: sorted(v, key=lambda p: p["value"]) for k, v in out.items()}


def _per(sweep: Mapping[str, Any], point: Mapping[str, Any], key: str = "seconds") -> float:
    """A point's time, per sample in a per-sample sweep."""
    value = point.get(key) or point["seconds"]
    return value / point["value"] if sweep.get("per_sample") else value


def plot_sweep(sweep: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Seconds (median, with the fastest and slowest repeat as bars; per sample in a
    per-sample sweep) and peak MiB against the swept value, one line per series; points timed
    over part of a chain and scaled are open markers; the reference is a dashed line, the
    extras a third panel of bars.

    Parameters
    ----------
    sweep
        The JSON of :func:`kaem.bench.sweeps.run_sweep`.
    path
        Output image.
    """

    extras = sweep.get("extras") or []
    fig = Figure(figsize=(13.5 if extras else 9.0, 3.6))
    panels = 3 if extras else 2
    time_ax, mem_ax = fig.add_subplot(1, panels, 1), fig.add_subplot(1, panels, 2)
    scaled_any = False
    for k, (label, points) in enumerate(_series(sweep).items()):
        x = np.array([p["value"] for p in points], dtype=float)
        y = np.array([_per(sweep, p) for p in points])
        low = y - np.array([_per(sweep, p, "seconds_min") for p in points])
        high = np.array([_per(sweep, p, "seconds_max") for p in points]) - y
        colour = f"C{k % 10}"
        time_ax.errorbar(
            x, y, yerr=[low, high], fmt="-", capsize=2, color=colour, label=label, lw=1
        )
        scaled = np.array([(p.get("scale") or 1.0) > 1.0 for p in points])
        scaled_any |= bool(scaled.any())
        time_ax.plot(x[~scaled], y[~scaled], "o", ms=4, color=colour)
        time_ax.plot(x[scaled], y[scaled], "o", ms=5, mfc="white", color=colour)
        mem_ax.plot(x, [p["peak_mib"] for p in points], "o-", ms=3, color=colour, label=label)
    reference = sweep.get("reference")
    if reference:
        time_ax.axhline(reference["seconds"], color="0.4", ls="--", lw=1, label=reference["series"])
    for ax in (time_ax, mem_ax):
        ax.set_xlabel(sweep["x_label"])
        if sweep.get("log_x"):
            ax.set_xscale("log")
    time_ax.set_yscale("log")
    unit = "seconds per sample" if sweep.get("per_sample") else "seconds per call"
    time_ax.set_ylabel(unit + (" (open: timed in part, scaled)" if scaled_any else ""))
    mem_ax.set_ylabel("peak MiB (first call)")
    time_ax.legend(fontsize=6)
    time_ax.set_title(sweep["title"], fontsize=8)
    mem_ax.set_title(f"on {sweep.get('device_name', sweep.get('device', ''))}", fontsize=8)
    if extras:
        ax = fig.add_subplot(1, panels, 3)
        y = np.arange(len(extras))
        ax.barh(y, [e["seconds"] for e in extras], color="C7")
        ax.set_yticks(y, [e["series"] for e in extras], fontsize=6)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("seconds per training step")
        ax.set_title("training steps", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _timing(point: Mapping[str, Any]) -> str:
    """How a point was timed: the whole chain, or ``k`` of its steps scaled up."""
    if point.get("steps") is None:
        return ""
    if (point.get("scale") or 1.0) == 1.0:
        return f"all {point['steps']} steps"
    return f"timed {point['timed_steps']} of {point['steps']} steps, scaled x{point['scale']:g}"


def sweep_table(sweep: Mapping[str, Any]) -> pd.DataFrame:
    """One row per series and value, then per value the speed-up of each peer pair and the
    ratio of each series to the reference, then the extras and their ratios.

    Returns
    -------
    pandas.DataFrame
        Columns ``series``, ``value``, ``seconds``, ``seconds min``, ``seconds max``,
        ``peak MiB``, ``repeats`` and ``speed-up`` (the ratio rows); in a per-sample sweep
        ``seconds per sample``; where a point is a chain, ``timing`` (timed in full, or over
        how many of its steps and scaled by what); where the sweep has claims, ``authors'
        claim``.
    """
    by = _series(sweep)
    claims = sweep.get("claims") or {}
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
            "timing": _timing(p),
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
        records.append(_once_row(reference))
        for label, points in by.items():
            for p in points:
                ratio = p["seconds"] / reference["seconds"]
                records.append(_ratio_row(f"{label} / {reference['series']}", p["value"], ratio))
    extras = {e["series"]: e for e in sweep.get("extras") or []}
    records += [_once_row(e) for e in extras.values()]
    for slow, fast in sweep.get("extra_ratios", []):
        if slow in extras and fast in extras:
            ratio = extras[slow]["seconds"] / extras[fast]["seconds"]
            records.append(_ratio_row(f"{slow} / {fast}", math.nan, ratio))
    df = pd.DataFrame.from_records(records)
    if sweep.get("per_sample"):
        per = df["seconds"] / df["value"]
        df.insert(df.columns.get_loc("seconds") + 1, "seconds per sample", per)
    if not df["timing"].astype(bool).any():
        df = df.drop(columns="timing")
    if claims:
        df["authors' claim"] = [claims.get(s, "") for s in df["series"]]
    return df


def _once_row(point: Mapping[str, Any]) -> dict[str, Any]:
    """A row of something measured once (the reference, an extra)."""
    return {
        **_ratio_row(point["series"], math.nan, math.nan),
        "seconds": point["seconds"],
        "seconds min": point.get("seconds_min", math.nan),
        "seconds max": point.get("seconds_max", math.nan),
        "peak MiB": point["peak_mib"],
        "repeats": point["repeats"],
        "timing": _timing(point),
    }


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
        "timing": "",
    }
