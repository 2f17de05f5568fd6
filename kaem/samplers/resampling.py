"""Resampling schemes for importance-weighted particles.

Every resampler has the same signature,
``resampler(weights, generator=None, num_samples=None, validate=True) -> ancestors``: it takes
normalised weights of shape ``(..., N)`` and returns int64 ancestor indices into the last
dimension, of shape ``(..., M)`` with ``M = num_samples or N``. Leading dimensions are
independent rows (for example one row per data point in a batch) and are handled in one
vectorised call. ``validate`` checks the weights' values (finite, non-negative, summing to
one), which reads them on the host; a caller that made them itself (a softmax) turns it off,
and the call then never waits for the device.

All four schemes are unbiased: the expected number of copies of particle ``i`` is ``M w_i``.
They differ in variance: multinomial > residual, stratified > systematic in practice
(Douc, Cappé and Moulines 2005, "Comparison of resampling schemes for particle filtering").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from kaem.checks import check_count

__all__ = [
    "RESAMPLERS",
    "Resampler",
    "get_resampler",
    "multinomial_resample",
    "residual_resample",
    "stratified_resample",
    "systematic_resample",
]

Resampler = Callable[..., Tensor]
"""``(weights (..., N), generator=None, num_samples=None, validate=True) -> ancestors (..., M)``."""

_Scheme = Callable[[Tensor, int, "torch.Generator | None"], Tensor]


def _work_dtype(device: torch.device) -> torch.dtype:
    # Cumulative sums of many float32 weights lose resolution at the tail; float64 keeps every
    # stratum boundary exact enough. MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _prepare(
    weights: Tensor, num_samples: int | None, validate: bool
) -> tuple[Tensor, int, torch.Size]:
    """Check ``weights`` and flatten them to ``(R, N)`` rows that sum to exactly one.

    Their values are checked only if ``validate`` (:func:`_check_weights`).

    Returns
    -------
    rows : Tensor, shape (R, N)
        Weights in the working dtype, renormalised per row.
    num_samples : int
        ``M``, the number of ancestors per row.
    batch_shape : torch.Size
        The leading shape ``(...)`` to restore on the output.
    """
    if not isinstance(weights, Tensor):
        raise TypeError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if not weights.is_floating_point():
        raise TypeError(f"weights must be a floating-point tensor, got dtype {weights.dtype}")
    if weights.ndim < 1 or weights.shape[-1] == 0:
        raise ValueError(
            f"weights must have shape (..., N) with N >= 1, got shape {tuple(weights.shape)}"
        )
    n = weights.shape[-1]
    if num_samples is None:
        num_samples = n
    check_count("num_samples", num_samples)

    rows = weights.reshape(-1, n).to(_work_dtype(weights.device))
    sums = rows.sum(-1)
    if validate and rows.shape[0] > 0:
        _check_weights(weights, rows, sums)
    # Invalid weights that were not checked are made harmless here, so that nothing downstream
    # fails on the device.
    rows = rows.nan_to_num(0.0, 0.0, 0.0).clamp_(min=0.0)
    sums = rows.sum(-1, keepdim=True)
    return rows / torch.where(sums > 0, sums, 1.0), num_samples, weights.shape[:-1]


def _check_weights(weights: Tensor, rows: Tensor, sums: Tensor) -> None:
    """Raise unless the rows ``(R, N)`` (with their ``sums``) are finite, non-negative and sum
    to one, in that order; one read of the device."""
    # sqrt(eps) of the caller's dtype: loose enough for a float32 softmax over many particles,
    # tight enough to catch unnormalised weights.
    tol = math.sqrt(torch.finfo(weights.dtype).eps)
    err = (sums - 1).abs()
    finite, positive, normalised = torch.stack(
        [torch.isfinite(rows).all(), rows.amin() >= 0, err.amax() <= tol]
    ).tolist()
    if not finite:
        raise ValueError(
            f"weights must be finite, found {weights[~torch.isfinite(weights)][0].item()}"
        )
    if not positive:
        raise ValueError(f"weights must be non-negative, found {weights.min().item():.6g}")
    if not normalised:
        worst = int(err.argmax())
        raise ValueError(
            f"weights must sum to 1 along the last dimension (tolerance {tol:.2g}); "
            f"row {worst} sums to {sums[worst].item():.6g}"
        )


def _inverse_cdf(rows: Tensor, positions: Tensor) -> Tensor:
    """Ancestors ``i`` with ``cdf[i - 1] <= u < cdf[i]`` for sorted-or-not ``u`` in [0, 1).

    Parameters
    ----------
    rows : Tensor, shape (R, N)
        Normalised weights.
    positions : Tensor, shape (R, M)
        Uniform positions in [0, 1).

    Returns
    -------
    Tensor, shape (R, M), int64
    """
    cdf = rows.cumsum(-1)
    # Dividing by the last entry makes it exactly 1 and keeps the sequence monotone, so no
    # position can fall past the end; zero-weight particles own empty intervals and are never
    # chosen (searchsorted with right=True skips ties).
    cdf = cdf / cdf[:, -1:]
    below_one = torch.nextafter(
        torch.ones((), dtype=cdf.dtype, device=cdf.device), cdf.new_zeros(())
    )
    positions = positions.clamp(max=below_one)
    found = torch.searchsorted(cdf.contiguous(), positions.contiguous(), right=True)
    return found.clamp_(max=rows.shape[-1] - 1)  # in range even for invalid weights


_SHARED_DOC = """
    Parameters
    ----------
    weights : Tensor, shape (..., N)
        Non-negative weights summing to 1 over the last dimension.
    generator : torch.Generator, optional
        Source of randomness, on the device of ``weights``.
    num_samples : int, optional
        ``M``, the number of ancestors per row; defaults to ``N``.
    validate : bool
        Check that the weights are finite, non-negative and sum to one (one read of the
        device); off, invalid weights give arbitrary valid ancestors.

    Returns
    -------
    Tensor, shape (..., M), int64
        Ancestor indices into the last dimension of ``weights``{ordering}.
    """


def _resampler(sorted_output: bool) -> Callable[[_Scheme], Resampler]:
    """Turn a scheme on validated rows into a resampler with the shared signature.

    A scheme maps normalised rows ``(R, N)`` (working dtype, ``R >= 1``), the number of
    ancestors ``M`` and the generator to ancestors ``(R, M)``; validation, flattening and the
    output shape are done here once, and the signature is stamped onto the docstring (as
    BlackJAX does).
    """

    def wrap(scheme: _Scheme) -> Resampler:
        def resample(
            weights: Tensor,
            generator: torch.Generator | None = None,
            num_samples: int | None = None,
            validate: bool = True,
        ) -> Tensor:
            rows, m, batch_shape = _prepare(weights, num_samples, validate)
            if rows.shape[0] == 0:
                return torch.empty(*batch_shape, m, dtype=torch.int64, device=weights.device)
            return scheme(rows, m, generator).reshape(*batch_shape, m)

        ordering = ", sorted along the last dimension" if sorted_output else ""
        doc = (scheme.__doc__ or "").rstrip() + "\n" + _SHARED_DOC.format(ordering=ordering)
        resample.__name__, resample.__qualname__, resample.__doc__ = (
            scheme.__name__,
            scheme.__qualname__,
            doc,
        )
        resample.__module__ = scheme.__module__
        return resample

    return wrap


def _uniforms(rows: Tensor, m: int, generator: torch.Generator | None) -> Tensor:
    """``(R, m)`` uniforms in ``[0, 1)`` in the rows' dtype and device."""
    return torch.rand(rows.shape[0], m, generator=generator, dtype=rows.dtype, device=rows.device)


