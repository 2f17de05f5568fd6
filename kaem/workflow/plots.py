"""Figures: learned priors against their references (Fig. 3), sample grids, training curves.

Plots are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, so importing this
module never changes matplotlib's global backend, and every function writes its file
atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from torch import Tensor

from kaem.io import atomic_path
from kaem.prior import MixtureEnergyPrior, UnivariateEnergyPrior

__all__ = [
    "PriorDensities",
    "draw_figure",
    "figures_for_run",
    "plot_image_grid",
    "plot_prior_grid",
    "plot_prior_top",
    "plot_training_curve",
    "prior_densities",
]

EnergyPrior = UnivariateEnergyPrior | MixtureEnergyPrior


class PriorDensities:
    """Learned and reference densities of every component on a grid over the domain.

    Attributes
    ----------
    z
        Evaluation grid, shape ``(n,)``.
    learned
        ``pi_qp(z)`` (eq. 14), shape ``(Q, P, n)``; for the mixture prior the ``P`` components
        of each coordinate.
    reference
        ``pi_0(z)`` normalised on the domain, shape ``(n,)``.
    distance
        Total-variation distance of each component from the reference, shape ``(Q, P)``.
    """

    def __init__(self, z: np.ndarray, learned: np.ndarray, reference: np.ndarray) -> None:
        self.z, self.learned, self.reference = z, learned, reference
        dz = np.gradient(z)
        self.distance = 0.5 * (np.abs(learned - reference) * dz).sum(-1)


@torch.no_grad()
def prior_densities(prior: EnergyPrior, n_points: int = 400) -> PriorDensities:
    """Evaluate every univariate density of a prior and its reference on a grid.

    Parameters
    ----------
    prior
        A univariate or mixture energy prior.
    n_points
        Grid size over the domain ``[a, b]``.
    """
    low, high = prior.domain
    z = torch.linspace(low, high, n_points + 2, dtype=prior.nodes.dtype, device=prior.nodes.device)
    z = z[1:-1]  # open interval: the log-normal reference is singular at 0
    q, p = prior.components_shape
    if isinstance(prior, UnivariateEnergyPrior):
        lp = prior.component_log_prob(z[:, None, None].expand(-1, q, p).contiguous())  # (n, Q, P)
    else:
        # Components without their proportions: log pi_qp(z).
        log_alpha = torch.log_softmax(prior.logits, dim=-1)
        lp = prior.component_log_prob(z[:, None].expand(-1, q).contiguous()) - log_alpha
    log_ref = prior.reference.log_density(z)
    log_z0 = torch.logsumexp(prior.log_reference_nodes + prior.log_weights, 0)
    return PriorDensities(
        z.cpu().double().numpy(),
        lp.permute(1, 2, 0).exp().cpu().double().numpy(),
        (log_ref - log_z0).exp().cpu().double().numpy(),
    )


def _save(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    return path


def plot_prior_grid(
    prior: EnergyPrior, path: str | os.PathLike, *, max_rows: int | None = None
) -> Path:
    """Every learned density (blue) over its reference (grey), one cell per component.

    Rows are the ``Q`` outputs, columns the ``P`` inputs (or mixture components); each cell is
    scaled to its own maximum so shapes, not heights, are compared, and shaded by its total
    variation distance from the reference so the components that moved stand out. All curves
    are drawn as two line collections, so even the 3,240 components of the paper's prior
    render quickly.
    """
    d = prior_densities(prior, 200)
    q, p, _ = d.learned.shape
    rows = q if max_rows is None else min(q, max_rows)
    x = (d.z - d.z[0]) / (d.z[-1] - d.z[0]) * 0.9 + 0.05  # within a unit cell
    learned, ref = [], []
    for i in range(rows):
        for j in range(p):
            top = max(d.learned[i, j].max(), d.reference.max(), 1e-12)
            y0 = rows - 1 - i
            learned.append(np.column_stack([j + x, y0 + 0.05 + 0.85 * d.learned[i, j] / top]))
            ref.append(np.column_stack([j + x, y0 + 0.05 + 0.85 * d.reference / top]))
    fig = Figure(figsize=(max(4.0, 0.3 * p + 2), max(3.0, 0.3 * rows + 1)))
    ax = fig.add_subplot()
    # Cell colour: how far each density moved from the reference (total variation).
    heat = ax.imshow(
        d.distance[:rows],
        extent=(0, p, 0, rows),
        origin="upper",
        cmap="Oranges",
        vmin=0.0,
        aspect="auto",
        interpolation="nearest",
    )
    fig.colorbar(heat, ax=ax, fraction=0.03, pad=0.01, label="total variation from reference")
    ax.add_collection(LineCollection(ref, colors="0.6", linewidths=0.5))
    ax.add_collection(LineCollection(learned, colors="C0", linewidths=0.7))
    ax.set_xlim(0, p)
    ax.set_ylim(0, rows)
    ax.set_xticks(np.arange(p) + 0.5, [str(j) for j in range(p)], fontsize=5)
    ax.set_yticks(np.arange(rows) + 0.5, [str(rows - 1 - i) for i in range(rows)], fontsize=5)
    inputs = "p (input)" if isinstance(prior, UnivariateEnergyPrior) else "p (component)"
    ax.set_xlabel(inputs)
    ax.set_ylabel("q (latent coordinate)")
    ax.set_title(
        f"Learned univariate priors (blue) vs reference {prior.reference.name} (grey) "
        f"on [{prior.domain[0]:g}, {prior.domain[1]:g}]",
        fontsize=8,
    )
    ax.grid(True, color="0.92", linewidth=0.5)
    return _save(fig, path, dpi=150)


def plot_prior_top(
    prior: EnergyPrior,
    path: str | os.PathLike,
    *,
    k: int = 6,
    samples: Tensor | None = None,
) -> Path:
    """The ``k`` components that moved most from the reference (total variation), as Fig. 3.

    Parameters
    ----------
    prior
        The trained prior.
    path
        Output image.
    k
        Number of panels.
    samples
        Optional prior samples (``(n, Q, P)`` or ``(n, Q)``): their histogram is drawn too,
        showing that inverse-transform draws follow the learned density.
    """
    d = prior_densities(prior, 400)
    p = d.learned.shape[1]
    order = np.argsort(d.distance, axis=None)[::-1][:k]
    cols = min(3, k)
    nrows = int(np.ceil(len(order) / cols))
    fig = Figure(figsize=(3.4 * cols, 2.6 * nrows))
    for n, flat in enumerate(order):
        i, j = divmod(int(flat), p)
        ax = fig.add_subplot(nrows, cols, n + 1)
        if samples is not None:
            s = samples[:, i, j] if samples.ndim == 3 else samples[:, i]
            ax.hist(
                s.cpu().numpy(),
                bins=60,
                range=prior.domain,
                density=True,
                color="C0",
                alpha=0.25,
                label="ITS samples",
            )
        ax.plot(
            d.z,
            d.reference,
            color="0.5",
            linestyle="--",
            label=f"reference ({prior.reference.name})",
        )
        ax.plot(d.z, d.learned[i, j], color="C0", label="learned")
        ax.set_title(f"q={i}, p={j}  (TV {d.distance[i, j]:.3f})", fontsize=9)
        ax.set_xlabel("z")
        if n == 0:
            ax.legend(fontsize=7)
    fig.suptitle("Components that moved most from the reference prior", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_image_grid(images: Tensor, path: str | os.PathLike, *, nrow: int = 10) -> Path:
    """A grid of images ``(n, C, H, W)`` in ``[0, 1]`` (greyscale or RGB).

    Raises
    ------
    FloatingPointError
        If a pixel is NaN or infinite: it would be drawn blank.
    """
    images = images.detach().cpu().float()
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise FloatingPointError(
            f"{path}: not drawn, {bad} of {images.numel()} pixel values are NaN or infinite"
        )
    images = images.clamp(0, 1)
    n, c, h, w = images.shape
    ncol = int(np.ceil(n / nrow))
    canvas = torch.ones(c, ncol * (h + 2) + 2, nrow * (w + 2) + 2)
    for idx in range(n):
        r, col = divmod(idx, nrow)
        canvas[
            :, 2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + col * (w + 2) : 2 + col * (w + 2) + w
        ] = images[idx]
    array = canvas.permute(1, 2, 0).numpy()
    fig = Figure(figsize=(array.shape[1] / 40, array.shape[0] / 40))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(
        array[..., 0] if c == 1 else array,
        cmap="gray" if c == 1 else None,
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.axis("off")
    return _save(fig, path, dpi=100)


def plot_training_curve(log: str | os.PathLike | pd.DataFrame, path: str | os.PathLike) -> Path:
    """Training curves from a run's ``log.csv``: loss, per-image NLL estimate, MSE, ESS."""
    df = pd.read_csv(log) if not isinstance(log, pd.DataFrame) else log
    panels = [c for c in ("loss", "nll", "mse", "ess") if c in df.columns]
    fig = Figure(figsize=(3.4 * len(panels), 2.8))
    window = max(1, len(df) // 50)
    for n, col in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), n + 1)
        ax.plot(df["step"], df[col], color="C0", alpha=0.3, linewidth=0.6)
        ax.plot(df["step"], df[col].rolling(window, min_periods=1).mean(), color="C0")
        if "grid_updated" in df.columns:
            for s in df.loc[df["grid_updated"] == 1, "step"]:
                ax.axvline(s, color="0.85", linewidth=0.5, zorder=0)
        ax.set_xlabel("step")
        ax.set_title(
            {
                "loss": "loss",
                "nll": "-log p(x) (IS estimate, nats)",
                "mse": "MSE per pixel",
                "ess": "effective sample size",
            }[col],
            fontsize=9,
        )
    fig.tight_layout()
    return _save(fig, path)


