"""RankMe / AlphaReQ / EigenSpectrum metrics: accuracy, streaming, torchmetrics behaviour."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from torchmetrics import MetricCollection

from geomtrace import AlphaReQ, EigenSpectrum, Geometry, GeometryWarning, RankMe
from geomtrace import functional as F
from geomtrace.covariance import CovarianceAccumulator


def reference_spectrum(x: np.ndarray) -> np.ndarray:
    """Float64 two-pass covariance eigenvalues, descending."""
    centered = x - x.mean(0, keepdims=True)
    cov = centered.T @ centered / (x.shape[0] - 1)
    return np.sort(np.clip(np.linalg.eigvalsh(cov), 0, None))[::-1].copy()


def reference_rankme(values: np.ndarray) -> float:
    p = values / values.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def spectrum_features(n: int, d: int, decay: float, seed: int, offset: float = 0.0) -> torch.Tensor:
    """Gaussian features whose covariance eigenvalues fall as k^-decay, in a random basis."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.arange(1, d + 1, dtype=torch.float64) ** (-decay / 2)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    z = torch.randn(n, d, generator=gen, dtype=torch.float64) * scales
    return (z @ basis.T + offset).to(torch.float32)


def collection() -> MetricCollection:
    return MetricCollection({"rankme": RankMe(), "alpha": AlphaReQ(), "spectrum": EigenSpectrum()})


# ----------------------------------------------------------------- accuracy (issue item 6)
def test_large_mean_offset_matches_float64_reference():
    d, n = 256, 4096
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(n, d, generator=gen) * torch.linspace(0.2, 2.0, d) + 1e4).to(torch.float32)
    reference = reference_spectrum(x.double().numpy())
    metrics = collection()
    for batch in x.split(512):
        metrics.update(batch)
    out = metrics.compute()
    np.testing.assert_allclose(out["spectrum"][:50].numpy(), reference[:50], rtol=1e-5)
    assert float(out["rankme"]) == pytest.approx(reference_rankme(reference), rel=1e-6)
    assert torch.all(out["spectrum"] >= 0)


@pytest.mark.parametrize("decay", [0.5, 1.0, 2.0])
def test_alpha_recovers_power_law_decay(decay):
    d = 256
    x = spectrum_features(20 * d, d, decay, seed=int(decay * 4))
    metric = AlphaReQ()
    metric.update(x)
    assert float(metric.compute()["alpha"]) == pytest.approx(decay, rel=0.02)


def test_rankme_isotropic_gaussian_is_close_to_d():
    d = 64
    metric = RankMe()
    metric.update(torch.randn(200 * d, d, generator=torch.Generator().manual_seed(1)))
    assert float(metric.compute()) == pytest.approx(d, rel=0.02)


def test_batching_does_not_change_results():
    x = spectrum_features(700, 128, 1.0, seed=2, offset=3.0)
    results = []
    for batch_size in (1, 7, 700):
        metrics = collection()
        for batch in x.split(batch_size):
            metrics.update(batch)
        results.append(metrics.compute())
    for other in results[1:]:
        for key in ("rankme", "alpha", "r2"):
            assert float(other[key]) == pytest.approx(float(results[0][key]), rel=1e-6)
        np.testing.assert_allclose(other["spectrum"][:50].numpy(), results[0]["spectrum"][:50].numpy(), rtol=1e-6)


def test_singular_rankme_matches_svd_of_uncentered_features():
    x = spectrum_features(500, 32, 1.0, seed=4, offset=0.3).double()
    metric = RankMe(spectrum="singular")
    metric.update(x)
    sigma = np.linalg.svd(x.numpy(), compute_uv=False)
    assert float(metric.compute()) == pytest.approx(reference_rankme(sigma), rel=1e-8)


def test_float64_input_stays_float64_and_matches_reference():
    x = spectrum_features(300, 16, 1.0, seed=5).double() * 1.7
    metric = EigenSpectrum()
    metric.update(x)
    np.testing.assert_allclose(metric.compute().numpy(), reference_spectrum(x.numpy()), rtol=1e-10)


def test_max_components_truncates():
    x = torch.randn(500, 64)
    metric = EigenSpectrum(max_components=10)
    metric.update(x)
    assert metric.compute().shape == (10,)
    few = EigenSpectrum()
    few.update(x[:20])
    assert few.compute().shape == (20,)  # k = min(N, d)


