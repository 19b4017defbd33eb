"""measure_geometry options not covered through the callbacks: probe precision, short spectra."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from geomtrace import GeometryWarning
from geomtrace.measure import MeasureConfig, measure_geometry, probe_autocast
from geomtrace.probes import load_probes
from geomtrace.tiny import build_tiny_model


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer)  # d = 64: alpha over ranks 12..63
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


def test_bf16_and_fp32_fit_the_same_ranks(setup):
    # The LayerNorm'd features span d - 1 = 63 directions; the 64th eigenvalue is fp32
    # round-off (~3e-9 of lambda_1 here) or exactly 0 in bf16. It must not enter the fit,
    # or alpha differs between the two (3.91 vs 3.57 on an AVX2-only CPU, issue 9).
    model, probes = setup
    plain, _ = _measure(model, probes, "auto")
    low, _ = _measure(model, probes, "bf16")
    assert plain.fit_ranks[-1] == low.fit_ranks[-1] == 63
    assert plain.eigenvalues.shape == (64,)  # the spectrum itself keeps k = min(N, d) values


@pytest.mark.parametrize(
    ("hidden_size", "num_sequences", "options"),
    [(8, 40, {}), (64, 8, {}), (64, 40, {"max_components": 10}), (64, 40, {"fit_range": (100, 200)})],
    ids=["d8", "N8", "max_components10", "fit-start-beyond-d"],
)
def test_short_spectra_measure_rankme_and_warn_once_for_alpha(tokenizer, hidden_size, num_sequences, options):
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer, hidden_size=hidden_size, num_heads=2)
    probes = load_probes(tokenizer, num_sequences=num_sequences)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = measure_geometry(model, probes, MeasureConfig(**options)).last
    assert [w.category for w in caught] == [GeometryWarning]
    assert "alpha and R^2 are NaN" in str(caught[0].message)
    assert math.isnan(result.alpha) and math.isnan(result.r2)
    assert 1.0 < result.rankme <= min(hidden_size, num_sequences) + 1e-3
    assert result.eigenvalues.size == min(hidden_size, num_sequences, options.get("max_components", hidden_size))


def test_negative_eps_is_a_clear_error():
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        MeasureConfig(eps=-1e-7).validate()


def test_measure_config_types_are_checked_and_numpy_scalars_normalised():
    import numpy as np

    with pytest.raises(TypeError, match=r"fit_range\[0\] must be an int, got 1.5"):
        MeasureConfig(fit_range=(1.5, 10))  # was silently (1, 10)
    with pytest.raises(TypeError, match="skip_first_token must be True or False"):
        MeasureConfig(skip_first_token="no")
    with pytest.raises(TypeError, match="max_components"):
        MeasureConfig(max_components=True)
    with pytest.raises(ValueError, match="max_components must be an int >= 1 or None"):
        MeasureConfig(max_components=0).validate()
    config = MeasureConfig(
        eps=np.float32(1e-7), fit_range=np.array([12, 100]), layers=np.int64(2), max_components=np.int64(2048)
    )
    assert config == MeasureConfig(eps=1e-7, fit_range=(12, 100), layers=2, max_components=2048)
    assert type(config.eps) is float and type(config.layers) is int
    assert MeasureConfig(layers=[np.int64(0), 1]).layers == (0, 1)


def test_probes_longer_than_the_model_positions_fail_with_a_clear_message(tokenizer):
    import transformers

    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    probes = load_probes(tokenizer, num_sequences=8, max_tokens=64)
    with pytest.raises(
        ValueError, match=r"up to \d+ tokens are longer than the model's 16 positions.*max_tokens <= 16"
    ):
        measure_geometry(model, probes)  # was "IndexError: index out of range in self"
    result = measure_geometry(model, probes.truncated(16))
    assert result.last.n_samples == 8
