"""Phase detection on synthetic trajectories with known phase boundaries."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from geomtrace._warnings import GeometryWarning
from geomtrace.phases import (
    NO_ERROR_BARS,
    PHASE_CODES,
    PHASES,
    GeometryShift,
    Phase,
    PhaseSegment,
    current_phase,
    detect_phases,
    format_segments,
    log_step,
    shift,
    trajectory_shift,
)

SEEDS = range(5)
THREE = ["warmup", "entropy-seeking", "compression-seeking"]


def pythia_steps(every: int = 3000) -> np.ndarray:
    """Pythia's checkpoints: 0, 1, 2, 4, ..., 512, then 1000..143000 (subsampled)."""
    return np.array([0] + [2**i for i in range(10)] + list(range(1000, 143001, every)))


def piecewise(axis: np.ndarray, knots: list[int], values: list[float]) -> np.ndarray:
    """Piecewise linear in ``axis`` through ``values`` at measurement indices ``knots``."""
    return np.interp(axis, axis[knots], values)


# RankMe 200 -> 40 (collapse) -> 90 (expansion) -> 60 (compression); alpha mirrors it.
LOG_RANKME = [np.log(200.0), np.log(40.0), np.log(90.0), np.log(60.0)]
ALPHA = [0.6, 1.1, 0.8, 1.0]


def three_phase(steps, knots, sigma, seed, axis="log", with_alpha=True):
    rng = np.random.default_rng(seed)
    t = log_step(steps) if axis == "log" else np.arange(len(steps), dtype=float)
    rankme = np.exp(piecewise(t, knots, LOG_RANKME) + rng.normal(0, sigma, len(steps)))
    alpha = piecewise(t, knots, ALPHA) + rng.normal(0, sigma, len(steps)) if with_alpha else None
    return rankme, alpha


def assert_boundaries(segs: list[PhaseSegment], names: list[str], truth: list[int]) -> None:
    assert [s.name for s in segs] == names
    found = [s.start_index for s in segs[1:]]
    assert all(abs(f - t) <= 1 for f, t in zip(found, truth)), (found, truth)
    # Segments tile the run and share their boundary measurement.
    for a, b in zip(segs, segs[1:]):
        assert a.end_index == b.start_index and a.end_step == b.start_step


# ----------------------------------------------------------------------------- boundaries


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("with_alpha", [True, False])
@pytest.mark.parametrize("every", [1000, 3000])
def test_three_phases_pythia_log_spaced(seed, with_alpha, every):
    steps = pythia_steps(every)
    knots = [0, 9, 16, len(steps) - 1]  # collapse until step 256, expansion until 13000/16000
    rankme, alpha = three_phase(steps, knots, 0.02, seed, with_alpha=with_alpha)
    segs = detect_phases(steps, rankme, alpha)
    assert_boundaries(segs, THREE, knots[1:-1])
    assert segs[0].rankme_change < 0 < segs[1].rankme_change
    assert segs[2].rankme_change < 0
    if with_alpha:
        assert segs[0].alpha_change > 0 > segs[1].alpha_change
        assert min(s.confidence for s in segs) > 0.9
    else:
        assert all(s.alpha_change is None for s in segs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("axis", ["log", "index"])
def test_three_phases_linear_steps(seed, axis):
    # Evenly spaced evaluations; trends linear in log-step or linear in step.
    steps = np.arange(60) * 500
    knots = [0, 6, 20, 59]
    rankme, alpha = three_phase(steps, knots, 0.02, seed, axis=axis)
    assert_boundaries(detect_phases(steps, rankme, alpha), THREE, knots[1:-1])


@pytest.mark.parametrize("seed", SEEDS)
def test_three_phases_uneven_steps(seed):
    rng = np.random.default_rng(100 + seed)
    steps = np.concatenate([[0], np.cumsum(rng.integers(1, 50, size=79))])
    knots = [0, 12, 30, 79]
    rankme, alpha = three_phase(steps, knots, 0.02, seed)
    assert_boundaries(detect_phases(steps, rankme, alpha), THREE, knots[1:-1])


@pytest.mark.parametrize("seed", SEEDS)
def test_plateau_is_stable(seed):
    # Expansion that stops: entropy-seeking, then a plateau reported as stable.
    steps = np.arange(50) * 100
    rng = np.random.default_rng(seed)
    y = piecewise(np.arange(50.0), [0, 20, 49], [np.log(30.0), np.log(60.0), np.log(60.0)])
    segs = detect_phases(steps, np.exp(y + rng.normal(0, 0.01, 50)), allow_warmup=False)
    assert_boundaries(segs, ["entropy-seeking", "stable"], [20])


# ----------------------------------------------------------------------------- no invented phases


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [12, 60, 150])
def test_flat_noise_is_stable(seed, n):
    rng = np.random.default_rng(seed)
    steps = np.arange(n) * 10
    rankme = 50.0 * np.exp(rng.normal(0, 0.02, n))
    alpha = 0.9 + rng.normal(0, 0.02, n)
    segs = detect_phases(steps, rankme, alpha)
    assert [s.name for s in segs] == ["stable"]
    assert (segs[0].start_index, segs[0].end_index) == (0, n - 1)
    assert segs[0].confidence > 0.3


@pytest.mark.parametrize("seed", SEEDS)
def test_monotone_increase_is_entropy_seeking_only(seed):
    steps = pythia_steps(5000)
    rng = np.random.default_rng(seed)
    y = np.linspace(np.log(20.0), np.log(60.0), len(steps)) + rng.normal(0, 0.02, len(steps))
    segs = detect_phases(steps, np.exp(y))
    assert [s.name for s in segs] == ["entropy-seeking"]
    assert segs[0].rankme_change == pytest.approx(np.log(3.0), abs=0.1)


@pytest.mark.parametrize("seed", SEEDS)
def test_monotone_decrease_from_start_is_warmup_only(seed):
    steps = np.arange(40) * 50
    rng = np.random.default_rng(seed)
    y = np.linspace(np.log(80.0), np.log(30.0), 40) + rng.normal(0, 0.02, 40)
    assert [s.name for s in detect_phases(steps, np.exp(y))] == ["warmup"]
    # Not from initialisation (e.g. RLVR after SFT): the same fall is compression-seeking.
    segs = detect_phases(steps, np.exp(y), allow_warmup=False)
    assert [s.name for s in segs] == ["compression-seeking"]


