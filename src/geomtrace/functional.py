"""Pure functions on a spectrum: eigenspectrum, RankMe and alpha-ReQ.

No state and no framework beyond torch. The conventions follow the paper's scripts
(see ``docs/concepts.md``):

* eigenvalues sorted descending, tiny negative round-off clipped to 0 (never ``abs``),
  truncated to ``k = min(N, d, max_components)``;
* RankMe: ``p_i = lambda_i / sum_j lambda_j + eps`` (eps added to every p_i),
  ``RankMe = exp(-sum_i p_i log p_i)``;
* alpha-ReQ: weighted least squares of ``log lambda_r = -alpha log r + b`` over the
  1-based ranks ``r`` in ``fit_range`` (inclusive), weights ``1/r``; R^2 is the plain
  coefficient of determination of that fit in log space over the fit range. Only
  eigenvalues that can be non-zero enter the fit: ranks below ``N`` (a centred covariance of
  N rows has rank <= N - 1) and values above the accumulation's round-off floor
  (:func:`roundoff_floor`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from geomtrace._validate import OptionTypeError, Rule, as_int_pair, is_bool
from geomtrace._warnings import warn
from geomtrace.options import DEFAULT_EPS, DEFAULT_FIT_RANGE

_FLOAT = Rule("float")

# DEFAULT_FIT_RANGE (the paper's ranks 12..100) and DEFAULT_EPS are declared with the options.
#: A power-law fit on fewer points than this is not reported (NaN).
MIN_FIT_POINTS: int = 5

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_FIT_RANGE",
    "MIN_FIT_POINTS",
    "PowerLawFit",
    "alpha_req",
    "covariance_from_features",
    "eigenspectrum",
    "rankme",
    "roundoff_floor",
    "singular_spectrum",
    "unit_roundoff",
    "validate_eps",
    "validate_fit_range",
]


class PowerLawFit(NamedTuple):
    """Result of :func:`alpha_req`.

    Attributes:
        alpha: the decay exponent (``lambda_r ~ r^-alpha``); NaN if the fit was not possible.
        r2: coefficient of determination of the fit in log space over the fitted ranks.
        intercept: ``b`` in ``log lambda_r = -alpha log r + b``.
        ranks: the 1-based ranks that entered the fit (int64).
        fitted: the fitted eigenvalues ``exp(b) * ranks^-alpha`` at those ranks, for plots.
    """

    alpha: Tensor
    r2: Tensor
    intercept: Tensor
    ranks: Tensor
    fitted: Tensor


def _num_components(d: int, n_samples: int | None, max_components: int | None) -> int:
    k = d
    if n_samples is not None:
        k = min(k, int(n_samples))
    if max_components is not None:
        if max_components < 1:
            raise ValueError(f"max_components must be a positive integer or None, got {max_components}.")
        k = min(k, int(max_components))
    return max(k, 0)


def _check_square(matrix: Tensor, name: str) -> None:
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"`{name}` must be a square (d, d) matrix, got shape {tuple(matrix.shape)}.")
    if not matrix.is_floating_point():
        raise TypeError(f"`{name}` must be a floating point tensor, got {matrix.dtype}.")


def eigenspectrum(
    covariance: Tensor,
    max_components: int | None = None,
    n_samples: int | None = None,
) -> Tensor:
    """Eigenvalues of a symmetric covariance matrix, descending, clipped at 0, truncated.

    Args:
        covariance: ``(d, d)`` symmetric matrix. It is decomposed in float64.
        max_components: keep at most this many eigenvalues (``2048`` matches the paper's
            scripts, which keep at most 2048 PCA components). ``None`` keeps all.
        n_samples: the number of samples behind the covariance; the spectrum is truncated
            to ``min(N, d)`` components as a PCA of ``N`` samples would be.

    Returns:
        float64 tensor of ``k = min(N, d, max_components)`` eigenvalues, largest first.
    """
    _check_square(covariance, "covariance")
    if not bool(torch.isfinite(covariance).all()):
        raise ValueError(
            "covariance has NaN or Inf entries: its features were not finite or overflowed. "
            "Drop non-finite rows first (the metrics do) or rescale the features."
        )
    eigenvalues = torch.linalg.eigvalsh(covariance.to(torch.float64))
    # eigvalsh returns ascending order; round-off can make zero eigenvalues slightly
    # negative. Clip (never abs: a -1e-12 is a zero, not a 1e-12).
    eigenvalues = eigenvalues.flip(0).clamp_min(0.0)
    k = _num_components(covariance.shape[0], n_samples, max_components)
    return eigenvalues[:k]


def singular_spectrum(
    second_moment: Tensor,
    max_components: int | None = None,
    n_samples: int | None = None,
) -> Tensor:
    """Singular values of the uncentered feature matrix from its Gram ``sum x x^T``.

    This is the spectrum of the original RankMe (Garrido et al., ICML 2023):
    ``sigma_i = sqrt(eig(X^T X))`` with ``X`` *not* centered.
    """
    return eigenspectrum(second_moment, max_components=max_components, n_samples=n_samples).sqrt()


def _as_spectrum(values: Tensor) -> Tensor:
    if not isinstance(values, Tensor):
        raise TypeError(f"a spectrum must be a torch.Tensor, got {type(values).__name__}.")
    if values.ndim != 1:
        raise ValueError(f"Expected a 1-D spectrum, got shape {tuple(values.shape)}.")
    return values.to(torch.float64)


def validate_eps(eps: float) -> float:
    """Check RankMe's epsilon: a finite number >= 0 (a negative one can make some ``p_i`` < 0).

    Numpy scalars are taken as plain floats; a bool (``eps=True`` would be 1) and anything
    that is not a real number (a string, ``None``) raise ``TypeError``.
    """
    if is_bool(eps):
        raise OptionTypeError(
            f"eps must be a number, not a bool (got {eps!r}, which would be {int(eps)}): pass e.g. {DEFAULT_EPS:g}, "
            "the paper's value, or 0 to disable it."
        )
    try:
        value = float(_FLOAT.coerce("eps", eps))
    except OptionTypeError:
        raise OptionTypeError(f"eps must be a number >= 0 (the paper uses {DEFAULT_EPS:g}), got {eps!r}.") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"eps must be a finite number >= 0 (the paper uses {DEFAULT_EPS:g}; 0 disables it), got {eps!r}. "
            "A negative eps makes the smallest normalised eigenvalues negative and their log undefined."
        )
    return value


def rankme(spectrum: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """RankMe: the exponential of the entropy of the normalised spectrum.

    ``p_i = v_i / sum_j v_j + eps`` and ``RankMe = exp(-sum_i p_i log p_i)``. Pass
    covariance eigenvalues (the paper's convention) or singular values from
    :func:`singular_spectrum` (Garrido et al.). Scale-invariant. Returns a float64
    scalar; NaN when the spectrum is empty, not finite or sums to zero (zero variance).

    Example:
        A flat spectrum counts every dimension, a spike one, two equal values two:

        >>> import torch
        >>> from geomtrace.functional import rankme
        >>> [round(float(rankme(torch.tensor(v))), 3) for v in ([1.0, 1, 1, 1], [4.0, 0, 0, 0], [2.0, 2, 0, 0])]
        [4.0, 1.0, 2.0]
    """
    eps = validate_eps(eps)
    values = _as_spectrum(spectrum)
    total = values.sum()
    if values.numel() == 0 or not torch.isfinite(total) or total <= 0:
        return torch.tensor(math.nan, dtype=torch.float64, device=values.device)
    p = values / total + eps
    # 0 * log 0 = 0 (only reachable with eps = 0 and exact zeros).
    return torch.exp(-torch.special.xlogy(p, p).sum())


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit round-off ``u`` of a floating dtype: 2**-24 for fp32, 2**-53 for fp64, 2**-8 for bf16."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"expected a floating point dtype, got {dtype}.")
    return torch.finfo(dtype).eps / 2.0


def roundoff_floor(
    trace: float | Tensor,
    accumulation_dtype: torch.dtype = torch.float32,
    *,
    input_roundoff: float = 0.0,
    mean_norm_sq: float = 0.0,
    dim: int = 1,
    quantization: float | None = None,
) -> float:
    """Eigenvalues at or below this level are round-off, not spectrum: ``max(a, q)`` with

    * ``a = u_acc * trace(C)``, the error of the accumulation: ``u_acc`` is the unit round-off
      of the dtype the Gram matrix was accumulated in (2**-24 for fp32). An fp32 GEMM ``A^T A``
      has componentwise errors ``|E| <= gamma |A|^T |A|``, so ``||E||_2 <= gamma ||A||_F^2 =
      gamma (N - 1) trace(C)``: every eigenvalue carries an absolute error of about
      ``gamma trace(C)``. Measured on this route (blocked BLAS, fp32 windows of 32 batches),
      ``gamma < 0.1 u``; a genuine alpha = 3 power law still has ``lambda_100 ~ 14 u trace(C)``.
    * ``q = u_in^2 (trace(C) + |mean|^2) / d``, the quantization of the features themselves:
      rounding each value ``x`` to its dtype (``u_in``: 2**-8 for bf16, 2**-11 for fp16) adds
      a noise of variance up to ``(u_in x)^2 / 3`` per coordinate, about ``u_in^2 E[x^2] / 6``
      on average, to every direction (and is all a LayerNorm's null direction holds). ``q``
      is about 6 times that average, and negligible for fp32 features. ``quantization``, when
      given, replaces ``u_in^2 (trace(C) + |mean|^2)`` by a tighter total: the per-channel
      ``sum_j min(C_jj, u_in^2 (C_jj + mean_j^2))`` (a constant channel, however large, adds no
      rounding noise; see :func:`geomtrace.metrics.covariance_spectrum`).

    See ``docs/concepts.md`` ("Round-off and rank").
    """
    floor = float(trace) * unit_roundoff(accumulation_dtype)
    if input_roundoff > 0 and dim > 0:
        total = input_roundoff**2 * (float(trace) + float(mean_norm_sq)) if quantization is None else quantization
        floor = max(floor, total / dim)
    return floor


def alpha_req(
    eigenvalues: Tensor,
    fit_range: tuple[int, int] = DEFAULT_FIT_RANGE,
    *,
    n_samples: int | None = None,
    floor: float = 0.0,
) -> PowerLawFit:
    """Fit ``log lambda_r = -alpha log r + b`` by weighted least squares (weights ``1/r``).

    Args:
        eigenvalues: descending eigenvalues (e.g. from :func:`eigenspectrum`).
        fit_range: 1-based inclusive ranks ``(first, last)``; the paper uses ``(12, 100)``.
            The range is clipped to the eigenvalues that exist and can be non-zero.
        n_samples: the number of samples ``N`` behind a *centred* covariance: it has rank
            at most ``N - 1``, so ranks ``>= N`` are left out (their eigenvalues are round-off).
        floor: eigenvalues ``<= floor`` are treated as absent (round-off, see
            :func:`roundoff_floor`); the default keeps every positive eigenvalue.

    Returns:
        A :class:`PowerLawFit`. With fewer than :data:`MIN_FIT_POINTS` usable ranks (a short
        spectrum: N or d below the fit range's start, a small ``max_components``...), alpha,
        r2 and intercept are NaN and one :class:`~geomtrace.GeometryWarning` is emitted.
        It never raises for a short or empty spectrum.

    Example:
        An exact power law ``lambda_r = r ** -1.5`` over 200 ranks, fitted over ranks 12 to 100:

        >>> import torch
        >>> from geomtrace.functional import alpha_req
        >>> fit = alpha_req(torch.arange(1, 201) ** -1.5)
        >>> print(f"alpha {fit.alpha:.3f}, R^2 {fit.r2:.3f}, ranks {int(fit.ranks[0])}..{int(fit.ranks[-1])}")
        alpha 1.500, R^2 1.000, ranks 12..100
    """
    first, last = validate_fit_range(fit_range)
    values = _as_spectrum(eigenvalues)
    device = values.device
    stop = min(last, values.numel())
    if n_samples is not None:
        stop = min(stop, int(n_samples) - 1)
    stop = max(stop, first - 1)  # an empty range, never a negative-length arange
    ranks = torch.arange(first, stop + 1, device=device, dtype=torch.int64)
    selected = values[first - 1 : stop]
    # log(0) is undefined; exact zeros and round-off are rank deficiency, not decay.
    usable = (selected > max(float(floor), 0.0)) & torch.isfinite(selected)
    ranks, selected = ranks[usable], selected[usable]
    if ranks.numel() < MIN_FIT_POINTS:
        limits = [f"the spectrum has {values.numel()} values"]
        if n_samples is not None:
            limits.append(f"N = {int(n_samples)} samples give at most {max(int(n_samples) - 1, 0)} non-zero ones")
        if floor > 0:
            limits.append(f"{int((values > floor).sum())} lie above the round-off floor {floor:.3g}")
        warn(
            f"alpha-ReQ needs at least {MIN_FIT_POINTS} positive eigenvalues in ranks {first}..{last}, "
            f"found {ranks.numel()} ({'; '.join(limits)}). Use more probe samples (N > {last}), a wider "
            f"layer (d >= {last}), a larger max_components or a lower fit_range; alpha and R^2 are NaN."
        )
        nan = torch.tensor(math.nan, dtype=torch.float64, device=device)
        return PowerLawFit(nan, nan.clone(), nan.clone(), ranks, torch.full_like(selected, math.nan))

    x = torch.log(ranks.to(torch.float64))
    y = torch.log(selected)
    w = 1.0 / ranks.to(torch.float64)
    w_sum = w.sum()
    x_mean = (w * x).sum() / w_sum
    y_mean = (w * y).sum() / w_sum
    slope = (w * (x - x_mean) * (y - y_mean)).sum() / (w * (x - x_mean) ** 2).sum()
    intercept = y_mean - slope * x_mean
    prediction = intercept + slope * x
    residual = ((y - prediction) ** 2).sum()
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - residual / total if total > 0 else torch.tensor(1.0, dtype=torch.float64, device=device)
    return PowerLawFit(-slope, r2, intercept, ranks, torch.exp(prediction))


def validate_fit_range(fit_range: tuple[int, int]) -> tuple[int, int]:
    """Two 1-based ranks ``(first, last)``, ``1 <= first <= last``, as plain ints.

    Integral floats (``2.0``) and numpy ints are taken as ints; a float with a fractional part
    (``1.5`` would silently become 1) or a bool raises ``TypeError`` (an ``OptionTypeError``, also
    a ``ValueError``).
    """
    return as_int_pair("fit_range", fit_range, minimum=1, example="(12, 100), 1-based ranks")


_validate_fit_range = validate_fit_range  # the old name, still imported by tests


def covariance_from_features(features: Tensor) -> Tensor:
    """Two-pass float64 covariance ``(X - mean)^T (X - mean) / (N - 1)`` of ``(N, d)`` features.

    A straightforward reference route (it materialises a float64 copy of the features);
    the streaming metrics in :mod:`geomtrace.metrics` give the same result without it.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (N, d), got shape {tuple(features.shape)}.")
    x = features.to(torch.float64)
    centered = x - x.mean(0, keepdim=True)
    return centered.T @ centered / (x.shape[0] - 1)