def figures_for_run(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, seed: int = 0
) -> dict[str, Path]:
    """All figures of a finished training run: priors, samples, training curve.

    Parameters
    ----------
    run_dir
        Folder with ``checkpoint.pt`` and ``log.csv`` (from :func:`kaem.train`).
    out_dir
        Where to write the PNGs (default ``run_dir/figures``).
    seed
        Seed of the generated images and prior samples.

    Returns
    -------
    dict
        Figure name -> path.
    """
    from kaem.kinds import load_model  # local import: plots stay importable without a model
    from kaem.model import KAEM

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "figures"
    inputs = {"model": str(run_dir / "checkpoint.pt"), "log": str(run_dir / "log.csv")}
    model = load_model(inputs["model"])
    # Only a KAEM has a prior of univariate densities to draw against its reference.
    names = ("prior_grid", "prior_top", "training_curve") if isinstance(model, KAEM) else ()
    figures = {
        name: draw_figure(name, out / f"{name}.png", inputs, seed=seed)
        for name in names or ("training_curve",)
    }
    images = model.generate(100, torch.Generator().manual_seed(seed))
    figures["samples"] = plot_image_grid(images, out / "samples.png")
    return figures


def draw_figure(
    figure: str,
    path: str | os.PathLike,
    inputs: Mapping[str, str | Sequence[str]],
    *,
    cell: str = "",
    grid_images: int = 64,
    prior_rows: int | None = None,
    seed: int = 0,
) -> Path:
    """Draw one named figure into ``path`` from result files.

    Parameters
    ----------
    figure
        ``samples``, ``training_curve``, ``extrapolation``, ``prior_grid``, ``prior_top``,
        ``temperature_schedule``, ``benchmark`` or ``sweep`` (a cost curve of App. A).
    inputs
        The files it is drawn from, by name: ``samples`` (generated HDF5), ``log``
        (``log.csv``), ``metrics`` (a cell's JSON, or one per seed), ``model`` (a checkpoint),
        ``config`` (the cell's resolved YAML), ``bench`` (benchmark JSON), ``sweep`` (a sweep's
        JSON).
    cell, grid_images, prior_rows, seed
        The title of a regression plot, images in a sample grid, rows of a prior grid (None:
        all) and the seed of the prior samples.
    """
    from kaem.kinds import load_model  # local imports: plots stay importable without a model
    from kaem.workflow.artifacts import read_json

    if figure == "samples":
        from kaem.data import read_samples

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
        from kaem.workflow.costs import plot_sweep

        return plot_sweep(read_json(inputs["sweep"]), path)
    if figure == "benchmark":
        bench = read_json(inputs["bench"])
        title = f"kaem.bench on {bench.get('device_name', bench.get('device', ''))}"
        return plot_benchmarks(bench["results"], path, title=title)
    raise ValueError(f"unknown figure {figure!r} for {path}")


def _schedule_of_cell(config: str, log: str, path: str | os.PathLike) -> Path:
    from kaem.config import TrainConfig, from_dict, load_yaml

    settings = load_yaml(config)
    thermo = from_dict(TrainConfig, settings["train"], "train").thermodynamic
    steps = int(pd.read_csv(log)["step"].max())
    return plot_temperature_schedule(
        thermo.n_temps, thermo.p_start, thermo.p_end, thermo.n_cycles, steps, path
    )


# ----------------------------------------------------------------------------- workflow figures

__all__ += ["plot_benchmarks", "plot_extrapolation", "plot_temperature_schedule"]


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
    return _save(fig, path)


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
        A metrics mapping (:func:`kaem.workflow.artifacts.cell_metrics`): ``sizes``, ``fid``,
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
    return _save(fig, path)


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
    return _save(fig, path)