def test_noiseless_input_uses_noise_floor():
    steps = pythia_steps(3000)
    knots = [0, 9, 16, len(steps) - 1]
    rankme, alpha = three_phase(steps, knots, 0.0, 0)
    assert_boundaries(detect_phases(steps, rankme, alpha), THREE, knots[1:-1])
    segs = detect_phases(np.arange(20), np.full(20, 7.0))
    assert [s.name for s in segs] == ["stable"] and segs[0].confidence == 1.0


def test_alpha_alone_moves_and_alpha_disagreement_lowers_confidence():
    rng = np.random.default_rng(0)
    steps = np.arange(40) * 50
    flat_rankme = 40.0 * np.exp(rng.normal(0, 0.01, 40))
    rising_alpha = np.linspace(0.8, 1.0, 40) + rng.normal(0, 0.01, 40)
    # Alpha rising alone is not the paper's compression signature (RankMe down *with* alpha up)...
    segs = detect_phases(steps, flat_rankme, rising_alpha, allow_warmup=False)
    assert [s.name for s in segs] == ["stable"]
    assert "RankMe does not fall" in segs[0].note and "signature" in segs[0].note
    # ...unless the signature is not required: then alpha alone names it.
    segs = detect_phases(steps, flat_rankme, rising_alpha, allow_warmup=False, require_signature=False)
    assert [s.name for s in segs] == ["compression-seeking"]
    assert segs[0].confidence <= 0.5  # secondary metric only

    steps = pythia_steps(3000)
    knots = [0, 9, 16, len(steps) - 1]
    rankme, alpha = three_phase(steps, knots, 0.02, 1)
    loose = {"require_signature": False}
    agree = detect_phases(steps, rankme, alpha, **loose)
    against = detect_phases(steps, rankme, 2.0 - alpha, **loose)  # alpha moving the "wrong" way
    alone = detect_phases(steps, rankme)
    assert [s.name for s in against] == THREE == [s.name for s in alone]
    for a, b, c in zip(agree, against, alone):
        assert a.confidence > c.confidence > b.confidence
    # Without alpha the name stays, and says the signature is unconfirmed.
    assert "alpha not measured" in alone[2].note
    # By default the fall against alpha is not named compression, and says which part is missing.
    strict = detect_phases(steps, rankme, 2.0 - alpha)
    assert [s.name for s in strict] == ["warmup", "entropy-seeking", "stable"], strict
    assert "RankMe falls" in strict[2].note and "alpha does not rise" in strict[2].note


def test_invariant_to_rankme_scale_and_step_units():
    steps = pythia_steps(3000)
    knots = [0, 9, 16, len(steps) - 1]
    rankme, alpha = three_phase(steps, knots, 0.02, 3)
    base = detect_phases(steps, rankme, alpha)
    scaled = detect_phases(steps * 2048 * 1024, rankme * 3.0, alpha)  # tokens, other scale
    assert [(s.name, s.start_index, s.end_index) for s in base] == [
        (s.name, s.start_index, s.end_index) for s in scaled
    ]


def test_deterministic():
    steps = pythia_steps(3000)
    rankme, alpha = three_phase(steps, [0, 9, 16, len(steps) - 1], 0.03, 4)
    assert detect_phases(steps, rankme, alpha) == detect_phases(list(steps), list(rankme), list(alpha))


# ----------------------------------------------------------------------------- input handling


def test_nan_points_dropped_with_warning_and_indices_refer_to_input():
    steps = pythia_steps(3000)
    knots = [0, 9, 16, len(steps) - 1]
    rankme, alpha = three_phase(steps, knots, 0.02, 0)
    rankme[30] = np.nan
    alpha[40] = np.inf
    with pytest.warns(GeometryWarning, match="dropped 2"):
        segs = detect_phases(steps, rankme, alpha)
    assert_boundaries(segs, THREE, knots[1:-1])
    assert segs[-1].end_index == len(steps) - 1 and segs[-1].n_points == len(steps) - 16 - 2


def test_all_nan_alpha_is_ignored_with_warning():
    steps = np.arange(30)
    with pytest.warns(GeometryWarning, match="alpha is NaN everywhere"):
        segs = detect_phases(steps, np.linspace(10, 20, 30), np.full(30, np.nan))
    assert [s.name for s in segs] == ["entropy-seeking"] and segs[0].alpha_change is None


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([0, 1, 2], [1.0, 2.0]), {}, "lengths differ"),
        (([0, 1, 2], [1.0, 2.0, 3.0], [0.5]), {}, "alpha lengths differ"),
        (([0, 2, 1, 3, 4], [1.0] * 5), {}, "strictly increasing"),
        (([0, 1, 1, 3, 4], [1.0] * 5), {}, "strictly increasing"),
        (([-5, 1, 2, 3, 4], [1.0] * 5), {}, ">= 0"),
        (([0, 1, 2, 3, 4], [1.0, 0.0, 1.0, 1.0, 1.0]), {}, "positive"),
        (([[0, 1]], [[1.0, 2.0]]), {}, "one-dimensional"),
        (([0, 1, 2, 3, 4], [1.0] * 5), {"smoothing": 2}, "smoothing"),
        (([0, 1, 2, 3, 4], [1.0] * 5), {"enter_threshold": 0}, "enter_threshold"),
        (([0, 1, 2, 3, 4], [1.0] * 5), {"exit_threshold": 5.0}, "exit_threshold"),
        (([0, 1, 2, 3, 4], [1.0] * 5), {"min_segment_length": 1}, "min_segment_length"),
        (([0, 1, 2, 3, 4], [1.0] * 5), {"noise_floor": 0.0}, "noise_floor"),
        (([0, 1, 2, 3, 4], [1.0] * 5), {"min_points": 2}, "min_points"),
        (([0, 1, 2, 3, 4], [1.0] * 5), {"flat_rankme_change": -0.1}, "flat_rankme_change"),
    ],
)
def test_validation_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        detect_phases(*args, **kwargs)


def test_too_few_points():
    assert detect_phases([], []) == []
    segs = detect_phases([0, 10, 20], [50.0, 30.0, 20.0])
    assert [(s.name, s.confidence, s.start_step, s.end_step) for s in segs] == [("stable", 0.0, 0, 20)]
    assert current_phase([0, 10, 20], [50.0, 30.0, 20.0]) is None
    assert current_phase([], []) is None


