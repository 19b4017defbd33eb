"""Phase detection on RankMe / alpha-ReQ trajectories.

Autoregressive pretraining passes through three geometric phases (Li et al., 2025):
``"warmup"`` (early collapse: RankMe falls), ``"entropy-seeking"`` (RankMe rises, alpha
typically falls) and ``"compression-seeking"`` (RankMe falls, alpha rises). Post-training
moves geometry too: SFT/DPO are entropy-seeking, RLVR compression-seeking. Where neither
metric moves beyond noise the run is ``"stable"``.

:func:`detect_phases` segments a trajectory, tuned by :class:`DetectorOptions` (the one
declaration of its options, which the tracker records and the command line takes as
``--detector.<option>``); :func:`current_phase` gives the latest segment for live logging;
:func:`shift` classifies a before/after pair (one post-training run); :func:`format_segments`
renders segments as a plain-text table.

The algorithm (rules, defaults and limits: ``docs/concepts.md``, "Phase detection"):

1. Time axis ``x = log(1 + step / first_interval)`` (``log(1 + step)`` for Pythia's
   0, 1, 2, 4, ..., 512, 1000, ...); ``y = log(RankMe)``; alpha as is. Isolated spikes are
   ignored (with a warning).
2. Local linear fits over ``smoothing`` neighbouring measurements give a slope per point.
   The noise sigma is a robust RMS of their leverage-corrected residuals (floored at
   ``noise_floor``); slopes become t-statistics, so thresholds are in noise units and
   independent of the step spacing.
3. Hysteresis: a trend starts at ``|t| >= enter_threshold`` and ends below
   ``exit_threshold``. RankMe decides; alpha fills in where RankMe is flat.
4. Short runs (``min_segment_length``) are absorbed; a flat gap between opposite trends no
   wider than the window (the blurred turning point) is closed.
5. Each boundary is refined by a continuous two-piece linear ("hinge") fit of the raw
   values (against log-step or index, whichever is straighter); at a rounded extremum the
   extremum of the smoothed curve (half-window local fits) is used instead.
6. Segment-level checks: a trend whose own fit is not significant becomes stable; a long
   stable segment with a significant drift takes that direction; a stable segment next to
   a trend survives only if the slope change between them is significant. RankMe rules:
   a segment hiding a large V/inverted V (both pieces change RankMe by a factor >= 1.5)
   is split; a factor >= 1.5 names a segment by RankMe's direction; alpha may not name a
   segment against a RankMe change >= ``flat_rankme_change`` (10%). Steps 4-6 repeat
   until nothing changes.
7. Transient excursions: a trend of fewer than ``transient_points`` measurements between
   two larger opposite trends merges into them; a rise before a larger initial collapse
   (short, or within the warmup range) is stable.
8. Standard errors (``rankme_se``/``alpha_se``, where given): a trend that moves neither
   RankMe nor alpha beyond ``noise_factor`` combined standard errors
   ``sqrt(se_start^2 + se_end^2)`` is stable, "within noise" (its note gives the numbers);
   without them the segments say no error bars were available.
9. Naming: a first fall (nothing but stable before it) that starts at the start of training
   (at or before ``warmup_steps``, else ``warmup_fraction`` of the last step) is
   ``"warmup"`` (unless ``allow_warmup=False``); any other fall is ``"compression-seeking"``
   if it has the paper's signature, RankMe down *with* alpha up (``require_signature``),
   else stable with a note saying which part is missing (without alpha: named, and the note
   says the signature is unconfirmed). Every segment records the ``spectrum`` it was measured
   on (centred or uncentred).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any, NamedTuple

import numpy as np

from geomtrace._detector import DetectorOptions
from geomtrace._warnings import warn

__all__ = [
    "NO_ERROR_BARS",
    "PHASES",
    "PHASE_CODES",
    "DetectorOptions",
    "GeometryShift",
    "Phase",
    "PhaseSegment",
    "centred",
    "centring_text",
    "current_phase",
    "detect_phases",
    "format_segments",
    "log_step",
    "paired_jackknife_se",
    "resolve_options",
    "shift",
    "trajectory_phases",
    "trajectory_shift",
]


class Phase(str, Enum):
    """The geometric phases, a closed set. A member *is* its name as a ``str``
    (``Phase.WARMUP == "warmup"``), so records, JSON and tags hold the plain strings; the
    definition order gives the numeric codes (:attr:`code`, :data:`PHASE_CODES`)."""

    STABLE = "stable"
    WARMUP = "warmup"
    ENTROPY_SEEKING = "entropy-seeking"
    COMPRESSION_SEEKING = "compression-seeking"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def code(self) -> int:
        """The numeric code logged as the phase scalar: stable 0, warmup 1, entropy-seeking 2,
        compression-seeking 3."""
        return _ORDER.index(self)


_ORDER = tuple(Phase)
#: The phase names, in code order.
PHASES = tuple(phase.value for phase in Phase)
#: Numeric phase codes for logging a phase as a scalar (plain-string keys).
PHASE_CODES = {phase.value: phase.code for phase in Phase}

# Direction convention used internally: +1 = entropy-seeking (RankMe up / alpha down),
# -1 = compression (RankMe down / alpha up), 0 = stable.
_UP, _DOWN, _FLAT = 1, -1, 0


@dataclass(frozen=True)
class PhaseSegment:
    """One detected phase.

    ``start_step``/``end_step`` are in the input's step units and inclusive; consecutive
    segments share their boundary measurement (the turning point belongs to both).
    ``start_index``/``end_index`` index the *input* arrays (NaN points dropped before
    detection are never boundaries). ``rankme_change`` is the log ratio of fitted RankMe at
    the end vs the start of the segment (``exp(x) - 1`` is the relative change);
    ``alpha_change`` the fitted absolute change of alpha (None without alpha); for the one
    segment of too few points (``min_points``) both are the measured change from the first
    to the last point. ``confidence`` is in [0, 1].

    ``rankme_change_se``/``alpha_change_se``: the standard error of those changes (for RankMe in
    log units, like ``rankme_change``): ``paired`` (the segment's ends carry jackknife replicates
    of the same probes) the jackknife of the replicate differences, else the combined
    ``sqrt(se_start^2 + se_end^2)`` of the measurements' own standard errors; None where the
    measurements carry none. ``note``
    qualifies the name: "within noise" with the numbers, a compression signature that is
    missing or unconfirmed, or that no error bars were available. ``spectrum`` is how the
    values were measured, where known: ``"covariance"`` (centred: the paper's code, which
    centres via PCA) or ``"singular"`` (uncentred: the paper's theory); :attr:`centred` says it.
    """

    name: str  #: a :class:`Phase` value, held as the plain string
    start_step: float
    end_step: float
    start_index: int
    end_index: int
    confidence: float
    rankme_change: float
    alpha_change: float | None = None
    n_points: int = 0
    rankme_change_se: float | None = None
    alpha_change_se: float | None = None
    note: str = ""
    spectrum: str | None = None
    paired: bool = False

    def __post_init__(self) -> None:
        # Phase(...) refuses a name outside the closed set; the plain value keeps pickles and
        # checkpoint states free of geomtrace classes.
        object.__setattr__(self, "name", Phase(self.name).value)

    @property
    def phase(self) -> Phase:
        """The phase as a :class:`Phase` member."""
        return Phase(self.name)

    @property
    def code(self) -> int:
        """The numeric code of this phase (:data:`PHASE_CODES`)."""
        return self.phase.code

    @property
    def centred(self) -> bool | None:
        """True for a centred spectrum (``"covariance"``), False for uncentred (``"singular"``),
        None where unknown."""
        return centred(self.spectrum)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON-serialisable)."""
        d = asdict(self)
        d["code"] = self.code
        d["centred"] = self.centred
        return d


def centred(spectrum: str | None) -> bool | None:
    """Whether a measure config's ``spectrum`` is centred: ``"covariance"`` True (the paper's
    code centres via PCA), ``"singular"`` False (its theory: singular values of the raw
    features), None for None (unknown). Raises ValueError for anything else."""
    if spectrum is None:
        return None
    if spectrum not in _SPECTRA:
        raise ValueError(f"spectrum must be 'covariance' (centred) or 'singular' (uncentred), got {spectrum!r}")
    return spectrum == "covariance"


_SPECTRA = ("covariance", "singular")


def centring_text(spectrum: str | None) -> str:
    """``"centred (spectrum='covariance')"``, ``"uncentred (spectrum='singular')"`` or a note
    that it is unknown: what the phase report says about how the values were measured."""
    c = centred(spectrum)
    if c is None:
        return "centring unknown (no spectrum recorded)"
    return f"{'centred' if c else 'uncentred'} (spectrum={spectrum!r})"


# ----------------------------------------------------------------------------- input


def _as_1d(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _prepare(steps: Any, rankme: Any, alpha: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Validate, drop non-finite points; return (steps, rankme, alpha, kept input indices)."""
    s = _as_1d("steps", steps)
    r = _as_1d("rankme", rankme)
    if len(s) != len(r):
        raise ValueError(f"steps and rankme lengths differ: {len(s)} != {len(r)}")
    a = None
    if alpha is not None:
        a = _as_1d("alpha", alpha)
        if len(a) != len(s):
            raise ValueError(f"steps and alpha lengths differ: {len(s)} != {len(a)}")
        if len(a) and not np.isfinite(a).any():
            # alpha can be NaN throughout (e.g. d too small for the fit range): use RankMe only.
            warn("alpha is NaN everywhere; detecting phases from RankMe alone")
            a = None
    keep = np.isfinite(s) & np.isfinite(r)
    if a is not None:
        keep &= np.isfinite(a)
    idx = np.flatnonzero(keep)
    if len(idx) < len(s):
        warn(f"dropped {len(s) - len(idx)} of {len(s)} points with NaN/Inf steps or metrics")
    s, r = s[idx], r[idx]
    a = a[idx] if a is not None else None
    if len(s) > 1 and np.any(np.diff(s) <= 0):
        raise ValueError("steps must be strictly increasing")
    if len(s) and s[0] < 0:
        raise ValueError(f"steps must be >= 0, got {s[0]}")
    if np.any(r <= 0):
        raise ValueError("rankme must be positive")
    return s, r, a, idx


def _prepare_se(name: str, values: Any, n: int, idx: np.ndarray) -> np.ndarray | None:
    """Standard errors at the kept points (NaN/None = unknown), or None when none is known."""
    if values is None:
        return None
    if isinstance(values, np.ndarray) and values.dtype != object:
        arr = _as_1d(name, values).astype(np.float64)
    else:  # a list (or object array) that may hold None
        arr = np.array([_to_se(v) for v in values], dtype=np.float64)
    if len(arr) != n:
        raise ValueError(f"steps and {name} lengths differ: {n} != {len(arr)}")
    arr = np.where(np.isfinite(arr) & (arr >= 0), arr, np.nan)[idx]
    return arr if np.isfinite(arr).any() else None


def _to_se(value: Any) -> float:
    """A standard error as a float: NaN for None, for what is not a number and for negatives."""
    try:
        v = math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if v >= 0 else math.nan


def replicate_matrix(values: Sequence[Any]) -> np.ndarray | None:
    """Each measurement's jackknife replicates (a sequence of G values, or None) as one
    ``(n, G)`` array, a NaN row where a measurement has none (None inside a row reads as NaN);
    None when no row has replicates or their ``G`` differ (then nothing pairs)."""
    known = [None if v is None else np.asarray(v, dtype=np.float64).ravel() for v in values]
    sizes = {len(v) for v in known if v is not None and len(v)}
    if len(sizes) != 1:
        return None
    (groups,) = sizes
    out = np.full((len(known), groups), np.nan)
    for i, v in enumerate(known):
        if v is not None and len(v) == groups:
            out[i] = v
    return out if np.isfinite(out).all(axis=1).any() else None


def _prepare_replicates(name: str, values: Any, n: int, idx: np.ndarray) -> np.ndarray | None:
    """:func:`replicate_matrix` at the kept points, or None when none of them has replicates."""
    if values is None:
        return None
    rows = list(values)
    if len(rows) != n:
        raise ValueError(f"steps and {name} lengths differ: {n} != {len(rows)}")
    matrix = replicate_matrix(rows)
    if matrix is None:
        return None
    kept = matrix[idx]
    return kept if np.isfinite(kept).all(axis=1).any() else None


def paired_jackknife_se(before: Any, after: Any) -> float | None:
    """The jackknife standard error of a change measured twice on the same probes.

    ``before``/``after`` are the two measurements' delete-one-group replicates ``theta_(g)``
    (group ``g`` deleted from both: the same probes, as geomtrace groups them). The change's
    replicates are their differences, and its error is theirs:
    ``sqrt((G - 1) / G * sum_g (d_g - mean d)^2)`` (the formula of
    :func:`geomtrace.uncertainty.jackknife_se`). Unlike ``sqrt(se_before^2 + se_after^2)`` it
    does not count the probe sample's noise that both values share. None unless both have the
    same number of finite replicates.
    """
    if before is None or after is None:
        return None
    b, a = np.asarray(before, dtype=np.float64).ravel(), np.asarray(after, dtype=np.float64).ravel()
    if len(b) != len(a) or len(b) < 2 or not (np.isfinite(b).all() and np.isfinite(a).all()):
        return None
    diff = a - b
    groups = len(diff)
    return float(math.sqrt((groups - 1) / groups * float(((diff - diff.mean()) ** 2).sum())))


def resolve_options(
    options: DetectorOptions | Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
) -> DetectorOptions:
    """``options`` (a :class:`DetectorOptions`, a mapping of its fields, or None for the
    defaults) with ``overrides`` (keyword options by field name) applied, validated.

    Raises TypeError for an unknown override name, ValueError for a bad value.
    """
    if options is None:
        options = DetectorOptions()
    elif isinstance(options, Mapping):
        options = DetectorOptions.from_dict(options)
    elif not isinstance(options, DetectorOptions):
        raise TypeError(f"options must be a DetectorOptions (or a mapping of its fields), got {type(options).__name__}")
    overrides = dict(overrides or {})
    unknown = DetectorOptions.unknown_names(overrides)
    if unknown:
        raise TypeError(unknown)
    if overrides:
        options = replace(options, **overrides)
    options.validate()
    return options


# ----------------------------------------------------------------------------- math


def log_step(steps: Sequence[float] | np.ndarray) -> np.ndarray:
    """The detector's time axis: ``log(1 + step / unit)``, unit = the first step interval.

    With a unit first interval (Pythia: 0, 1, 2, 4, ...) this is ``log(1 + step)``. Scaling
    by the first interval makes it independent of the step unit (steps, tokens) and keeps
    a linear schedule (0, 1000, 2000, ...) from putting a huge gap after step 0.
    """
    s = np.asarray(steps, dtype=np.float64)
    if len(s) < 2:
        return np.log1p(s)
    return np.log1p((s - min(s[0], 0.0)) / (s[1] - s[0]))


def _local_fits(x: np.ndarray, y: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linear fit over the ``w`` nearest measurements of each point.

    Returns (slope, sqrt(Sxx), residual at the point, leverage of the point).
    """
    n = len(x)
    start = np.clip(np.arange(n) - w // 2, 0, n - w)
    win = start[:, None] + np.arange(w)[None, :]
    xs, ys = x[win], y[win]
    xm, ym = xs.mean(1), ys.mean(1)
    dx = xs - xm[:, None]
    sxx = (dx * dx).sum(1)
    slope = (dx * (ys - ym[:, None])).sum(1) / sxx
    fit = ym + slope * (x - xm)
    lev = 1.0 / w + (x - xm) ** 2 / sxx
    return slope, np.sqrt(sxx), y - fit, lev


def _noise(resid: np.ndarray, lev: np.ndarray, floor: float) -> float:
    """Robust noise sigma from the leverage-corrected residuals (variance sigma^2 each).

    A MAD estimate flags outliers (e.g. the rounded vertex of a sharp turn); the RMS of the
    rest is the estimate (much less variable than the MAD alone for short series).
    """
    ok = lev < 1 - 1e-9
    if ok.sum() < 2:
        return floor
    z = resid[ok] / np.sqrt(1.0 - lev[ok])
    z = z - np.median(z)
    mad = 1.4826 * float(np.median(np.abs(z)))
    kept = z[np.abs(z) <= 3.0 * mad] if mad > 0 else z
    # 0.9866: the RMS of a normal sample truncated at 3 sigma, in sigmas.
    rms = float(np.sqrt(np.mean(kept**2))) / 0.9866 if len(kept) else 0.0
    # A short series gives a poor estimate; use a ~84% upper bound (chi-square, 1 sd) so
    # an unlucky low estimate does not turn noise into trends.
    df = max(len(z) - 2, 2)
    return max(rms / (1.0 - 1.0 / math.sqrt(2.0 * df)), floor)


#: A RankMe move this large (|log ratio| >= log 1.5: +50% or -33%) over a segment is a
#: trend whatever the noise estimate says (short series with a sharp turn inflate it).
_LARGE_MOVE = math.log(1.5)


def _ext_window(w: int) -> int:
    """Window of the smoother whose extremum locates a rounded turn (half the fit window)."""
    return max(3, (w + 1) // 2)


def _seg_fit(x: np.ndarray, y: np.ndarray, sigma: float | None) -> tuple[float, float]:
    """(fitted change over the segment, t-statistic of its slope) for one segment.

    A straight line against log-step or against measurement index, whichever fits better
    (the same two time axes as the boundary refinement). ``sigma=None``: the t-statistic
    uses the segment's own residual scatter (its own noise, whatever the global estimate).
    """
    if len(x) < 2:
        return 0.0, 0.0
    best = (np.inf, 0.0, 0.0)
    for axis in (x, np.arange(len(x), dtype=np.float64)):
        dx = axis - axis.mean()
        sxx = float(dx @ dx)
        slope = float(dx @ (y - y.mean())) / sxx
        sse = float(np.sum((y - y.mean() - slope * dx) ** 2))
        if sse < best[0]:
            if sigma is None:
                own = math.sqrt(sse / (len(x) - 2)) if len(x) > 2 else 0.0
                t = slope * math.sqrt(sxx) / own if own > 0 else math.copysign(math.inf, slope)
            else:
                t = slope * math.sqrt(sxx) / sigma
            best = (sse, slope * float(axis[-1] - axis[0]), t)
    return best[1], best[2]


def _side_lines(x: np.ndarray, y: np.ndarray, i: np.ndarray, left: bool) -> tuple[np.ndarray, np.ndarray]:
    """Lines through the (up to) 3 neighbours on one side of each point ``i``, extrapolated
    to it: (prediction, standard-error factor sqrt(1 + 1/k + d^2/Sxx)) per point."""
    n = len(x)
    offsets = np.arange(-3, 0) if left else np.arange(1, 4)
    idx = i[:, None] + offsets[None, :]
    ok = (idx >= 0) & (idx < n)
    idx = np.clip(idx, 0, n - 1)
    w = ok.astype(np.float64)
    k = w.sum(1)
    xs, ys = x[idx], y[idx]
    xm, ym = (w * xs).sum(1) / k, (w * ys).sum(1) / k
    dx = (xs - xm[:, None]) * w
    sxx = (dx * dx).sum(1)
    slope = (dx * (ys - ym[:, None])).sum(1) / sxx
    d = x[i] - xm
    return ym + slope * d, np.sqrt(1.0 + 1.0 / k + d * d / sxx)


def _chord_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Offset of each interior point from the chord between its two neighbours, in units
    of the noise sigma of one measurement (a straight or gently curved stretch gives ~0)."""
    lam = (x[1:-1] - x[:-2]) / (x[2:] - x[:-2])
    chord = (1 - lam) * y[:-2] + lam * y[2:]
    return (y[1:-1] - chord) / np.sqrt(1 + (1 - lam) ** 2 + lam**2)


def _outliers(x: np.ndarray, y: np.ndarray, sigma: float, k: float) -> np.ndarray:
    """Isolated spikes among the interior points.

    A spike sits off, by more than ``k`` standard deviations and on the same side, from
    the chord between its two neighbours *and* from the lines through the 3 neighbours on
    each side extrapolated to it. A turning point lies on both side lines; a smoothly
    curved stretch lies on opposite sides of the chord and of the side lines; neither is
    flagged.
    """
    n, out = len(x), np.zeros(len(x), dtype=bool)
    if n < 5:
        return out
    i = np.arange(2, n - 2)
    z = [_chord_z(x, y)[1:-1] / sigma]
    for left in (True, False):
        pred, se = _side_lines(x, y, i, left)
        z.append((y[i] - pred) / (sigma * se))
    zs = np.stack(z)
    out[i] = np.all(np.abs(zs) > k, axis=0) & (np.all(zs > 0, axis=0) | np.all(zs < 0, axis=0))
    return out


def _point_noise(x: np.ndarray, y: np.ndarray, fallback: float) -> float:
    """Point-to-point noise sigma: the median offset of the interior points from the chord
    of their two neighbours (a robust scale, so a few turning points do not inflate it;
    smooth stretches contribute ~0, pure noise its full scatter). ``fallback`` below 3 points."""
    if len(x) < 3:
        return fallback
    return max(1.4826 * float(np.median(np.abs(_chord_z(x, y)))), 1e-12)


def _alternates(x: np.ndarray, y: np.ndarray) -> bool:
    """Do the offsets from the neighbours' chords mostly alternate in sign, as independent
    noise makes them (about 73% sign changes), rather than run in stretches, as a curved
    trend makes them?"""
    z = _chord_z(x, y) if len(x) >= 3 else np.zeros(0)
    z = z[z != 0]
    return len(z) >= 4 and float(np.mean(np.sign(z[1:]) != np.sign(z[:-1]))) >= 0.6


def _hysteresis(t: np.ndarray, enter: float, exit_: float) -> np.ndarray:
    """Per-point direction with hysteresis: enter at |t| >= enter, leave at |t| < exit."""
    out = np.zeros(len(t), dtype=int)
    state = _FLAT
    for i, v in enumerate(t):
        if state == _FLAT:
            state = _UP if v >= enter else _DOWN if v <= -enter else _FLAT
        elif state == _UP and v < exit_:
            state = _DOWN if v <= -enter else _FLAT
        elif state == _DOWN and v > -exit_:
            state = _UP if v >= enter else _FLAT
        out[i] = state
    return out


def _runs(labels: np.ndarray) -> list[list[int]]:
    """[label, start, end] (inclusive) for each run of equal labels."""
    runs: list[list[int]] = []
    for i, lab in enumerate(labels.tolist()):
        if runs and runs[-1][0] == lab:
            runs[-1][2] = i
        else:
            runs.append([lab, i, i])
    return runs


def _sse(design: np.ndarray, y: np.ndarray) -> float:
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(np.sum((y - design @ coef) ** 2))


def _hinge_sses(axis: np.ndarray, y: np.ndarray, lo: int, hi: int, cands: np.ndarray) -> np.ndarray:
    """SSE of the continuous two-piece linear fit of y[lo:hi+1] against ``axis`` with its
    knot at each index in ``cands`` (all knots at once, from suffix sums: O(n))."""
    xs, ys = axis[lo : hi + 1], y[lo : hi + 1]
    xc, yc = xs - xs.mean(), ys - ys.mean()  # centred: the sums below stay well-conditioned
    n = len(xs)

    # Suffix sums over i > j of 1, x, x^2, y, x*y (axis values are increasing).
    def suffix(v: np.ndarray) -> np.ndarray:
        return np.concatenate([np.cumsum(v[::-1])[::-1][1:], [0.0]])

    c1, cx, cxx, cy, cxy = (suffix(v) for v in (np.ones(n), xc, xc * xc, yc, xc * yc))
    j = np.asarray(cands) - lo
    xj = xc[j]
    # The pieces' basis: x and u = (x - x_j)_+ (the intercept absorbs the means).
    su = cx[j] - c1[j] * xj
    suu = cxx[j] - 2 * xj * cx[j] + c1[j] * xj * xj - su * su / n
    sxu = cxx[j] - xj * cx[j]
    suy = cxy[j] - xj * cy[j]
    sxx, sxy, syy = float(xc @ xc), float(xc @ yc), float(yc @ yc)
    det = sxx * suu - sxu * sxu
    explained = np.where(
        det > 1e-12 * sxx * np.maximum(suu, 1e-300),
        (sxy * (suu * sxy - sxu * suy) + suy * (sxx * suy - sxu * sxy)) / np.where(det > 0, det, 1.0),
        sxy * sxy / sxx if sxx > 0 else 0.0,
    )
    return np.maximum(syy - explained, 0.0)


def _hinge_knot(x: np.ndarray, y: np.ndarray, lo: int, hi: int, cands: range) -> tuple[int, float]:
    """Knot (index) and SSE of the best continuous two-piece linear fit of y[lo:hi+1].

    Fitted against log-step and against measurement index; the axis on which the two
    pieces are straighter wins (trends are linear in log-step on log-spaced checkpoints,
    closer to linear in step on an evenly spaced stretch). Ties go to the log-step axis
    and the earliest knot.
    """
    cand = np.asarray(cands)
    best, best_sse = int(cand[0]), np.inf
    for axis in (x, np.arange(len(x), dtype=np.float64)):
        sses = _hinge_sses(axis, y, lo, hi, cand)
        k = int(np.argmin(sses))
        if sses[k] < best_sse:
            best, best_sse = int(cand[k]), float(sses[k])
    return best, best_sse


def _ramp_knot(x: np.ndarray, y: np.ndarray, lo: int, hi: int, cands: range, flat_right: bool) -> int:
    """Knot (index) of the best "trend, then plateau" fit of y[lo:hi+1] (or plateau, then
    trend): a line that turns exactly flat at the knot.

    Where a trend runs into a plateau through a rounded knee, a free two-piece fit puts its
    corner in the middle of the bend and leaves the rest of the rise inside the plateau;
    a flat second piece puts the knot where the values reach the plateau level.
    """
    best, best_sse = int(cands[0]), np.inf
    for axis in (x, np.arange(len(x), dtype=np.float64)):
        xs, ys = axis[lo : hi + 1], y[lo : hi + 1]
        for j in cands:
            d = xs - axis[j]
            ramp = np.minimum(d, 0.0) if flat_right else np.maximum(d, 0.0)
            sse = _sse(np.column_stack([np.ones_like(d), ramp]), ys)
            if sse < best_sse - 1e-12 * max(best_sse, 1e-300) if np.isfinite(best_sse) else True:
                best, best_sse = int(j), sse
    return best


# ----------------------------------------------------------------------------- detection


def detect_phases(
    steps: Sequence[float] | np.ndarray,
    rankme: Sequence[float] | np.ndarray,
    alpha: Sequence[float] | np.ndarray | None = None,
    options: DetectorOptions | None = None,
    *,
    rankme_se: Sequence[float | None] | np.ndarray | None = None,
    alpha_se: Sequence[float | None] | np.ndarray | None = None,
    spectrum: str | None = None,
    rankme_replicates: Sequence[Sequence[float] | None] | np.ndarray | None = None,
    alpha_replicates: Sequence[Sequence[float] | None] | np.ndarray | None = None,
    **overrides: Any,
) -> list[PhaseSegment]:
    """Segment a RankMe (and optionally alpha-ReQ) trajectory into geometric phases.

    Args:
        steps: measurement steps, strictly increasing, >= 0 (any spacing; log-spaced is fine).
        rankme: RankMe at each step (> 0).
        alpha: alpha-ReQ at each step, optional; it confirms (or contradicts) RankMe's
            direction and decides where RankMe is flat.
        options: the detector's options, a :class:`DetectorOptions` (its fields are
            documented there); None: the defaults.
        rankme_se, alpha_se: standard errors of each measurement (the probe sample's, e.g. a
            jackknife's), optional; None/NaN entries are unknown. With them a segment is a
            trend only if it moves beyond ``noise_factor`` combined standard errors (else
            stable, "within noise", with the numbers in its ``note``); without them the noise
            is judged from the trajectory's own scatter, and the segments say no error bars
            were available.
        spectrum: the measure config's ``spectrum`` ("covariance" = centred, "singular" =
            uncentred), recorded on every segment; None: unknown.
        rankme_replicates, alpha_replicates: each measurement's jackknife replicates
            (``G`` values; None for a point without), optional. Only for measurements on the
            *same probes* (a live run's history, a replay on one probe set): the error of a
            change between two points is then the jackknife of the replicate differences
            (:func:`paired_jackknife_se`), which leaves out the noise both share, instead of
            ``sqrt(se_start^2 + se_end^2)``.
        **overrides: any :class:`DetectorOptions` field by name (``min_points=4``,
            ``allow_warmup=False``), applied over ``options``.

    Returns:
        Segments in order, covering all valid points; consecutive segments share their
        boundary measurement. Fewer valid points than ``min_points``: one ``"stable"``
        segment with confidence 0 whose ``rankme_change``/``alpha_change`` are the measured
        change from the first to the last point (an empty list for no points at all).

    Raises:
        ValueError: lengths differ, steps not strictly increasing or negative, RankMe not
            positive, or an invalid option value. NaN/Inf points are dropped with a warning.
        TypeError: an unknown option name.
    """
    o = resolve_options(options, overrides)
    centred(spectrum)  # refuses an unknown spectrum
    smoothing, enter_threshold, exit_threshold = o.smoothing, o.enter_threshold, o.exit_threshold
    min_rankme_change, min_alpha_change = o.min_rankme_change, o.min_alpha_change
    noise_floor, outlier_threshold = o.noise_floor, o.outlier_threshold
    n_in = len(_as_1d("steps", steps))
    s, r, a, idx = _prepare(steps, rankme, alpha)
    se_r = _prepare_se("rankme_se", rankme_se, n_in, idx)
    se_a = None if a is None else _prepare_se("alpha_se", alpha_se, n_in, idx)
    rep_r = _prepare_replicates("rankme_replicates", rankme_replicates, n_in, idx)
    rep_a = None if a is None else _prepare_replicates("alpha_replicates", alpha_replicates, n_in, idx)
    n = len(s)
    if n == 0:
        return []
    if n < o.min_points:
        # Not enough history to tell a trend from noise: report "no evidence", not a phase,
        # with the change that was measured (first to last point).
        dy = float(np.log(r[-1] / r[0]))
        da = None if a is None else float(a[-1] - a[0])
        seg = _make(Phase.STABLE, s, idx, 0, n - 1, 0.0, dy, da)
        return [replace(seg, spectrum=spectrum, note=f"too few measurements ({n} of min_points {o.min_points})")]

    x = log_step(s)
    y = np.log(r)
    w = min(int(smoothing), n)

    if outlier_threshold is not None:
        bad = _outliers(x, y, _noise(*_local_fits(x, y, w)[2:], noise_floor), outlier_threshold)
        if a is not None:
            bad |= _outliers(x, a, _noise(*_local_fits(x, a, w)[2:], noise_floor), outlier_threshold)
        if bad.any():
            warn(f"ignored {int(bad.sum())} outlier measurement(s) at step(s) {s[bad].tolist()}")
            keep = ~bad
            s, x, y, idx = s[keep], x[keep], y[keep], idx[keep]
            a = a[keep] if a is not None else None
            se_r = se_r[keep] if se_r is not None else None
            se_a = se_a[keep] if se_a is not None else None
            rep_r = rep_r[keep] if rep_r is not None else None
            rep_a = rep_a[keep] if rep_a is not None else None
            n = len(s)
            w = min(int(smoothing), n)

    slope, rsxx, resid, lev = _local_fits(x, y, w)
    sig_y = _noise(resid, lev, noise_floor)
    labels = _hysteresis(slope * rsxx / sig_y, enter_threshold, exit_threshold)
    sig_a = None
    if a is not None:
        slope_a, rsxx_a, resid_a, lev_a = _local_fits(x, a, w)
        sig_a = _noise(resid_a, lev_a, noise_floor)
        # Alpha falls in entropy-seeking, so its direction is the negated slope sign.
        lab_a = _hysteresis(-slope_a * rsxx_a / sig_a, enter_threshold, exit_threshold)
        labels = np.where(labels == _FLAT, lab_a, labels)

    # From here segments share boundary points: segment k spans knots[k-1]..knots[k]
    # (with 0 and n-1 at the ends). Tidy, then refine the knots and settle the labels
    # until nothing changes.
    runs = _runs(labels)
    ctx = _Ctx(
        x,
        y,
        a,
        sig_y,
        sig_a,
        w,
        enter_threshold,
        exit_threshold,
        o.min_segment_length,
        o.flat_rankme_change,
        (math.log1p(min_rankme_change), min_alpha_change),
    )
    labs, knots = ctx.tidy([rr[0] for rr in runs], [rr[1] for rr in runs[1:]])
    for _ in range(10):
        knots = ctx.refine(labs, knots)
        new_labs, new_knots = ctx.settle(*ctx.split(labs, knots))
        if (new_labs, new_knots) == (labs, knots):
            break
        labs, knots = new_labs, new_knots
    # Standard errors in the detector's units: log RankMe (se / RankMe) and alpha.
    errors = _Errors(
        None if se_r is None else se_r / np.exp(y),
        se_a,
        o.noise_factor,
        ctx.min_effect,
        rep_y=None if rep_r is None else np.log(np.where(rep_r > 0, rep_r, np.nan)),
        rep_a=rep_a,
    )
    warmup_limit = o.warmup_steps if o.warmup_steps is not None else o.warmup_fraction * float(s[-1])
    lead_end = int(np.searchsorted(s, warmup_limit, side="right")) - 1 if o.allow_warmup else -1
    labs, knots, transients = _merge_transients(ctx, labs, knots, o.transient_points, lead_end)
    labs, knots = _gate_noise(ctx, errors, labs, knots)
    bounds = [0, *knots, n - 1]
    merged = [[labs[k], bounds[k], bounds[k + 1]] for k in range(len(labs))]

    out: list[PhaseSegment] = []
    for lab, i0, i1 in merged:
        xs, ys = x[i0 : i1 + 1], y[i0 : i1 + 1]
        dy, t_y = _seg_fit(xs, ys, sig_y)
        da, t_a = (None, 0.0)
        if a is not None:
            da, t_a = _seg_fit(xs, a[i0 : i1 + 1], sig_a)
            t_a = -t_a  # entropy direction positive
        ruled = ctx.rankme_rule(lab, i0, i1, t_y)
        lab = lab if ruled is None else ruled  # settled already unless the rounds ran out
        if lab != _FLAT and not ctx.large_enough(lab, i0, i1):
            lab = _FLAT
        se_dy, se_da = errors.change_se(i0, i1)
        notes: list[str] = []
        warmup = False
        if lab != _FLAT and errors.known and not errors.beyond(lab, dy, da, i0, i1):
            lab = _FLAT  # a trend the rounds re-made from a segment within noise
        if lab == _DOWN:
            first_fall = all(seg.name == Phase.STABLE for seg in out)
            rankme_falls = dy <= -ctx.min_effect[0] and (t_y <= -enter_threshold or ctx.large(i0, i1) < 0)
            at_start = float(s[i0]) <= warmup_limit
            warmup = o.allow_warmup and first_fall and rankme_falls and at_start
            if o.allow_warmup and first_fall and rankme_falls and not at_start:
                where = (
                    f"the lr warmup ends at step {o.warmup_steps:g}"
                    if o.warmup_steps is not None
                    else f"warmup_fraction {o.warmup_fraction:g} of the run: step {warmup_limit:g}"
                )
                start = _step_value(s[i0])
                notes.append(f"first fall starts at step {start:g}, after the start of training ({where}): not warmup")
            if not warmup:
                missing = _missing_signature(dy, da, se_da, ctx.min_effect, errors.factor)
                if missing and o.require_signature and da is not None:
                    lab = _FLAT
                    notes.append(f"{missing}: not the paper's compression signature (RankMe down with alpha up)")
                elif missing:
                    notes.append(missing)
        if lab == _FLAT:
            name = Phase.STABLE
            conf = math.exp(-max(abs(t_y), abs(t_a)) / enter_threshold)
            if min_rankme_change > 0:
                # Stable also when a significant move is below the effect size: as sure as it is small.
                small = 1.0 - abs(math.expm1(dy)) / min_rankme_change
                if da is not None and min_alpha_change > 0:
                    small = min(small, 1.0 - abs(da) / min_alpha_change)
                conf = max(conf, small)
            if errors.known and not errors.beyond(_UP if dy > 0 else _DOWN, dy, da, i0, i1):
                notes.insert(0, errors.within_text(dy, da, se_dy, se_da))
            if i0 in transients:
                notes.append(
                    f"a transient excursion (RankMe {math.expm1(dy) * 100:+.1f}% over {i1 - i0 + 1} points, short or "
                    "within the warmup range) before a larger opposite move: not a phase"
                )
        else:
            if lab == _UP:
                name = Phase.ENTROPY_SEEKING
            else:
                # The initial collapse: RankMe itself falls (alpha alone never makes a warmup),
                # nothing but stable segments (the first steps barely moving) precede it, and it
                # starts at the start of training (warmup_steps / warmup_fraction).
                name = Phase.WARMUP if warmup else Phase.COMPRESSION_SEEKING
            # A large RankMe move counts as at least enter_threshold (the noise estimate may not).
            t_eff = lab * max(lab * t_y, enter_threshold) if ctx.large(i0, i1) == lab else t_y
            conf = _trend_confidence(lab, t_eff, t_a if a is not None else None, enter_threshold)
        seg = _make(name, s, idx, i0, i1, conf, dy, da)
        out.append(
            replace(
                seg,
                rankme_change_se=se_dy,
                alpha_change_se=se_da,
                note="; ".join(notes),
                spectrum=spectrum,
                paired=errors.pairs(i0, i1),
            )
        )
    _warn_if_noisy(out, ctx.sig_point if _alternates(x, y) else 0.0)
    return out


#: The note on segments measured without standard errors.
NO_ERROR_BARS = "no error bars available: noise judged from the trajectory's own scatter"


class _Errors:
    """The measurements' standard errors (log RankMe, alpha) and the noise rule on them."""

    def __init__(
        self,
        se_y: np.ndarray | None,
        se_a: np.ndarray | None,
        factor: float,
        min_effect: tuple[float, float],
        *,
        rep_y: np.ndarray | None = None,
        rep_a: np.ndarray | None = None,
    ) -> None:
        self.se_y, self.se_a, self.factor = se_y, se_a, factor
        self.rep_y, self.rep_a = rep_y, rep_a
        self.min_effect = min_effect
        self.known = any(v is not None for v in (se_y, se_a, rep_y, rep_a))

    def pairs(self, i0: int, i1: int) -> bool:
        """Do both ends of ``i0..i1`` carry replicates (for RankMe or alpha)?"""
        return any(
            rep is not None and bool(np.isfinite(rep[i0]).all() and np.isfinite(rep[i1]).all())
            for rep in (self.rep_y, self.rep_a)
        )

    def _combined(self, se: np.ndarray | None, rep: np.ndarray | None, i0: int, i1: int) -> float | None:
        paired = None if rep is None else paired_jackknife_se(rep[i0], rep[i1])
        if paired is not None:
            return paired
        if se is None or not (math.isfinite(se[i0]) and math.isfinite(se[i1])):
            return None
        return float(math.hypot(se[i0], se[i1]))

    def change_se(self, i0: int, i1: int) -> tuple[float | None, float | None]:
        """Standard errors of the change over a segment: paired over the replicates where both
        ends have them (the same probes), else ``sqrt(se_start^2 + se_end^2)``."""
        return self._combined(self.se_y, self.rep_y, i0, i1), self._combined(self.se_a, self.rep_a, i0, i1)

    def beyond(self, lab: int, dy: float, da: float | None, i0: int, i1: int) -> bool:
        """Does RankMe or alpha move in direction ``lab`` by more than ``factor`` combined
        standard errors? A metric without a known error counts as today, by its effect size
        (the detector's own rules judged its significance)."""
        se_dy, se_da = self.change_se(i0, i1)
        rank = lab * dy
        if rank > (self.factor * se_dy if se_dy is not None else max(self.min_effect[0], 1e-12)):
            return True
        if da is None:
            return False
        return -lab * da > (self.factor * se_da if se_da is not None else max(self.min_effect[1], 1e-12))

    def within_text(self, dy: float, da: float | None, se_dy: float | None, se_da: float | None) -> str:
        parts = []
        if se_dy is not None:
            parts.append(f"RankMe {math.expm1(dy) * 100:+.1f}% (se {se_dy * 100:.1f}%)")
        if se_da is not None and da is not None:
            parts.append(f"alpha {da:+.3f} (se {se_da:.3f})")
        return f"within noise: {', '.join(parts)}, below {self.factor:g} x se"


def _missing_signature(
    dy: float, da: float | None, se_da: float | None, min_effect: tuple[float, float], factor: float
) -> str:
    """Which part of the paper's compression signature (RankMe down *with* alpha up) a fall
    lacks; "" when it has both. Without alpha: that the signature is unconfirmed."""
    if da is None:
        return "alpha not measured: the compression signature (alpha up) is unconfirmed"
    rises = da >= min_effect[1] and (se_da is None or da > factor * se_da)
    falls = dy <= -min_effect[0]
    if falls and rises:
        return ""
    if falls:
        return f"RankMe falls ({math.expm1(dy) * 100:+.1f}%) but alpha does not rise ({da:+.3f})"
    if rises:
        return f"alpha rises ({da:+.3f}) but RankMe does not fall ({math.expm1(dy) * 100:+.1f}%)"
    return f"neither RankMe falls ({math.expm1(dy) * 100:+.1f}%) nor alpha rises ({da:+.3f})"


def _merge_transients(
    ctx: _Ctx, labs: list[int], knots: list[int], min_points: int, lead_end: int = -1
) -> tuple[list[int], list[int], set[int]]:
    """Merge transient excursions: a trend of fewer than ``min_points`` measurements that moves
    RankMe less than the opposite trends around it is not a phase.

    Between two such trends (a short bump inside the initial collapse) it takes their direction
    and the three become one segment. A rise as the first segment, before a larger fall (an
    early bump the collapse then undoes), becomes stable, so that the collapse is still the first
    fall; so does a longer one that ends by index ``lead_end`` (the warmup range; -1: none).
    Returns ``(labels, knots, start indices of the segments made stable)``.
    """
    labs, bounds = list(labs), [0, *knots, ctx.n - 1]
    flattened: set[int] = set()

    def short_and_small(k: int, *neighbours: int) -> bool:
        if bounds[k + 1] - bounds[k] + 1 >= min_points and not (k == 0 and bounds[1] <= lead_end):
            return False
        move = abs(ctx.fit(bounds[k], bounds[k + 1])[0])
        return all(move < abs(ctx.fit(bounds[j], bounds[j + 1])[0]) for j in neighbours)

    changed = True
    while changed:
        changed = False
        for k in range(1, len(labs) - 1):
            if labs[k] != _FLAT and labs[k - 1] == labs[k + 1] == -labs[k] and short_and_small(k, k - 1, k + 1):
                labs = labs[: k - 1] + [labs[k - 1]] + labs[k + 2 :]
                bounds = bounds[:k] + bounds[k + 2 :]
                changed = True
                break
    # Only a rise: a fall first is the collapse itself, whatever follows it.
    if len(labs) > 1 and labs[0] == _UP and labs[1] == _DOWN and short_and_small(0, 1):
        labs[0] = _FLAT
        flattened.add(bounds[0])
    return labs, bounds[1:-1], flattened


def _gate_noise(ctx: _Ctx, errors: _Errors, labs: list[int], knots: list[int]) -> tuple[list[int], list[int]]:
    """With standard errors: a trend that moves neither RankMe nor alpha beyond ``noise_factor``
    combined standard errors becomes stable; equal neighbours then merge (their boundary was
    within noise)."""
    if not errors.known:
        return labs, knots
    bounds = [0, *knots, ctx.n - 1]
    labs = list(labs)
    for k, lab in enumerate(labs):
        if lab == _FLAT:
            continue
        i0, i1 = bounds[k], bounds[k + 1]
        dy = ctx.fit(i0, i1)[0]
        da = None if ctx.a is None else _seg_fit(ctx.x[i0 : i1 + 1], ctx.a[i0 : i1 + 1], 1.0)[0]
        if not errors.beyond(lab, dy, da, i0, i1):
            labs[k] = _FLAT
    new_labs, new_bounds = [labs[0]], [0]
    for k in range(1, len(labs)):
        if labs[k] != new_labs[-1]:
            new_labs.append(labs[k])
            new_bounds.append(bounds[k])
    return new_labs, new_bounds[1:]


#: Noise sigma of log RankMe (about the relative scatter between neighbouring
#: measurements) above which the phases are flagged as unreliable. Measured trajectories
#: scatter by 0.2-3% (docs/phases.md).
_NOISY_SIGMA = 0.1


def _warn_if_noisy(segments: list[PhaseSegment], sigma: float) -> None:
    """Warn when the trajectory is mostly noise or keeps reversing: phases then mislead."""
    trends = [seg for seg in segments if seg.name != Phase.STABLE]
    reversals = sum((a.rankme_change > 0) != (b.rankme_change > 0) for a, b in zip(trends, trends[1:]))
    if sigma > _NOISY_SIGMA:
        warn(
            f"RankMe scatters by about {100 * sigma:.0f}% between neighbouring measurements: only "
            "moves well above that are phases (measure on more probe sequences to reduce it)"
        )
    elif reversals >= 4:  # warmup, entropy, compression, entropy (post-training) is 3
        warn(
            f"the trajectory reverses direction {reversals} times ({len(trends)} trend segments): an "
            "oscillating or noisy measurement? Check it (probe count, precision) before reading phases"
        )


class _AlphaSeries(NamedTuple):
    """The alpha-ReQ side of :class:`_Ctx`: values, noise sigma, smoothed values."""

    values: np.ndarray
    sigma: float
    smooth: np.ndarray


class _Ctx:
    """Data and settings shared by the boundary refinement and segment-level checks."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        a: np.ndarray | None,
        sig_y: float,
        sig_a: float | None,
        w: int,
        enter: float,
        exit_: float,
        min_len: int,
        flat_change: float,
        min_effect: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        self.x, self.y, self.a = x, y, a
        self.sig_y, self.sig_a = sig_y, sig_a
        self.y_smooth = y - _local_fits(x, y, _ext_window(w))[2]
        self.alpha = (
            None if a is None or sig_a is None else _AlphaSeries(a, sig_a, a - _local_fits(x, a, _ext_window(w))[2])
        )
        self.w, self.enter, self.exit, self.min_len = w, enter, exit_, min_len
        self.flat_change = flat_change
        self.min_effect = min_effect  # (log RankMe change, alpha change) a trend needs
        self.sig_point = _point_noise(x, y, sig_y)
        self.n = len(x)

    def t_stats(self, i0: int, i1: int) -> tuple[float, float]:
        """Segment-level t of log RankMe and of -alpha (entropy direction positive)."""
        xs = self.x[i0 : i1 + 1]
        _, t_y = _seg_fit(xs, self.y[i0 : i1 + 1], self.sig_y)
        t_a = 0.0
        if self.a is not None:
            _, t_a = _seg_fit(xs, -self.a[i0 : i1 + 1], self.sig_a)
        return t_y, t_a

    def refine(self, labs: list[int], knots: list[int]) -> list[int]:
        """Move each knot to the best hinge (two-piece linear) fit near it."""
        w, bounds = self.w, [0, *knots, self.n - 1]
        for k in range(1, len(bounds) - 1):
            b, left, right = bounds[k], bounds[k - 1], bounds[k + 1]
            lo_c, hi_c = max(left + 1, b - w), min(right - 1, b + w)
            if lo_c > hi_c:
                continue
            lo, hi = max(left, b - 2 * w), min(right, b + 2 * w)
            # Use RankMe unless neither side moves it (an alpha-only boundary).
            t_left, t_right = self.t_stats(left, b)[0], self.t_stats(b, right)[0]
            alpha = None if max(abs(t_left), abs(t_right)) >= self.enter else self.alpha
            rankme = alpha is None
            target, sig, target_smooth = (self.y, self.sig_y, self.y_smooth) if alpha is None else alpha
            if (labs[k - 1] == _FLAT) != (labs[k] == _FLAT):
                # A trend meets a plateau: the plateau piece is flat by definition.
                bounds[k] = _ramp_knot(self.x, target, lo, hi, range(lo_c, hi_c + 1), labs[k] == _FLAT)
                continue
            knot, _ = _hinge_knot(self.x, target, lo, hi, range(lo_c, hi_c + 1))
            # Misfit of the corner, judged just around it (neighbouring knots stay out).
            lo2, hi2 = max(left, knot - w // 2 - 1), min(right, knot + w // 2 + 1)
            _, sse = _hinge_knot(self.x, target, lo2, hi2, range(knot, knot + 1))
            if labs[k - 1] == -labs[k] != _FLAT and hi2 - lo2 > 3 and sse > 4.0 * (hi2 - lo2 - 2) * sig**2:
                # Two straight pieces do not describe this turn (a rounded extremum, not a
                # corner): the turning point is the extremum of the smoothed curve.
                smooth = target_smooth[lo_c : hi_c + 1]
                # Direction of RankMe (or of -alpha) before the turn; -1: a minimum of RankMe.
                ext = np.argmin(smooth) if (labs[k - 1] == _DOWN) == rankme else np.argmax(smooth)
                knot = lo_c + int(ext)
            bounds[k] = knot
        return bounds[1:-1]

    def knot_significant(self, bounds: list[int], knot: int) -> bool:
        """Does a hinge at ``knot`` beat one straight line by enter_threshold^2 sigma^2?

        Best line vs best hinge over both time axes (log-step, index), for RankMe and for
        alpha (each in its own noise units).
        """
        k = bounds.index(knot)
        lo, hi = max(bounds[k - 1], knot - 2 * self.w), min(bounds[k + 1], knot + 2 * self.w)
        if hi - lo + 1 < 4:
            return False
        series = [(self.y, self.sig_y)] + ([(self.alpha.values, self.alpha.sigma)] if self.alpha is not None else [])
        for vals, sig in series:
            ys = vals[lo : hi + 1]
            line_sse = hinge_sse = np.inf
            for axis in (self.x, np.arange(self.n, dtype=np.float64)):
                d = axis[lo : hi + 1] - axis[knot]
                one = np.ones_like(d)
                line_sse = min(line_sse, _sse(np.column_stack([one, d]), ys))
                hinge = np.column_stack([one, np.minimum(d, 0), np.maximum(d, 0)])
                hinge_sse = min(hinge_sse, _sse(hinge, ys))
            if line_sse - hinge_sse >= (self.enter * sig) ** 2:
                return True
        return False

    def split(self, labs: list[int], knots: list[int]) -> tuple[list[int], list[int]]:
        """Split segments that hide a large turn (V or inverted V) of RankMe.

        The best continuous two-piece fit of log RankMe over the whole segment (each piece
        >= min_segment_length points) is a turn if its pieces move in opposite directions
        by a large factor each (|log ratio| >= log 1.5), whatever the noise estimate: on a
        short series the local fits straddle a sharp turn, inflate the noise estimate and
        cannot resolve it.
        """
        bounds = [0, *knots, self.n - 1]
        new_labs, new_bounds = [], [0]
        for k, lab in enumerate(labs):
            lo, hi = bounds[k], bounds[k + 1]
            turn = self._turn(lo, hi)
            if turn is None:
                new_labs.append(lab)
            else:
                knot, d1, d2 = turn
                new_labs += [_UP if d1 > 0 else _DOWN, _UP if d2 > 0 else _DOWN]
                new_bounds.append(knot)
            new_bounds.append(hi)
        return new_labs, new_bounds[1:-1]

    def _turn(self, lo: int, hi: int) -> tuple[int, float, float] | None:
        m = self.min_len
        if hi - lo + 1 < 2 * m - 1:
            return None
        knot, _ = _hinge_knot(self.x, self.y, lo, hi, range(lo + m - 1, hi - m + 2))
        d1, d2 = self.fit(lo, knot)[0], self.fit(knot, hi)[0]
        if d1 * d2 < 0 and self.large(lo, knot) and self.large(knot, hi):
            return knot, d1, d2
        return None

    def rankme_rule(self, lab: int, i0: int, i1: int, t_y: float) -> int | None:
        """The label RankMe imposes on a segment, or None where it leaves it open.

        A large move (|log ratio| >= log 1.5) names the segment by its direction; so does
        a significant one (|t| >= enter_threshold) for a trend segment. A smaller,
        insignificant move of at least ``flat_change`` (relative) forbids a trend against
        it (alpha alone cannot name a segment against RankMe): the segment becomes stable.
        """
        dy = self.fit(i0, i1)[0]
        rank_dir = _UP if dy > 0 else _DOWN
        significant = lab != _FLAT and rank_dir * t_y >= self.enter and abs(dy) >= self.min_effect[0]
        if self.large(i0, i1) or significant:
            return rank_dir
        if lab == -rank_dir and abs(math.expm1(dy)) >= self.flat_change:
            return _FLAT
        return None

    def fit(self, i0: int, i1: int) -> tuple[float, float]:
        return _seg_fit(self.x[i0 : i1 + 1], self.y[i0 : i1 + 1], self.sig_y)

    def large(self, i0: int, i1: int) -> int:
        """The direction of a large RankMe move (a factor >= 1.5 over a segment), else 0.

        Large moves name a segment whatever the local-fit noise estimate says (a sharp turn
        on few points inflates it), but only if the move is not itself compatible with the
        point-to-point scatter (:func:`_point_noise`, which turns do not inflate): t >=
        ``exit_threshold``. Pure noise of a factor 1.5 and more would otherwise make
        alternating "phases".
        """
        dy, t_own = _seg_fit(self.x[i0 : i1 + 1], self.y[i0 : i1 + 1], self.sig_point)
        if abs(dy) >= _LARGE_MOVE and dy * t_own >= self.exit * abs(dy):
            return _UP if dy > 0 else _DOWN
        return 0

    def large_enough(self, lab: int, i0: int, i1: int) -> bool:
        """Effect size: does RankMe (relative) or alpha (absolute) move at least the minimum
        over the segment, in the direction ``lab``? (Alpha falls in entropy-seeking.)"""
        if lab * self.fit(i0, i1)[0] >= self.min_effect[0]:
            return True
        if self.a is None:
            return False
        da = _seg_fit(self.x[i0 : i1 + 1], self.a[i0 : i1 + 1], 1.0)[0]
        return -lab * da >= self.min_effect[1]

    def drifts_throughout(self, drift: int, i0: int, i1: int, by_rankme: bool) -> bool:
        """Does the drift hold in both halves of the segment (each at ``exit_threshold``)?

        A slow drift does; the tail of a trend that runs into a plateau through a rounded
        knee moves only the first half, and is part of the plateau's edge, not a trend.
        """
        mid = (i0 + i1) // 2
        for lo, hi in ((i0, mid), (mid, i1)):
            t_y, t_a = self.t_stats(lo, hi)
            if drift * (t_y if by_rankme else t_a) < self.exit:
                return False
        return True

    def settle(self, labs: list[int], knots: list[int]) -> tuple[list[int], list[int]]:
        """One round of segment-level checks; returns new (labels, knots)."""
        labs, bounds = list(labs), [0, *knots, self.n - 1]
        m = len(labs)
        for k in range(m):
            t_y, t_a = self.t_stats(bounds[k], bounds[k + 1])
            length = bounds[k + 1] - bounds[k] + 1
            ruled = self.rankme_rule(labs[k], bounds[k], bounds[k + 1], t_y)
            if ruled is not None:
                labs[k] = ruled
                continue
            if labs[k] != _FLAT:
                if max(labs[k] * t_y, labs[k] * t_a) < self.enter:
                    labs[k] = _FLAT  # the trend does not hold over the segment as a whole
                elif not self.large_enough(labs[k], bounds[k], bounds[k + 1]):
                    labs[k] = _FLAT  # significant but too small to be a phase
                continue
            t_dir = t_y if abs(t_y) >= self.exit or self.a is None else t_a
            drift = _UP if t_dir > 0 else _DOWN
            if (
                length >= 2 * self.w
                and abs(t_dir) >= self.enter
                and self.large_enough(drift, bounds[k], bounds[k + 1])
                and self.drifts_throughout(drift, bounds[k], bounds[k + 1], t_dir is t_y)
            ):
                labs[k] = drift  # slow drift, below the local resolution
                continue
            # A flat segment is only a plateau if the trend next to it really stops: the
            # slope change at their knot must be significant, else the trend continues.
            for j, knot in ((k - 1, bounds[k]), (k + 1, bounds[k + 1])):
                if 0 <= j < m and labs[j] != _FLAT and not self.knot_significant(bounds, knot):
                    labs[k] = labs[j]
                    break
        return self.tidy(labs, bounds[1:-1])

    def tidy(self, labs: list[int], knots: list[int]) -> tuple[list[int], list[int]]:
        """Merge equal neighbours, close turning gaps, absorb short segments (to a fixed point)."""
        bounds = [0, *knots, self.n - 1]
        while True:
            new_labs, new_bounds = [labs[0]], [bounds[0]]
            for k in range(1, len(labs)):
                if labs[k] != new_labs[-1]:
                    new_labs.append(labs[k])
                    new_bounds.append(bounds[k])
            labs, bounds = new_labs, [*new_bounds, bounds[-1]]
            m = len(labs)

            def length(k: int, bounds: list[int] = bounds) -> int:
                return bounds[k + 1] - bounds[k] + 1

            # A flat gap between opposite trends no wider than the window is the turning
            # point the local fits blur, not a plateau: close it at its middle.
            gaps = [
                k
                for k in range(1, m - 1)
                if labs[k] == _FLAT and labs[k - 1] == -labs[k + 1] != _FLAT and length(k) <= self.w
            ]
            if gaps:
                k = gaps[0]
                mid = (bounds[k] + bounds[k + 1]) // 2
                labs, bounds = labs[:k] + labs[k + 1 :], bounds[:k] + [mid] + bounds[k + 2 :]
                continue
            short = [k for k in range(m) if length(k) < self.min_len]
            if not short or m == 1:
                return labs, bounds[1:-1]
            k = min(short, key=lambda j: (length(j), j))
            nb = [j for j in (k - 1, k + 1) if 0 <= j < m]
            if len(nb) == 2 and labs[nb[0]] == labs[nb[1]]:
                labs[k] = labs[nb[0]]
            else:
                labs[k] = labs[max(nb, key=lambda j: (length(j), -j))]


def _trend_confidence(direction: int, t_y: float, t_a: float | None, enter: float) -> float:
    """Strength of the primary evidence times a factor for alpha's agreement."""
    s_y, s_a = direction * t_y, (direction * t_a if t_a is not None else None)
    if s_y >= enter or s_a is None:
        strength = 1.0 - math.exp(-max(s_y, 0.0) / enter)
        if s_a is None:
            factor = 0.75  # one metric, unconfirmed
        else:
            # 1.0 when alpha confirms (>= enter), 0.75 when flat, 0.5 when it contradicts.
            factor = 0.75 + 0.25 * max(-1.0, min(1.0, s_a / enter))
        return float(strength * factor)
    # RankMe not significant over the segment: alpha alone carries it (secondary metric).
    return float(0.5 * (1.0 - math.exp(-max(s_a, 0.0) / enter)))


def _make(
    name: Phase,
    s: np.ndarray,
    idx: np.ndarray,
    i0: int,
    i1: int,
    conf: float,
    dy: float,
    da: float | None,
) -> PhaseSegment:
    return PhaseSegment(
        name=name,
        start_step=_step_value(s[i0]),
        end_step=_step_value(s[i1]),
        start_index=int(idx[i0]),
        end_index=int(idx[i1]),
        confidence=round(min(1.0, max(0.0, conf)), 6),
        rankme_change=float(dy),
        alpha_change=None if da is None else float(da),
        n_points=i1 - i0 + 1,
    )


def _step_value(v: float) -> float:
    return int(v) if float(v).is_integer() else float(v)


def trajectory_phases(trajectory: Any, options: DetectorOptions | None = None, **overrides: Any) -> list[PhaseSegment]:
    """:func:`detect_phases` on a :class:`geomtrace.trajectory.Trajectory`: its steps, RankMe,
    alpha (when it has any), standard errors, jackknife replicates and spectrum (centred or not)."""
    alpha = trajectory.alpha
    has_alpha = alpha is not None and len(alpha) and bool(np.isfinite(alpha).any())
    return detect_phases(
        trajectory.step,
        trajectory.rankme,
        alpha if has_alpha else None,
        options,
        rankme_se=getattr(trajectory, "rankme_se", None),
        alpha_se=getattr(trajectory, "alpha_se", None) if has_alpha else None,
        spectrum=getattr(trajectory, "spectrum", None),
        rankme_replicates=getattr(trajectory, "rankme_replicates", None),
        alpha_replicates=getattr(trajectory, "alpha_replicates", None) if has_alpha else None,
        **overrides,
    )


def current_phase(
    steps: Sequence[float] | np.ndarray,
    rankme: Sequence[float] | np.ndarray,
    alpha: Sequence[float] | np.ndarray | None = None,
    options: DetectorOptions | None = None,
    *,
    rankme_se: Sequence[float | None] | np.ndarray | None = None,
    alpha_se: Sequence[float | None] | np.ndarray | None = None,
    spectrum: str | None = None,
    rankme_replicates: Sequence[Sequence[float] | None] | np.ndarray | None = None,
    alpha_replicates: Sequence[Sequence[float] | None] | np.ndarray | None = None,
    **overrides: Any,
) -> PhaseSegment | None:
    """The latest phase (last segment of :func:`detect_phases`), for live logging.

    Takes the options, standard errors, replicates and spectrum as :func:`detect_phases` does. Returns
    None while fewer than ``min_points`` (default 5) valid measurements exist. Note the last
    boundary is only as recent as the evidence: a new trend shows up after about
    ``smoothing / 2`` measurements.
    """
    o = resolve_options(options, overrides)
    segs = detect_phases(
        steps,
        rankme,
        alpha,
        o,
        rankme_se=rankme_se,
        alpha_se=alpha_se,
        spectrum=spectrum,
        rankme_replicates=rankme_replicates,
        alpha_replicates=alpha_replicates,
    )
    return None if not segs or _too_few(segs, o) else segs[-1]


def _too_few(segments: Sequence[PhaseSegment], options: DetectorOptions) -> bool:
    """Is this :func:`detect_phases`'s answer to fewer than ``min_points`` valid points?"""
    return len(segments) == 1 and segments[0].n_points < options.min_points


# ----------------------------------------------------------------------------- table


def format_segments(segments: Sequence[PhaseSegment], options: DetectorOptions | None = None) -> str:
    """Plain-text table of segments (for ``geomtrace phases``).

    ``options``: those the segments were detected with (default: the defaults); with fewer
    valid measurements than their ``min_points`` the text says so, and gives the measured
    overall change instead of a phase.
    """
    options = resolve_options(options)
    if segments and _too_few(segments, options):
        seg = segments[0]
        change = f"RankMe {math.expm1(seg.rankme_change) * 100:+.1f}%"
        if seg.alpha_change is not None:
            change += f", alpha {seg.alpha_change:+.3f}"
        return (
            f"too few measurements for phases: {seg.n_points} of min_points {options.min_points}\n"
            f"overall change, step {seg.start_step:g} to {seg.end_step:g}: {change}"
        )
    header = ("phase", "start step", "end step", "confidence", "RankMe change", "alpha change")
    with_notes = any(seg.note for seg in segments)
    rows: list[tuple[str, ...]] = [(*header, "note")] if with_notes else [header]
    for seg in segments:
        alpha = "-" if seg.alpha_change is None else f"{seg.alpha_change:+.3f}"
        change = f"{math.expm1(seg.rankme_change) * 100:+.1f}%"
        if seg.rankme_change_se is not None:
            change += f" ± {seg.rankme_change_se * 100:.1f}"
        if seg.alpha_change_se is not None and seg.alpha_change is not None:
            alpha += f" ± {seg.alpha_change_se:.3f}"
        cols = (seg.name, f"{seg.start_step:g}", f"{seg.end_step:g}", f"{seg.confidence:.2f}", change, alpha)
        rows.append((*cols, seg.note) if with_notes else cols)
    if len(rows) == 1:
        return "no phases (no valid measurements)"
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for i, line in enumerate(rows):
        cells = [line[0].ljust(widths[0])] + [cell.rjust(wd) for cell, wd in zip(line[1:6], widths[1:6])]
        cells += [cell.ljust(wd) for cell, wd in zip(line[6:], widths[6:])]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * wd for wd in widths))
    lines.append(f"measured {centring_text(segments[0].spectrum)}; " + _errors_text(segments, options))
    return "\n".join(lines)


def _errors_text(segments: Sequence[PhaseSegment], options: DetectorOptions) -> str:
    """What the table says about error bars: the rule with them, or that there were none."""
    if any(seg.rankme_change_se is not None or seg.alpha_change_se is not None for seg in segments):
        kind = (
            "paired standard error of the change (the jackknife of the replicate differences: the same probes)"
            if any(seg.paired for seg in segments)
            else "combined standard error of the change (sqrt(se_start^2 + se_end^2))"
        )
        return f"± = {kind}; a trend needs a change beyond {options.noise_factor:g} x its standard error"
    return NO_ERROR_BARS


# ----------------------------------------------------------------------------- shifts


@dataclass(frozen=True)
class GeometryShift:
    """Direction of a geometry change between two measurements (e.g. before/after SFT).

    ``rankme_change`` is absolute, ``rankme_rel_change`` relative (0.163 = +16.3%),
    ``alpha_change`` absolute. Alpha fields are None when either side has no alpha.
    ``rankme_change_se``/``alpha_change_se``: the standard errors of the changes (absolute):
    paired (:func:`paired_jackknife_se`) where both sides carry their jackknife replicates,
    else ``sqrt(se_before^2 + se_after^2)``; None without error bars; ``paired`` says which;
    ``noise_factor`` the factor a change had to exceed them by; ``note`` says what was
    within noise, or that no error bars were available. ``direction`` is
    ``"within-noise"`` when error bars were given and every change was within them.
    """

    direction: str
    rankme_before: float
    rankme_after: float
    rankme_change: float
    rankme_rel_change: float
    alpha_before: float | None = None
    alpha_after: float | None = None
    alpha_change: float | None = None
    rankme_change_se: float | None = None
    alpha_change_se: float | None = None
    noise_factor: float | None = None
    note: str = ""
    paired: bool = False

    def summary(self) -> str:
        """One line, e.g. ``entropy-seeking: RankMe 44.1 -> 51.3 (+16.3%), alpha 0.91 -> 0.84 (-0.07)``,
        with the standard errors of the absolute changes (``+7.20 ± 0.52``; "paired" when they
        are) and the note where there are any."""
        rank_se = "" if self.rankme_change_se is None else f", {self.rankme_change:+.2f} ± {self.rankme_change_se:.2f}"
        text = (
            f"{self.direction}: RankMe {self.rankme_before:.1f} -> {self.rankme_after:.1f} "
            f"({self.rankme_rel_change * 100:+.1f}%{rank_se})"
        )
        if self.alpha_change is not None:
            alpha_se = "" if self.alpha_change_se is None else f" ± {self.alpha_change_se:.3f}"
            text += f", alpha {self.alpha_before:.2f} -> {self.alpha_after:.2f} ({self.alpha_change:+.2f}{alpha_se})"
        if self.paired:
            text += " (paired se: the same probes)"
        return f"{text} [{self.note}]" if self.note else text

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (JSON-serialisable)."""
        return asdict(self)


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _finite_or_none(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def shift(
    before: Mapping[str, float] | Any,
    after: Mapping[str, float] | Any,
    *,
    tolerance: float = 0.01,
    alpha_tolerance: float | None = None,
    noise_factor: float | None = None,
) -> GeometryShift:
    """Classify the geometry change from ``before`` to ``after``.

    ``before``/``after`` are mappings or objects with ``rankme`` and (optionally) ``alpha``,
    e.g. ``{"rankme": 44.0, "alpha": 0.8}``, and optionally their standard errors
    ``rankme_se``/``alpha_se`` (as a measurement with ``uncertainty=`` records them; None or
    absent: unknown) and jackknife replicates ``rankme_replicates``/``alpha_replicates`` (a live
    history row's ``<tag>_replicates``; :attr:`geomtrace.measure.LayerGeometry.rankme_replicates`).
    Pass replicates only for two measurements on the *same probes*: the change's error is then
    paired (:func:`paired_jackknife_se`). For a trajectory use :func:`trajectory_shift`.

    Rules (RankMe relative change vs ``tolerance``, default 1%; alpha absolute change vs
    ``alpha_tolerance``, default = ``tolerance``):

    - RankMe up and alpha not up -> ``"entropy-seeking"``; RankMe flat and alpha down too.
    - RankMe down and alpha not down -> ``"compression-seeking"``; RankMe flat and alpha up too.
    - both within tolerance (or alpha missing and RankMe flat) -> ``"none"``.
    - RankMe and alpha both up, or both down -> ``"mixed"``.

    With standard errors on both sides a change also has to exceed ``noise_factor`` (default:
    :attr:`DetectorOptions.noise_factor`, 2.0) times its standard error (paired over the
    replicates where both sides have them, else ``sqrt(se_before^2 + se_after^2)``, which
    overstates it for the same probes) to count; where it does not it counts as flat, and if
    nothing is left the direction is ``"within-noise"``, the note giving the numbers. Without
    them the rules above apply as they are, and the note says no error bars were available.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    a_tol = tolerance if alpha_tolerance is None else alpha_tolerance
    if a_tol < 0:
        raise ValueError(f"alpha_tolerance must be >= 0, got {alpha_tolerance!r}")
    factor = DetectorOptions().noise_factor if noise_factor is None else noise_factor
    if not factor > 0:
        raise ValueError(f"noise_factor must be > 0, got {noise_factor!r}")
    r0, r1 = _finite_or_none(_get(before, "rankme")), _finite_or_none(_get(after, "rankme"))
    if r0 is None or r1 is None:
        raise ValueError("before and after need a finite 'rankme'")
    if r0 <= 0:
        raise ValueError(f"rankme before must be positive, got {r0}")
    a0, a1 = _finite_or_none(_get(before, "alpha")), _finite_or_none(_get(after, "alpha"))
    if a0 is None or a1 is None:
        a0 = a1 = None
    paired_r = _paired_se(before, after, "rankme_replicates")
    paired_a = None if a0 is None else _paired_se(before, after, "alpha_replicates")
    se_r = paired_r if paired_r is not None else _combined_se(before, after, "rankme_se")
    se_a = paired_a if paired_a is not None else (None if a0 is None else _combined_se(before, after, "alpha_se"))

    rel = (r1 - r0) / r0
    da_val = None if a0 is None or a1 is None else a1 - a0
    dr = 0 if abs(rel) <= tolerance else (1 if rel > 0 else -1)
    da = 0 if da_val is None or abs(da_val) <= a_tol else (1 if da_val > 0 else -1)
    within = []
    if se_r is not None and dr != 0 and abs(r1 - r0) <= factor * se_r:
        dr = 0
        within.append(f"RankMe {r1 - r0:+.3g} ({'paired ' if paired_r is not None else ''}se {se_r:.3g})")
    if se_a is not None and da_val is not None and da != 0 and abs(da_val) <= factor * se_a:
        da = 0
        within.append(f"alpha {da_val:+.3g} ({'paired ' if paired_a is not None else ''}se {se_a:.3g})")
    if dr == 0 and da == 0:
        direction = "within-noise" if within else "none"
    elif (dr == 1 and da <= 0) or (dr == 0 and da == -1):
        direction = Phase.ENTROPY_SEEKING.value
    elif (dr == -1 and da >= 0) or (dr == 0 and da == 1):
        direction = Phase.COMPRESSION_SEEKING.value
    else:
        direction = "mixed"
    if se_r is None and se_a is None:
        note = NO_ERROR_BARS.split(":")[0] + ": the direction is by tolerance alone"
    elif within:
        note = f"within noise: {', '.join(within)}, below {factor:g} x se"
    else:
        note = ""
    return GeometryShift(
        direction=direction,
        rankme_before=r0,
        rankme_after=r1,
        rankme_change=r1 - r0,
        rankme_rel_change=rel,
        alpha_before=a0,
        alpha_after=a1,
        alpha_change=da_val,
        rankme_change_se=se_r,
        alpha_change_se=se_a,
        noise_factor=factor if (se_r is not None or se_a is not None) else None,
        paired=paired_r is not None or paired_a is not None,
        note=note,
    )


def _paired_se(before: Any, after: Any, key: str) -> float | None:
    return paired_jackknife_se(_get(before, key), _get(after, key))


def _combined_se(before: Any, after: Any, key: str) -> float | None:
    """``sqrt(se_before^2 + se_after^2)`` of ``key``, None unless both are known."""
    s0, s1 = _to_se(_get(before, key)), _to_se(_get(after, key))
    if not (math.isfinite(s0) and math.isfinite(s1)):
        return None
    return float(math.hypot(s0, s1))


def trajectory_shift(
    rankme: Sequence[float] | np.ndarray,
    alpha: Sequence[float] | np.ndarray | None = None,
    *,
    edge: int = 1,
    tolerance: float = 0.01,
    alpha_tolerance: float | None = None,
) -> GeometryShift:
    """:func:`shift` between the start and the end of a trajectory.

    The mean of the first ``edge`` finite values is compared with the mean of the last
    ``edge`` (``edge > 1`` averages out measurement noise). NaN values are ignored.
    """
    if edge < 1:
        raise ValueError(f"edge must be >= 1, got {edge!r}")

    def ends(v: Any, name: str) -> tuple[float, float]:
        arr = _as_1d(name, v)
        arr = arr[np.isfinite(arr)]
        if len(arr) < 2:
            raise ValueError(f"{name} needs at least 2 finite values")
        k = min(edge, len(arr) // 2)
        return float(arr[:k].mean()), float(arr[-k:].mean())

    r0, r1 = ends(rankme, "rankme")
    before: dict[str, float | None] = {"rankme": r0, "alpha": None}
    after: dict[str, float | None] = {"rankme": r1, "alpha": None}
    if alpha is not None:
        before["alpha"], after["alpha"] = ends(alpha, "alpha")
    return shift(before, after, tolerance=tolerance, alpha_tolerance=alpha_tolerance)
