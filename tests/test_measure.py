"""measure_geometry options that are not covered through the callbacks: probe precision."""

from __future__ import annotations

import pytest
import torch

from geomtrace.measure import MeasureConfig, measure_geometry, probe_autocast
from geomtrace.probes import load_probes
from geomtrace.tiny import build_tiny_model, train_bpe_tokenizer


@pytest.fixture(scope="module")
def setup():
    tokenizer = train_bpe_tokenizer()
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer)  # d = 128: alpha is defined
    return model, load_probes(tokenizer, num_sequences=160)


def _measure(model, probes, autocast, outer=None):
    """Geometry and the dtype the first MLP matmul ran in."""
    seen = []
    handle = model.gpt_neox.layers[0].mlp.dense_h_to_4h.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        context = torch.autocast("cpu", dtype=outer) if outer else torch.autocast("cpu", enabled=False)
        with context:
            result = measure_geometry(model, probes, MeasureConfig(autocast=autocast, batch_size=32))
    finally:
        handle.remove()
    return result.last, set(seen)


def test_auto_follows_the_callers_precision(setup):
    model, probes = setup
    plain, dtypes = _measure(model, probes, "auto")
    assert dtypes == {torch.float32}
    _, dtypes = _measure(model, probes, "auto", outer=torch.bfloat16)
    assert dtypes == {torch.bfloat16}


def test_off_runs_fp32_inside_a_bf16_context_with_identical_values(setup):
    model, probes = setup
    plain, _ = _measure(model, probes, "auto")
    off, dtypes = _measure(model, probes, "off", outer=torch.bfloat16)
    assert dtypes == {torch.float32}
    assert off.rankme == pytest.approx(plain.rankme, rel=1e-9)
    assert off.alpha == pytest.approx(plain.alpha, rel=1e-9)


def test_bf16_runs_the_forward_in_bf16_and_stays_close(setup):
    model, probes = setup
    plain, _ = _measure(model, probes, "auto")
    low, dtypes = _measure(model, probes, "bf16")
    assert dtypes == {torch.bfloat16}
    assert low.n_samples == plain.n_samples
    # bf16 rounding of the features moves the spectrum a little, not the geometry.
    assert low.rankme == pytest.approx(plain.rankme, rel=2e-2) and low.rankme != plain.rankme
    assert low.alpha == pytest.approx(plain.alpha, rel=5e-2)


def test_bad_setting_is_a_clear_error():
    with pytest.raises(ValueError, match="autocast must be one of"):
        MeasureConfig(autocast="fp8").validate()
    with pytest.raises(ValueError, match="autocast"):
        with probe_autocast("fp16", torch.device("meta")):
            pass


def test_result_records_the_precision_the_forward_ran_in(setup):
    model, probes = setup
    config = MeasureConfig(batch_size=64)
    assert measure_geometry(model, probes, config).precision == "fp32"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = measure_geometry(model, probes, config)
        off = measure_geometry(model, probes, MeasureConfig(batch_size=64, autocast="off"))
    assert (auto.precision, off.precision) == ("bf16", "fp32")
    record = auto.provenance()
    assert record["precision"] == "bf16" and record["probe_fingerprint"] == probes.fingerprint()
    assert record["measure_config"]["autocast"] == "auto"


def test_trajectory_key_follows_the_deepest_tracked_layer(setup):
    model, probes = setup
    final = measure_geometry(model, probes, MeasureConfig(layers="all", batch_size=64))
    assert final.trajectory_key("rankme") == "geometry/rankme"
    inner = measure_geometry(model, probes, MeasureConfig(layers=[0, 1], batch_size=64))
    assert inner.trajectory_key("rankme") == "geometry/layer1/rankme"
    assert inner.trajectory_key("rankme") in inner.scalars()
