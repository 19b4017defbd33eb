"""Paired standard errors: a change measured twice on the same probes is judged by the jackknife
of the replicate differences, not by sqrt(se_before^2 + se_after^2) (which counts the probe
sample's shared noise twice)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geomtrace.measure import MeasureConfig, measure_geometry
from geomtrace.phases import detect_phases, format_segments, paired_jackknife_se, shift
from geomtrace.tiny import build_tiny_model
from geomtrace.trajectory import trajectory_from_rows
from test_uncertainty_measure import FIT, G, jackknife, random_probes


def test_the_paired_error_is_the_jackknife_of_the_differences():
    rng = np.random.default_rng(0)
    before = rng.normal(10.0, 1.0, 20)
    noise = rng.normal(0.0, 0.1, 20)
    diff = noise - noise.mean()
    expected = math.sqrt(19 / 20 * float((diff**2).sum()))
    assert paired_jackknife_se(before, before + 2.0 + noise) == pytest.approx(expected, rel=1e-12)
    # a shift shared by every group: no noise in the change at all
    assert paired_jackknife_se(before, before + 2.0) == pytest.approx(0.0, abs=1e-12)
    assert paired_jackknife_se(before, before[:10]) is None  # different G: nothing pairs
    assert paired_jackknife_se(before, np.where(np.arange(20) == 3, np.nan, before)) is None
    assert paired_jackknife_se(None, before) is None


def _side(value: float, se: float, replicates: np.ndarray | None = None) -> dict:
    out = {"rankme": value, "rankme_se": se, "alpha": 2.0, "alpha_se": 0.05}
    if replicates is not None:
        out["rankme_replicates"] = list(replicates)
        out["alpha_replicates"] = [2.0] * len(replicates)
    return out


def test_shift_names_a_direction_the_independent_errors_hide():
    rng = np.random.default_rng(1)
    groups = rng.normal(0.0, 1.0, 20)  # each group's own pull on the value, the same before and after
    before_reps = 20.0 + groups
    after_reps = 19.0 + groups + rng.normal(0.0, 0.02, 20)
    independent = shift(_side(20.0, 1.0), _side(19.0, 1.0))
    assert independent.direction == "within-noise" and not independent.paired
    paired = shift(_side(20.0, 1.0, before_reps), _side(19.0, 1.0, after_reps))
    assert paired.paired
    assert paired.rankme_change_se == pytest.approx(paired_jackknife_se(before_reps, after_reps))
    assert paired.rankme_change_se < 0.2 < 1.0 < independent.rankme_change_se
    assert paired.direction == "compression-seeking"
    # a change within even the paired noise stays within noise, and says the error was paired
    flat = shift(_side(20.0, 1.0, before_reps), _side(19.5, 1.0, before_reps - 0.5 + rng.normal(0, 0.5, 20)))
    assert flat.direction == "within-noise" and "paired se" in flat.note


def test_the_detector_pairs_the_replicates_of_a_segments_ends():
    steps = np.arange(0, 31) * 10
    rankme = 40.0 * np.exp(-0.01 * np.arange(31))  # a steady 26 % fall
    alpha = 1.0 + 0.01 * np.arange(31)  # with alpha rising: the compression signature
    se_r, se_a = np.full(31, 8.0), np.full(31, 0.5)  # independent errors far larger than the change
    rng = np.random.default_rng(2)
    pulls_r, pulls_a = rng.normal(0.0, 0.2, 20), rng.normal(0.0, 0.1, 20)
    reps_r = [r * (1 + 0.05 * pulls_r) + rng.normal(0, 0.01, 20) for r in rankme]
    reps_a = [a + pulls_a + rng.normal(0, 0.001, 20) for a in alpha]

    plain = detect_phases(steps, rankme, alpha, rankme_se=se_r, alpha_se=se_a, allow_warmup=False)
    assert {seg.name for seg in plain} == {"stable"}
    assert any("within noise" in seg.note for seg in plain)
    paired = detect_phases(
        steps,
        rankme,
        alpha,
        rankme_se=se_r,
        alpha_se=se_a,
        rankme_replicates=reps_r,
        alpha_replicates=reps_a,
        allow_warmup=False,
    )
    assert [seg.name for seg in paired] == ["compression-seeking"]
    assert paired[0].rankme_change_se < 0.01  # log units: well below the 26 % fall
    assert paired[0].paired and not any(seg.paired for seg in plain)
    assert "± = paired standard error of the change" in format_segments(paired)
    assert "± = combined standard error of the change" in format_segments(plain)


def test_replicates_of_differing_length_are_not_paired():
    steps, rankme, alpha = np.arange(8), np.linspace(30, 20, 8), np.linspace(1, 1.2, 8)
    reps = [np.full(20, r) for r in rankme]
    reps[3] = np.full(10, rankme[3])
    segs = detect_phases(
        steps,
        rankme,
        alpha,
        rankme_se=np.full(8, 5.0),
        alpha_se=np.full(8, 0.5),
        rankme_replicates=reps,
        allow_warmup=False,
    )
    assert {seg.name for seg in segs} == {"stable"}  # judged by the independent (large) errors


def test_measurements_carry_replicates_and_the_history_keeps_them(tmp_path):
    from geomtrace.tracking import GeometryTracker

    model = build_tiny_model("gpt_neox", vocab_size=300, hidden_size=64)
    probes = random_probes()
    result = measure_geometry(model, probes, jackknife(MeasureConfig(layers=(1, 2), fit_range=FIT)))
    layer = result.last
    assert layer.rankme_replicates is not None and len(layer.rankme_replicates) == G
    assert layer.alpha_replicates is not None and len(layer.alpha_replicates) == G
    # the standard error is the jackknife of exactly these replicates
    reps = np.array(layer.rankme_replicates)
    assert layer.rankme_se == pytest.approx(math.sqrt((G - 1) / G * float(((reps - reps.mean()) ** 2).sum())), rel=1e-9)
    assert set(result.replicates()) == {
        "geometry/rankme_replicates",
        "geometry/alpha_replicates",
        "geometry/layer1/rankme_replicates",
        "geometry/layer1/alpha_replicates",
    }
    assert not any(key.endswith("_replicates") for key in result.scalars())  # not logged as scalars
    assert measure_geometry(model, probes, MeasureConfig(fit_range=FIT)).replicates() == {}

    tracker = GeometryTracker(probes=probes, measure=jackknife(MeasureConfig(fit_range=FIT)), every_n_steps=1)
    for step in (0, 1, 2):
        tracker.measure(model, step)
    rows = tracker.history
    assert all(len(r["geometry/rankme_replicates"]) == G for r in rows)
    trajectory = trajectory_from_rows(rows)
    assert trajectory.rankme_replicates is not None and trajectory.rankme_replicates.shape == (3, G)
    assert trajectory.rankme_replicates[1].tolist() == rows[1]["geometry/rankme_replicates"]
    # the same model at every step: the change is exactly nothing, and its paired error too
    same = shift(
        {k.split("/")[-1]: v for k, v in rows[0].items() if k.startswith("geometry/")},
        {k.split("/")[-1]: v for k, v in rows[2].items() if k.startswith("geometry/")},
    )
    assert same.paired and same.rankme_change_se == pytest.approx(0.0, abs=1e-9)


def test_replay_records_pair_only_within_the_one_probe_set_they_keep():
    rows = [
        {
            "layer": 2,
            "step": s,
            "rankme": 10.0 + s,
            "alpha": 1.0,
            "probe_fingerprint": fp,
            "rankme_replicates": [1.0] * 4,
        }
        for s, fp in ((1, "a"), (2, "b"), (3, "b"))
    ]
    with pytest.warns(UserWarning, match="2 different probe sets"):
        trajectory = trajectory_from_rows(rows, layer=2)
    assert trajectory.step.tolist() == [2.0, 3.0]  # the latest probe set only
    assert trajectory.rankme_replicates is not None and trajectory.rankme_replicates.shape == (2, 4)


def test_replay_records_keep_the_replicates_and_a_replayed_trajectory_pairs_them(tmp_path):
    import os

    from fakehub import make_fake_hub_model
    from geomtrace.cli import main
    from geomtrace.phases import trajectory_shift
    from geomtrace.replay import ResultsStore, export_csv

    repo = "EleutherAI/pythia-paired-fake"
    make_fake_hub_model(os.environ["HF_HOME"], repo, ("step1", "step2", "step3"))
    argv = ["replay", "--model", repo, "--revisions", "step1,step2,step3", "--num-sequences", "24"]
    argv += ["--max-tokens", "32", "--no-progress", "--fit-range", "2:16", "--no-tensorboard", "--quiet"]
    argv += ["--output", str(tmp_path), "--measure.uncertainty", "jackknife", "--measure.uncertainty-groups", "4"]
    assert main(argv) == 0
    records = sorted(ResultsStore(tmp_path).records(), key=lambda r: r["step"])
    assert all(len(r["rankme_replicates"]) == 4 and len(r["alpha_replicates"]) == 4 for r in records)
    trajectory = trajectory_from_rows(records)
    assert trajectory.rankme_replicates is not None and trajectory.rankme_replicates.shape == (3, 4)
    first, last = (
        {
            name: r[name]
            for name in ("rankme", "rankme_se", "rankme_replicates", "alpha", "alpha_se", "alpha_replicates")
        }
        for r in (records[0], records[-1])
    )
    moved = shift(first, last)
    assert moved.paired
    assert moved.rankme_change_se == pytest.approx(
        paired_jackknife_se(first["rankme_replicates"], last["rankme_replicates"])
    )
    assert trajectory_shift(trajectory.rankme).rankme_change == pytest.approx(moved.rankme_change)
    # the CSV export keeps its scalar columns: the lists stay in records.jsonl
    header = export_csv(ResultsStore(tmp_path), tmp_path / "records.csv").read_text().splitlines()[0]
    assert "rankme_se" in header and "replicates" not in header
