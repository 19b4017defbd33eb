"""GeometryTracker: schedule, failures, phases and state, without a training framework."""

from __future__ import annotations

import warnings

import pytest
import torch

from geomtrace import GeometryWarning
from geomtrace.measure import MeasureConfig
from geomtrace.probes import load_probes
from geomtrace.tiny import build_tiny_model, train_bpe_tokenizer
from geomtrace.tracking import GeometryTracker, ProbeOptions


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer()


def test_schedule_start_periodic_extra_and_end():
    tracker = GeometryTracker(every_n_steps=10, extra_steps=(1, 2, 4))
    assert tracker.due(0, "start") and not tracker.due(3, "start")
    assert [s for s in range(1, 31) if tracker.due(s, "step")] == [1, 2, 4, 10, 20, 30]
    assert tracker.due(33, "end")
    tracker.history.append({"step": 33})
    assert not tracker.due(33, "end")  # never twice at one step
    off = GeometryTracker(every_n_steps=0, measure_on_start=False, measure_on_end=False)
    assert not off.due(0, "start") and not off.due(10, "step") and not off.due(10, "end")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": -1}, "every_n_steps"),
        ({"extra_steps": (0,)}, "extra_steps"),
        ({"log_spectrum_every": -2}, "log_spectrum_every"),
        ({"config": MeasureConfig(batch_size=0)}, "batch_size"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeometryTracker(**kwargs)


def test_probes_must_be_a_probe_set_and_tokenizer_is_required():
    with pytest.raises(TypeError, match="probe_source"):
        GeometryTracker(probes=["a text"])
    with pytest.raises(ValueError, match="tokenizer"):
        GeometryTracker().prepare(None)


def test_measure_records_history_phase_and_state(tokenizer):
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer)
    tracker = GeometryTracker(every_n_steps=1, probe_options=ProbeOptions(num_sequences=24), log_spectrum_every=2)
    tracker.prepare(tokenizer)
    outcomes = [tracker.measure(model, step) for step in range(6)]
    assert [m.step for m in outcomes] == list(range(6))
    assert [m.log_spectrum for m in outcomes] == [True, False, True, False, True, False]
    assert all(m.scalars["geometry/n_samples"] == 24 for m in outcomes)
    # The weights never change, so the geometry is flat: once enough history exists, "stable".
    assert outcomes[-1].phase == "stable" and outcomes[-1].scalars["geometry/phase"] == 0.0
    restored = GeometryTracker()
    restored.load_state_dict(tracker.state_dict())
    assert restored.history == tracker.history and restored.phase == "stable"
    assert "RankMe" in tracker.summary()


def test_a_rewound_run_replaces_its_future_records(tokenizer):
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer)
    tracker = GeometryTracker(every_n_steps=1, probe_options=ProbeOptions(num_sequences=24))  # N - 1 >= 16: alpha defined
    tracker.prepare(tokenizer)
    for step in (0, 10, 20, 30):
        tracker.measure(model, step)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)  # phase detection must not fail on it
        tracker.measure(model, 20)  # e.g. resumed from the step-20 checkpoint
    assert [r["step"] for r in tracker.history] == [0, 10, 20]


def test_failure_warns_and_strict_raises(tokenizer):
    probes = load_probes(tokenizer, num_sequences=8)
    tracker = GeometryTracker(probes=probes)
    broken = torch.nn.Linear(2, 2)  # not a language model: measurement fails
    with pytest.warns(GeometryWarning, match="failed and was skipped"):
        assert tracker.measure(broken, 3) is None
    assert tracker.history == []
    with pytest.raises(Exception):
        GeometryTracker(probes=probes, strict=True).measure(broken, 3)


def test_summary_without_history():
    assert "no geometry" in GeometryTracker().summary()
