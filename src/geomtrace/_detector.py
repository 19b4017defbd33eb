"""The phase detector's options, :class:`DetectorOptions` (public as ``geomtrace.phases.DetectorOptions``).

Declared here, in a module that imports nothing but the standard library, so that the command
line can build its ``--detector.*`` options from the dataclass without importing numpy
(``geomtrace plot --help`` answers at once). Everything else imports it from
:mod:`geomtrace.phases`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from geomtrace._options import OptionSet

__all__ = ["DetectorOptions"]


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class DetectorOptions(OptionSet):
    """How :func:`geomtrace.phases.detect_phases` segments a trajectory (the one declaration).

    The live tracker (``GeometryTracker(detector=...)``), ``geomtrace phases`` and ``geomtrace
    plot --phases`` (``--detector.<field> VALUE``) take this object; the tracker records it in
    its history (``record()["detector"]``), and the offline tools reuse the recorded one.
    Thresholds are in noise standard errors; the rules are in ``docs/concepts.md`` ("Phase
    detection").

    Attributes:
        smoothing: window, in measurements, of the local linear fits (clipped to the number of
            points); an integer >= 3.
        enter_threshold: a trend starts when its local slope reaches this many noise standard
            errors (> 0).
        exit_threshold: ...and ends when it falls below this many (hysteresis; 0 <=
            exit_threshold <= enter_threshold).
        min_segment_length: shortest segment kept, in measurements (an integer >= 2).
        noise_floor: lower bound on the noise sigma (in log RankMe, i.e. relative, and in alpha
            units), so that a noiseless trajectory does not make every wiggle significant (> 0).
        min_points: fewer valid measurements than this are too few for phases: a single
            "stable" segment with confidence 0 (live: no phase logged); an integer >= 3.
        allow_warmup: name a fall at the start of the trajectory "warmup". False for a
            trajectory that does not begin at initialisation (post-training, resumed runs): the
            fall is then "compression-seeking". A post-training run (``from_pretrained``) never
            has a warmup, whatever this says.
        outlier_threshold: an interior measurement off its neighbours' chord and off the trends
            on both sides by more than this many standard deviations, all on the same side, is an
            isolated spike and is ignored, with a warning; None keeps every point (on the command
            line: none).
        flat_rankme_change: alpha may name a segment against RankMe's direction only while
            RankMe's relative change over it is below this (and not significant); otherwise the
            segment is stable. A RankMe change of a factor >= 1.5 (+50% / -33%) always names the
            segment by RankMe's direction, whatever the noise (>= 0).
        min_rankme_change: effect size: a trend must move RankMe by at least this relative amount
            over its segment (fitted, in log: log(1 + min_rankme_change)), or alpha by at least
            min_alpha_change in the trend's direction; a smaller move, however significant, is
            "stable" (>= 0).
        min_alpha_change: the absolute alpha move that is enough for a trend (>= 0). Noiseless
            trajectories (full-batch toys, replays of deterministic checkpoints) make tiny drifts
            significant; this and min_rankme_change keep them from being named phases.
        noise_factor: where the measurements carry standard errors (``rankme_se``,
            ``alpha_se``), a segment is a trend (and its boundaries are named) only if RankMe or
            alpha moves over it by more than this many combined standard errors,
            ``sqrt(se_start^2 + se_end^2)``; else it is "within noise" (stable, with the
            numbers). :func:`~geomtrace.phases.shift` uses the same factor. 2.0: a two-sided
            ~95 % test for one comparison with normal errors, the coverage the standard errors
            are calibrated to; conservative besides, since the probe set is the same at every
            checkpoint and the errors of two checkpoints are positively correlated, which makes
            the combined standard error an overestimate of the difference's (> 0).
        warmup_steps: the learning-rate warmup's length in steps, where known: a fall is
            "warmup" only if it starts at or before this step. None: within the first
            ``warmup_fraction`` of the run (>= 0 or None; on the command line: none).
        warmup_fraction: without ``warmup_steps``, a fall is "warmup" only if it starts at or
            before this fraction of the last step (0.05: warmups are the first few percent of
            a run; a first fall at steps 418-971 of a short run is not one); in [0, 1].
        transient_points: a trend of fewer measurements than this between two trends of the
            opposite direction, each of which moves RankMe more than it does, is a transient
            excursion (a short bump inside the initial collapse) and is merged into them. 7 =
            the default smoothing window: a turn and its return within one local fit cannot be
            told from a wiggle. An integer >= 0 (0 or 1: never merge).
        require_signature: name "compression-seeking" only with the paper's signature, RankMe
            down *and* alpha up (by min_alpha_change, and beyond noise_factor standard errors
            where known); a fall without it is "stable" with a note saying which part is
            missing. Without alpha the name stays, with a note that the signature is unconfirmed.
    """

    group = "detector"

    smoothing: int = 7
    enter_threshold: float = 4.0
    exit_threshold: float = 2.0
    min_segment_length: int = 3
    noise_floor: float = 1e-3
    min_points: int = 5
    allow_warmup: bool = True
    outlier_threshold: float | None = 4.0
    flat_rankme_change: float = 0.1
    min_rankme_change: float = 0.05
    min_alpha_change: float = 0.05
    noise_factor: float = 2.0
    warmup_steps: float | None = None
    warmup_fraction: float = 0.05
    transient_points: int = 7
    require_signature: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option when a value is out of range or of the wrong type."""
        if not _is_int(self.smoothing) or self.smoothing < 3:
            raise ValueError(f"smoothing must be an integer >= 3 (measurements), got {self.smoothing!r}")
        for name in ("enter_threshold", "exit_threshold", "noise_floor", *_NON_NEGATIVE):
            value = getattr(self, name)
            if not _is_real(value) or math.isnan(value):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not self.enter_threshold > 0:
            raise ValueError(f"enter_threshold must be > 0, got {self.enter_threshold!r}")
        if not 0 <= self.exit_threshold <= self.enter_threshold:
            raise ValueError(
                f"exit_threshold must satisfy 0 <= exit_threshold <= enter_threshold, "
                f"got {self.exit_threshold!r} (enter_threshold={self.enter_threshold!r})"
            )
        if not _is_int(self.min_segment_length) or self.min_segment_length < 2:
            raise ValueError(f"min_segment_length must be an integer >= 2, got {self.min_segment_length!r}")
        if not self.noise_floor > 0:
            raise ValueError(f"noise_floor must be > 0, got {self.noise_floor!r}")
        if not _is_int(self.min_points) or self.min_points < 3:
            raise ValueError(f"min_points must be an integer >= 3, got {self.min_points!r}")
        if not isinstance(self.allow_warmup, bool):
            raise ValueError(f"allow_warmup must be True or False, got {self.allow_warmup!r}")
        if self.outlier_threshold is not None and not (_is_real(self.outlier_threshold) and self.outlier_threshold > 0):
            raise ValueError(f"outlier_threshold must be > 0 or None, got {self.outlier_threshold!r}")
        for name in _NON_NEGATIVE:
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not _is_real(self.noise_factor) or not self.noise_factor > 0:
            raise ValueError(f"noise_factor must be a number > 0, got {self.noise_factor!r}")
        if self.warmup_steps is not None and not (_is_real(self.warmup_steps) and self.warmup_steps >= 0):
            raise ValueError(f"warmup_steps must be a number >= 0 or None, got {self.warmup_steps!r}")
        if not _is_real(self.warmup_fraction) or not 0 <= self.warmup_fraction <= 1:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction!r}")
        if not _is_int(self.transient_points) or self.transient_points < 0:
            raise ValueError(f"transient_points must be an integer >= 0, got {self.transient_points!r}")
        if not isinstance(self.require_signature, bool):
            raise ValueError(f"require_signature must be True or False, got {self.require_signature!r}")


#: Options that must be numbers >= 0.
_NON_NEGATIVE = ("flat_rankme_change", "min_rankme_change", "min_alpha_change")