# ---------------------------------------------------------------- inputs and validation
def test_accepts_any_leading_shape_half_precision_and_mask():
    x = torch.randn(4, 25, 32)
    mask = torch.rand(4, 25) > 0.3
    full = RankMe()
    full.update(x[mask])
    masked = RankMe()
    masked.update(x.to(torch.bfloat16).float(), mask=mask)  # same values as bf16-rounded input below
    bf16 = RankMe()
    bf16.update(x.to(torch.bfloat16), mask=mask)
    assert float(masked.n_samples) == int(mask.sum())
    assert float(bf16.compute()) == pytest.approx(float(masked.compute()), rel=1e-6)
    assert float(full.compute()) == pytest.approx(float(masked.compute()), rel=1e-2)


def test_nan_rows_are_dropped_counted_and_warned_once():
    x = torch.randn(100, 8)
    x[3, 1] = float("nan")
    x[10, 0] = float("inf")
    metric = RankMe()
    with pytest.warns(GeometryWarning, match="dropped 2"):
        metric.update(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.update(x[:5].clone().fill_(float("nan")))  # second time: no new warning
    assert float(metric.n_samples) == 98
    assert float(metric.n_dropped) == 7
    clean = RankMe()
    clean.update(torch.cat([x[:3], x[4:10], x[11:]]))
    assert float(metric.compute()) == pytest.approx(float(clean.compute()), rel=1e-10)


def test_strict_raises_on_nan_rows():
    x = torch.randn(10, 4)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        RankMe(strict=True).update(x)


@pytest.mark.parametrize(
    ("features", "error", "match"),
    [
        (torch.ones(4, 3, dtype=torch.long), TypeError, "floating point"),
        (torch.ones(4, 0), ValueError, "zero-sized"),
        ([[1.0, 2.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_errors(features, error, match):
    with pytest.raises(error, match=match):
        RankMe().update(features)


def test_dimension_change_and_bad_mask_errors():
    metric = RankMe()
    metric.update(torch.randn(5, 4))
    with pytest.raises(ValueError, match="dimension changed from 4 to 5"):
        metric.update(torch.randn(5, 5))
    with pytest.raises(ValueError, match="mask must have shape"):
        metric.update(torch.randn(5, 4), mask=torch.ones(4, dtype=torch.bool))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="spectrum"):
        RankMe(spectrum="svd")
    with pytest.raises(ValueError, match="max_components"):
        RankMe(max_components=0)
    with pytest.raises(ValueError, match="fit_range"):
        AlphaReQ(fit_range=(10, 5))


def test_too_few_samples_gives_nan_with_one_warning_not_an_exception():
    metric = MetricCollection({"rankme": RankMe(), "alpha": AlphaReQ()})
    metric.update(torch.randn(1, 8))
    with pytest.warns(GeometryWarning, match="at least 2 samples"):
        out = metric.compute()
    assert math.isnan(float(out["rankme"])) and math.isnan(float(out["alpha"]))
    short = AlphaReQ()
    short.update(torch.randn(50, 15))  # only 15 eigenvalues: ranks 12..15
    with pytest.warns(GeometryWarning, match="at least 5 positive eigenvalues"):
        assert math.isnan(float(short.compute()["alpha"]))
    empty = EigenSpectrum()
    with pytest.warns(GeometryWarning):
        assert empty.compute().numel() == 0


# ------------------------------------------------------------ torchmetrics behaviour
def test_collection_forms_one_compute_group_and_matches_separate_metrics():
    x = torch.randn(600, 128)
    metrics = collection()
    metrics.update(x[:300])
    metrics.update(x[300:])
    assert [sorted(g) for g in metrics.compute_groups.values()] == [["alpha", "rankme", "spectrum"]]
    out = metrics.compute()
    alone = RankMe()
    alone.update(x)
    assert float(out["rankme"]) == pytest.approx(float(alone.compute()), rel=1e-6)
    assert set(out) == {"rankme", "alpha", "r2", "spectrum"}


def test_reset_restores_empty_state():
    metric = RankMe()
    metric.update(torch.randn(10, 4))
    metric.reset()
    assert metric.dim is None and float(metric.n_samples) == 0
    metric.update(torch.randn(10, 6))  # a new dimension is fine after reset
    assert metric.dim == 6


def test_state_dict_round_trip_mid_accumulation_continues_exactly():
    x = torch.randn(400, 32)
    first = RankMe()
    first.update(x[:150])
    state = first.state_dict()
    resumed = RankMe()
    resumed.load_state_dict(state)
    resumed.update(x[150:])
    straight = RankMe()
    straight.update(x[:150])
    straight.update(x[150:])
    assert float(resumed.compute()) == pytest.approx(float(straight.compute()), rel=1e-12)
    assert {"n_samples", "feature_sum", "second_moment", "n_dropped", "pending_m2"} <= set(state)


def test_pickle_round_trip():
    metric = AlphaReQ(fit_range=(2, 30))
    metric.update(torch.randn(200, 64))
    clone = pickle.loads(pickle.dumps(metric))
    assert clone.fit_range == (2, 30)
    assert float(clone.compute()["alpha"]) == pytest.approx(float(metric.compute()["alpha"]), rel=1e-12)


def test_merge_state_sums_moments():
    x = torch.randn(300, 16)
    a, b, whole = RankMe(), RankMe(), RankMe()
    a.update(x[:100])
    b.update(x[100:])
    whole.update(x)
    a.merge_state(b)
    assert float(a.compute()) == pytest.approx(float(whole.compute()), rel=1e-6)
    empty = RankMe()
    empty.merge_state(whole)
    assert float(empty.compute()) == pytest.approx(float(whole.compute()), rel=1e-12)


def test_works_under_no_grad_autocast_and_with_grad_inputs():
    layer = torch.nn.Linear(32, 32)
    x = torch.randn(200, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = layer(x)
        assert features.dtype == torch.bfloat16
        metric = RankMe()
        metric.update(features)
        value = metric.compute()
    with torch.no_grad():
        again = RankMe()
        again.update(features)
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(float(again.compute()), rel=1e-6)
    assert not metric.second_moment.requires_grad


def test_to_device_and_dtype_of_states():
    metric = RankMe().to("cpu")
    metric.update(torch.randn(50, 8))
    assert metric.second_moment.dtype == torch.float64
    assert metric.second_moment.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; the CPU path is tested above")
def test_cuda_matches_cpu():
    x = spectrum_features(2000, 256, 1.0, seed=9, offset=100.0)
    cpu, gpu = collection(), collection().to("cuda")
    cpu.update(x)
    gpu.update(x.cuda())
    a, b = cpu.compute(), gpu.compute()
    assert b["rankme"].device.type == "cuda"
    assert float(b["rankme"]) == pytest.approx(float(a["rankme"]), rel=1e-5)
    assert float(b["alpha"]) == pytest.approx(float(a["alpha"]), rel=1e-5)


def test_covariance_accumulator_matches_reference_and_merges():
    x = spectrum_features(300, 12, 1.0, seed=11, offset=50.0)
    acc, left, right = CovarianceAccumulator(), CovarianceAccumulator(), CovarianceAccumulator()
    acc.update(x)
    left.update(x[:100])
    right.update(x[100:])
    left.merge(right)
    reference = F.covariance_from_features(x.double())
    torch.testing.assert_close(acc.covariance(), reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(left.covariance(), reference, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="no features"):
        CovarianceAccumulator().covariance()


def test_deferred_fold_matches_direct_accumulation_across_many_batches():
    # More batches than fold_every, so updates fold mid-stream and leave a remainder.
    x = spectrum_features(3000, 64, 1.0, seed=12, offset=1e3)
    metric = EigenSpectrum()
    for batch in x.split(40):  # 75 batches: two folds plus 11 pending
        metric.update(batch)
    assert 0 < float(metric.pending_count) < metric.fold_every
    acc = CovarianceAccumulator()
    acc.update(x)
    expected = F.eigenspectrum(acc.covariance(), n_samples=3000)
    torch.testing.assert_close(metric.compute()[:30], expected[:30], rtol=1e-6, atol=0)


# ------------------------------------------------------- hardening: round-off and rank (issue 9)
def power_law_features(n: int, d: int, decay: float, seed: int, layer_norm: bool = False) -> torch.Tensor:
    """fp32 features with eigenvalues ~ k^-decay in a random basis, optionally LayerNorm'd."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.arange(1, d + 1, dtype=torch.float32) ** (-decay / 2)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    x = (torch.randn(n, d, generator=gen) * scales) @ basis.T + 0.5
    if layer_norm:
        weight, bias = 1 + 0.2 * torch.randn(d, generator=gen), 0.1 * torch.randn(d, generator=gen)
        x = torch.nn.functional.layer_norm(x, (d,), weight, bias)
    return x


def reference_fit(x: torch.Tensor, last: int) -> F.PowerLawFit:
    """alpha of the float64 two-pass spectrum over ranks 12..last, no floor."""
    values = torch.from_numpy(reference_spectrum(x.double().numpy()))
    return F.alpha_req(values, (12, last))


def streamed(metric, x: torch.Tensor, batch: int = 1024):
    for rows in x.split(batch):
        metric.update(rows)
    return metric


@pytest.mark.parametrize(("d", "n", "decay"), [(1024, 2048, 3.0), (512, 1024, 1.0), (256, 4096, 2.0), (256, 2048, 0.5)])
def test_roundoff_rule_keeps_genuine_power_law_tails(d, n, decay):
    # alpha = 3 puts lambda_100 at ~1e-6 of lambda_1: the rule must not take it for round-off.
    x = power_law_features(n, d, decay, seed=d + n)
    fit = streamed(AlphaReQ(), x).compute_fit()
    assert int(fit.ranks[0]) == 12 and int(fit.ranks[-1]) == 100 and fit.ranks.numel() == 89
    assert float(fit.alpha) == pytest.approx(float(reference_fit(x, 100).alpha), rel=1e-5)


@pytest.mark.parametrize(
    ("d", "n", "dtype", "offset"),
    [
        (64, 160, torch.float32, 0.0),
        (64, 1000, torch.float32, 0.0),
        (128, 30, torch.float32, 0.0),
        (128, 50, torch.float32, 0.0),
        (64, 1000, torch.bfloat16, 5.0),
    ],
    ids=["d64-N160", "d64-N1000", "d128-N30", "d128-N50", "bf16-d64-mean5"],
)
def test_roundoff_rule_drops_the_null_eigenvalues_of_layernorm_and_n_below_d(d, n, dtype, offset):
    # LayerNorm'd rows span d - 1 dimensions and N centred rows N - 1: what lies beyond is
    # fp32 round-off (~1e-9 of lambda_1, or exactly 0) and used to swing alpha (issue 9). In
    # bf16 features with a mean, it is bf16 quantization (~5e-6 of lambda_1 here).
    x = (power_law_features(n, d, 1.0, seed=7, layer_norm=True) + offset).to(dtype)
    last = min(n - 1, d - 1)
    fit = streamed(AlphaReQ(), x).compute_fit()
    assert int(fit.ranks[-1]) == last
    assert float(fit.alpha) == pytest.approx(float(reference_fit(x.float(), last).alpha), rel=1e-5)


def test_alpha_of_layernorm_features_is_stable_under_tiny_changes():
    x = power_law_features(160, 64, 1.0, seed=3, layer_norm=True)
    alphas = []
    for seed in range(6):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + seed))
        alphas.append(float(streamed(AlphaReQ(), x * (1 + 1e-6 * noise)).compute()["alpha"]))
    assert max(alphas) - min(alphas) < 1e-4 * abs(alphas[0])


def test_rankme_keeps_the_reference_convention_with_roundoff_eigenvalues():
    x = power_law_features(160, 64, 1.0, seed=5, layer_norm=True)
    reference = reference_spectrum(x.double().numpy())  # k = min(N, d) = 64 values, eps on each
    assert float(streamed(RankMe(), x).compute()) == pytest.approx(reference_rankme(reference), rel=1e-6)


@pytest.mark.parametrize(
    ("n", "d", "options"),
    [(8, 64, {}), (100, 10, {}), (100, 64, {"max_components": 10}), (200, 40, {"fit_range": (50, 100)})],
    ids=["N8", "d10", "max_components10", "fit-start-beyond-d"],
)
def test_short_spectra_give_nan_alpha_with_one_warning_and_keep_rankme_and_spectrum(n, d, options):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n + d))
    metric = Geometry(**options)
    metric.update(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = metric.compute()
    assert [w.category for w in caught] == [GeometryWarning]
    assert math.isnan(float(out["alpha"])) and math.isnan(float(out["r2"]))
    assert 1.0 < float(out["rankme"]) <= min(n, d, options.get("max_components", d)) + 1e-3
    assert out["eigenvalues"].numel() == min(n, d, options.get("max_components", d))
    assert torch.isfinite(out["eigenvalues"]).all()


# --------------------------------------------------------- hardening: cancellation (issue 9)
def extreme_offset_features(n: int = 3000, d: int = 48, mean: float = 1e6, std: float = 0.01) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 2.0, d, dtype=torch.float64)
    return spread * std + mean


@pytest.mark.parametrize("batch", [100, 3000])
def test_extreme_mean_to_spread_ratio_does_not_cancel(batch):
    # (mean/std)^2 = 1e16 ~ 1/eps(fp64): S - s s^T/n around 0 loses every digit (RankMe 18.7
    # instead of 25.6 in issue 9); around the first batch's mean it loses none.
    x = extreme_offset_features()
    reference = reference_spectrum(x.numpy())
    metric = streamed(Geometry(), x, batch)
    out = metric.compute()
    assert float(out["rankme"]) == pytest.approx(reference_rankme(reference), rel=1e-8)
    np.testing.assert_allclose(out["eigenvalues"][:20].numpy(), reference[:20], rtol=1e-7)


def test_merge_state_and_forward_combine_sums_around_different_shifts():
    x = extreme_offset_features()
    x[1500:] += 0.05  # the second part's first batch mean (its shift) differs
    reference = reference_rankme(reference_spectrum(x.numpy()))
    left, right = streamed(RankMe(), x[:1500], 100), streamed(RankMe(), x[1500:], 100)
    left.merge_state(right)
    assert float(left.compute()) == pytest.approx(reference, rel=1e-8)
    empty = RankMe()
    empty.merge_state(left)
    assert float(empty.compute()) == pytest.approx(reference, rel=1e-8)
    forwarded = RankMe()
    for rows in x.split(500):
        batch_value = forwarded(rows)
        alone = RankMe()
        alone.update(rows)
        assert float(batch_value) == pytest.approx(float(alone.compute()), rel=1e-10)  # forward = this batch
    assert float(forwarded.compute()) == pytest.approx(reference, rel=1e-8)  # compute = everything


# ------------------------------------------------- hardening: degenerate features (issue 9)
@pytest.mark.parametrize(
    ("n", "d", "dtype", "batch"),
    [
        (100, 8, torch.float32, 100),
        (1000, 64, torch.float32, 64),
        (5, 3, torch.float64, 5),
        (3000, 256, torch.bfloat16, 700),
    ],
)
def test_zero_variance_is_nan_with_one_warning_whatever_the_size_and_dtype(n, d, dtype, batch):
    row = torch.randn(d, generator=torch.Generator().manual_seed(d)) * 3 + 0.7
    x = row.expand(n, d).to(dtype)
    geometry, rankme, spectrum = (streamed(m, x, batch) for m in (Geometry(), RankMe(), EigenSpectrum()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, value, values = geometry.compute(), rankme.compute(), spectrum.compute()
    messages = [str(w.message) for w in caught if w.category is GeometryWarning]
    assert len(messages) == 3 and all("zero variance" in m for m in messages)  # one per metric
    assert math.isnan(float(out["rankme"])) and math.isnan(float(out["alpha"])) and math.isnan(float(value))
    assert torch.equal(values, torch.zeros(min(n, d), dtype=torch.float64))
    assert torch.equal(out["eigenvalues"], values)


@pytest.mark.parametrize("scale", [1e-30, 1e-40, 1e30], ids=["tiny", "subnormal", "huge"])
def test_rankme_is_scale_invariant_at_extreme_fp32_magnitudes(scale):
    # fp32 products of 1e-30 underflow and of 1e30 overflow: the GEMM runs on the features
    # scaled by an exact power of two, the float64 sums stay in the features' units.
    x = (spectrum_features(2000, 48, 1.0, seed=21).double() * scale).float()
    reference = reference_spectrum(x.double().numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = streamed(Geometry(), x, 300).compute()
    assert float(out["rankme"]) == pytest.approx(reference_rankme(reference), rel=1e-6)
    np.testing.assert_allclose(out["eigenvalues"][:10].numpy(), reference[:10], rtol=1e-5)


def test_magnitude_jumps_between_batches_stay_exact():
    x = spectrum_features(3000, 48, 1.0, seed=22)
    parts = [x[:1000], x[1000:2000] * 1e25, x[2000:2600] * 1e-25, x[2600:]]
    metric = RankMe()
    for part in parts:
        for rows in part.split(200):
            metric.update(rows)
    reference = reference_rankme(reference_spectrum(torch.cat(parts).double().numpy()))
    assert float(metric.compute()) == pytest.approx(reference, rel=1e-6)


def test_float64_overflow_is_nan_with_a_warning_not_a_linalg_error():
    metric = Geometry()
    metric.update(torch.randn(50, 4, dtype=torch.float64) * 1e200)
    with pytest.warns(GeometryWarning, match="overflowed float64"):
        out = metric.compute()
    assert math.isnan(float(out["rankme"])) and math.isnan(float(out["alpha"]))


# ----------------------------------------------------------- hardening: messages (issue 9)
def test_masks_must_be_boolean_or_zero_one():
    x = torch.randn(4, 25, 8)
    with pytest.raises(TypeError, match="mask must be a torch.Tensor of booleans"):
        RankMe().update(x, mask=[[True] * 25] * 4)
    with pytest.raises(ValueError, match=r"0/1 like an attention mask.*mask > 0.5"):
        RankMe().update(x, mask=torch.rand(4, 25))
    attention = (torch.rand(4, 25) > 0.3).long()  # an attention mask: 0/1 integers
    as_ints, as_bools = RankMe(), RankMe()
    as_ints.update(x, mask=attention)
    as_bools.update(x, mask=attention.bool())
    assert float(as_ints.n_samples) == int(attention.sum())
    assert float(as_ints.compute()) == float(as_bools.compute())


@pytest.mark.parametrize("make", [lambda: RankMe(eps=-1e-7), lambda: Geometry(eps=-1.0)])
def test_negative_eps_is_a_clear_error(make):
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        make()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RankMe(eps=True), "eps must be a number, not a bool"),
        (lambda: Geometry(eps=True), "eps must be a number, not a bool"),
        (lambda: AlphaReQ(fit_range=(1.5, 10)), r"fit_range\[0\] must be an int"),
        (lambda: Geometry(fit_range=(2, 10.5)), r"fit_range\[1\] must be an int"),
    ],
)
def test_bool_eps_and_fractional_fit_range_are_type_errors(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_metrics_store_numpy_options_as_plain_python():
    metric = Geometry(eps=np.float32(1e-6), fit_range=(np.int64(2), 20.0))
    assert metric.eps == 1e-6 and type(metric.eps) is float
    assert metric.fit_range == (2, 20) and all(type(v) is int for v in metric.fit_range)
    assert AlphaReQ(fit_range=np.array([3, 30])).fit_range == (3, 30)


def test_dtype_changes_keep_float64_states_and_set_dtype_sets_the_result_dtype():
    x = torch.randn(300, 16)
    plain = RankMe()
    plain.update(x[:150])
    plain.update(x[150:])
    for convert in (lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.to(torch.float32)):
        metric = convert(RankMe())
        metric.update(x[:150])
        metric = convert(metric)
        metric.update(x[150:])
        assert metric.second_moment.dtype == torch.float64 and metric.feature_sum.dtype == torch.float64
        assert float(metric.compute()) == pytest.approx(float(plain.compute()), rel=1e-10)
    low = RankMe().set_dtype(torch.float32)
    low.update(x)
    assert low.second_moment.dtype == torch.float64
    assert low.compute().dtype == torch.float32
    assert float(low.compute()) == pytest.approx(float(plain.compute()), rel=1e-6)
    with pytest.raises(ValueError, match="floating point dtype"):
        RankMe().set_dtype(torch.int64)


def test_meta_device_gets_a_clear_message_and_can_be_materialised():
    with torch.device("meta"):
        metric = RankMe()
    with pytest.raises(RuntimeError, match="meta device"):
        metric.update(torch.randn(10, 4))
    metric = metric.to_empty(device="cpu")
    metric.update(torch.randn(100, 4))
    assert 1.0 < float(metric.compute()) <= 4.0
    with pytest.raises(ValueError, match="meta device"):
        RankMe().update(torch.randn(10, 4, device="meta"))


def test_all_nan_input_gives_d_nans_as_documented():
    metric = EigenSpectrum()
    with pytest.warns(GeometryWarning):
        metric.update(torch.full((10, 5), float("nan")))
        out = metric.compute()
    assert out.shape == (5,) and torch.isnan(out).all()


def test_state_dict_saved_before_the_shift_existed_still_loads():
    x = spectrum_features(400, 16, 1.0, seed=23, offset=5.0)
    first = RankMe()
    first.update(x[:200])
    # The old format: sums around 0 and no shift / window scale.
    from geomtrace.covariance import moments_of

    moments = moments_of(first)  # folds: nothing pending
    old = first.state_dict()
    old["feature_sum"] = moments.total + moments.n * moments.shift
    old["second_moment"] = moments.gram()
    del old["shift"], old["pending_scale"]
    resumed = RankMe()
    resumed.load_state_dict(old)
    resumed.update(x[200:])
    straight = RankMe()
    straight.update(x)
    # sums around 0 at offset 5 carry ~1e-8 of cancellation: the old format's own precision
    assert float(resumed.compute()) == pytest.approx(float(straight.compute()), rel=1e-6)


# ---------------------------------------------------------------------- Geometry (issue 12)
def test_geometry_equals_the_single_purpose_metrics_and_forms_one_compute_group():
    x = spectrum_features(900, 128, 1.0, seed=24, offset=2.0)
    metrics = MetricCollection(
        {"geometry": Geometry(), "rankme": RankMe(), "alpha": AlphaReQ(), "spectrum": EigenSpectrum()}
    )
    for rows in x.split(300):
        metrics.update(rows)
    assert len(metrics.compute_groups) == 1
    geometry = metrics["geometry"].compute()
    assert float(geometry["rankme"]) == float(metrics["rankme"].compute())
    assert float(geometry["alpha"]) == float(metrics["alpha"].compute()["alpha"])
    assert float(geometry["r2"]) == float(metrics["alpha"].compute()["r2"])
    assert torch.equal(geometry["eigenvalues"], metrics["spectrum"].compute())
    summary = metrics["geometry"].compute_summary()
    assert summary.n_samples == 900 and summary.dim == 128 and summary.fit.ranks[-1] == 100
    scalars_only = Geometry(eigenvalues=False)
    scalars_only.update(x)
    assert set(scalars_only.compute()) == {"rankme", "alpha", "r2"}


def test_geometry_pickles_resets_and_round_trips_its_state_dict():
    x = spectrum_features(600, 32, 1.0, seed=25, offset=1e3)
    metric = Geometry(fit_range=(2, 20), eps=1e-6)
    metric.update(x[:250])
    clone = pickle.loads(pickle.dumps(metric))
    resumed = Geometry(fit_range=(2, 20), eps=1e-6)
    resumed.load_state_dict(metric.state_dict())
    for m in (metric, clone, resumed):
        m.update(x[250:])
    values = [m.compute() for m in (metric, clone, resumed)]
    for other in values[1:]:
        assert float(other["rankme"]) == float(values[0]["rankme"])
        assert float(other["alpha"]) == float(values[0]["alpha"])
    metric.reset()
    assert metric.dim is None and metric.shift.numel() == 0


def test_scaled_windows_survive_state_dict_merge_state_and_pickling():
    # 1e-30 features: the fp32 buffer holds them scaled by 2**100; every way the state
    # travels must carry that scale along.
    x = (spectrum_features(1200, 24, 1.0, seed=26).double() * 1e-30).float()
    reference = reference_rankme(reference_spectrum(x.double().numpy()))
    first, second = streamed(RankMe(), x[:500], 100), streamed(RankMe(), x[500:], 100)
    assert int(first.pending_scale) != 0 and int(first.pending_count) > 0
    resumed = RankMe()
    resumed.load_state_dict(first.state_dict())
    resumed = pickle.loads(pickle.dumps(resumed))
    resumed.merge_state(second)
    assert float(resumed.compute()) == pytest.approx(reference, rel=1e-6)


def test_singular_rankme_of_all_zero_features_is_nan_with_a_warning():
    metric = RankMe(spectrum="singular")
    metric.update(torch.zeros(10, 4))
    with pytest.warns(GeometryWarning, match="exactly 0"):
        assert math.isnan(float(metric.compute()))


def test_plot_draws_the_scalar_results():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    x = torch.randn(300, 16)
    for metric in (RankMe(), AlphaReQ(), Geometry()):
        metric.update(x)
        figure, _ = metric.plot()
        assert figure is not None
    with pytest.raises(NotImplementedError, match="log-log"):
        EigenSpectrum().plot()


def test_merge_state_errors_say_what_is_wrong():
    metric = RankMe()
    metric.update(torch.randn(50, 16))
    with pytest.raises(ValueError, match="lacks"):
        metric.merge_state({"sum_value": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="instance of RankMe"):
        metric.merge_state(AlphaReQ())
    other = RankMe()
    other.update(torch.randn(50, 8))
    with pytest.raises(ValueError, match="dimension 8 into one of dimension 16"):
        metric.merge_state(other)


# ------------------------------------------------------------------ issue 15: numerics
def _reference_rankme(x: torch.Tensor) -> float:
    """RankMe of the same rows through float64 end to end (the reference route)."""
    metric = RankMe()
    metric.update(x.double())
    return float(metric.compute())


def test_a_large_constant_channel_is_not_round_off():
    # A constant channel holds no round-off at all: it must not make valid data "zero variance".
    torch.manual_seed(0)
    x = torch.randn(500, 16) * 0.3
    x[:, 0] = 300.0
    bf16 = x.bfloat16()
    metric = RankMe()
    metric.update(bf16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # was NaN with "all rows are equal up to round-off"
        value = float(metric.compute())
    assert value == pytest.approx(_reference_rankme(bf16.float()), rel=1e-4)
    y = torch.randn(2000, 32)
    y[:, :10] = 1e8  # exactly representable in fp32: a constant channel
    metric = RankMe()
    metric.update(y)
    assert float(metric.compute()) == pytest.approx(_reference_rankme(y), rel=1e-6)


def test_truly_constant_rows_are_still_zero_variance():
    x = torch.full((50, 8), 300.0).bfloat16()
    metric = RankMe()
    metric.update(x)
    with pytest.warns(GeometryWarning, match="zero variance"):
        assert math.isnan(float(metric.compute()))


@pytest.mark.parametrize("scale", [1e-160, 1e-170, 1e-300])
def test_fp64_features_whose_squares_underflow_are_nan_with_the_reason(scale):
    torch.manual_seed(1)
    x = torch.randn(400, 32, dtype=torch.float64) * scale
    metric = RankMe()
    metric.update(x)
    with pytest.warns(GeometryWarning, match="so small .* multiply the features by a constant"):
        assert math.isnan(float(metric.compute()))  # was silently off by 2.8e-5, or "zero variance"


def test_fp64_features_just_above_the_underflow_limit_are_exact():
    torch.manual_seed(1)
    x = torch.randn(400, 32, dtype=torch.float64)
    metric = RankMe()
    metric.update(x * 1e-140)
    assert float(metric.compute()) == pytest.approx(_reference_rankme(x), rel=1e-9)


def test_fp64_batches_after_an_fp32_batch_are_not_rounded_to_fp32():
    torch.manual_seed(2)
    first = torch.randn(64, 48)
    rest = torch.randn(3000, 48, dtype=torch.float64) * 1.5 + 0.25
    metric = Geometry()
    metric.update(first)
    metric.update(rest)
    reference = Geometry()
    reference.update(first.double())
    reference.update(rest)
    # fp32 rounding of the fp64 rows gave rel 2.8e-5; fp64 accumulation agrees to ~1e-12.
    assert float(metric.compute()["rankme"]) == pytest.approx(float(reference.compute()["rankme"]), rel=1e-9)
    assert metric.pending_m2.dtype == torch.float64


def test_load_state_dict_copies_the_states():
    torch.manual_seed(3)
    x = torch.randn(200, 16)
    source = Geometry()
    source.update(x)
    saved = source.state_dict()
    n_before = float(saved["n_samples"])
    first, second = Geometry(), Geometry()
    first.load_state_dict(saved)
    second.load_state_dict(saved)
    first.update(x)
    assert float(saved["n_samples"]) == n_before  # the caller's dict did not change
    assert float(second.n_samples) == n_before  # and the other metric kept its own sums
    assert float(first.n_samples) == 2 * n_before
