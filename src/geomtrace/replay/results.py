"""Read one run's trajectory (step, tokens, RankMe, alpha per checkpoint) for plots and phases.

A run is either a replay output folder (``results.jsonl``, see :mod:`geomtrace.replay.store`)
or a live-run history JSON: the ``history`` of :class:`geomtrace.tracking.GeometryTracker`
(a list of ``{"step": ..., "geometry/rankme": ..., "geometry/alpha": ...}``), bare or as
``{"history": [...]}`` (its ``state_dict()``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geomtrace._warnings import warn
from geomtrace.measure import metric_key
from geomtrace.replay.store import ResultsStore, _num

__all__ = ["Trajectory", "latest_probe_records", "load_trajectory", "select_records", "trajectory_from_rows"]


@dataclass
class Trajectory:
    """One run's values at one layer, sorted by step.

    ``tokens`` and ``n_params`` hold NaN where unknown; ``flops = 6 * n_params * tokens``.
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
        out = [r for r in out if r.get("stage") == stage]
    out = [r for r in out if isinstance(r.get("step"), int)]
    out.sort(key=lambda r: (str(r.get("stage") or ""), r["step"]))
    steps = [r["step"] for r in out]
    if len(set(steps)) != len(steps):
        stages = sorted({str(r.get("stage")) for r in out})
        raise ValueError(f"{label}: steps repeat across stages {stages}; pick one with --stage")
    return out, layer


def _row_value(row: dict[str, Any], name: str, layer: int | None) -> Any:
    """``row[name]`` (replay record) or the live-log tag of ``name`` (``geometry/rankme``,
    ``geometry/layer3/alpha_r2``; the deepest layer's tags carry no layer part)."""
    if name in row:
        return row[name]
    tag_name = "alpha_r2" if name == "r2" else name
    if layer is not None and f"geometry/layer{layer}/{tag_name}" in row:
        return row[f"geometry/layer{layer}/{tag_name}"]
    return row.get(metric_key(tag_name, 0, 0))


def trajectory_from_rows(
    rows: list[dict[str, Any]], *, layer: int | None = None, stage: str | None = None, label: str = "run"
) -> Trajectory:
    """A :class:`Trajectory` from replay records (with a ``layer`` field; see
    :func:`select_records`) or from live history rows (``{"step", "geometry/rankme", ...}``)."""
    rows = [dict(r) for r in rows]
    if any(r.get("layer") is not None for r in rows):
        rows, layer = select_records(rows, layer=layer, stage=stage, label=label)
    else:
        rows = sorted((r for r in rows if r.get("step") is not None), key=lambda r: r["step"])

    def column(name: str) -> np.ndarray:
        return np.array([_num(_row_value(r, name, layer)) for r in rows], dtype=np.float64)

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
    )


def load_trajectory(
    path: str | os.PathLike, *, layer: int | None = None, stage: str | None = None, label: str | None = None
) -> Trajectory:
    """Read a replay output folder or a live history JSON into a :class:`Trajectory`."""
    p = Path(path)
    label = label or p.name or str(p)
    if p.is_dir():
        if not (p / "results.jsonl").is_file():
            raise FileNotFoundError(f"{p} has no results.jsonl: is it a geomtrace replay output folder?")
        rows = ResultsStore(p).records()
    elif p.is_file() and p.suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        rows = data.get("history") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{p}: expected a list of measurements or {{'history': [...]}}")
    else:
        raise FileNotFoundError(f"{p}: not a replay output folder nor a history .json file")
    return trajectory_from_rows(rows, layer=layer, stage=stage, label=label)
