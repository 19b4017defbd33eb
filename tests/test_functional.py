"""geomtrace.functional against straightforward numpy implementations written here."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from geomtrace import GeometryWarning
from geomtrace import functional as F


def numpy_rankme(eigenvalues: np.ndarray, eps: float = 1e-7) -> float:
    p = eigenvalues / eigenvalues.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def numpy_alpha(eigenvalues: np.ndarray, first: int, last: int) -> tuple[float, float]:
    ranks = np.arange(first, min(last, len(eigenvalues)) + 1)
    y = np.log(eigenvalues[ranks - 1])
    x = np.log(ranks)
    w = 1.0 / ranks
    # Weighted normal equations for y = a x + b.
    design = np.stack([x, np.ones_like(x)], axis=1)
    lhs = design.T @ (design * w[:, None])
    rhs = design.T @ (w * y)
    slope, intercept = np.linalg.solve(lhs, rhs)
    prediction = slope * x + intercept
    r2 = 1 - ((y - prediction) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    return -float(slope), float(r2)


def test_eigenspectrum_sorted_clipped_and_truncated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 20))
    cov = np.cov(x, rowvar=False)
    expected = np.sort(np.linalg.eigvalsh(cov))[::-1].copy()
    got = F.eigenspectrum(torch.tensor(cov)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert F.eigenspectrum(torch.tensor(cov), max_components=5).shape == (5,)
    assert F.eigenspectrum(torch.tensor(cov), n_samples=7).shape == (7,)
    assert F.eigenspectrum(torch.tensor(cov), max_components=5, n_samples=3).shape == (3,)


def test_eigenspectrum_clips_negative_roundoff_to_zero_not_abs():
    # A rank-1 PSD matrix plus a tiny negative perturbation on the null space.
    v = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    cov = torch.outer(v, v) - 1e-12 * torch.eye(3, dtype=torch.float64)
    values = F.eigenspectrum(cov)
    assert values[0] > 13.9
    assert torch.all(values[1:] == 0)


def test_eigenspectrum_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        F.eigenspectrum(torch.zeros(3, 4))


@pytest.mark.parametrize("seed", [0, 1])
def test_rankme_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    values = np.sort(rng.exponential(size=64))[::-1].copy()
    assert float(F.rankme(torch.tensor(values))) == pytest.approx(numpy_rankme(values), rel=1e-12)


def test_rankme_is_scale_invariant_and_counts_equal_values():
    values = torch.ones(10, dtype=torch.float64)
    assert float(F.rankme(values)) == pytest.approx(10.0, rel=1e-5)
    assert float(F.rankme(values * 1e6)) == pytest.approx(float(F.rankme(values)), rel=1e-12)


def test_rankme_empty_or_zero_is_nan():
    assert math.isnan(float(F.rankme(torch.zeros(0))))
    assert math.isnan(float(F.rankme(torch.zeros(5))))


def test_singular_rankme_uses_uncentered_singular_values():
    rng = np.random.default_rng(3)
    x = rng.normal(loc=0.5, size=(200, 16))
    sigma = np.linalg.svd(x, compute_uv=False)
    got = F.rankme(F.singular_spectrum(torch.tensor(x.T @ x)))
    assert float(got) == pytest.approx(numpy_rankme(sigma), rel=1e-9)


@pytest.mark.parametrize("decay", [0.5, 1.0, 2.0])
def test_alpha_req_matches_numpy_weighted_fit(decay):
    rng = np.random.default_rng(int(decay * 10))
    ranks = np.arange(1, 201)
    values = ranks ** (-decay) * np.exp(rng.normal(scale=0.05, size=ranks.size))
    values = np.sort(values)[::-1].copy()
    fit = F.alpha_req(torch.tensor(values))
    alpha, r2 = numpy_alpha(values, 12, 100)
    assert float(fit.alpha) == pytest.approx(alpha, rel=1e-10)
    assert float(fit.r2) == pytest.approx(r2, rel=1e-10)
    assert fit.ranks[0] == 12 and fit.ranks[-1] == 100 and fit.fitted.shape == (89,)


def test_alpha_req_exact_power_law():
    values = torch.arange(1, 301, dtype=torch.float64) ** -1.3
    fit = F.alpha_req(values, fit_range=(5, 250))
    assert float(fit.alpha) == pytest.approx(1.3, rel=1e-12)
    assert float(fit.r2) == pytest.approx(1.0, abs=1e-12)


def test_alpha_req_clips_range_and_nan_with_warning_when_too_short():
    values = torch.arange(1, 40, dtype=torch.float64) ** -1.0
    fit = F.alpha_req(values)  # ranks 12..39 exist
    assert fit.ranks[-1] == 39
    with pytest.warns(GeometryWarning, match="at least 5"):
        short = F.alpha_req(torch.arange(1, 15, dtype=torch.float64) ** -1.0)
    assert math.isnan(float(short.alpha)) and math.isnan(float(short.r2))


def test_alpha_req_skips_zero_eigenvalues():
    values = torch.cat([torch.arange(1, 51, dtype=torch.float64) ** -1.0, torch.zeros(60, dtype=torch.float64)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = F.alpha_req(values)
    assert fit.ranks[-1] == 50
    assert float(fit.alpha) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("bad", [(0, 10), (20, 10), ("a", 3), (1,)])
def test_alpha_req_rejects_bad_fit_range(bad):
    with pytest.raises(ValueError, match="fit_range"):
        F.alpha_req(torch.ones(10), fit_range=bad)


def test_covariance_from_features_matches_numpy():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 6))
    np.testing.assert_allclose(F.covariance_from_features(torch.tensor(x)).numpy(), np.cov(x, rowvar=False), rtol=1e-12)


# ------------------------------------------------------------- short spectra, round-off rule
@pytest.mark.parametrize(
    ("length", "fit_range", "n_samples"),
    [
        (0, (12, 100), None),
        (3, (12, 100), None),
        (11, (12, 100), None),
        (12, (12, 100), None),
        (40, (50, 100), None),
        (200, (12, 100), 10),
        (200, (12, 100), 1),
    ],
    ids=["empty", "d3", "d11", "d12", "start-beyond-d", "N10", "N1"],
)
def test_alpha_req_on_short_spectra_is_nan_with_one_warning_never_an_error(length, fit_range, n_samples):
    values = torch.arange(1, length + 1, dtype=torch.float64) ** -1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = F.alpha_req(values, fit_range, n_samples=n_samples)
    assert math.isnan(float(fit.alpha)) and math.isnan(float(fit.r2)) and math.isnan(float(fit.intercept))
    assert [w.category for w in caught] == [GeometryWarning]
    assert "at least 5" in str(caught[0].message) and "alpha and R^2 are NaN" in str(caught[0].message)


def test_alpha_req_leaves_out_ranks_of_n_and_beyond_and_values_at_the_floor():
    values = torch.arange(1, 201, dtype=torch.float64) ** -1.0
    assert F.alpha_req(values, n_samples=41).ranks[-1] == 40  # rank <= N - 1
    floor = float(values[59])  # the 60th value and all smaller ones are "round-off"
    fit = F.alpha_req(values, floor=floor)
    assert fit.ranks[-1] == 59 and float(fit.alpha) == pytest.approx(1.0, rel=1e-12)
    untouched = F.alpha_req(values, floor=float(values[-1]) / 2)
    assert untouched.ranks[-1] == 100


def test_roundoff_floor_is_the_unit_roundoff_of_the_accumulation_times_the_trace():
    assert F.roundoff_floor(3.0, torch.float32) == pytest.approx(3.0 * 2.0**-24, rel=1e-15)
    assert F.roundoff_floor(3.0, torch.float64) == pytest.approx(3.0 * 2.0**-53, rel=1e-15)
    # quantized inputs: u_in^2 (trace + |mean|^2) / d when that is larger
    bf16 = F.unit_roundoff(torch.bfloat16)
    assert bf16 == 2.0**-8
    assert F.roundoff_floor(3.0, input_roundoff=bf16, mean_norm_sq=61.0, dim=4) == pytest.approx(bf16**2 * 16.0)
    assert F.roundoff_floor(3.0, input_roundoff=2.0**-24, mean_norm_sq=61.0, dim=4) == pytest.approx(3.0 * 2.0**-24)
    with pytest.raises(TypeError, match="floating point"):
        F.roundoff_floor(1.0, torch.int64)


@pytest.mark.parametrize("eps", [-1e-7, float("nan"), float("inf")])
def test_rankme_rejects_a_bad_eps(eps):
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        F.rankme(torch.ones(4), eps=eps)
    with pytest.raises(TypeError, match="eps must be a number"):
        F.rankme(torch.ones(4), eps="small")


@pytest.mark.parametrize("eps", [True, False, np.bool_(True)])
def test_rankme_rejects_a_bool_eps(eps):
    # eps=True used to run with eps = 1.
    with pytest.raises(TypeError, match="eps must be a number, not a bool"):
        F.rankme(torch.ones(4), eps=eps)
    with pytest.raises(TypeError, match="eps must be a number"):
        F.rankme(torch.ones(4), eps="1e-7")  # a numeric string is not a number either


def test_rankme_takes_numpy_and_int_eps_as_plain_floats():
    assert F.validate_eps(np.float32(1e-7)) == 1e-7
    assert F.validate_eps(np.float64(0.5)) == 0.5
    assert F.validate_eps(0) == 0.0 and type(F.validate_eps(0)) is float


@pytest.mark.parametrize("bad", [(1.5, 10), (12, 99.5), (True, 10), (1, False)])
def test_alpha_req_rejects_a_fractional_or_bool_fit_range(bad):
    # (1.5, 10) used to become (1, 10) silently.
    with pytest.raises(TypeError, match=r"fit_range\[\d\] must be an int"):
        F.alpha_req(torch.ones(10), fit_range=bad)


def test_alpha_req_takes_integral_floats_and_numpy_ints_in_fit_range():
    values = torch.arange(1, 41, dtype=torch.float64) ** -1.0
    reference = F.alpha_req(values, fit_range=(2, 30))
    for given in [(2.0, 30.0), (np.int64(2), np.int32(30)), np.array([2, 30])]:
        fit = F.alpha_req(values, fit_range=given)
        assert fit.ranks.tolist() == reference.ranks.tolist()
        assert float(fit.alpha) == float(reference.alpha)
    assert F._validate_fit_range((np.int64(2), 30.0)) == (2, 30)
    assert all(type(v) is int for v in F._validate_fit_range((np.int64(2), 30.0)))


def test_rankme_with_eps_zero_counts_exact_zeros_as_nothing():
    values = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    assert float(F.rankme(values, eps=0.0)) == pytest.approx(2.0, rel=1e-12)


def test_eigenspectrum_rejects_a_non_finite_covariance_clearly():
    cov = torch.eye(3, dtype=torch.float64)
    cov[0, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        F.eigenspectrum(cov)