def test_current_phase_is_last_segment():
    steps = pythia_steps(3000)
    rankme, alpha = three_phase(steps, [0, 9, 16, len(steps) - 1], 0.02, 2)
    now = current_phase(steps, rankme, alpha)
    assert now == detect_phases(steps, rankme, alpha)[-1]
    assert now.name == "compression-seeking" and now.code == PHASE_CODES[now.name] == 3
    # Live: mid-expansion, the current phase is entropy-seeking.
    assert current_phase(steps[:15], rankme[:15], alpha[:15]).name == "entropy-seeking"
    assert current_phase(steps, rankme, alpha, min_points=10_000) is None


def test_phase_codes_and_to_dict():
    assert PHASE_CODES == {"stable": 0, "warmup": 1, "entropy-seeking": 2, "compression-seeking": 3}
    seg = detect_phases(np.arange(30), np.linspace(10, 20, 30))[0]
    d = seg.to_dict()
    json.dumps(d)
    assert d["name"] == "entropy-seeking" and d["code"] == 2 and d["start_step"] == 0
    with pytest.raises(AttributeError):
        seg.name = "stable"  # frozen


def test_format_segments_table():
    steps = pythia_steps(3000)
    rankme, alpha = three_phase(steps, [0, 9, 16, len(steps) - 1], 0.02, 0)
    segs = detect_phases(steps, rankme, alpha)
    text = format_segments(segs)
    lines = text.splitlines()
    for col in ("phase", "start step", "end step", "confidence", "RankMe change", "alpha change"):
        assert col in lines[0]
    assert len(lines) == 3 + len(segs)
    assert lines[2].startswith("warmup") and "142000" in lines[-2] and "%" in lines[2]
    # The last line says how the values were measured and that they carried no error bars.
    assert lines[-1] == "measured centring unknown (no spectrum recorded); " + NO_ERROR_BARS
    assert "-" in format_segments(detect_phases(np.arange(10), np.full(10, 3.0))).splitlines()[-2]
    assert "no phases" in format_segments([])
    # With a spectrum and standard errors: centred or not, and the changes with their errors.
    se = np.full(len(steps), 0.01) * rankme
    text = format_segments(detect_phases(steps, rankme, alpha, rankme_se=se, spectrum="singular"))
    assert text.splitlines()[-1].startswith("measured uncentred (spectrum='singular'); ± = combined standard error")
    assert "% ± 1.4" in text  # sqrt(2) x 1% at the two ends


# ----------------------------------------------------------------------------- shift


@pytest.mark.parametrize(
    ("before", "after", "direction"),
    [
        ({"rankme": 44.1, "alpha": 0.91}, {"rankme": 51.3, "alpha": 0.84}, "entropy-seeking"),  # SFT/DPO
        ({"rankme": 44.0, "alpha": 0.80}, {"rankme": 40.0, "alpha": 0.90}, "compression-seeking"),  # RLVR
        ({"rankme": 44.0, "alpha": 0.80}, {"rankme": 50.0, "alpha": 0.80}, "entropy-seeking"),
        ({"rankme": 44.0, "alpha": 0.80}, {"rankme": 44.1, "alpha": 0.75}, "entropy-seeking"),  # alpha only
        ({"rankme": 44.0, "alpha": 0.80}, {"rankme": 44.1, "alpha": 0.85}, "compression-seeking"),
        ({"rankme": 44.0, "alpha": 0.80}, {"rankme": 44.2, "alpha": 0.805}, "none"),
        ({"rankme": 44.0, "alpha": 0.80}, {"rankme": 50.0, "alpha": 0.90}, "mixed"),
        ({"rankme": 44.0, "alpha": 0.80}, {"rankme": 40.0, "alpha": 0.70}, "mixed"),
        ({"rankme": 44.0}, {"rankme": 40.0}, "compression-seeking"),
        ({"rankme": 44.0}, {"rankme": 44.1}, "none"),
    ],
)
def test_shift_directions(before, after, direction):
    assert shift(before, after).direction == direction


def test_shift_fields_summary_and_objects():
    res = shift(SimpleNamespace(rankme=44.1, alpha=0.91), SimpleNamespace(rankme=51.3, alpha=0.84))
    assert isinstance(res, GeometryShift)
    assert res.rankme_change == pytest.approx(7.2)
    assert res.rankme_rel_change == pytest.approx(7.2 / 44.1)
    assert res.alpha_change == pytest.approx(-0.07)
    assert res.summary() == (
        "entropy-seeking: RankMe 44.1 -> 51.3 (+16.3%), alpha 0.91 -> 0.84 (-0.07) "
        "[no error bars available: the direction is by tolerance alone]"
    )
    assert res.rankme_change_se is None and res.noise_factor is None
    json.dumps(res.to_dict())
    no_alpha = shift({"rankme": 44.0, "alpha": float("nan")}, {"rankme": 40.0, "alpha": 0.9})
    assert no_alpha.alpha_change is None and "alpha" not in no_alpha.summary()
    # A wider tolerance turns a small change into "none".
    assert shift({"rankme": 44.0}, {"rankme": 45.0}, tolerance=0.05).direction == "none"
    small_alpha = shift({"rankme": 44, "alpha": 0.8}, {"rankme": 44, "alpha": 0.83}, alpha_tolerance=0.05)
    assert small_alpha.direction == "none"


def test_shift_validation():
    with pytest.raises(ValueError, match="rankme"):
        shift({"alpha": 0.8}, {"rankme": 40.0})
    with pytest.raises(ValueError, match="positive"):
        shift({"rankme": 0.0}, {"rankme": 40.0})
    with pytest.raises(ValueError, match="tolerance"):
        shift({"rankme": 1.0}, {"rankme": 2.0}, tolerance=-1)


def test_trajectory_shift():
    rng = np.random.default_rng(0)
    rankme = np.linspace(40, 48, 50) + rng.normal(0, 0.3, 50)
    alpha = np.linspace(0.9, 0.8, 50) + rng.normal(0, 0.005, 50)
    res = trajectory_shift(rankme, alpha, edge=5)
    assert res.direction == "entropy-seeking"
    assert res.rankme_before == pytest.approx(rankme[:5].mean())
    assert trajectory_shift([40.0, np.nan, 40.1]).direction == "none"
    with pytest.raises(ValueError, match="at least 2"):
        trajectory_shift([40.0])


