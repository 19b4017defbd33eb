"""measure_geometry(extra_metrics=...): users' (N, d) feature metrics on the same forward."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from feature_metrics import Broken, ParticipationRatio, RowStats
from geomtrace import GeometryWarning
from geomtrace.measure import MeasureConfig, measure_geometry
from geomtrace.probes import load_probes
from geomtrace.tiny import build_tiny_model


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer)
    return model, load_probes(tokenizer, num_sequences=64)


def test_extra_metrics_ride_along_per_layer_under_their_names(setup):
    model, probes = setup
    template = ParticipationRatio()
    result = measure_geometry(
        model, probes, MeasureConfig(layers=[1, 2], batch_size=16), extra_metrics={"pr": template, "stats": RowStats()}
    )
    assert template.n == 0 and template.total.numel() == 0  # the caller's object is left alone
    for layer in result.layers.values():
        # Same rows as the geometry: the PR from the metric's own float64 sums equals the PR
        # of the geometry's spectrum (sum(l)^2 / sum(l^2)).
        eigenvalues = layer.eigenvalues
        expected = eigenvalues.sum() ** 2 / (eigenvalues**2).sum()
        assert layer.extras["pr"] == pytest.approx(expected, rel=1e-6)
        assert layer.extras["stats/rows"] == layer.n_samples
        assert layer.extras["stats/mean_norm"] > 0
        assert layer.extra_arrays["stats/column_mean"].shape == (layer.dim,)
    assert result.layers[1].extras["pr"] != result.layers[2].extras["pr"]
    scalars = result.scalars()
    assert scalars["geometry/pr"] == result.layers[2].extras["pr"]  # layer 2 is the final layer
    assert scalars["geometry/layer1/pr"] == result.layers[1].extras["pr"]
    assert scalars["geometry/layer1/stats/rows"] == result.layers[1].n_samples
    assert "geometry/stats/column_mean" not in scalars


def test_extra_metrics_do_not_change_the_geometry(setup):
    model, probes = setup
    config = MeasureConfig(batch_size=16)
    plain = measure_geometry(model, probes, config).last
    with_extra = measure_geometry(model, probes, config, extra_metrics={"pr": ParticipationRatio()}).last
    assert (with_extra.rankme, with_extra.alpha, with_extra.r2) == (plain.rankme, plain.alpha, plain.r2)
    np.testing.assert_array_equal(with_extra.eigenvalues, plain.eigenvalues)


def test_a_failing_extra_metric_is_nan_with_one_warning_and_keeps_the_geometry(setup):
    model, probes = setup
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = measure_geometry(
            model, probes, MeasureConfig(batch_size=16, rows_per_update=16), extra_metrics={"broken": Broken()}
        ).last
    messages = [str(w.message) for w in caught if issubclass(w.category, GeometryWarning)]
    assert len(messages) == 1 and "'broken' failed to update" in messages[0]
    assert math.isnan(result.extras["broken"])
    assert math.isfinite(result.rankme)


@pytest.mark.parametrize(
    ("extra", "error", "match"),
    [
        ({"rankme": ParticipationRatio()}, ValueError, "taken by geomtrace"),
        ({"my pr": ParticipationRatio()}, ValueError, "not usable as a logging tag"),
        ({"pr": lambda x: x}, TypeError, "must be a torchmetrics.Metric"),
        ([ParticipationRatio()], TypeError, "must be a mapping"),
    ],
    ids=["reserved", "space", "not-a-metric", "list"],
)
def test_bad_extra_metrics_are_clear_errors(setup, extra, error, match):
    model, probes = setup
    with pytest.raises(error, match=match):
        measure_geometry(model, probes, extra_metrics=extra)


SEEN_DTYPES: list[torch.dtype] = []


class _DtypeRecorder(ParticipationRatio):
    def update(self, features: torch.Tensor) -> None:
        SEEN_DTYPES.append(features.dtype)
        super().update(features)


def test_extra_metrics_get_fp32_rows_from_a_bf16_forward(setup):
    model, probes = setup
    SEEN_DTYPES.clear()
    with torch.autocast("cpu", enabled=False):
        result = measure_geometry(
            model, probes, MeasureConfig(batch_size=16, autocast="bf16"), extra_metrics={"pr": _DtypeRecorder()}
        )
    assert result.precision == "bf16"
    assert SEEN_DTYPES and set(SEEN_DTYPES) == {torch.float32}
    assert math.isfinite(result.last.extras["pr"])
