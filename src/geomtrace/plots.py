"""Figures: RankMe / alpha-ReQ trajectories and eigenspectra (matplotlib, Agg backend).

* :func:`trajectory_figure` - RankMe and alpha vs step, tokens or FLOPs, several runs
  overlaid, optional phase shading and memorization panels underneath.
* :func:`memorization_series` - the memorization lines of live history rows.
* :func:`eigenspectrum_figure` - eigenspectra on log-log axes with the fitted power laws.
* :func:`phase_spectrum_figure` - one run: RankMe with its phases shaded, and the top
  eigenvalues over time (which directions grow or shrink in each phase).
* :func:`save_figure` - write PNG / SVG / PDF atomically.

Log x axes use ``symlog`` with the linear part ``[0, smallest positive x]``: step 0 (the
initialisation) stays on the plot, and everything from the first positive x up is
logarithmic, as on a plain log axis.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geomtrace._optional import require
from geomtrace.phases import Phase
from geomtrace.trajectory import to_float, trajectory_from_rows

__all__ = [
    "BAND_Z",
    "PHASE_COLORS",
    "eigenspectrum_figure",
    "memorization_series",
    "phase_spectrum_figure",
    "save_figure",
    "trajectory_figure",
]

#: Shading colour of each phase (see :mod:`geomtrace.phases`).
PHASE_COLORS = {
    Phase.WARMUP: "#bbbbbb",
    Phase.ENTROPY_SEEKING: "#8ecae6",
    Phase.COMPRESSION_SEEKING: "#ffb703",
    Phase.STABLE: "#ffffff",
}
_X_LABELS = {"step": "training step", "tokens": "tokens seen", "flops": "training FLOPs (6 N D)"}
_MEMORIZATION_LABELS = {
    "spearman": "memorization\n(Spearman ρ)",
    "pearson": "memorization\n(Pearson r)",
    "answer_logprob": "answer\nlog-likelihood",
    "n_scored": "pairs scored",
}
_FORMATS = {".png", ".svg", ".pdf"}


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "plots")
    matplotlib.use("Agg", force=False)  # no display needed; a no-op if a backend is already set
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- inputs


_COLUMNS = ("step", "tokens", "n_params", "rankme", "alpha")
#: Optional columns: the jackknife standard errors (``MeasureConfig.uncertainty``), drawn as bands.
_SE_COLUMNS = ("rankme_se", "alpha_se")
#: Half-width of the drawn bands in standard errors (a normal 95 % interval).
BAND_Z = 1.96


def _columns(run: Any, layer: int | None) -> dict[str, np.ndarray]:
    """Normalise one run to columns: a Trajectory, a ``{"step": [...], "rankme": [...]}``
    mapping, or a sequence of replay records / live history rows. The standard-error columns
    are NaN where a run has none."""
    if isinstance(run, Mapping):
        if "rankme" not in run or "step" not in run:
            raise ValueError(f"a run mapping needs 'step' and 'rankme' lists, got keys {sorted(run)}")
        n = len(run["rankme"])
        names = (*_COLUMNS, *_SE_COLUMNS)
        return {c: np.asarray(run[c], dtype=np.float64) if c in run else np.full(n, np.nan) for c in names}
    if isinstance(run, Sequence) and not isinstance(run, str):
        run = trajectory_from_rows(list(run), layer=layer)
    if all(hasattr(run, c) for c in _COLUMNS):
        cols = {c: np.asarray(getattr(run, c), dtype=np.float64) for c in _COLUMNS}
        cols.update({c: _se_column(run, c) for c in _SE_COLUMNS})
        return cols
    raise TypeError(f"unsupported run of type {type(run).__name__}: pass records, a column mapping or a Trajectory")


def _se_column(run: Any, name: str) -> np.ndarray:
    """A trajectory's standard errors ``name``: its own attribute when it has one, else from its
    rows (a replay record's field ``rankme_se``; a live row's ``geometry[/layer<L>]/rankme_se``)."""
    n = len(run.step)
    own = getattr(run, name, None)
    if own is not None:
        return np.asarray(own, dtype=np.float64)
    records = list(getattr(run, "records", None) or [])
    if len(records) != n:
        return np.full(n, np.nan)
    layer = getattr(run, "layer", None)
    replay = any(r.get("layer") is not None for r in records)
    key = name if replay else (f"geometry/{name}" if layer is None else f"geometry/layer{layer}/{name}")
    return np.array([to_float(r.get(key)) for r in records], dtype=np.float64)


def _band(ax: Any, x: np.ndarray, value: np.ndarray, se: np.ndarray, color: Any) -> None:
    """Shade ``value +- BAND_Z * se`` where the standard error is known."""
    known = np.isfinite(se) & np.isfinite(value)
    if known.any():
        half = BAND_Z * np.where(known, se, 0.0)
        ax.fill_between(x, value - half, value + half, where=known, color=color, alpha=0.2, lw=0)


def _x_values(cols: Mapping[str, np.ndarray], x: str, label: str) -> np.ndarray:
    if x == "step":
        return cols["step"]
    if x == "tokens":
        values = cols["tokens"]
    elif x == "flops":
        values = 6.0 * cols["n_params"] * cols["tokens"]
    else:
        raise ValueError(f"x must be 'step', 'tokens' or 'flops', got {x!r}")
    if len(values) and not np.all(np.isfinite(values)):
        raise ValueError(
            f"run {label!r} lacks token counts{' or n_params' if x == 'flops' else ''} for x={x}: "
            "replay with --tokens-per-step N (Pythia: 2097152), give a live history a top-level "
            "'tokens_per_step' (the pretrain recipe writes it), or use x='step'"
        )
    return values


def memorization_series(rows: Sequence[Mapping[str, Any]], key: str = "spearman") -> dict[str, dict[str, list[float]]]:
    """``{probe: {"step": [...], key: [...]}}`` from live history rows.

    Rows carry ``memorization/<key>`` (an unnamed probe, returned under ``"memorization"``) or
    ``memorization/<name>/<key>`` (returned under ``name``); rows without the key are skipped.
    """
    out: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        for tag, value in row.items():
            parts = tag.split("/")
            if parts[0] != "memorization" or parts[-1] != key or len(parts) not in (2, 3):
                continue
            name = parts[1] if len(parts) == 3 else "memorization"
            series = out.setdefault(name, {"step": [], key: []})
            series["step"].append(float(row["step"]))
            series[key].append(float(value))
    return out


# ----------------------------------------------------------------------------- figures


def _set_log_x(ax: Any, xs: Sequence[np.ndarray]) -> None:
    positive = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in xs]) if xs else np.zeros(0)
    if positive.size == 0:
        return
    lo, hi = float(positive.min()), float(positive.max())
    ax.set_xscale("symlog", linthresh=lo, linscale=0.3)
    # Ticks at 0 and at the decades above linthresh: the default locator also puts decades
    # inside the tiny linear part, where their labels collide with "0".
    decades = np.arange(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)
    stride = max(1, math.ceil(len(decades) / 8))
    from matplotlib.ticker import FixedLocator

    ax.xaxis.set_major_locator(FixedLocator([0.0, *(10.0 ** decades[::stride])]))


def _shade_phases(axes: Sequence[Any], phases: Sequence[Any], to_x: Any) -> None:
    seen: set[str] = set()
    for seg in phases:
        color = PHASE_COLORS.get(seg.name, "#dddddd")
        label = seg.name if seg.name not in seen and seg.name != Phase.STABLE else None
        seen.add(seg.name)
        for ax in axes:
            ax.axvspan(to_x(seg.start_step), to_x(seg.end_step), color=color, alpha=0.35, lw=0, label=label)
            label = None  # one legend entry per phase name, on the first panel


def trajectory_figure(
    runs: Mapping[str, Any],
    x: str = "step",
    layer: int | None = None,
    phases: Sequence[Any] | None = None,
    log_x: bool = True,
    title: str | None = None,
    memorization: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    memorization_keys: Sequence[str] = ("spearman",),
) -> Any:
    """RankMe (top) and alpha-ReQ against ``x``, one line per run; memorization panels below.

    Args:
        runs: ``{label: run}``; a run is a list of replay records (``geomtrace.replay``'s
            store) or live history rows (``geometry/rankme`` ...), a column mapping
            ``{"step": [...], "rankme": [...], "alpha": [...]}`` (optional ``tokens``,
            ``n_params``, ``rankme_se``, ``alpha_se``), or a :class:`geomtrace.replay.results.Trajectory`.
            Where a run has standard errors (``MeasureConfig(uncertainty="jackknife")``: the
            records' ``rankme_se``/``alpha_se``), each line gets a shaded band of
            ``+- 1.96 se`` (:data:`BAND_Z`).
        x: ``"step"``, ``"tokens"`` or ``"flops"`` (``6 * n_params * tokens``).
        layer: which layer of multi-layer records (default: the deepest).
        phases: :class:`geomtrace.phases.PhaseSegment` list (in steps) to shade; mapped to
            ``x`` through the first run's step -> x pairs.
        log_x: symlog x axis (see the module doc), else linear.
        title: figure title.
        memorization: ``{line label: {"step": [...], "<key>": [...]}}`` (e.g. from
            :func:`memorization_series`): one panel per entry of ``memorization_keys`` under
            the geometry panels, on the same x axis (steps mapped like ``phases``) and shaded
            by the same phases. A line lacking a key is left out of that panel.
        memorization_keys: summary keys to draw, one panel each (``"spearman"``,
            ``"pearson"``, ``"answer_logprob"``, ``"n_scored"``).

    Returns a matplotlib ``Figure``.
    """
    plt = _pyplot()
    if not runs:
        raise ValueError("trajectory_figure needs at least one run")
    keys = list(memorization_keys) if memorization else []
    fig, axes = plt.subplots(
        2 + len(keys), 1, sharex=True, figsize=(7.0, 6.0 + 2.2 * len(keys)), constrained_layout=True, squeeze=False
    )
    axes = list(axes[:, 0])
    ax_r, ax_a = axes[0], axes[1]
    xs: list[np.ndarray] = []
    first: tuple[np.ndarray, np.ndarray] | None = None  # the first run's (steps, x values)
    for label, run in runs.items():
        cols = _columns(run, layer)
        xv = _x_values(cols, x, label)
        order = np.argsort(xv, kind="stable")
        xs.append(xv)
        if first is None:
            first = (cols["step"], xv)
        (line,) = ax_r.plot(xv[order], cols["rankme"][order], marker="o", ms=3, label=str(label))
        _band(ax_r, xv[order], cols["rankme"][order], cols["rankme_se"][order], line.get_color())
        if np.any(np.isfinite(cols["alpha"])):
            (line,) = ax_a.plot(xv[order], cols["alpha"][order], marker="o", ms=3, label=str(label))
            _band(ax_a, xv[order], cols["alpha"][order], cols["alpha_se"][order], line.get_color())
    assert first is not None  # runs is not empty (checked above)
    steps, xv = first
    ok = np.isfinite(steps) & np.isfinite(xv)
    order = np.argsort(steps[ok])

    def to_x(step: Any) -> Any:
        return step if x == "step" else np.interp(step, steps[ok][order], xv[ok][order])

    for key, ax in zip(keys, axes[2:]):
        for label, series in (memorization or {}).items():
            if key not in series or "step" not in series:
                continue
            mstep = np.asarray(series["step"], dtype=np.float64)
            values = np.asarray(series[key], dtype=np.float64)
            morder = np.argsort(mstep, kind="stable")
            mx = np.asarray(to_x(mstep[morder]), dtype=np.float64)
            xs.append(mx)
            ax.plot(mx, values[morder], marker="o", ms=3, label=str(label))
        ax.set_ylabel(_MEMORIZATION_LABELS.get(key, key))
        if ax.lines:
            ax.legend(fontsize="small", loc="best")
    if phases:
        _shade_phases(axes, phases, lambda s: float(to_x(s)))
    if log_x:
        _set_log_x(axes[-1], xs)
    ax_r.set_ylabel("RankMe")
    ax_a.set_ylabel(r"$\alpha$-ReQ")
    axes[-1].set_xlabel(_X_LABELS.get(x, x) + (" (symlog)" if log_x else ""))
    for ax in axes:
        ax.grid(True, alpha=0.3)
    ax_r.legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    return fig


def eigenspectrum_figure(
    spectra: Mapping[str, np.ndarray],
    fits: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    title: str | None = None,
) -> Any:
    """Eigenvalue vs rank (1-based) on log-log axes, one line per entry of ``spectra``.

    ``fits`` maps the same labels to ``(ranks, fitted eigenvalues)`` of the alpha-ReQ fit,
    drawn dashed in the same colour. Zero eigenvalues are left out (no log of 0).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.5), constrained_layout=True)
    fits = fits or {}
    for label, values in spectra.items():
        lam = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64).ravel()
        ranks = np.arange(1, lam.size + 1)
        keep = lam > 0
        (line,) = ax.loglog(ranks[keep], lam[keep], lw=1.2, label=str(label))
        fit = fits.get(label)
        if fit is not None and len(fit[0]):
            fit_ranks, fit_values = (np.asarray(v, dtype=np.float64) for v in fit)
            ax.loglog(fit_ranks, fit_values, ls="--", lw=1.5, color=line.get_color())
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    ax.grid(True, which="both", alpha=0.3)
    if spectra:
        ax.legend(fontsize="small", loc="best")
    if title:
        ax.set_title(title)
    return fig


