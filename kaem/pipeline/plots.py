"""The workflow's figures beyond one run: sample grids and priors of a cell, FID/KID
extrapolations, temperature schedules (Figs. 10-11), benchmarks and App. A's cost curves, each
drawn by name (:func:`draw_figure`) from result files."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from kaem.config import TrainConfig, from_dict, load_yaml
from kaem.data import read_samples
from kaem.figures import (
    image_canvas,
    plot_image_grid,
    plot_prior_grid,
    plot_prior_top,
    plot_training_curve,
    save_figure,
    show_canvas,
)
from kaem.kinds import load_model
from kaem.pipeline.artifacts import read_json
from kaem.pipeline.costs import plot_sweep

__all__ = [
    "draw_figure",
    "plot_benchmarks",
    "plot_extrapolation",
    "plot_fid_curve",
    "plot_sample_grids",
    "plot_temperature_schedule",
]


def draw_figure(
    figure: str,
    path: str | os.PathLike,
    inputs: Mapping[str, str | Sequence[str]],
    *,
    cell: str = "",
    grid_images: int = 64,
    prior_rows: int | None = None,
    seed: int = 0,
    labels: Sequence[str] = (),
) -> Path:
    """Draw one named figure into ``path`` from result files.

    Parameters
    ----------
    figure
        ``samples``, ``training_curve``, ``extrapolation``, ``prior_grid``, ``prior_top``,
        ``temperature_schedule``, ``benchmark``, ``sweep`` (a cost curve of App. A), or a
        table's ``fid_curve`` (FID_inf against training seconds) or ``sample_grids`` (its
        rows' samples side by side).
    inputs
        The files it is drawn from, by name: ``samples`` (generated HDF5, or one per row of a
        table), ``log`` (``log.csv``), ``metrics`` (a cell's JSON, or one per seed), ``model``
        (a checkpoint), ``config`` (the cell's resolved YAML), ``bench`` (benchmark JSON),
        ``sweep`` (a sweep's JSON), ``curve`` (a curve table's CSV), ``real`` (real-vs-real
        metrics).
    cell, grid_images, prior_rows, seed
        The title of a regression plot, images in a sample grid, rows of a prior grid (None:
        all) and the seed of the prior samples.
    labels
        A table's row labels, one per file of ``samples`` (``sample_grids``).
    """
    if figure == "fid_curve":
        real = read_json(inputs["real"]) if "real" in inputs else None
        return plot_fid_curve(pd.read_csv(inputs["curve"]), path, real=real)
    if figure == "sample_grids":
        files = inputs["samples"]
        files = [files] if isinstance(files, str) else list(files)
        grids = [torch.from_numpy(read_samples(f, 0, grid_images)).float() / 255.0 for f in files]
        return plot_sample_grids(grids, list(labels), path)
    if figure == "samples":
        images = torch.from_numpy(read_samples(inputs["samples"], 0, grid_images)).float() / 255.0
        return plot_image_grid(images, path)
    if figure == "training_curve":
        return plot_training_curve(inputs["log"], path)
    if figure == "extrapolation":
        files = inputs["metrics"]
        files = [files] if isinstance(files, str) else list(files)
        return plot_extrapolation([read_json(f) for f in files], path, title=cell)
    if figure in ("prior_grid", "prior_top"):
        prior = load_model(inputs["model"]).prior
        if figure == "prior_grid":
            return plot_prior_grid(prior, path, max_rows=prior_rows)
        samples = prior.sample(20_000, torch.Generator().manual_seed(seed))
        return plot_prior_top(prior, path, samples=samples)
    if figure == "temperature_schedule":
        return _schedule_of_cell(inputs["config"], inputs["log"], path)
    if figure == "sweep":
        return plot_sweep(read_json(inputs["sweep"]), path)
    if figure == "benchmark":
        bench = read_json(inputs["bench"])
        title = f"kaem.bench on {bench.get('device_name', bench.get('device', ''))}"
        return plot_benchmarks(bench["results"], path, title=title)
    raise ValueError(f"unknown figure {figure!r} for {path}")


def _schedule_of_cell(config: str, log: str, path: str | os.PathLike) -> Path:
    settings = load_yaml(config)
    thermo = from_dict(TrainConfig, settings["train"], "train").thermodynamic
    steps = int(pd.read_csv(log)["step"].max())
    return plot_temperature_schedule(
        thermo.n_temps, thermo.p_start, thermo.p_end, thermo.n_cycles, steps, path
    )


def plot_temperature_schedule(
    n_temps: int,
    p_start: float,
    p_end: float,
    n_cycles: int,
    total_steps: int,
    path: str | os.PathLike,
) -> Path:
    """Temperature schedule of thermodynamic training, as the paper's Figs. 10-11.

    Left: the exponent ``p_i`` of eq. 40 over the ``I`` parameter updates (cosine from
    ``p_start`` to ``p_end`` with ``n_cycles`` cycles). Right: the power-posterior ladder
    ``t_k = (k / N_t)^{p_i}``, ``k = 0..N_t`` (eqs. 22, 40), one line per temperature.
    """
    from kaem.samplers.tempering import cosine_exponent_schedule, power_temperatures

    steps = np.unique(np.linspace(0, total_steps, min(total_steps, 400) + 1).round().astype(int))
    exponents = np.array(
        [cosine_exponent_schedule(int(s), total_steps, p_start, p_end, n_cycles) for s in steps]
    )
    ladder = np.stack([power_temperatures(n_temps, float(p)).double().numpy() for p in exponents])
    fig = Figure(figsize=(8.0, 3.0))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(steps, exponents, color="C0")
    ax.set_xlabel("parameter update i")
    ax.set_ylabel("exponent p_i")
    ax.set_title(f"eq. 40: p from {p_start:g} to {p_end:g}, {n_cycles} cycles", fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    colours = [str(c) for c in np.linspace(0.75, 0.0, n_temps + 1)]
    for k in range(n_temps + 1):
        ax.plot(steps, ladder[:, k], color=colours[k], linewidth=1.0, label=f"t_{k}")
    ax.set_xlabel("parameter update i")
    ax.set_ylabel("temperature t_k")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"power posteriors t_k = (k / {n_temps})^p_i", fontsize=9)
    if n_temps <= 10:
        ax.legend(fontsize=6, ncol=2, loc="center right")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_extrapolation(
    metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    title: str = "",
) -> Path:
    """FID and KID against ``1 / N`` with the least-squares line extrapolated to ``1/N = 0``.

    Parameters
    ----------
    metrics
        A metrics mapping (:func:`kaem.pipeline.artifacts.cell_metrics`): ``sizes``, ``fid``,
        ``kid`` and the fits' ``fid_inf``, ``fid_slope``, ``fid_se``, ``fid_r2`` (and KID's);
        or one per training seed, each drawn in its own colour.
    path
        Output image.
    title
        Figure title (e.g. the cell name).
    """
    runs = [metrics] if isinstance(metrics, Mapping) else list(metrics)
    x_max = max(1.0 / min(m["sizes"]) for m in runs)
    grid = np.linspace(0.0, x_max * 1.05, 50)
    fig = Figure(figsize=(7.0, 2.8))
    for n, name in enumerate(("fid", "kid")):
        ax = fig.add_subplot(1, 2, n + 1)
        for k, run in enumerate(runs):
            _draw_regression(ax, run, name, grid, f"C{k % 10}", len(runs) > 1)
        r2 = ", ".join(f"{m[f'{name}_r2']:.3f}" for m in runs)
        ax.set_xlabel("1 / N")
        ax.set_ylabel(name.upper())
        ax.set_title(f"{name.upper()}_inf, R^2 = {r2}", fontsize=9)
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _draw_regression(
    ax: Any, metrics: Mapping[str, Any], name: str, grid: np.ndarray, colour: str, seeded: bool
) -> None:
    """One run's subsets, its least-squares line and the intercept with its standard error."""
    x = 1.0 / np.asarray(metrics["sizes"], dtype=float)
    y = np.asarray(metrics[name], dtype=float)
    intercept, slope = metrics[f"{name}_inf"], metrics[f"{name}_slope"]
    seed = metrics.get("training_seed")
    who = f"seed {seed}: " if seeded and seed is not None else ""
    ax.plot(x, y, "o", color=colour, markersize=4, label=f"{who}random subsets")
    ax.plot(grid, intercept + slope * grid, color=colour, alpha=0.7, linewidth=1.0)
    ax.errorbar(
        [0.0],
        [intercept],
        yerr=[metrics.get(f"{name}_se") or 0.0],
        fmt="s",
        color=colour,
        capsize=3,
        label=f"{who}{name.upper()}_inf = {intercept:.4g}",
    )


def plot_benchmarks(results: list[dict], path: str | os.PathLike, *, title: str = "") -> Path:
    """Median seconds (log scale when they span decades) and peak memory per benchmark.

    Parameters
    ----------
    results
        One mapping per benchmark with ``name``, ``seconds`` and ``peak_mib`` (the
        ``results`` of ``python -m kaem.bench --json``).
    path
        Output image.
    title
        Figure title (e.g. the device).
    """
    if not results:
        raise ValueError("no benchmark results to plot")
    names = [r["name"] for r in results]
    y = np.arange(len(names))
    fig = Figure(figsize=(9.0, 0.35 * len(names) + 1.4))
    for n, (key, label) in enumerate((("seconds", "median seconds"), ("peak_mib", "peak MiB"))):
        ax = fig.add_subplot(1, 2, n + 1)
        values = np.asarray([float(r[key]) for r in results])
        colours = ["C1" if "langevin" in name else "C0" for name in names]
        ax.barh(y, values, color=colours)
        ax.set_yticks(y, names if n == 0 else [""] * len(names), fontsize=7)
        ax.invert_yaxis()
        if key == "seconds" and (values > 0).all() and values.max() > 20 * values.min():
            ax.set_xscale("log")  # Langevin and inverse-transform times differ by decades
        ax.set_xlabel(label)
        ax.grid(True, axis="x", color="0.9", linewidth=0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_fid_curve(
    curve: pd.DataFrame, path: str | os.PathLike, *, real: Mapping[str, Any] | None = None
) -> Path:
    """FID_inf against training seconds, one line per model: at each point the mean over
    its seeds with their standard deviation as error bars, at the mean seconds the points
    were taken; the real-vs-real FID_inf as a dashed line.

    Parameters
    ----------
    curve
        :func:`kaem.pipeline.tables.curve_table` (its CSV read back): ``model``, ``seconds``,
        ``FID_inf``, ``FID_inf sd``, ``seeds``.
    path
        Output image.
    real
        The real-vs-real metrics (:func:`kaem.pipeline.artifacts.cell_metrics`), or None.
    """
    if curve.empty:
        raise ValueError(f"{path}: no points to draw")
    fig = Figure(figsize=(6.5, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for k, (model, points) in enumerate(curve.groupby("model", sort=False)):
        points = points.sort_values("seconds")
        spread = points["FID_inf sd"].fillna(0.0).to_numpy()
        seeds = int(points["seeds"].max())
        ax.errorbar(
            points["seconds"],
            points["FID_inf"],
            yerr=spread,
            fmt="o-",
            ms=4,
            lw=1.2,
            capsize=3,
            color=f"C{k % 10}",
            label=f"{model} ({seeds} seeds)",
        )
    values = curve["FID_inf"].to_numpy(dtype=float)
    if real is not None:
        ax.axhline(real["fid_inf"], color="0.4", ls="--", lw=1, label="real vs real")
        values = np.append(values, real["fid_inf"])
    positive = values[values > 0]
    if len(positive) == len(values) and positive.max() > 20 * positive.min():
        ax.set_yscale("log")  # models and the data's own level differ by decades
    ax.set_xlabel("training seconds")
    ax.set_ylabel("FID_inf (mean over seeds; bars: sd across seeds)")
    ax.grid(True, color="0.9", linewidth=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_sample_grids(
    grids: Sequence[torch.Tensor], labels: Sequence[str], path: str | os.PathLike
) -> Path:
    """Sample grids side by side, one panel per model titled with its label.

    Parameters
    ----------
    grids
        Per model, images ``(n, C, H, W)`` in ``[0, 1]``.
    labels
        One title per grid.
    path
        Output image.
    """
    if len(grids) != len(labels) or not grids:
        raise ValueError(f"{path}: {len(grids)} grids for {len(labels)} labels")
    canvases = [
        image_canvas(g, max(1, round(len(g) ** 0.5)), f"{path} ({label})")
        for g, label in zip(grids, labels, strict=True)
    ]
    fig = Figure(figsize=(2.4 * len(canvases), 2.7))
    for k, (canvas, label) in enumerate(zip(canvases, labels, strict=True)):
        ax = fig.add_subplot(1, len(canvases), k + 1)
        show_canvas(ax, canvas)
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
