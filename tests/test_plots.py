"""geomtrace.plots: trajectory and eigenspectrum figures, atomic saving."""

from __future__ import annotations

import numpy as np
import pytest

from geomtrace.phases import PhaseSegment
from geomtrace.plots import eigenspectrum_figure, memorization_series, save_figure, trajectory_figure

STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128]


def _columns(scale: float = 1.0) -> dict[str, list[float]]:
    return {
        "step": STEPS,
        "rankme": [scale * (10 + i) for i in range(len(STEPS))],
        "alpha": [1.0 - 0.01 * i for i in range(len(STEPS))],
        "tokens": [s * 100 for s in STEPS],
        "n_params": [5000] * len(STEPS),
    }


def _records() -> list[dict]:
    return [
        {
            "key": f"step{s}",
            "step": s,
            "layer": layer,
            "rankme": float(10 * layer + i),
            "alpha": 1.0,
            "tokens": s * 100,
            "n_params": 5000,
            "probe_fingerprint": "f",
        }
        for i, s in enumerate(STEPS)
        for layer in (1, 2)
    ]


def test_trajectory_overlays_runs_on_two_panels():
    fig = trajectory_figure({"a": _columns(), "b": _columns(2.0)}, x="step")
    ax_r, ax_a = fig.axes
    assert [line.get_label() for line in ax_r.get_lines()] == ["a", "b"]
    assert len(ax_a.get_lines()) == 2
    np.testing.assert_array_equal(ax_r.get_lines()[1].get_ydata(), np.array(_columns(2.0)["rankme"]))
    assert ax_a.get_xscale() == "symlog"
    assert trajectory_figure({"a": _columns()}, log_x=False).axes[1].get_xscale() == "linear"


@pytest.mark.parametrize(
    "x, expected", [("tokens", [s * 100.0 for s in STEPS]), ("flops", [6.0 * 5000 * s * 100 for s in STEPS])]
)
def test_trajectory_x_axes(x, expected):
    fig = trajectory_figure({"a": _columns()}, x=x)
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_xdata(), expected)


def test_trajectory_accepts_records_and_picks_layers():
    fig = trajectory_figure({"run": _records()})
    assert fig.axes[0].get_lines()[0].get_ydata()[0] == 20.0  # deepest layer (2) by default
    fig = trajectory_figure({"run": _records()}, layer=1)
    assert fig.axes[0].get_lines()[0].get_ydata()[0] == 10.0


def test_trajectory_accepts_live_history_rows():
    rows = [{"step": s, "geometry/rankme": 5.0 + s, "geometry/alpha": 1.0} for s in STEPS]
    fig = trajectory_figure({"live": rows})
    np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_xdata(), STEPS)


def test_phase_shading_maps_steps_to_x():
    phases = [PhaseSegment("warmup", 0, 8, 0, 4, 0.9, -0.5), PhaseSegment("entropy-seeking", 8, 128, 4, 8, 0.8, 0.7)]
    fig = trajectory_figure({"a": _columns()}, x="tokens", phases=phases)
    spans = fig.axes[0].patches
    assert len(spans) == 2
    # the second span covers tokens 800 .. 12800
    span = spans[1]  # a Rectangle in data x coordinates
    assert span.get_x() == pytest.approx(800) and span.get_x() + span.get_width() == pytest.approx(12800)


def test_memorization_series_from_live_rows():
    rows = [
        {"step": 0, "geometry/rankme": 1.0, "memorization/train/spearman": 0.1, "memorization/heldout/spearman": 0.2},
        {"step": 4, "geometry/rankme": 1.0},  # memorization skipped at this step
        {"step": 8, "memorization/train/spearman": 0.3, "memorization/train/answer_logprob": -3.0},
    ]
    assert memorization_series(rows) == {
        "train": {"step": [0.0, 8.0], "spearman": [0.1, 0.3]},
        "heldout": {"step": [0.0], "spearman": [0.2]},
    }
    unnamed = [{"step": 2, "memorization/spearman": 0.5}]
    assert memorization_series(unnamed) == {"memorization": {"step": [2.0], "spearman": [0.5]}}
    assert memorization_series(rows, "answer_logprob") == {"train": {"step": [8.0], "answer_logprob": [-3.0]}}


def test_memorization_panels_share_x_and_phase_shading():
    phases = [PhaseSegment("warmup", 0, 8, 0, 4, 0.9, -0.5), PhaseSegment("entropy-seeking", 8, 128, 4, 8, 0.8, 0.7)]
    memorization = {
        "train": {"step": [8, 0, 64], "spearman": [0.2, 0.1, 0.4], "answer_logprob": [-2, -3, -1]},
        "heldout": {"step": [0, 64], "spearman": [0.0, 0.3]},
    }
    fig = trajectory_figure(
        {"a": _columns()},
        x="tokens",
        phases=phases,
        memorization=memorization,
        memorization_keys=("spearman", "answer_logprob"),
    )
    assert len(fig.axes) == 4
    ax_s, ax_l = fig.axes[2], fig.axes[3]
    train = ax_s.get_lines()[0]
    np.testing.assert_allclose(train.get_xdata(), [0, 800, 6400])  # steps mapped to tokens, sorted
    np.testing.assert_allclose(train.get_ydata(), [0.1, 0.2, 0.4])
    assert [line.get_label() for line in ax_s.get_lines()] == ["train", "heldout"]
    assert [line.get_label() for line in ax_l.get_lines()] == ["train"]  # heldout lacks the key
    assert len(ax_s.patches) == 2 and ax_s.patches[1].get_x() == pytest.approx(800)
    assert ax_l.get_xscale() == "symlog"
    assert len(trajectory_figure({"a": _columns()}, memorization_keys=("spearman",)).axes) == 2  # none given


def test_bad_runs_raise():
    with pytest.raises(ValueError, match="tokens"):
        trajectory_figure({"a": {"step": [0, 1], "rankme": [1.0, 2.0]}}, x="tokens")
    with pytest.raises(ValueError, match="'rankme'"):
        trajectory_figure({"a": {"step": [0, 1]}})
    with pytest.raises(ValueError):
        trajectory_figure({})


def test_eigenspectrum_with_fits():
    lam = np.array([4.0, 2.0, 1.0, 0.5, 0.0])
    fits = {"ckpt": (np.array([2, 3, 4]), np.array([2.1, 0.9, 0.52]))}
    fig = eigenspectrum_figure({"ckpt": lam, "other": lam * 2}, fits, title="t")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 3  # two spectra + one fit
    np.testing.assert_array_equal(lines[0].get_xdata(), [1, 2, 3, 4])  # the zero eigenvalue is left out
    assert lines[1].get_linestyle() == "--" and lines[1].get_color() == lines[0].get_color()
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and ax.get_title() == "t"


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_save_figure_formats(tmp_path, suffix, magic):
    path = save_figure(trajectory_figure({"a": _columns()}), tmp_path / "sub" / f"fig{suffix}")
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no tmp file left behind


def test_save_figure_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        save_figure(trajectory_figure({"a": _columns()}), tmp_path / "fig.jpeg")
