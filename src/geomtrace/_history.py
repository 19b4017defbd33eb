"""The tracker's record: the current stage's history and how it was measured, earlier stages.

:class:`Stage` is one training's record (rows, phase, provenance and its changes, whether it
post-trains); :class:`RunRecord` holds the current stage and the finished ones, and is what a
checkpoint keeps (:meth:`RunRecord.state_dict` / :meth:`RunRecord.load_state_dict`, which renames
a state logged under another prefix: :func:`state_prefix`, :func:`rename_prefix`).
:meth:`Stage.summary` is the end-of-training line of the trajectory.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from geomtrace._jsonio import plain
from geomtrace._warnings import warn

__all__ = ["STATE_VERSION", "RunRecord", "Stage", "rename_prefix", "state_prefix"]

#: Version of :meth:`RunRecord.state_dict` (older states load too).
STATE_VERSION = 2


@dataclass
class Stage:
    """The record of one training: its rows and how they were measured."""

    history: list[dict[str, Any]] = field(default_factory=list)
    phase: str | None = None
    num_measurements: int = 0
    #: How the rows of :attr:`history` were measured (:func:`geomtrace._provenance.record_provenance`).
    provenance: dict[str, Any] | None = None
    provenance_changes: list[dict[str, Any]] = field(default_factory=list)
    #: Rows from this step on were measured like the latest one (phases use only them).
    comparable_from: int | None = None
    #: Whether this training starts from a trained model; resolved by ``GeometryTracker.begin``.
    from_pretrained: bool | None = None
    from_pretrained_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """This stage as the record's ``stages`` entries and a checkpoint keep it (copies)."""
        return {
            "history": [dict(r) for r in self.history],
            "phase": self.phase,
            "num_measurements": self.num_measurements,
            "provenance": self.provenance,
            "provenance_changes": [dict(c) for c in self.provenance_changes],
            "comparable_from": self.comparable_from,
            "from_pretrained": self.from_pretrained,
            "from_pretrained_reason": self.from_pretrained_reason,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> Stage:
        """A stage from :meth:`to_dict` (or a version-1 state: history, phase, num_measurements)."""
        history = [dict(r) for r in state.get("history", [])]
        return cls(
            history=history,
            phase=state.get("phase"),
            num_measurements=int(state.get("num_measurements", len(history))),
            provenance=state.get("provenance"),
            provenance_changes=[dict(c) for c in state.get("provenance_changes", [])],
            comparable_from=state.get("comparable_from"),
            from_pretrained=state.get("from_pretrained"),
            from_pretrained_reason=state.get("from_pretrained_reason"),
        )

    @property
    def last_step(self) -> int | None:
        return self.history[-1]["step"] if self.history else None

    def trajectory_keys(self, prefix: str) -> dict[str, str]:
        """Tags of *the* trajectory (the deepest tracked layer): ``rankme``, ``alpha``, ``phase``.

        From the latest measurement's provenance (:meth:`GeometryResult.trajectory_key`);
        before any measurement, the last layer's ``<prefix>/<name>``.
        """
        trajectory = (self.provenance or {}).get("trajectory") or {}
        return {name: trajectory.get(name, f"{prefix}/{name}") for name in ("rankme", "alpha", "phase")}

    def summary(self, prefix: str) -> str:
        """A short text summary of the RankMe / alpha trajectory so far (the trajectory layer)."""
        keys = self.trajectory_keys(prefix)
        key_r, key_a = keys["rankme"], keys["alpha"]
        rows = [r for r in self.history if key_r in r]
        if not rows:
            return "no geometry measurements yet"
        low = min(rows, key=lambda r: r[key_r])
        high = max(rows, key=lambda r: r[key_r])
        first, last = rows[0], rows[-1]
        layer = (self.provenance or {}).get("trajectory", {})
        where = "" if key_r == f"{prefix}/rankme" else f"layer {layer.get('layer')} "
        # The standard errors (MeasureConfig.uncertainty) under the value's tag + "_se", when measured.
        se_r = f" +- {last[key_r + '_se']:.2f}" if key_r + "_se" in last else ""
        se_a = f" +- {last[key_a + '_se']:.3f}" if key_a + "_se" in last else ""
        return (
            f"{where}RankMe {first[key_r]:.1f} (step {first['step']}) -> min {low[key_r]:.1f} (step {low['step']}) "
            f"-> max {high[key_r]:.1f} (step {high['step']}) -> {last[key_r]:.1f}{se_r} (step {last['step']}); "
            f"alpha {first.get(key_a, math.nan):.3f} -> {last.get(key_a, math.nan):.3f}{se_a}"
            + (f"; phase now: {self.phase}" if self.phase else "")
            + (f" (since step {self.comparable_from}: measured differently before)" if self.provenance_changes else "")
        )


class RunRecord:
    """The current :class:`Stage` and the finished ones (``stages``, as dicts)."""

    def __init__(self) -> None:
        self.stage = Stage()
        self.stages: list[dict[str, Any]] = []

    def new_stage(self) -> int:
        """Keep the current stage in :attr:`stages` and start an empty one; returns its row count."""
        self.stages.append(self.stage.to_dict())
        self.stage = Stage()
        return len(self.stages[-1]["history"])

    def snapshot(self) -> Stage:
        """A copy of the current stage, for :meth:`restore` (what a measurement may change)."""
        s = self.stage
        return Stage(
            history=copy.copy(s.history),
            phase=s.phase,
            num_measurements=s.num_measurements,
            provenance=copy.copy(s.provenance),
            provenance_changes=copy.copy(s.provenance_changes),
            comparable_from=s.comparable_from,
            from_pretrained=s.from_pretrained,
            from_pretrained_reason=s.from_pretrained_reason,
        )

    def restore(self, saved: Stage) -> None:
        """Undo the changes since :meth:`snapshot` (an interrupted measurement leaves no trace)."""
        self.stage = saved

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the current stage, earlier stages (no options: they may change)."""
        # Plain JSON data: transformers writes it into trainer_state.json (numpy scalars would not do).
        return plain({"version": STATE_VERSION, **self.stage.to_dict(), "stages": [dict(s) for s in self.stages]})

    def load_state_dict(self, state: Mapping[str, Any], prefix: str) -> None:
        """Restore a :meth:`state_dict` (or a version-1 one), continuing under ``prefix``.

        A state logged under another prefix has its keys renamed (``geometry/rankme`` ->
        ``geo/rankme``), with one warning naming both prefixes.
        """
        old_prefix = state_prefix(state)
        if old_prefix is not None and old_prefix != prefix:
            state = rename_prefix(state, old_prefix, prefix)
            warn(
                f"geomtrace: the restored history was logged under prefix {old_prefix!r}; it continues under "
                f"prefix {prefix!r} ({len(state.get('history', []))} measurement(s) renamed). Values logged "
                f"before stay under '{old_prefix}/...' in the loggers; pass prefix={old_prefix!r} to keep one name.",
                stacklevel=4,  # the caller of GeometryTracker.load_state_dict
            )
        self.stage = Stage.from_dict(state)
        self.stages = [dict(s) for s in state.get("stages", [])]


_LAYER_TAG = re.compile(r"/layer\d+$")


def state_prefix(state: Mapping[str, Any]) -> str | None:
    """The prefix a :meth:`RunRecord.state_dict` was logged under (None if it has no measurement)."""
    trajectory = (state.get("provenance") or {}).get("trajectory") or {}
    keys = [trajectory.get("rankme")] + [k for row in state.get("history", [])[:1] for k in row]
    for key in keys:
        if isinstance(key, str) and key.endswith("/rankme"):
            return _LAYER_TAG.sub("", key.removesuffix("/rankme"))
    return None


def rename_prefix(value: Any, old: str, new: str) -> Any:
    """``value`` with every key and string ``old/...`` renamed ``new/...``."""
    start = old + "/"

    def rename(text: Any) -> Any:
        return new + "/" + text[len(start) :] if isinstance(text, str) and text.startswith(start) else text

    if isinstance(value, Mapping):
        return {rename(k): rename_prefix(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rename_prefix(v, old, new) for v in value]
    return rename(value)