def _strata(rows: Tensor, m: int) -> Tensor:
    """``0, 1, ..., m - 1`` in the rows' dtype and device."""
    return torch.arange(m, dtype=rows.dtype, device=rows.device)


@_resampler(sorted_output=False)
def multinomial_resample(rows: Tensor, m: int, generator: torch.Generator | None) -> Tensor:
    """Multinomial resampling: ``M`` independent draws from the categorical ``weights``."""
    return _inverse_cdf(rows, _uniforms(rows, m, generator))


@_resampler(sorted_output=True)
def stratified_resample(rows: Tensor, m: int, generator: torch.Generator | None) -> Tensor:
    """Stratified resampling: one independent uniform in each stratum ``[j/M, (j+1)/M)``."""
    return _inverse_cdf(rows, (_strata(rows, m) + _uniforms(rows, m, generator)) / m)


@_resampler(sorted_output=True)
def systematic_resample(rows: Tensor, m: int, generator: torch.Generator | None) -> Tensor:
    """Systematic resampling: one uniform per row, shifted into each stratum ``[j/M, (j+1)/M)``.

    Each particle receives ``floor(M w_i)`` or ``ceil(M w_i)`` copies.
    """
    return _inverse_cdf(rows, (_strata(rows, m) + _uniforms(rows, 1, generator)) / m)