def test_no_warnings_on_clean_input():
    steps = pythia_steps(3000)
    rankme, alpha = three_phase(steps, [0, 9, 16, len(steps) - 1], 0.02, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detect_phases(steps, rankme, alpha)


@pytest.mark.parametrize("seed", SEEDS)
def test_isolated_spike_is_ignored(seed):
    rng = np.random.default_rng(seed)
    y = np.log(50.0) + rng.normal(0, 0.02, 60)
    y[rng.integers(5, 55)] += 0.3  # one bad measurement (15 sigma)
    with pytest.warns(GeometryWarning, match="ignored 1 outlier"):
        segs = detect_phases(np.arange(60) * 10, np.exp(y))
    assert [s.name for s in segs] == ["stable"]
    assert segs[0].n_points == 59 and segs[0].end_index == 59


def test_smooth_noiseless_curve_flags_no_outliers():
    # Strongly curved but clean: turning points and bends must not be taken for spikes.
    steps = pythia_steps(1000)
    x = log_step(steps)
    y = np.log(40) + np.log(5) * np.exp(-x / 1.5) + 0.8 * np.exp(-(((x - 8) / 1.0) ** 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segs = detect_phases(steps, np.exp(y))
    # The tail approaches 40 from 41 (-2.7% over two thirds of the run): below the effect
    # size (min_rankme_change 5%), a plateau.
    assert [s.name for s in segs] == [*THREE, "stable"]
    assert y[segs[3].start_index] - y[-1] < np.log(1.05)
    assert abs(segs[0].end_index - np.argmin(y[:20])) <= 1  # bottom of the collapse
    assert abs(segs[1].end_index - np.argmax(y[11:]) - 11) <= 1  # top of the bump


# ----------------------------------------------------------------------------- real trajectory

# RankMe / alpha-ReQ measured live on the pretraining demo: a short plateau, a sharp
# collapse to step 16, then a long expansion (entropy-seeking) to step 400.
REAL_STEPS = [0, 1, 2, 4, 8, 16, 25, 32, 50, 64, 75, 100, 125, 150, 175, 200, 225, 250, 275, 300, 325, 350, 375, 400]
REAL_RANKME = [22.6, 22.4, 22.0, 20.5, 12.3, 2.0, 3.0, 3.3, 7.3, 9.7, 10.3, 10.4, 12.5, 14.9, 16.4, 19.5, 21.4, 23.1,
               25.6, 27.2, 27.3, 28.8, 29.3, 30.0]  # fmt: skip
REAL_ALPHA = [1.925, 1.925, 1.925, 1.923, 1.876, 1.864, 2.202, 2.435, 2.966, 3.102, 3.141, 3.086, 2.94, 2.794, 2.661,
              2.583, 2.465, 2.388, 2.326, 2.259, 2.22, 2.186, 2.163, 2.141]  # fmt: skip


def test_real_trajectory_full():
    segs = detect_phases(REAL_STEPS, REAL_RANKME, REAL_ALPHA)
    assert [s.name for s in segs] == ["warmup", "entropy-seeking"]
    assert segs[0].end_step in (16, 25)  # the bottom (16), within one measurement
    assert segs[0].rankme_change < 0 < segs[1].rankme_change


def _raw_rel_change(seg: PhaseSegment) -> float:
    return REAL_RANKME[seg.end_index] / REAL_RANKME[seg.start_index] - 1.0


@pytest.mark.parametrize("n", range(9, len(REAL_STEPS) + 1))
def test_real_trajectory_prefixes(n):
    # What the live tracker sees: current_phase on a growing prefix.
    segs = detect_phases(REAL_STEPS[:n], REAL_RANKME[:n], REAL_ALPHA[:n])
    assert current_phase(REAL_STEPS[:n], REAL_RANKME[:n], REAL_ALPHA[:n]) == segs[-1]
    for k, seg in enumerate(segs):
        for rel in (math.expm1(seg.rankme_change), _raw_rel_change(seg)):
            if abs(rel) > 0.5:
                assert seg.name != "stable", segs
            if abs(rel) > 0.25 and seg is segs[-1]:
                expected = "entropy-seeking" if rel > 0 else ("warmup" if k == 0 else "compression-seeking")
                assert seg.name == expected, segs
    # Already at 9 points the V is two segments, not one warmup (or stable) segment.
    assert [s.name for s in segs] == ["warmup", "entropy-seeking"], segs
    assert segs[0].end_step in (16, 25), segs


# ----------------------------------------------------------------------------- RankMe rules over alpha


@pytest.mark.parametrize("seed", SEEDS)
def test_alpha_never_names_a_segment_against_rankme(seed):
    # Very noisy RankMe rising 20% (not significant), alpha rising cleanly (compression):
    # alpha alone may not call this compression-seeking.
    rng = np.random.default_rng(seed)
    n = 30
    steps = np.arange(n) * 100
    y = np.linspace(np.log(40.0), np.log(48.0), n) + rng.normal(0, 0.15, n)
    alpha = np.linspace(0.8, 1.1, n) + rng.normal(0, 0.005, n)
    for segs in (detect_phases(steps, np.exp(y), alpha, allow_warmup=False),
                 detect_phases(steps, np.exp(y), alpha, allow_warmup=False, outlier_threshold=None)):  # fmt: skip
        for seg in segs:
            rel = math.expm1(seg.rankme_change)
            if rel >= 0.10:
                assert seg.name in ("entropy-seeking", "stable"), segs
            if rel <= -0.10:
                assert seg.name != "entropy-seeking", segs
    # With a small RankMe change alpha still decides (test_alpha_alone_moves_... above);
    # a wider flat_rankme_change lets it decide here too.
    segs = detect_phases(steps, np.exp(y), alpha, allow_warmup=False, flat_rankme_change=1.0, require_signature=False)
    assert "compression-seeking" in [s.name for s in segs]


@pytest.mark.parametrize("seed", SEEDS)
def test_large_rankme_move_is_never_stable_or_against_rankme(seed):
    # Huge measurement noise (sigma 0.25 in log RankMe) hides a doubling from the
    # t-statistics; a factor >= 1.5 still names the segment by RankMe's direction.
    rng = np.random.default_rng(seed)
    n = 12
    steps = np.arange(n) * 100
    y = np.linspace(np.log(20.0), np.log(60.0), n) + rng.normal(0, 0.25, n)
    alpha = np.linspace(0.8, 1.1, n) + rng.normal(0, 0.005, n)  # alpha up: "compression"
    segs = detect_phases(steps, np.exp(y), alpha, allow_warmup=False)
    for seg in segs:
        rel = math.expm1(seg.rankme_change)
        if rel >= 0.5:
            assert seg.name == "entropy-seeking", segs
        if abs(rel) > 0.5:
            assert seg.name != "stable", segs


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_after", [3, 4, 6, 10])
def test_sharp_v_on_few_points_is_split(seed, n_after):
    # A collapse and recovery sampled on few points: the local fits straddle the turn
    # and the noise estimate is inflated, but the V is still two phases.
    rng = np.random.default_rng(seed)
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048][: 6 + n_after])
    x = log_step(steps)
    y = np.interp(x, [x[0], x[5], x[-1]], [np.log(30.0), np.log(3.0), np.log(12.0 + n_after)])
    segs = detect_phases(steps, np.exp(y + rng.normal(0, 0.02, len(steps))))
    assert [s.name for s in segs] == ["warmup", "entropy-seeking"], segs
    assert abs(segs[0].end_index - 5) <= 1


# ----------------------------------------------------------------------------- language-model runs

# Three small causal LMs trained on CPU on held-out-split docstrings (docs/phases.md,
# "Looking for the third phase"): RankMe on 512 probes every 25-50 steps; run3's alpha is
# recomputed from its saved spectra without the round-off eigenvalue (run1/run2 saved only
# the top 8, and their logged alpha alternates between two values: RankMe alone).
LM_RUNS = json.loads((Path(__file__).parent / "data" / "lm_runs.json").read_text())


@pytest.mark.parametrize(
    "run, names, first_end, last_start",
    [
        ("run1", ["warmup", "entropy-seeking"], (32, 64), None),  # cut at step 200
        ("run2", ["warmup", "entropy-seeking", "stable"], (32, 64), (500, 950)),  # plateau 17.3
        ("run3", ["warmup", "entropy-seeking", "stable"], (50, 75), (700, 1000)),  # slow -5%, alpha flat
    ],
)
def test_language_model_runs(run, names, first_end, last_start):
    rec = LM_RUNS[run]
    segs = detect_phases(rec["step"], rec["rankme"], rec.get("alpha"))
    assert [s.name for s in segs] == names, segs
    assert first_end[0] <= segs[0].end_step <= first_end[1]
    if last_start is not None:
        assert last_start[0] <= segs[-1].start_step <= last_start[1]
        # The plateau is no trend: as measured, RankMe moves less than 10% over it.
        assert abs(math.expm1(segs[-1].rankme_change)) < 0.1


def test_language_model_run_prefixes():
    # What the live tracker would have said during run3: warmup, then entropy-seeking, then
    # at most a weak compression (the slow -5% drift of RankMe, alpha not confirming, named
    # around step 3000 and stable again later), never a large or confident one.
    # The run's lr warmup was 100 steps: live, the tracker cannot know the run's length, so the
    # fall from step 16 is warmup by that hint (without it, at step 325 of a run so far, it
    # starts after warmup_fraction of the run: test_warmup_is_positional).
    rec = LM_RUNS["run3"]
    for n in range(20, len(rec["step"]) + 1, 15):
        segs = detect_phases(rec["step"][:n], rec["rankme"][:n], rec["alpha"][:n], warmup_steps=100)
        trends = [s for s in segs if s.name != "stable"]
        assert [s.name for s in trends[:2]] == ["warmup", "entropy-seeking"], (n, segs)
        for seg in trends[2:]:
            assert seg.name == "compression-seeking", (n, segs)
            if seg.name == "compression-seeking":
                assert seg.confidence < 0.5 and math.expm1(seg.rankme_change) > -0.1, (n, segs)


def test_plateau_after_a_rounded_knee_is_stable():
    # A rise that decelerates into a plateau (run2's shape, noiseless): the knee's tail is
    # part of the plateau, not a slow drift that continues the trend.
    steps = np.arange(0, 2001, 50)
    rankme = 3.0 + 14.0 * (1 - np.exp(-steps / 250.0))
    segs = detect_phases(steps, rankme, allow_warmup=False)
    assert [s.name for s in segs] == ["entropy-seeking", "stable"], segs
    assert 500 <= segs[1].start_step <= 1400  # RankMe within 5% of the plateau from step 700


@pytest.mark.parametrize("seed", SEEDS)
def test_significant_but_tiny_moves_are_stable(seed):
    # Noiseless-ish drift of 3% (a full-batch toy, a replay of fixed checkpoints): significant,
    # below the effect size (min_rankme_change 5%): stable, with a high confidence.
    rng = np.random.default_rng(seed)
    steps = np.arange(60) * 10
    rankme = 20.0 * np.exp(np.linspace(0, 0.03, 60) + rng.normal(0, 1e-4, 60))
    segs = detect_phases(steps, rankme)
    assert [s.name for s in segs] == ["stable"] and segs[0].confidence > 0.3
    # The same drift is a trend once the effect size allows it.
    assert [s.name for s in detect_phases(steps, rankme, min_rankme_change=0.01)] == ["entropy-seeking"]


def test_flat_start_then_collapse_is_warmup():
    # The first steps barely move RankMe (small initialisation), then it collapses.
    steps = np.array([0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128])
    rankme = np.array([20, 20, 20, 20, 19.9, 18, 14, 9, 6, 5, 5.5, 7, 9, 12, 15], dtype=float)
    names = [s.name for s in detect_phases(steps, rankme)]
    assert names in (["stable", "warmup", "entropy-seeking"], ["warmup", "entropy-seeking"]), names
    assert [s.name for s in detect_phases(steps, rankme, allow_warmup=False)][-2:] == [
        "compression-seeking", "entropy-seeking"]  # fmt: skip


def test_alpha_alone_is_never_warmup():
    # Issue 9 item 6 (detector side): RankMe flat, alpha moving, from the first measurement.
    rng = np.random.default_rng(0)
    steps = np.arange(40) * 50
    flat_rankme = 40.0 * np.exp(rng.normal(0, 0.01, 40))
    rising_alpha = np.linspace(0.8, 1.0, 40) + rng.normal(0, 0.01, 40)
    segs = detect_phases(steps, flat_rankme, rising_alpha, require_signature=False)  # allow_warmup=True
    assert [s.name for s in segs] == ["compression-seeking"]


@pytest.mark.parametrize("seed", range(10))
def test_pure_noise_is_not_alternating_phases(seed):
    # Issue 9: RankMe drawn at random (a factor 30 apart) gave up to 7 alternating "phases"
    # with no warning. Now: at most two turns, and more than one trend comes with a warning
    # that says it is mostly noise.
    rng = np.random.default_rng(seed)
    n = 30
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        segs = detect_phases(np.arange(n) * 10, rng.uniform(1, 30, n), rng.uniform(0.5, 2, n))
    trends = [s.name for s in segs if s.name != "stable"]
    assert len(trends) <= 3, segs
    if len(trends) > 1:
        assert any("scatters" in str(w.message) for w in caught), [str(w.message) for w in caught]


# ----------------------------------------------------------------------------- DetectorOptions


def test_detector_options_are_the_keywords_of_detect_phases():
    import inspect
    from dataclasses import fields

    from geomtrace.phases import DetectorOptions

    names = [f.name for f in fields(DetectorOptions)]
    assert names == [
        "smoothing",
        "enter_threshold",
        "exit_threshold",
        "min_segment_length",
        "noise_floor",
        "min_points",
        "allow_warmup",
        "outlier_threshold",
        "flat_rankme_change",
        "min_rankme_change",
        "min_alpha_change",
        "noise_factor",
        "warmup_steps",
        "warmup_fraction",
        "transient_points",
        "require_signature",
    ]
    assert DetectorOptions().to_dict() == {
        "smoothing": 7,
        "enter_threshold": 4.0,
        "exit_threshold": 2.0,
        "min_segment_length": 3,
        "noise_floor": 1e-3,
        "min_points": 5,
        "allow_warmup": True,
        "outlier_threshold": 4.0,
        "flat_rankme_change": 0.1,
        "min_rankme_change": 0.05,
        "min_alpha_change": 0.05,
        "noise_factor": 2.0,
        "warmup_steps": None,
        "warmup_fraction": 0.05,
        "transient_points": 7,
        "require_signature": True,
    }
    params = inspect.signature(detect_phases).parameters
    assert list(params) == [
        "steps",
        "rankme",
        "alpha",
        "options",
        "rankme_se",
        "alpha_se",
        "spectrum",
        "rankme_replicates",
        "alpha_replicates",
        "overrides",
    ]
    # Every field is documented once, on the class.
    doc = inspect.getdoc(DetectorOptions)
    assert all(f"    {name}: " in doc for name in names)


def test_options_object_and_keyword_overrides_agree():
    from dataclasses import fields

    from geomtrace.phases import DetectorOptions

    steps = pythia_steps(3000)
    rankme, alpha = three_phase(steps, [0, 9, 16, len(steps) - 1], 0.02, 0)
    opts = DetectorOptions(allow_warmup=False, smoothing=9)
    by_object = detect_phases(steps, rankme, alpha, opts)
    assert by_object == detect_phases(steps, rankme, alpha, allow_warmup=False, smoothing=9)
    assert by_object[0].name == "compression-seeking"
    # A keyword overrides the object's value; every field is accepted as a keyword.
    assert detect_phases(steps, rankme, alpha, opts, allow_warmup=True)[0].name == "warmup"
    for f in fields(DetectorOptions):
        detect_phases(steps, rankme, alpha, **{f.name: getattr(DetectorOptions(), f.name)})
    with pytest.raises(TypeError, match="unknown detector option.*smooth.*the options are smoothing"):
        detect_phases(steps, rankme, alpha, smooth=9)
    with pytest.raises(TypeError, match="DetectorOptions"):
        detect_phases(steps, rankme, alpha, 9)
    assert current_phase(steps, rankme, alpha, DetectorOptions(min_points=10_000)) is None


def test_detector_options_round_trip_and_validation():
    from geomtrace.phases import DetectorOptions

    opts = DetectorOptions(min_points=4, outlier_threshold=None, allow_warmup=False)
    assert DetectorOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts
    assert DetectorOptions.from_dict({"min_points": 6}) == DetectorOptions(min_points=6)
    with pytest.raises(ValueError, match="unknown detector option.*min_point.*the options are"):
        DetectorOptions.from_dict({"min_point": 6})
    with pytest.raises(ValueError, match="min_points"):
        DetectorOptions.from_dict({"min_points": 2})
    for bad, match in [
        ({"smoothing": 2.5}, "smoothing"),
        ({"allow_warmup": "no"}, "allow_warmup"),
        ({"enter_threshold": float("nan")}, "enter_threshold"),
        ({"min_alpha_change": -1}, "min_alpha_change"),
        ({"outlier_threshold": 0}, "outlier_threshold"),
        ({"min_segment_length": True}, "min_segment_length"),
    ]:
        with pytest.raises(ValueError, match=match):
            DetectorOptions(**bad).validate()
    with pytest.raises(AttributeError):
        opts.min_points = 5  # frozen


def test_too_few_points_report_the_measured_change():
    # Issue: with fewer than min_points the table printed "stable +0.0 %" while RankMe fell 75 %.
    from geomtrace.phases import DetectorOptions

    segs = detect_phases([0, 10, 20, 30], [40.0, 30.0, 20.0, 10.0], [1.0, 1.1, 1.2, 1.3])
    assert [(s.name, s.confidence, s.n_points) for s in segs] == [("stable", 0.0, 4)]
    assert math.expm1(segs[0].rankme_change) == pytest.approx(-0.75) and segs[0].alpha_change == pytest.approx(0.3)
    text = format_segments(segs)
    assert "too few measurements for phases: 4 of min_points 5" in text
    assert "RankMe -75.0%" in text and "alpha +0.300" in text and "stable" not in text
    # With the options they were detected with, min_points is theirs.
    segs = detect_phases(np.arange(8), np.linspace(40, 10, 8), min_points=10)
    assert "8 of min_points 10" in format_segments(segs, DetectorOptions(min_points=10))
    assert "too few" not in format_segments(detect_phases(np.arange(8), np.linspace(40, 10, 8)))


def test_phase_names_are_a_str_enum_and_records_stay_plain_strings():
    assert [Phase.STABLE, Phase.WARMUP, Phase.ENTROPY_SEEKING, Phase.COMPRESSION_SEEKING] == list(Phase)
    assert Phase.WARMUP == "warmup" and Phase("compression-seeking") is Phase.COMPRESSION_SEEKING
    assert f"{Phase.ENTROPY_SEEKING}" == str(Phase.ENTROPY_SEEKING) == "entropy-seeking"
    assert PHASES == ("stable", "warmup", "entropy-seeking", "compression-seeking")
    assert PHASE_CODES == {"stable": 0, "warmup": 1, "entropy-seeking": 2, "compression-seeking": 3}
    assert all(type(name) is str for name in PHASE_CODES) and PHASE_CODES[Phase.WARMUP] == Phase.WARMUP.code == 1
    assert json.dumps({Phase.WARMUP: Phase.STABLE}) == '{"warmup": "stable"}'
    steps = pythia_steps()
    x = np.log1p(steps)
    rankme = np.exp(piecewise(x, [0, 5, 20, len(x) - 1], [4.0, 2.5, 4.5, 3.5]))
    segments = detect_phases(steps, rankme)
    assert {seg.phase for seg in segments} <= set(Phase)
    # The segments hold the plain strings: records, pickles and checkpoint states carry no geomtrace class.
    assert all(type(seg.name) is str for seg in segments)
    assert json.loads(json.dumps([seg.to_dict() for seg in segments]))[0]["name"] == segments[0].name
    assert type(PhaseSegment(Phase.WARMUP, 0, 1, 0, 1, 0.5, -0.1).name) is str
    with pytest.raises(ValueError, match="plateau"):
        PhaseSegment("plateau", 0, 1, 0, 1, 0.5, 0.0)


# ----------------------------------------------------------------- issue 19: error bars, position, signature


def _small_rise(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """RankMe rising 8% over a noiseless-ish run: a trend by the trajectory's own scatter."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n) * 100
    return steps, 30.0 * np.exp(np.linspace(0.0, np.log(1.08), n) + rng.normal(0, 1e-3, n))


@pytest.mark.parametrize("seed", SEEDS)
def test_a_trend_within_its_standard_errors_is_within_noise(seed):
    steps, rankme = _small_rise(seed)
    plain = detect_phases(steps, rankme, allow_warmup=False)
    assert [s.name for s in plain] == ["entropy-seeking"]
    assert plain[0].rankme_change_se is None and "within noise" not in plain[0].note
    # Each value +-5%: the change (+8%) is within 2 x sqrt(2) x 5% = 14%: not a phase.
    noisy = detect_phases(steps, rankme, allow_warmup=False, rankme_se=0.05 * rankme)
    assert [s.name for s in noisy] == ["stable"], noisy
    assert noisy[0].note.startswith("within noise: RankMe +8.") and "below 2 x se" in noisy[0].note
    assert noisy[0].rankme_change_se == pytest.approx(math.hypot(0.05, 0.05))
    # +-1%: the change is beyond 2 x 1.4%: named, with its standard error.
    clear = detect_phases(steps, rankme, allow_warmup=False, rankme_se=list(0.01 * rankme))
    assert [s.name for s in clear] == ["entropy-seeking"] and clear[0].rankme_change_se == pytest.approx(0.01414, 1e-3)
    # The factor is the option: 6 x 1.4% = 8.5% > 8%.
    assert [
        s.name for s in detect_phases(steps, rankme, allow_warmup=False, rankme_se=0.01 * rankme, noise_factor=6.0)
    ] == ["stable"]
    # Live: the latest phase with the same errors.
    assert current_phase(steps, rankme, rankme_se=0.05 * rankme, allow_warmup=False).name == "stable"
    # Unknown errors (None / NaN) are no error bars at all.
    unknown = detect_phases(steps, rankme, allow_warmup=False, rankme_se=[None] * len(steps))
    assert [s.name for s in unknown] == ["entropy-seeking"] and unknown[0].rankme_change_se is None


def test_a_boundary_within_noise_is_not_named():
    # Collapse, then a 12% rise and a 12% fall (alpha flat): with 5% standard errors both are
    # within noise (2 x 7.1%), so only the collapse is a phase and the rest is one stable segment.
    steps = pythia_steps(3000)
    knots = [0, 9, 20, len(steps) - 1]
    rankme = np.exp(piecewise(log_step(steps), knots, [np.log(200), np.log(40), np.log(44.8), np.log(40)]))
    alpha = piecewise(log_step(steps), knots, [0.6, 1.1, 1.1, 1.1])
    loose = detect_phases(steps, rankme, alpha, require_signature=False)
    assert [s.name for s in loose] == THREE, loose
    gated = detect_phases(
        steps, rankme, alpha, rankme_se=0.05 * rankme, alpha_se=np.full(len(steps), 0.01), require_signature=False
    )
    assert [s.name for s in gated] == ["warmup", "stable"], gated
    assert "within noise" in gated[1].note and gated[1].alpha_change_se == pytest.approx(math.hypot(0.01, 0.01))


def test_warmup_is_positional():
    # Flat to step 400, then a fall to step 1000 of a 2000-step run: the first fall, but not at
    # the start of training (issue 19: a first fall at steps 418-971 was named warmup).
    steps = np.arange(0, 2001, 50)
    rankme = np.interp(steps, [0, 400, 1000, 2000], [20.0, 20.0, 8.0, 8.0])
    segs = detect_phases(steps, rankme)
    names = [s.name for s in segs]
    assert "warmup" not in names and "compression-seeking" in names, segs
    fall = segs[names.index("compression-seeking")]
    assert "after the start of training" in fall.note and "warmup_fraction 0.05" in fall.note
    # The lr warmup's length, where known, decides: a fall starting inside it is warmup.
    assert "warmup" in [s.name for s in detect_phases(steps, rankme, warmup_steps=500)]
    hinted = detect_phases(steps, rankme, warmup_steps=300)
    assert "warmup" not in [s.name for s in hinted] and any("lr warmup ends at step 300" in s.note for s in hinted)
    # So does a wider fraction of the run.
    assert "warmup" in [s.name for s in detect_phases(steps, rankme, warmup_fraction=0.25)]
    # A collapse from the first measurements is warmup as before.
    early = np.interp(steps, [0, 300, 2000], [20.0, 8.0, 8.0])
    assert detect_phases(steps, early)[0].name == "warmup"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("rise_end", "amp"), [(6, 1.17), (6, 1.2), (7, 1.14)])
def test_an_early_bump_does_not_turn_the_collapse_into_compression(seed, rise_end, amp):
    # Issue 19: a +14-20% bump at the start of the initial collapse (run3 rose 13.2 -> 14.6
    # before collapsing) was named entropy-seeking, so the collapse was compression-seeking.
    steps = np.array([0, 1, 2, 4, 8, 16, 25, 32, 50, 64, 75, 100, 125, 150, 175, 200, 250, 300, 400, 500, 600, 800])
    x = log_step(steps)
    knots = [0, 4, rise_end, rise_end + 4, len(x) - 1]
    values = [np.log(13), np.log(13), np.log(13 * amp), np.log(4), np.log(12)]
    rng = np.random.default_rng(seed)
    rankme = np.exp(np.interp(x, x[knots], values) + rng.normal(0, 0.005, len(x)))
    segs = detect_phases(steps, rankme)
    trends = [s.name for s in segs if s.name != "stable"]
    assert trends == ["warmup", "entropy-seeking"], segs
    if (rise_end, amp) == (6, 1.17):  # named entropy-seeking before the fix, for every seed
        assert segs[0].name == "stable" and "transient excursion" in segs[0].note, segs
    # Post-training (no warmup) the same rise is a phase of its own.
    assert detect_phases(steps, rankme, allow_warmup=False, transient_points=0)[0].name != "warmup"


@pytest.mark.parametrize("seed", SEEDS)
def test_a_short_bump_inside_a_fall_does_not_split_it(seed):
    # A fall with a short 30% rise in the middle, on an evenly spaced run: without merging the
    # bump splits the fall into fall / rise / fall (the second fall then "compression").
    rng = np.random.default_rng(seed)
    steps = np.arange(60) * 10
    t = np.arange(60, dtype=float)
    knots, values = (
        [0, 28, 31, 59],
        [np.log(100), np.log(100 * 0.85**28 / 0.85**28 * 0.35), np.log(0.35 * 100 * 1.3), np.log(3)],
    )
    y = np.interp(t, knots, values) + rng.normal(0, 0.003, 60)
    split = detect_phases(steps, np.exp(y), transient_points=0)
    assert [s.name for s in split if s.name != "stable"] == ["warmup", "entropy-seeking", "compression-seeking"], split
    merged = detect_phases(steps, np.exp(y))
    assert [s.name for s in merged if s.name != "stable"] == ["warmup"], merged


def test_spectrum_is_recorded_on_every_segment():
    steps = pythia_steps(3000)
    rankme, alpha = three_phase(steps, [0, 9, 16, len(steps) - 1], 0.02, 0)
    for spectrum, centred in (("covariance", True), ("singular", False), (None, None)):
        segs = detect_phases(steps, rankme, alpha, spectrum=spectrum)
        assert all(s.spectrum == spectrum and s.centred is centred for s in segs)
        assert all(s.to_dict()["centred"] is centred for s in segs)
    assert detect_phases(steps[:3], rankme[:3], spectrum="singular")[0].spectrum == "singular"
    with pytest.raises(ValueError, match="covariance"):
        detect_phases(steps, rankme, spectrum="centred")


def test_shift_with_standard_errors():
    before = {"rankme": 25.0, "alpha": 2.59, "rankme_se": 0.4, "alpha_se": 0.02}
    # DPO in docs/phases.md: 25.0 -> 24.1 (-3.8%), alpha +0.04: within 2 x se on both.
    small = shift(before, {"rankme": 24.1, "alpha": 2.63, "rankme_se": 0.4, "alpha_se": 0.02})
    assert small.direction == "within-noise"
    assert small.rankme_change_se == pytest.approx(math.hypot(0.4, 0.4)) and small.noise_factor == 2.0
    assert small.note.startswith("within noise: RankMe -0.9 (se 0.566), alpha +0.04 (se 0.0283)")
    assert "± 0.57" in small.summary() and "within noise" in small.summary()
    # Without error bars the same pair is named, and says so.
    bare = shift({"rankme": 25.0, "alpha": 2.59}, {"rankme": 24.1, "alpha": 2.63})
    assert bare.direction == "compression-seeking" and "no error bars" in bare.note
    # SFT: -31% is far beyond its noise.
    big = shift(before, {"rankme": 17.2, "alpha": 2.68, "rankme_se": 0.3, "alpha_se": 0.02})
    assert big.direction == "compression-seeking" and big.note == ""
    # Alpha within noise, RankMe beyond: RankMe alone decides.
    rank_only = shift(before, {"rankme": 28.0, "alpha": 2.62, "rankme_se": 0.4, "alpha_se": 0.02})
    assert rank_only.direction == "entropy-seeking" and "alpha +0.03" in rank_only.note
    # One side without an error: unknown, as without error bars.
    assert shift(before, {"rankme": 24.1, "alpha": 2.63}).rankme_change_se is None
    assert shift(before, {"rankme": 24.1, "alpha": 2.63}, noise_factor=1.0).direction == "compression-seeking"
    assert shift(before, {**before, "rankme": 24.1, "alpha": 2.63}, noise_factor=0.5).direction == "compression-seeking"
    with pytest.raises(ValueError, match="noise_factor"):
        shift(before, before, noise_factor=0)


def test_trajectory_carries_standard_errors_and_spectrum():
    from geomtrace.phases import trajectory_phases
    from geomtrace.trajectory import trajectory_from_rows

    steps, rankme = _small_rise(0)
    records = [
        {
            "step": int(s),
            "layer": 3,
            "rankme": float(r),
            "alpha": None,
            "rankme_se": 0.05 * float(r),
            "spectrum": "singular",
        }
        for s, r in zip(steps, rankme)
    ]
    trajectory = trajectory_from_rows(records)
    assert trajectory.spectrum == "singular" and trajectory.rankme_se is not None and trajectory.alpha_se is None
    segs = trajectory_phases(trajectory, allow_warmup=False)
    assert [s.name for s in segs] == ["stable"] and "within noise" in segs[0].note and segs[0].centred is False
    # Live rows: geometry/rankme_se beside geometry/rankme; no spectrum recorded there.
    rows = [
        {"step": int(s), "geometry/rankme": float(r), "geometry/rankme_se": 0.01 * float(r)}
        for s, r in zip(steps, rankme)
    ]
    live = trajectory_from_rows(rows)
    assert live.spectrum is None and np.allclose(live.rankme_se, 0.01 * rankme)
    assert [s.name for s in trajectory_phases(live, allow_warmup=False)] == ["entropy-seeking"]
    bare = trajectory_from_rows([{"step": int(s), "geometry/rankme": float(r)} for s, r in zip(steps, rankme)])
    assert bare.rankme_se is None


def test_a_metric_without_errors_is_judged_as_before():
    # Alpha's errors known, RankMe's not: a large RankMe rise is not "within noise" because
    # alpha is flat within its errors; RankMe counts by the detector's own rules.
    steps, rankme = _small_rise(1)
    alpha = np.full(len(steps), 1.0)
    segs = detect_phases(steps, rankme, alpha, allow_warmup=False, alpha_se=np.full(len(steps), 0.05))
    assert [s.name for s in segs] == ["entropy-seeking"] and segs[0].rankme_change_se is None
    assert segs[0].alpha_change_se == pytest.approx(math.hypot(0.05, 0.05))
    # With RankMe's errors known and large, the same rise is within noise.
    both = detect_phases(
        steps, rankme, alpha, allow_warmup=False, rankme_se=0.05 * rankme, alpha_se=np.full(len(steps), 0.05)
    )
    assert [s.name for s in both] == ["stable"] and "alpha +0.000 (se 0.071)" in both[0].note
