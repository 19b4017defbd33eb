"""RankMe / AlphaReQ / EigenSpectrum metrics: accuracy, streaming, torchmetrics behaviour."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from torchmetrics import MetricCollection

from geomtrace import AlphaReQ, EigenSpectrum, GeometryWarning, RankMe
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
