"""run_replay(extra_metrics=...): users' (N, d) feature metrics ride along in replay (issue 12 item 2)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from fakehub import build_tiny_model, tiny_tokenizer
from feature_metrics import Broken, ParticipationRatio, RowStats
from geomtrace.measure import MeasureConfig
from geomtrace.replay import ProbeOptions, ResultsStore, local_checkpoints, run_replay
from geomtrace.replay.store import export_csv

STEPS = (0, 10)
PROBES = ProbeOptions(num_sequences=24, max_tokens=32)
CONFIG = MeasureConfig(layers=[1, 2], batch_size=8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    for i, step in enumerate(STEPS):
        build_tiny_model(seed=i).save_pretrained(root / f"checkpoint-{step}")
    tiny_tokenizer().save_pretrained(root)
    return local_checkpoints(root)


@pytest.fixture(scope="module")
def replayed(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("replay") / "out"
    with pytest.warns(UserWarning, match="extra metric 'broken' failed"):
        summary = run_replay(
            checkpoints,
            out,
            config=CONFIG,
            probe_options=PROBES,
            progress=False,
            verbose=False,
            tensorboard_dir=out / "tb",
            extra_metrics={"pr": ParticipationRatio(), "stats": RowStats(), "broken": Broken()},
        )
    assert not summary.failed and len(summary.measured) == len(STEPS)
    return out


def test_extra_metrics_are_record_fields_beside_rankme(replayed):
    store = ResultsStore(replayed)
    records = store.records()
    assert len(records) == len(STEPS) * 2
    for r in records:
        assert r["extra_metrics"] == ["pr", "stats/rows", "stats/mean_norm", "broken"]
        # measured on the rows the geometry saw: the PR from the metric's own float64 sums is
        # the PR of the stored eigenspectrum (sum(l)^2 / sum(l^2))
        spectrum = store.spectrum(r["key"], r["layer"])
        assert r["pr"] == pytest.approx(spectrum.sum() ** 2 / (spectrum**2).sum(), rel=1e-5)
        assert r["stats/rows"] == r["n_samples"]
        # a failed metric is NaN (JSON null read back as nan), the geometry is kept
        assert isinstance(r["broken"], float) and math.isnan(r["broken"]) and math.isfinite(r["rankme"])
        # non-scalar values sit beside the eigenspectrum
        arrays = store.extra_arrays(r["key"], r["layer"])
        assert list(arrays) == ["stats/column_mean"] and arrays["stats/column_mean"].shape == (r["dim"],)
    by_layer = {(r["key"], r["layer"]): r["pr"] for r in records}
    assert by_layer[("checkpoint-0", 1)] != by_layer[("checkpoint-0", 2)]


def test_extra_metrics_are_tensorboard_tags_like_rankme(replayed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(replayed / "tb"))
    acc.Reload()
    records = {(r["step"], r["layer"]): r for r in ResultsStore(replayed).records()}
    tags = acc.Tags()["scalars"]
    assert {"geometry/pr", "geometry/layer1/pr", "geometry/stats/rows", "geometry/layer1/stats/mean_norm"} <= set(tags)
    for tag, layer in (("geometry/pr", 2), ("geometry/layer1/pr", 1)):  # layer 2 is the final layer
        events = acc.Scalars(tag)
        assert [e.step for e in events] == list(STEPS)
        for e in events:
            assert e.value == pytest.approx(records[(e.step, layer)]["pr"], rel=1e-6)  # TensorBoard stores float32


def test_csv_export_has_a_column_per_extra_value(replayed, tmp_path):
    path = export_csv(ResultsStore(replayed), tmp_path / "r.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"pr", "stats/rows", "stats/mean_norm", "broken"} <= set(rows[0])
    assert all(float(row["pr"]) > 0 and row["broken"] == "nan" for row in rows)


def test_an_extra_metric_named_like_a_record_field_is_refused_before_anything_runs(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="'step' are fields of a replay record"):
        run_replay(
            checkpoints,
            tmp_path / "out",
            probe_options=PROBES,
            progress=False,
            verbose=False,
            extra_metrics={"step": ParticipationRatio()},
        )
    with pytest.raises(TypeError, match="torchmetrics"):
        run_replay(
            checkpoints,
            tmp_path / "out",
            probe_options=PROBES,
            progress=False,
            verbose=False,
            extra_metrics={"pr": np.mean},
        )
    assert not (tmp_path / "out").exists()


def test_extra_metrics_do_not_change_the_replayed_geometry(checkpoints, replayed, tmp_path):
    plain = run_replay(
        checkpoints, tmp_path / "plain", config=CONFIG, probe_options=PROBES, progress=False, verbose=False
    )
    assert not plain.failed
    values = {(r["key"], r["layer"]): (r["rankme"], r["alpha"]) for r in ResultsStore(tmp_path / "plain").records()}
    assert values == {(r["key"], r["layer"]): (r["rankme"], r["alpha"]) for r in ResultsStore(replayed).records()}
    assert not any("extra_metrics" in r for r in ResultsStore(tmp_path / "plain").records())