def phase_spectrum_figure(
    steps: Sequence[float],
    rankme: Sequence[float],
    eigenvalues: Sequence[Sequence[float]],
    phases: Sequence[Any] | None = None,
    *,
    alpha: Sequence[float] | None = None,
    top: int = 4,
    log_x: bool = True,
    title: str | None = None,
) -> Any:
    """One run: RankMe (top, phases shaded), optionally alpha-ReQ, and the ``top`` largest
    eigenvalues of the feature covariance over time (bottom, log y).

    Args:
        steps: measurement steps.
        rankme: RankMe at each step.
        eigenvalues: the spectrum (descending) at each step; only the first ``top`` are drawn.
        phases: :class:`geomtrace.phases.PhaseSegment` list to shade (in steps).
        alpha: alpha-ReQ at each step (a middle panel), optional.
        top: how many eigenvalues to draw.
        log_x: symlog x axis (see the module doc), else linear.
        title: figure title.

    Returns a matplotlib ``Figure``.
    """
    plt = _pyplot()
    x = np.asarray(steps, dtype=np.float64)
    if not (len(x) == len(rankme) == len(eigenvalues)):
        raise ValueError(f"steps, rankme and eigenvalues lengths differ: {len(x)}, {len(rankme)}, {len(eigenvalues)}")
    if alpha is not None and len(alpha) != len(x):
        raise ValueError(f"steps and alpha lengths differ: {len(x)} != {len(alpha)}")
    k = max(1, min(top, min((len(v) for v in eigenvalues), default=0)))
    lam = np.array([[float(v[i]) if i < len(v) else np.nan for i in range(k)] for v in eigenvalues])
    rows = 3 if alpha is not None else 2
    fig, axes = plt.subplots(rows, 1, sharex=True, figsize=(7.0, 2.6 * rows + 0.6), constrained_layout=True)
    axes[0].plot(x, rankme, marker="o", ms=2.5, color="black", label="RankMe")
    axes[0].set_ylabel("RankMe")
    if alpha is not None:
        axes[1].plot(x, alpha, marker="o", ms=2.5, color="tab:purple")
        axes[1].set_ylabel(r"$\alpha$-ReQ")
    for i in range(k):
        positive = np.where(lam[:, i] > 0, lam[:, i], np.nan)
        axes[-1].plot(x, positive, lw=1.4, label=rf"$\lambda_{{{i + 1}}}$")
    axes[-1].set_yscale("log")
    axes[-1].set_ylabel("top eigenvalues")
    axes[-1].legend(fontsize="small", loc="best", ncol=min(k, 4))
    if phases:
        _shade_phases(axes, phases, float)
        axes[0].legend(fontsize="small", loc="best")
    if log_x:
        _set_log_x(axes[-1], [x])
    axes[-1].set_xlabel("training step" + (" (symlog)" if log_x else ""))
    for ax in axes:
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def save_figure(fig: Any, path: str | os.PathLike, *, dpi: int = 150, close: bool = True) -> Path:
    """Save ``fig`` to ``path`` (``.png``, ``.svg`` or ``.pdf``, from the suffix) atomically:
    a tmp file in the same folder, then ``os.replace``. Closes the figure unless ``close=False``."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"unsupported figure format {p.suffix or '(none)'!r} for {p}: use .png, .svg or .pdf")
    from geomtrace._atomic import file_mode, write_error

    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=suffix, dir=p.parent)
    except OSError as err:
        if close:
            _pyplot().close(fig)
        raise write_error(err, p) from err
    os.close(fd)
    try:
        fig.savefig(tmp, format=suffix[1:], dpi=dpi)
        os.chmod(tmp, file_mode(p))  # mkstemp's 0600 would hide the figure from collaborators
        os.replace(tmp, p)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(err, p) from err
        raise
    finally:
        if close:
            _pyplot().close(fig)
    return p
