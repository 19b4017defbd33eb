"""How a measurement was made: the one provenance builder (live and replay), and its comparison.

A provenance is a plain dict, the same shape in a live history (``record()["provenance"]``) and in
a replay output's ``run.json``, so that either can be given to ``geomtrace replay --like``:

* :func:`measurement_provenance`: ``probe`` (the probe set's description), ``probe_fingerprint``,
  ``n_probes``, ``precision`` (the dtype of the probe forward) and ``measure_config`` (the full
  :class:`~geomtrace.options.MeasureConfig`); what :meth:`GeometryResult.provenance` returns.
* :func:`record_provenance`: that, plus ``probe_options`` and, live, the extra metrics' classes
  (inside ``measure_config``) and ``trajectory`` (the tags of the trajectory layer).
* :func:`probe_set_provenance`: the record's provenance of a probe set about to be measured
  (replay writes it before the first checkpoint).

:func:`provenance_differences` names what makes two of them incomparable;
:func:`precision_note` is the line telling the user how the probes run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from geomtrace.options import MeasureConfig, ProbeOptions

if TYPE_CHECKING:
    from geomtrace.measure import GeometryResult
    from geomtrace.probes import ProbeSet

__all__ = [
    "COMPARED_PROVENANCE",
    "measurement_provenance",
    "precision_note",
    "probe_set_provenance",
    "provenance_differences",
    "record_provenance",
    "trajectory_of",
]

# What makes two measurements comparable: a change in any of these (and in the measurement
# options that change the values, MeasureConfig.identity_fields()) between the restored history
# and a new measurement is warned about by name. The speed options may change freely.
COMPARED_PROVENANCE = ("probe_fingerprint", "n_probes", "precision")


def _as_dict(options: MeasureConfig | ProbeOptions | Mapping[str, Any]) -> dict[str, Any]:
    return options.to_dict() if isinstance(options, (MeasureConfig, ProbeOptions)) else dict(options)


def measurement_provenance(
    probe: str,
    probe_fingerprint: str,
    n_probes: int,
    precision: str | None,
    measure_config: MeasureConfig | Mapping[str, Any],
) -> dict[str, Any]:
    """How values were measured: probe set (description, fingerprint, size), precision, full config."""
    return {
        "probe": probe,
        "probe_fingerprint": probe_fingerprint,
        "n_probes": n_probes,
        "precision": precision,
        "measure_config": _as_dict(measure_config),
    }


def record_provenance(
    measured: Mapping[str, Any],
    *,
    probe_options: ProbeOptions | Mapping[str, Any] | None,
    extra_metrics: Mapping[str, str] | None = None,
    trajectory: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The recorded provenance: ``measured`` (:func:`measurement_provenance`) plus ``probe_options``.

    ``extra_metrics`` (``{name: "module.Class"}``) joins ``measure_config`` (they ride along on
    the same forward); ``trajectory`` (:func:`trajectory_of`) is added when given.
    """
    out = dict(measured)
    if extra_metrics is not None:
        out["measure_config"] = {**out["measure_config"], "extra_metrics": dict(extra_metrics)}
    out["probe_options"] = _as_dict(probe_options) if probe_options is not None else None
    if trajectory is not None:
        out["trajectory"] = dict(trajectory)
    return out


def probe_set_provenance(
    probes: ProbeSet,
    measure_config: MeasureConfig | Mapping[str, Any],
    precision: str | None,
    probe_options: ProbeOptions | Mapping[str, Any] | None,
    *,
    extra_metrics: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`record_provenance` of ``probes`` measured with ``measure_config`` in ``precision``
    (before any measurement, e.g. a replay's ``run.json``)."""
    measured = measurement_provenance(probes.description, probes.fingerprint(), len(probes), precision, measure_config)
    return record_provenance(measured, probe_options=probe_options, extra_metrics=extra_metrics)


def trajectory_of(result: GeometryResult, prefix: str) -> dict[str, Any]:
    """Which layer is *the* trajectory of ``result`` and its tags under ``prefix``."""
    return {
        "layer": result.last.layer,
        "num_layers": result.num_layers,
        "rankme": result.trajectory_key("rankme", prefix),
        "alpha": result.trajectory_key("alpha", prefix),
        "phase": result.trajectory_key("phase", prefix),
    }


def precision_note(provenance: Mapping[str, Any], autocast: str) -> str:
    """Say how the probes run: the user should know when they are not fp32 (e.g. TRL's bf16)."""
    precision = provenance["precision"]
    if provenance.get("source") == "training":
        window = provenance.get("window") or {}
        return (
            f"geometry from the training batches' own forward (in {precision}), no probe forward: "
            f"{window.get('rows', 0):,} rows in the window of steps {'..'.join(map(str, window.get('steps', [])))}"
        )
    line = f"probes: {provenance['n_probes']} sequences ({provenance['probe']}), forward in {precision}"
    if precision in ("bf16", "fp16") and autocast == "auto":
        line += (
            " (autocast='auto' follows the trainer's mixed precision; `geomtrace replay --like <history file>` "
            "measures in the same precision, with identical values; a replay in fp32 differs by about 1e-4 to "
            "2e-3 relative: pass autocast='off' for fp32 probes)"
        )
    return line


def provenance_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{name: (old, new)}`` for every difference that makes values incomparable."""
    changed: dict[str, tuple[Any, Any]] = {}
    for name in COMPARED_PROVENANCE:
        if old.get(name) != new.get(name):
            changed["probe set" if name == "probe_fingerprint" else name] = (old.get(name), new.get(name))
    old_config, new_config = old.get("measure_config") or {}, new.get("measure_config") or {}
    for name in MeasureConfig.identity_fields():
        # A record written before a field existed measured at its default (source="probes").
        default = _FIELD_DEFAULTS.get(name)
        if _listed(old_config.get(name, default)) != _listed(new_config.get(name, default)):
            changed[name] = (old_config.get(name), new_config.get(name))
    return changed


#: Fields added after records were first written, with the value those records measured at.
_FIELD_DEFAULTS: dict[str, Any] = {"source": "probes"}


def _listed(value: Any) -> Any:
    """Tuples as lists: a config read back from JSON compares equal to the one it was written from."""
    return list(value) if isinstance(value, tuple) else value
