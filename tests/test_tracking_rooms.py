"""The tracker's pieces on their own: the cost meter, the provenance builder, the record."""

from __future__ import annotations

import json
import math
import time
import warnings

import numpy as np
import pytest

from geomtrace import GeometryWarning, tracking
from geomtrace._cost import CostMeter, cost_line
from geomtrace._history import STATE_VERSION, RunRecord, Stage, rename_prefix, state_prefix
from geomtrace._jsonio import write_json
from geomtrace._provenance import (
    measurement_provenance,
    precision_note,
    probe_set_provenance,
    provenance_differences,
    record_provenance,
)
from geomtrace.measure import GeometryResult, LayerGeometry
from geomtrace.options import MeasureConfig, ProbeOptions
from geomtrace.probes import ProbeSet
from geomtrace.tracking import GeometryTracker

PROBES = ProbeSet([[1, 2, 3], [4, 5, 6, 7]], "two probes", 0)


def result_for(probes: ProbeSet, *, layer: int = 2, num_layers: int = 2, precision: str = "fp32") -> GeometryResult:
    geometry = {layer: LayerGeometry(layer=layer, rankme=5.0, alpha=1.5, r2=0.9, n_samples=len(probes), dim=32)}
    return GeometryResult(
        layers=geometry,
        num_layers=num_layers,
        probe_description=probes.description,
        probe_fingerprint=probes.fingerprint(),
        n_probes=len(probes),
        seconds=0.0,
        precision=precision,
    )


# ------------------------------------------------------------------ cost
def test_cost_meter_counts_per_training_and_resets():
    meter = CostMeter()
    assert meter.cost(PROBES) is None  # no training yet: no cost in the record
    meter.start()
    with meter.timing():
        time.sleep(0.02)
    meter.count()
    meter.count()
    cost = meter.cost(PROBES)
    assert cost["measurements"] == 2 and cost["seconds_measuring"] >= 0.02
    assert cost["probes"] == 2 and cost["probe_tokens"] == 7
    assert 0 < cost["share"] <= 1 and cost["seconds_training"] >= cost["seconds_measuring"]
    assert "2 measurement(s)" in cost_line(cost) and "7 probe tokens (2 probes)" in cost_line(cost)
    with pytest.raises(RuntimeError), meter.timing():  # a failing block still counts its time
        raise RuntimeError
    meter.start()  # the next training starts from zero
    assert meter.seconds == 0.0 and meter.measurements == 0
    assert cost_line(meter.cost(None)) is None and meter.cost(None)["probes"] == 0


# ------------------------------------------------------------------ provenance
def test_provenance_differences_name_the_value_changing_fields_only():
    old = measurement_provenance("p", "a" * 16, 8, "fp32", MeasureConfig())
    same = json.loads(json.dumps(old))  # tuples read back as lists: still the same
    assert provenance_differences(old, same) == {}
    new = measurement_provenance("p", "b" * 16, 8, "bf16", MeasureConfig(fit_range=(2, 20), batch_size=3))
    changed = provenance_differences(old, new)
    assert set(changed) == {"probe set", "precision", "fit_range"}  # batch_size only changes the speed
    assert changed["precision"] == ("fp32", "bf16") and changed["probe set"] == ("a" * 16, "b" * 16)
    assert [list(v) for v in changed["fit_range"]] == [[12, 100], [2, 20]]


def test_one_builder_live_and_replay_give_the_same_provenance(monkeypatch):
    options = ProbeOptions(num_sequences=2)
    monkeypatch.setattr(tracking, "measure_geometry", lambda model, probes, config, **kw: result_for(probes))
    tracker = GeometryTracker(probes=ProbeSet(PROBES.sequences, PROBES.description, 0, options=options))
    tracker.begin(object(), 0)
    tracker.measure(None, 0)
    live = tracker.provenance
    replay = probe_set_provenance(PROBES, MeasureConfig(), "fp32", options)  # what run.json records
    assert list(replay) == ["probe", "probe_fingerprint", "n_probes", "precision", "measure_config", "probe_options"]
    assert live["trajectory"] == {
        "layer": 2,
        "num_layers": 2,
        "rankme": "geometry/rankme",
        "alpha": "geometry/alpha",
        "phase": "geometry/phase",
    }
    assert live["measure_config"].pop("extra_metrics") == {}
    assert {k: v for k, v in live.items() if k != "trajectory"} == replay
    assert provenance_differences(live, replay) == {}


def test_record_provenance_adds_options_extra_metrics_and_trajectory():
    measured = measurement_provenance("p", "f" * 16, 4, None, {"layers": None})
    out = record_provenance(measured, probe_options=None, extra_metrics={"m": "x.M"}, trajectory={"layer": 1})
    assert out["probe_options"] is None and out["trajectory"] == {"layer": 1}
    assert out["measure_config"] == {"layers": None, "extra_metrics": {"m": "x.M"}}
    assert measured["measure_config"] == {"layers": None}  # the input is not changed
    assert "trajectory" not in record_provenance(measured, probe_options=ProbeOptions())
    assert "fp32" in precision_note({"precision": "fp32", "n_probes": 4, "probe": "p"}, "auto")
    assert "autocast='off'" in precision_note({"precision": "bf16", "n_probes": 4, "probe": "p"}, "auto")


