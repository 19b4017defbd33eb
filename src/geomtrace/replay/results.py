"""Read one run's trajectory (step, tokens, RankMe, alpha per checkpoint) for plots and phases.

A run is either a replay output folder (``results.jsonl``, see :mod:`geomtrace.replay.store`)
or a live-run history JSON: the ``history`` of :class:`geomtrace.tracking.GeometryTracker`
(a list of ``{"step": ..., "geometry/rankme": ..., "geometry/alpha": ...}``), bare or as
``{"history": [...]}`` (its ``state_dict()``, or the pretrain recipe's ``geometry.json`` with
``tokens_per_step``, ``n_params`` and ``provenance``). The rows become a
:class:`geomtrace.trajectory.Trajectory` by the one trajectory rule (the deepest tracked layer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geomtrace.replay.store import ResultsStore
from geomtrace.trajectory import (
    Trajectory,
    check_comparable,
    latest_probe_records,
    select_records,
    trajectory_from_rows,
)

__all__ = [
    "Trajectory",
    "check_comparable",
    "latest_probe_records",
    "load_trajectory",
    "select_records",
    "trajectory_from_rows",
]


def _read_history(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and run-level fields (``tokens_per_step``, ``n_params``, ``provenance``) of a
    live history JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a JSON history ({err})") from None
    rows = data.get("history") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected a list of measurements or {{'history': [...]}}")
    return rows, (data if isinstance(data, dict) else {})


def _with_run_fields(rows: list[dict[str, Any]], run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Fill ``tokens`` (``step * tokens_per_step``), ``n_params`` and the provenance's
    fingerprint, precision and spectrum into live rows that lack them."""
    tokens_per_step, n_params = run.get("tokens_per_step"), run.get("n_params")
    provenance = run.get("provenance")
    if not isinstance(provenance, dict):
        provenance = {}
    measured = provenance.get("measure_config")
    if not isinstance(measured, dict):
        measured = {}
    out = []
    for r in rows:
        r = dict(r)
        if r.get("tokens") is None and isinstance(tokens_per_step, (int, float)) and r.get("step") is not None:
            r["tokens"] = r["step"] * tokens_per_step
        if r.get("n_params") is None and isinstance(n_params, (int, float)):
            r["n_params"] = n_params
        for name in ("probe_fingerprint", "precision"):
            if r.get(name) is None and provenance.get(name):
                r[name] = provenance[name]
        # centred or not: the phase report says which (replay records carry it already)
        if r.get("spectrum") is None and measured.get("spectrum"):
            r["spectrum"] = measured["spectrum"]
        out.append(r)
    return out


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
        if not rows:
            raise ValueError(f"{p}: no results yet (nothing measured, or every checkpoint failed; see failures.jsonl)")
    elif p.is_file() and p.suffix == ".json":
        rows, run = _read_history(p)
        rows = _with_run_fields(rows, run)
    else:
        raise FileNotFoundError(f"{p}: not a replay output folder nor a history .json file")
    return trajectory_from_rows(rows, layer=layer, stage=stage, label=label)
