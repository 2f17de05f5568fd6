"""Figures of one training run: learned priors against their references (Fig. 3), sample
grids and training curves; :func:`figures_for_run` draws them all (``kaem figures``).

Plots are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, so importing this
module never changes matplotlib's global backend, and every function writes its file
atomically (:func:`save_figure`).
"""

from __future__ import annotations

import os
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
from kaem.kinds import load_model
from kaem.model import KAEM
from kaem.model.prior import EnergyPrior, UnivariateEnergyPrior

__all__ = [
    "PriorDensities",
    "figures_for_run",
    "image_canvas",
    "plot_image_grid",
    "plot_prior_grid",
    "plot_prior_top",
    "plot_training_curve",
    "prior_densities",
    "save_figure",
    "show_canvas",
]


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


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> Path:
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
    return save_figure(fig, path, dpi=150)


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
    return save_figure(fig, path)


def image_canvas(images: Tensor, nrow: int = 10, where: str = "images") -> np.ndarray:
    """Images ``(n, C, H, W)`` in ``[0, 1]`` tiled ``nrow`` to a row with 2-pixel white
    gutters: an array ``(rows, cols)`` for greyscale, ``(rows, cols, 3)`` for RGB.

    Raises
    ------
    FloatingPointError
        If a pixel is NaN or infinite (it would be drawn blank), naming ``where``.
    """
    images = images.detach().cpu().float()
    bad = int((~torch.isfinite(images)).sum())
    if bad:
        raise FloatingPointError(
            f"{where}: not drawn, {bad} of {images.numel()} pixel values are NaN or infinite"
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
    return array[..., 0] if c == 1 else array


def plot_image_grid(images: Tensor, path: str | os.PathLike, *, nrow: int = 10) -> Path:
    """A grid of images ``(n, C, H, W)`` in ``[0, 1]`` (greyscale or RGB).

    Raises
    ------
    FloatingPointError
        If a pixel is NaN or infinite: it would be drawn blank.
    """
    array = image_canvas(images, nrow, str(path))
    fig = Figure(figsize=(array.shape[1] / 40, array.shape[0] / 40))
    show_canvas(fig.add_axes((0, 0, 1, 1)), array)
    return save_figure(fig, path, dpi=100)


def show_canvas(ax: Any, canvas: np.ndarray) -> None:
    """Draw an :func:`image_canvas` on ``ax`` pixel for pixel, on [0, 1], without axes."""
    ax.imshow(
        canvas,
        cmap="gray" if canvas.ndim == 2 else None,
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    ax.axis("off")


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
    return save_figure(fig, path)


def figures_for_run(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, seed: int = 0
) -> dict[str, Path]:
    """All figures of a finished training run: priors (a KAEM's), samples, training curve.

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
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "figures"
    model = load_model(run_dir / "checkpoint.pt")
    g = torch.Generator().manual_seed(seed)
    figures = {}
    if isinstance(model, KAEM):  # only a KAEM has univariate densities to draw
        figures["prior_grid"] = plot_prior_grid(model.prior, out / "prior_grid.png")
        samples = model.prior.sample(20_000, g)
        figures["prior_top"] = plot_prior_top(model.prior, out / "prior_top.png", samples=samples)
    figures["training_curve"] = plot_training_curve(run_dir / "log.csv", out / "training_curve.png")
    images = model.generate(100, torch.Generator().manual_seed(seed))
    figures["samples"] = plot_image_grid(images, out / "samples.png")
    return figures