@_resampler(sorted_output=True)
def residual_resample(rows: Tensor, m: int, generator: torch.Generator | None) -> Tensor:
    """Residual resampling (Douc et al. 2005; paper eq. 39 and App. C.2).

    Particle ``i`` first gets ``floor(M w_i)`` deterministic copies; the ``R = M - sum_i
    floor(M w_i)`` remaining ancestors are drawn multinomially from the normalised residuals
    ``(M w_i - floor(M w_i)) / R``. (The paper's code took a softmax of the residuals instead,
    which is biased; this is the textbook scheme.)
    """
    n_rows, n = rows.shape
    scaled = m * rows
    copies = torch.floor(scaled)  # (R, N) deterministic copies
    residual = scaled - copies  # (R, N), each in [0, 1)
    n_left = (m - copies.sum(-1)).round().clamp(min=0)  # (R,), integer-valued

    # Residuals are each < 1, so a row never needs more than min(M, N) extra draws. Drawing that
    # many for every row (and masking the surplus) keeps the call free of host syncs and loops.
    n_draws = min(m, n)
    total = residual.sum(-1, keepdim=True)
    # Rows with no residual mass need no extra draws; give them a valid distribution anyway.
    probs = torch.where(
        total > 0, residual / total.clamp(min=torch.finfo(rows.dtype).tiny), 1.0 / n
    )
    draws = torch.multinomial(probs, n_draws, replacement=True, generator=generator)  # (R, D)
    used = torch.arange(n_draws, device=rows.device) < n_left.unsqueeze(-1)  # (R, D)
    counts = copies.scatter_add(1, draws, used.to(rows.dtype))  # (R, N)

    # Turn copy counts into sorted ancestor lists: output slot j belongs to the first particle
    # whose cumulative count exceeds j.
    ends = counts.cumsum(-1)
    slots = torch.arange(m, dtype=rows.dtype, device=rows.device).expand(n_rows, m)
    ancestors = torch.searchsorted(ends.contiguous(), slots.contiguous(), right=True)
    return ancestors.clamp(max=n - 1)


RESAMPLERS: dict[str, Resampler] = {
    "residual": residual_resample,
    "systematic": systematic_resample,
    "stratified": stratified_resample,
    "multinomial": multinomial_resample,
}


def get_resampler(name: str) -> Resampler:
    """Look up a resampler by name.

    Parameters
    ----------
    name : str
        One of ``"residual"``, ``"systematic"``, ``"stratified"``, ``"multinomial"``.

    Returns
    -------
    Resampler
        The function, with signature ``(weights, generator=None, num_samples=None,
        validate=True)``.
    """
    try:
        return RESAMPLERS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(RESAMPLERS))
        raise ValueError(f"unknown resampler {name!r}; valid names: {valid}") from None
