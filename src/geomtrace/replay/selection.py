"""Choosing checkpoints: ``--stage`` / ``--step-range`` / ``--log-spaced`` and shards.

:func:`filter_revisions` works on revision names (read by :mod:`~geomtrace.replay.naming`),
:func:`filter_checkpoints` on :class:`~geomtrace.replay.checkpoint.Checkpoint` objects by the step
and stage their discovery read, so every naming scheme of the registry is filtered alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from geomtrace.replay.checkpoint import Checkpoint
from geomtrace.replay.naming import natural_key, parse_revision

__all__ = ["checkpoint_name", "filter_checkpoints", "filter_revisions", "parse_step_range", "shard_checkpoints"]


def parse_step_range(spec: str) -> tuple[int, float, int]:
    """``"start:stop[:every]"`` as ``(start, stop, every)``; an empty stop is ``math.inf``."""
    parts = spec.strip().split(":")
    if not 2 <= len(parts) <= 3:
        raise ValueError(f"step_range must be 'start:stop' or 'start:stop:every', got {spec!r}")
    try:
        start = int(parts[0]) if parts[0].strip() else 0
        stop: float = int(parts[1]) if parts[1].strip() else math.inf
        every = int(parts[2]) if len(parts) == 3 and parts[2].strip() else 1
    except ValueError as err:
        raise ValueError(f"step_range {spec!r}: start, stop and every must be integers") from err
    if every <= 0:
        raise ValueError(f"step_range {spec!r}: every must be positive")
    if stop < start:
        raise ValueError(f"step_range {spec!r}: stop < start")
    return start, stop, every


def _log_spaced_pick(xs: list[float], n: int) -> list[int]:
    """Indices of ~n points of the sorted coordinates xs spread evenly in xs, keeping ends."""
    m = len(xs)
    if n >= m:
        return list(range(m))
    chosen = {0, m - 1}
    lo, hi = xs[0], xs[-1]
    for j in range(1, n - 1):
        target = lo + (hi - lo) * j / (n - 1)
        best = min((i for i in range(m) if i not in chosen), key=lambda i: (abs(xs[i] - target), i))
        chosen.add(best)
    return sorted(chosen)


def filter_revisions(
    revisions: Iterable[str],
    *,
    step_range: str | None = None,
    log_spaced: int | None = None,
    stage: str | None = None,
) -> list[str]:
    """Select revisions; the result is de-duplicated and sorted by (stage, step).

    Args:
        stage: keep revisions whose stage equals ``stage`` or starts with ``stage + "-"``
            (``"stage2"`` keeps ``"stage2-ingredient1-…"``).
        step_range: ``"start:stop[:every]"``: keep steps ``s`` with ``start <= s <= stop``
            (both inclusive) and ``(s - start) % every == 0``. Empty start means 0, empty stop
            means no upper bound. ``"0:143000:10000"`` keeps 0, 10000, …, 140000.
        log_spaced: keep exactly ``min(N, available)`` revisions spread evenly in
            ``log(1 + step)``, always keeping the first and the last. With several stages the
            coordinate is a global step (each stage's steps are offset by the previous
            stages' last step), so the picks follow training order.

    Filters apply in the order stage, step_range, log_spaced. When ``step_range`` or
    ``log_spaced`` is given, revisions without a step (``main``) are dropped.
    """
    items: dict[str, tuple[int | None, str | None]] = {}
    for name in revisions:
        if name not in items:
            step, _, st = parse_revision(name)
            items[name] = (step, st)
    return _select(items, step_range=step_range, log_spaced=log_spaced, stage=stage)


def _select(
    items: dict[str, tuple[int | None, str | None]],
    *,
    step_range: str | None,
    log_spaced: int | None,
    stage: str | None,
) -> list[str]:
    """The names of ``{name: (step, stage)}`` kept by the filters, sorted by (stage, step, name)."""

    def order(name: str) -> tuple:
        step, st = items[name]
        return (0 if step is not None else 1, natural_key(st or ""), step if step is not None else 0, name)

    revs = sorted(items, key=order)
    if stage is not None:
        revs = [r for r in revs if (s := items[r][1]) is not None and (s == stage or s.startswith(stage + "-"))]
    if step_range is not None:
        start, stop, every = parse_step_range(step_range)
        kept = []
        for r in revs:
            step = items[r][0]
            if step is not None and start <= step <= stop and (step - start) % every == 0:
                kept.append(r)
        revs = kept
    if log_spaced is not None:
        if log_spaced < 2:
            raise ValueError(f"log_spaced must be >= 2 (first and last are always kept), got {log_spaced}")
        revs = [r for r in revs if items[r][0] is not None]
        xs: list[float] = []
        offset, prev_stage, stage_max = 0, None, 0
        for r in revs:
            step, st = items[r]
            assert step is not None
            if st != prev_stage and xs:
                offset += stage_max
                stage_max = 0
            prev_stage = st
            stage_max = max(stage_max, step)
            xs.append(math.log1p(offset + step))
        revs = [revs[i] for i in _log_spaced_pick(xs, log_spaced)]
    return revs


def checkpoint_name(ckpt: Checkpoint) -> str | None:
    """The revision-like name a checkpoint is selected by: its revision, else ``[stage-]stepN``
    from the step its discovery read (checkpoints of one step share it); None without a step."""
    if ckpt.revision:
        return ckpt.revision
    if ckpt.step is None:
        return None
    return "-".join(filter(None, [ckpt.stage, f"step{ckpt.step}"]))


def filter_checkpoints(
    checkpoints: Iterable[Checkpoint],
    *,
    step_range: str | None = None,
    log_spaced: int | None = None,
    stage: str | None = None,
    left_out: list[str] | None = None,
) -> list[Checkpoint]:
    """:func:`filter_revisions` for checkpoints of any naming scheme, by the step and stage their
    discovery read (not by re-reading a name). With no filter, ``checkpoints`` is returned as it is.

    Checkpoints of one selection name (:func:`checkpoint_name`) are kept or dropped together. A
    checkpoint without a step (``main``, ``last.ckpt``, ``model.ckpt``) cannot be selected by a
    step: any filter drops it, and ``left_out`` receives one line saying so.
    """
    ckpts = list(checkpoints)
    if stage is None and step_range is None and log_spaced is None:
        return ckpts
    by_name: dict[str, list[Checkpoint]] = {}
    items: dict[str, tuple[int | None, str | None]] = {}
    for c in ckpts:
        name = checkpoint_name(c)
        if name is None or c.step is None:
            if left_out is not None:
                left_out.append(
                    f"{c.key}: its name gives no step, so --stage/--step-range/--log-spaced leave it out "
                    "(replay it without them)"
                )
            continue
        by_name.setdefault(name, []).append(c)
        items.setdefault(name, (c.step, c.stage))
    kept = _select(items, step_range=step_range, log_spaced=log_spaced, stage=stage)
    return [c for name in kept for c in by_name[name]]


def shard_checkpoints(checkpoints: Sequence[Checkpoint], shard: str | None) -> list[Checkpoint]:
    """This worker's share of ``checkpoints``: ``shard="i/n"`` (0-based ``i``) takes every
    n-th checkpoint starting at ``i`` (round-robin, so shards get similar step mixes). ``None``
    returns all. The n shards together cover every checkpoint exactly once."""
    items = list(checkpoints)
    if shard is None or str(shard).strip() == "":
        return items
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m:
        raise ValueError(f"shard must look like 'i/n' with 0 <= i < n (e.g. '0/4'), got {shard!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ValueError(f"shard {shard!r}: the number of shards n must be >= 1")
    if not 0 <= i < n:
        raise ValueError(f"shard {shard!r}: the index is 0-based and must satisfy 0 <= i < n (i={i}, n={n})")
    return items[i::n]
