"""The records a replay writes per measured checkpoint: one per layer, and the names they take.

:func:`build_records` turns a :class:`~geomtrace.measure.GeometryResult` into the store's
records (:mod:`geomtrace.replay.store`); :data:`RECORD_KEYS` are their fields, which an extra
metric's name may not take (:func:`check_extra_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from geomtrace.measure import REPLICATE_FIELDS, GeometryResult, validate_extra_metrics
from geomtrace.replay.sources import Checkpoint
from geomtrace.replay.store import EXTRA_METRICS_FIELD, RECORD_FIELDS

__all__ = ["RECORD_KEYS", "build_records", "check_extra_metrics", "checkpoint_tokens"]


def checkpoint_tokens(ckpt: Checkpoint, tokens_per_step: int | None) -> int | None:
    """Tokens seen at ``ckpt``: from the revision name, else ``step * tokens_per_step``."""
    if ckpt.tokens is None and tokens_per_step is not None and ckpt.step is not None:
        return int(ckpt.step) * int(tokens_per_step)
    return ckpt.tokens


def build_records(
    ckpt: Checkpoint,
    result: GeometryResult,
    *,
    n_params: int | None = None,
    tokens_per_step: int | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One store record per measured layer of ``result`` (fields of ``store.RECORD_FIELDS``
    plus ``precision``, ``n_params``, ``n_dropped``, ``num_layers``, ``spectrum``, ``kind``,
    ``path`` and ``extra``; with ``MeasureConfig.uncertainty`` also ``rankme_se`` and ``alpha_se``
    and the jackknife replicates ``rankme_replicates``, ``alpha_replicates`` (lists)).

    The scalar values of the user's extra metrics (``LayerGeometry.extras``) are fields of
    the record under their names (``pr``; ``name/key`` for a metric returning a dict), listed
    in its ``extra_metrics`` field, beside ``rankme`` and ``alpha``.

    ``tokens`` comes from the revision name; else ``step * tokens_per_step`` when given.
    """
    tokens = checkpoint_tokens(ckpt, tokens_per_step)
    records = []
    for index, layer in sorted(result.layers.items()):
        records.append(
            {
                "key": ckpt.key,
                "step": ckpt.step,
                "revision": ckpt.revision,
                "tokens": tokens,
                "stage": ckpt.stage,
                "layer": index,
                "rankme": layer.rankme,
                "alpha": layer.alpha,
                "r2": layer.r2,
                "n_samples": layer.n_samples,
                "dim": layer.dim,
                "model": ckpt.model,
                "probe": result.probe_description,
                "probe_fingerprint": result.probe_fingerprint,
                "seconds": result.seconds,
                "precision": result.precision,
                "n_params": n_params,
                "n_dropped": layer.n_dropped,
                "num_layers": result.num_layers,
                "spectrum": result.config.spectrum,
                "kind": ckpt.kind,
                "path": ckpt.path,
                **(extra or {}),
            }
        )
        # Jackknife standard errors (MeasureConfig.uncertainty) and their replicates (which pair
        # two checkpoints' errors on this probe set): only in records that have them.
        for name in ("rankme_se", "alpha_se", *REPLICATE_FIELDS):
            value = getattr(layer, name)
            if value is not None:
                records[-1][name] = list(value) if name in REPLICATE_FIELDS else value
        if layer.extras:
            records[-1].update(layer.extras)
            records[-1][EXTRA_METRICS_FIELD] = list(layer.extras)
    return records


#: Fields of a record that an extra metric's name may not take (build_records' own, the
#: fields run_replay and the store add, and those of the geometry itself).
RECORD_KEYS: frozenset[str] = frozenset(
    {
        *RECORD_FIELDS,
        "precision",
        "n_params",
        "n_dropped",
        "num_layers",
        "spectrum",
        "kind",
        "path",
        "load_seconds",
        "load_wait_seconds",
        "config_id",
        "n_layers",
        "eigenspectrum",
        "rankme_se",
        "alpha_se",
        *REPLICATE_FIELDS,
        EXTRA_METRICS_FIELD,
    }
)


def check_extra_metrics(extra_metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`geomtrace.measure.validate_extra_metrics`, and names that are free in a replay
    record (a metric called ``step`` or ``path`` would overwrite that field)."""
    extras = validate_extra_metrics(extra_metrics)
    taken = sorted(name for name in extras if name in RECORD_KEYS)
    if taken:
        raise ValueError(
            f"extra metric name(s) {', '.join(map(repr, taken))} are fields of a replay record; rename them "
            "(e.g. extra_metrics={'pr': ParticipationRatio()})"
        )
    return extras