# ------------------------------------------------------------------ the record
def _record_with_rows(prefix: str = "geometry") -> RunRecord:
    run = RunRecord()
    run.stage.history = [
        {"step": 0, f"{prefix}/layer1/rankme": 9.0, f"{prefix}/layer1/alpha": 1.0},
        {"step": 10, f"{prefix}/layer1/rankme": 3.0, f"{prefix}/layer1/alpha": 2.0, "phase": "warmup"},
    ]
    run.stage.num_measurements = 2
    run.stage.provenance = {"trajectory": {"layer": 1, "rankme": f"{prefix}/layer1/rankme"}, "probe": f"{prefix}/x"}
    run.stage.phase = "warmup"
    return run


def test_state_round_trip_renames_another_prefix_with_one_warning():
    state = json.loads(json.dumps(_record_with_rows().state_dict()))
    assert state["version"] == STATE_VERSION and state_prefix(state) == "geometry"
    restored = RunRecord()
    with pytest.warns(GeometryWarning, match="prefix 'geometry'.*prefix 'geo'.*2 measurement") as caught:
        restored.load_state_dict(state, "geo")
    assert len(caught) == 1
    assert restored.stage.history[1] == {
        "step": 10,
        "geo/layer1/rankme": 3.0,
        "geo/layer1/alpha": 2.0,
        "phase": "warmup",
    }
    assert restored.stage.provenance["trajectory"]["rankme"] == "geo/layer1/rankme"
    assert restored.stage.num_measurements == 2 and restored.stage.phase == "warmup"
    same = RunRecord()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(state, "geometry")  # same prefix: nothing renamed, no warning
    assert same.stage.to_dict() == _record_with_rows().stage.to_dict()
    assert rename_prefix(["geometry/a", "geometryx/a", 3], "geometry", "g") == ["g/a", "geometryx/a", 3]


def test_version_one_state_and_stages():
    run = RunRecord()
    run.load_state_dict({"history": [{"step": 5}, {"step": 6}], "phase": "stable"}, "geometry")
    assert run.stage.num_measurements == 2 and run.stage.provenance is None and run.stages == []
    assert run.new_stage() == 2
    assert run.stage == Stage() and run.stages[0]["history"] == [{"step": 5}, {"step": 6}]
    assert RunRecord().state_dict()["stages"] == [] and run.state_dict()["stages"][0]["phase"] == "stable"


def test_snapshot_restore_undoes_a_half_made_measurement():
    run = _record_with_rows()
    before = run.stage.to_dict()
    saved = run.snapshot()
    run.stage.history.append({"step": 20})
    run.stage.provenance_changes.append({"step": 20, "changed": {}})
    run.stage.num_measurements += 1
    run.stage.comparable_from = 20
    run.restore(saved)
    assert run.stage.to_dict() == before


def test_summary_names_an_inner_trajectory_layer_and_the_phase():
    stage = _record_with_rows().stage
    assert stage.trajectory_keys("geometry")["rankme"] == "geometry/layer1/rankme"
    assert stage.trajectory_keys("geometry")["phase"] == "geometry/phase"  # not in the provenance: the default
    line = stage.summary("geometry")
    assert line.startswith("layer 1 RankMe 9.0 (step 0) -> min 3.0 (step 10)") and "phase now: warmup" in line
    assert Stage().summary("geometry") == "no geometry measurements yet"


def test_tracker_attributes_are_the_current_stage():
    tracker = GeometryTracker(every_n_steps=7, extra_steps=(3,))
    assert tracker.every_n_steps == 7 and tracker.extra_steps == frozenset({3})
    tracker.history = [{"step": 4, "geometry/rankme": 2.0}]
    tracker.phase = "stable"
    assert tracker.run.stage.history == [{"step": 4, "geometry/rankme": 2.0}] and tracker.run.stage.phase == "stable"
    assert tracker.last_step == 4 and not tracker.due(4, "step")
    tracker.begin(object(), 0)  # another trainer: the rows become an earlier stage
    assert tracker.history == [] and tracker.phase is None and tracker.stages[0]["phase"] == "stable"
    assert tracker.stages is tracker.run.stages and tracker.cost()["measurements"] == 0


def test_write_json_keeps_nan_and_never_fails(tmp_path):
    path = write_json(tmp_path / "h.json", {"a": math.nan, "n": np.int64(3), "odd": object(), "t": (1, 2)})
    text = path.read_text()
    assert "NaN" in text
    data = json.loads(text)
    assert data["n"] == 3 and data["t"] == [1, 2] and data["odd"].startswith("<object")
    assert [p.name for p in tmp_path.iterdir()] == ["h.json"]
