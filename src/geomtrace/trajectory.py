"""A run's trajectory: one value per measured step at one layer, from replay records or
live history rows, and the one rule for which layer is *the* trajectory.

*The* trajectory of a run is its deepest tracked layer, as everywhere in geomtrace
(:meth:`geomtrace.measure.GeometryResult.trajectory_key`): in replay records the highest
``layer``; in live rows ``geometry/<name>`` when the model's final layer was tracked, else
the deepest ``geometry/layer<L>/<name>``.

Pure data handling (numpy only): :mod:`geomtrace.plots` draws from it and
:mod:`geomtrace.replay.results` reads run files into it, so neither imports the other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geomtrace._warnings import warn
from geomtrace.phases import replicate_matrix

__all__ = [
    "Trajectory",
    "check_comparable",
    "latest_probe_records",
    "select_records",
    "to_float",
    "trajectory_from_rows",
]


def to_float(value: Any) -> float:
    """``float(value)``; NaN for None and for what is not a number."""
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class Trajectory:
    """One run's values at one layer, sorted by step.

    ``tokens`` and ``n_params`` hold NaN where unknown; ``flops = 6 * n_params * tokens``.
    ``layer`` is the measured layer (None: the model's final layer of a live history).
    ``fingerprints`` and ``precisions`` say how the values were measured (empty when the
    run does not record it), so that comparisons can tell runs measured differently apart.
    ``rankme_se``/``alpha_se`` are the measurements' standard errors (``rankme_se`` beside
    ``rankme`` in a record, ``geometry/rankme_se`` in a live row; NaN where a value has none),
    None when no value has one. ``rankme_replicates``/``alpha_replicates`` (``(n, G)``, a NaN row
    where a value has none) are their jackknife replicates (a live row's ``geometry/rankme_replicates``),
    None when no value has them, their ``G`` differ, or the values come from different probe sets
    (only replicates on the same probes pair). ``spectrum`` is the measure config's ``spectrum``
    (``"covariance"``: centred, ``"singular"``: uncentred) where the records say it, else None.
    """

    label: str
    layer: int | None
    step: np.ndarray
    rankme: np.ndarray
    alpha: np.ndarray
    r2: np.ndarray
    tokens: np.ndarray
    n_params: np.ndarray
    records: list[dict[str, Any]] = field(default_factory=list)
    fingerprints: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    rankme_se: np.ndarray | None = None
    alpha_se: np.ndarray | None = None
    spectrum: str | None = None
    rankme_replicates: np.ndarray | None = None
    alpha_replicates: np.ndarray | None = None

    @property
    def flops(self) -> np.ndarray:
        """Training compute estimate ``6 * N_params * tokens`` (Kaplan et al.)."""
        return 6.0 * self.n_params * self.tokens


def latest_probe_records(records: list[dict[str, Any]], label: str = "run") -> list[dict[str, Any]]:
    """The records measured with the most recent probe set (a warning when there were several).

    Raises ValueError when there are no records at all."""
    if not records:
        raise ValueError(f"{label}: no results yet (nothing measured, or every checkpoint failed)")
    fingerprints = [r.get("probe_fingerprint") for r in records if r.get("probe_fingerprint")]
    if len(set(fingerprints)) <= 1:
        return records
    latest = fingerprints[-1]
    warn(f"{label}: records with {len(set(fingerprints))} different probe sets; using the latest ({latest})")
    return [r for r in records if r.get("probe_fingerprint") == latest]


def select_records(
    records: list[dict[str, Any]], *, layer: int | None = None, stage: str | None = None, label: str = "run"
) -> tuple[list[dict[str, Any]], int | None]:
    """The records of one probe set (the most recent one if several) and one layer (default:
    the deepest), optionally one stage, sorted by step. Returns ``(records, layer)``."""
    records = latest_probe_records(records, label)
    layers = sorted({r["layer"] for r in records if r.get("layer") is not None})
    if layer is None:
        layer = layers[-1] if layers else None
    elif layer not in layers:
        raise ValueError(f"{label}: no records for layer {layer}; layers present: {layers}")
    out = [r for r in records if r.get("layer") == layer]
    if stage is not None:
        stages = sorted({str(r.get("stage")) for r in out})
        out = [r for r in out if r.get("stage") == stage]
        if not out:
            raise ValueError(f"{label}: no records of stage {stage!r}; stages present: {stages}")
    out = [r for r in out if isinstance(r.get("step"), int)]
    out.sort(key=lambda r: (str(r.get("stage") or ""), r["step"]))
    steps = [r["step"] for r in out]
    if len(set(steps)) != len(steps):
        stages = sorted({str(r.get("stage")) for r in out})
        raise ValueError(f"{label}: steps repeat across stages {stages}; pick one with --stage")
    return out, layer


_LAYER_TAG = re.compile(r"^(?P<prefix>.+)/layer(?P<layer>\d+)/rankme$")


def _live_layers(rows: list[dict[str, Any]], prefix: str = "geometry") -> tuple[bool, list[int]]:
    """``(final layer present, inner layers present)`` in live history rows."""
    final = any(f"{prefix}/rankme" in r for r in rows)
    inner = sorted({int(m["layer"]) for r in rows for k in r if (m := _LAYER_TAG.match(k)) and m["prefix"] == prefix})
    return final, inner


def _live_tag(layer: int | None, name: str, prefix: str = "geometry") -> str:
    """The live-log tag of ``name`` at ``layer`` (None: the final layer), the inverse of
    :func:`geomtrace.measure.metric_key`."""
    name = "alpha_r2" if name == "r2" else name
    return f"{prefix}/{name}" if layer is None else f"{prefix}/layer{layer}/{name}"


def _pick_live_layer(rows: list[dict[str, Any]], layer: int | None, label: str) -> int | None:
    final, inner = _live_layers(rows)
    if not final and not inner:
        raise ValueError(f"{label}: the history has no geometry/rankme values (no measurement recorded)")
    if layer is None:
        return None if final else inner[-1]  # the deepest tracked layer
    if layer in inner:
        return layer
    present = ", ".join([*map(str, inner), *(["the final layer (geometry/rankme, the default)"] if final else [])])
    raise ValueError(f"{label}: no values for layer {layer}; layers present: {present}")


def trajectory_from_rows(
    rows: list[dict[str, Any]], *, layer: int | None = None, stage: str | None = None, label: str = "run"
) -> Trajectory:
    """A :class:`Trajectory` from replay records (with a ``layer`` field; see
    :func:`select_records`) or from live history rows (``{"step", "geometry/rankme", ...}``).

    Raises ValueError when nothing with a step is left to plot or segment."""
    rows = [dict(r) for r in rows]
    if any(r.get("layer") is not None for r in rows):
        rows, layer = select_records(rows, layer=layer, stage=stage, label=label)

        def value(row: dict[str, Any], name: str) -> Any:
            return row.get(name)
    else:
        live_layer = _pick_live_layer(rows, layer, label)
        layer = live_layer
        rankme_tag = _live_tag(live_layer, "rankme")
        rows = _last_per_step([r for r in rows if r.get("step") is not None and rankme_tag in r], label)

        def value(row: dict[str, Any], name: str) -> Any:
            return row.get(name) if name in ("step", "tokens", "n_params") else row.get(_live_tag(live_layer, name))

    if not rows:
        raise ValueError(
            f"{label}: no measurement with a training step to show (checkpoints without a step, such as "
            "'main' or 'final/', have no place on a trajectory)"
        )

    def column(name: str) -> np.ndarray:
        return np.array([to_float(value(r, name)) for r in rows], dtype=np.float64)

    def errors(name: str) -> np.ndarray | None:
        se = column(name)
        return se if np.isfinite(se).any() else None

    fingerprints = _distinct(r.get("probe_fingerprint") for r in rows)

    def replicates(name: str) -> np.ndarray | None:
        if len(fingerprints) > 1:
            return None  # different probes: their jackknife groups do not pair
        return replicate_matrix([v if isinstance(v, (list, tuple)) else None for v in (value(r, name) for r in rows)])

    spectra = _distinct(r.get("spectrum") for r in rows)
    if len(spectra) > 1:
        warn(f"{label}: values measured with different spectra ({', '.join(spectra)}): centred and uncentred mixed")

    return Trajectory(
        label=label,
        layer=layer,
        step=column("step"),
        rankme=column("rankme"),
        alpha=column("alpha"),
        r2=column("r2"),
        tokens=column("tokens"),
        n_params=column("n_params"),
        records=rows,
        fingerprints=fingerprints,
        precisions=_distinct(r.get("precision") for r in rows),
        rankme_se=errors("rankme_se"),
        alpha_se=errors("alpha_se"),
        spectrum=spectra[0] if len(spectra) == 1 else None,
        rankme_replicates=replicates("rankme_replicates"),
        alpha_replicates=replicates("alpha_replicates"),
    )


def _last_per_step(rows: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """Live rows sorted by step, keeping the last row of a step that repeats (a history
    appended to by two runs), with a warning."""
    by_step: dict[Any, dict[str, Any]] = {}
    for r in rows:
        by_step[r["step"]] = r
    if len(by_step) < len(rows):
        warn(
            f"{label}: {len(rows) - len(by_step)} measurement(s) repeat an earlier step; the last value of each "
            "step is used"
        )
    return [by_step[s] for s in sorted(by_step)]


def _distinct(values: Any) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        if v and str(v) not in out:
            out.append(str(v))
    return tuple(out)


def check_comparable(runs: Mapping[str, Trajectory]) -> list[str]:
    """Warn (and return the messages) when runs shown together were measured on different
    probe sets or in different precisions: their values then differ for that reason alone."""
    messages = []
    for what, attribute in (("probe sets", "fingerprints"), ("precisions", "precisions")):
        seen = {label: getattr(t, attribute) for label, t in runs.items() if getattr(t, attribute)}
        mixed_within = [f"{label} ({', '.join(v)})" for label, v in seen.items() if len(v) > 1]
        distinct = {v for values in seen.values() for v in values}
        if mixed_within:
            messages.append(f"runs mixing {what}: {'; '.join(mixed_within)}")
        elif len(distinct) > 1:
            listing = ", ".join(f"{label}: {values[0]}" for label, values in seen.items())
            messages.append(
                f"the runs were measured with different {what} ({listing}): their values differ for "
                "that reason too; replay with --like RUN to measure like another run"
            )
    for message in messages:
        warn(message)
    return messages
