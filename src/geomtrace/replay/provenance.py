"""How a run was measured, read back: ``geomtrace replay --like RUN``.

Live runs record a ``provenance`` object in their history JSON
(:meth:`geomtrace.measure.GeometryResult.provenance` plus the probe options; the pretrain
recipe's ``geometry.json``), and every replay output records the same shape in ``run.json``.
:func:`read_provenance` reads either; :func:`like_settings` turns it into the options that
make a replay measure the same way: the probe options, the value-changing measurement
options and the forward's precision.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["LikeSettings", "like_settings", "read_provenance"]

_DESCRIPTION = re.compile(
    r"^(?P<label>\S+) n=(?P<n>\d+) len=(?P<lo>\d+)\.\.(?P<hi>\d+) seed=(?P<seed>-?\d+)(?P<chat> chat)?"
)


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The ``provenance`` of a live history JSON, of a replay output folder (its
    ``run.json``) or of a ``run.json``; a replay output also gives its weights' ``dtype``.

    Raises FileNotFoundError / ValueError naming the file when there is none to read.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "run.json"
        if not p.is_file():
            raise FileNotFoundError(f"{p.parent} has no run.json: not a geomtrace replay output folder")
    elif not p.is_file():
        raise FileNotFoundError(f"--like {p}: no such file or folder (give a live history .json or a replay output)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{p}: not a JSON file ({err})") from None
    provenance = data.get("provenance") if isinstance(data, dict) else None
    if not isinstance(provenance, dict):
        raise ValueError(
            f"{p} records no 'provenance' (how its values were measured): it was written by an older geomtrace "
            "or is not a geomtrace history; give the probe and measurement options explicitly instead"
        )
    out = dict(provenance)
    out.setdefault("record_path", str(p))  # where a relative probe path was recorded from
    load = data.get("load")
    if isinstance(load, dict) and load.get("dtype") and "dtype" not in out:
        out["dtype"] = load["dtype"]
    if isinstance(data.get("tokens_per_step"), int) and "tokens_per_step" not in out:
        out["tokens_per_step"] = data["tokens_per_step"]
    return out


@dataclass
class LikeSettings:
    """Options that reproduce a reference run's measurement (see :func:`like_settings`).

    ``probe_options`` are :class:`~geomtrace.replay.runner.ProbeOptions` keyword arguments,
    ``measure`` :class:`~geomtrace.measure.MeasureConfig` ones; ``dtype`` and ``autocast``
    make the probe forward run in the reference's precision; ``tokens_per_step`` puts the
    replay on the same token axis. Explicit options override each.
    ``missing_source`` describes the reference's probe source when the record cannot rebuild
    it (texts or a Dataset given in Python): then the probe source must be given explicitly.
    """

    probe_options: dict[str, Any] = field(default_factory=dict)
    measure: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    autocast: str | None = None
    missing_source: str | None = None
    tokens_per_step: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def _probe_options_from_description(description: str) -> tuple[dict[str, Any], str | None]:
    """Fallback when a record lacks ``probe_options``: the probe description
    (``embedded:pydoc_data.topics n=1024 len=11..128 seed=0 chat``) names all but the source
    of a file or hub dataset. Returns ``(options, unknown source label or None)``."""
    m = _DESCRIPTION.match(description or "")
    if not m:
        return {}, description or "an unrecorded source"
    options: dict[str, Any] = {
        "num_sequences": int(m["n"]),
        "min_tokens": int(m["lo"]),
        "max_tokens": int(m["hi"]),
        "seed": int(m["seed"]),
        "chat_template": bool(m["chat"]),
    }
    if m["label"].startswith("embedded:"):
        options["source"] = None
        return options, None
    return options, m["label"]


def _probe_options(provenance: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    from geomtrace.probes import ProbeOptions

    given = provenance.get("probe_options")
    if not isinstance(given, dict):
        return _probe_options_from_description(str(provenance.get("probe", "")))
    valid = {f.name for f in fields(ProbeOptions)}
    options = {k: v for k, v in given.items() if k in valid}
    source = options.get("source")
    if source is not None and (not isinstance(source, str) or source.startswith("<")):
        options.pop("source")
        return options, str(source)
    if isinstance(source, str) and Path(source).suffix.lower() in _PROBE_FILE_SUFFIXES and not Path(source).is_file():
        # Older records hold the path as given (relative to where that run started): look beside the record.
        record = provenance.get("record_path")
        beside = Path(record).parent / source if record else None
        if beside is not None and not Path(source).is_absolute() and beside.is_file():
            options["source"] = str(beside.resolve())
        else:
            options.pop("source")
            where = f" (recorded in {record})" if record else ""
            return options, f"the probe file {source}, which is not there{where}"
    return options, None


#: What a recorded probe source that is a file path ends with (else: a hub dataset name).
_PROBE_FILE_SUFFIXES = (".txt", ".jsonl", ".json")


def like_settings(provenance: Mapping[str, Any]) -> LikeSettings:
    """The replay options that measure like the run whose ``provenance`` is given.

    Precision: a reference forward in bf16/fp16 is replayed under autocast to that dtype on
    the checkpoint's own weights dtype (``dtype="auto"``: mixed-precision runs save fp32
    weights, pure bf16 runs bf16 ones); an fp32 forward in fp32. When the reference autocast
    explicitly (``autocast="bf16"``), its weights were fp32: so are the replay's.
    """
    for name in ("measure_config", "probe_options"):
        if provenance.get(name) is not None and not isinstance(provenance[name], dict):
            raise ValueError(
                f"malformed provenance: '{name}' is {type(provenance[name]).__name__} {provenance[name]!r}, expected "
                "an object of options; give the probe and measurement options explicitly instead"
            )
    from geomtrace.measure import MeasureConfig  # torch: only once a --like run is read

    measure_config = provenance.get("measure_config") or {}
    # The fields that change the values are taken from the reference run (the others only change speed).
    measure = {k: measure_config[k] for k in MeasureConfig.identity_fields() if k in measure_config}
    if isinstance(measure.get("fit_range"), list):
        measure["fit_range"] = tuple(measure["fit_range"])
    if isinstance(measure.get("layers"), list):
        measure["layers"] = tuple(measure["layers"])
    precision = provenance.get("precision")
    ref_autocast = measure_config.get("autocast", "auto")
    dtype, autocast = provenance.get("dtype"), None
    if precision in ("bf16", "fp16"):
        autocast = precision
        dtype = dtype or ("float32" if ref_autocast in ("bf16", "fp16") else "auto")
    elif precision == "fp32":
        autocast = "off" if ref_autocast == "off" else "auto"
        dtype = dtype or "float32"
    options, missing = _probe_options(provenance)
    return LikeSettings(options, measure, dtype, autocast, missing, provenance.get("tokens_per_step"), dict(provenance))
