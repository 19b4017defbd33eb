"""The replay results store: JSON lines + spectra under one output folder, safe to resume.

Layout of ``output_dir``::

    run.json                            how this output is measured (written once, see bind())
    results.jsonl                       one record per (checkpoint, layer), strict JSON
    failures.jsonl                      one line per failed checkpoint attempt
    spectra/<safe-key>__layer<L>.npz    the eigenspectrum (array ``eigenspectrum``)

Guarantees:

* One checkpoint's records (one per layer) are appended as a unit with a single
  ``write()`` on an ``O_APPEND`` descriptor (+ ``flush``/``fsync``), under an exclusive
  ``fcntl.flock`` where available, so several processes (shards) can append to the same
  file. Spectra are written first (tmp file + ``os.replace``), so a record never points at
  a missing spectrum.
* A process killed mid-write leaves at most one truncated last line; readers skip it,
  :meth:`ResultsStore.done_keys` does not count that checkpoint as done, and the next
  append starts on a fresh line.
* NaN/Inf are written as JSON ``null`` (strict JSON, readable anywhere); the metric fields
  (:data:`METRIC_FIELDS`) read back as ``nan``.
* One output holds one measurement configuration: ``run.json`` is created once (exclusively,
  so concurrent shards agree) and every later run must present the same ``identity``
  (:meth:`ResultsStore.bind`), else :class:`OutputConflictError`.

The paper's result format (a pickled dict ``{step: {'rankme', 'alpha', 'eigenspectrum',
'r2'}}`` saved with ``np.save``) is written by :func:`export_seed_npy` and read by
:func:`import_seed_npy`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from geomtrace._atomic import atomic_write_bytes, atomic_write_text, file_mode  # writers re-exported
from geomtrace._jsonio import append_jsonl, plain, read_jsonl
from geomtrace.replay.naming import parse_name
from geomtrace.trajectory import to_float as _num

__all__ = [
    "OutputConflictError",
    "ResultsStore",
    "RECORD_FIELDS",
    "METRIC_FIELDS",
    "EXTRA_METRICS_FIELD",
    "atomic_write_bytes",
    "check_output_dir",
    "atomic_write_text",
    "safe_key",
    "export_seed_npy",
    "import_seed_npy",
    "export_csv",
    "differences",
    "exclusive_write_text",
]

#: The standard fields of a result record, in CSV column order.
RECORD_FIELDS: tuple[str, ...] = (
    "key",
    "step",
    "revision",
    "tokens",
    "stage",
    "layer",
    "rankme",
    "alpha",
    "r2",
    "n_samples",
    "dim",
    "model",
    "probe",
    "probe_fingerprint",
    "seconds",
)
#: Float fields whose JSON ``null`` reads back as ``nan``.
METRIC_FIELDS: tuple[str, ...] = (
    "rankme",
    "alpha",
    "r2",
    "rankme_singular",
    "loss",
    "seconds",
    "rankme_se",
    "alpha_se",
)
#: The record field that lists the names of the user's extra metrics
#: (``run_replay(extra_metrics=...)``); each name is a float field of the record too (NaN
#: reads back as ``nan``), and non-scalar values are arrays in the spectrum file
#: (:meth:`ResultsStore.extra_arrays`).
EXTRA_METRICS_FIELD = "extra_metrics"
_EXTRA_ARRAY_PREFIX = "extra:"


def _npy_bytes(obj: Any, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=allow_pickle)
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# JSON helpers
# --------------------------------------------------------------------------------------


def _decode(record: dict[str, Any]) -> dict[str, Any]:
    extras = record.get(EXTRA_METRICS_FIELD)
    names = [n for n in extras if isinstance(n, str)] if isinstance(extras, list) else []
    for f in (*METRIC_FIELDS, *names):
        if f in record and record[f] is None:
            record[f] = math.nan
    return record


def exclusive_write_text(path: Path, text: str) -> bool:
    """Create ``path`` with ``text`` unless it exists (atomically: a complete file or none).
    Returns False when another writer was first."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fchmod(fh.fileno(), file_mode(path))  # the umask's mode, not mkstemp's 0600
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if path exists: the first writer wins
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


_exclusive_write_text = exclusive_write_text  # the old name, still imported by tests


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``name: old -> new`` for each leaf where two JSON-like values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} there, {new!r} now"]


class OutputConflictError(ValueError):
    """A replay into an output that holds results of another measurement configuration."""


def safe_key(key: str) -> str:
    """A file-name-safe version of a checkpoint key; keys that had to be changed get a short
    hash suffix so that distinct keys never share a file."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._") or "_"
    if safe != key:
        safe = f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    return safe


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


class ResultsStore:
    """Results of one replay run under ``output_dir`` (see the module doc for the layout).

    Each record is one (checkpoint, layer): ``key, step, revision, tokens, stage, layer,
    rankme, alpha, r2, n_samples, dim, model, probe, probe_fingerprint, seconds`` plus any
    extras. :meth:`append` adds ``n_layers`` (the number of records in the unit) so that
    :meth:`done_keys` can tell complete checkpoints from ones cut short.
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.output_dir = Path(output_dir)
        check_output_dir(self.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.records_path = self.output_dir / "results.jsonl"
        self.failures_path = self.output_dir / "failures.jsonl"
        self.spectra_dir = self.output_dir / "spectra"
        self.info_path = self.output_dir / "run.json"

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.output_dir)!r})"

    # -- paths ---------------------------------------------------------------------------

    def spectrum_path(self, key: str, layer: int) -> Path:
        """Where the eigenspectrum of ``key`` at ``layer`` is stored."""
        return self.spectra_dir / f"{safe_key(key)}__layer{int(layer)}.npz"

    # -- how this output is measured -------------------------------------------------------

    def info(self) -> dict[str, Any] | None:
        """The content of ``run.json`` (None when absent). Raises ValueError when unreadable."""
        try:
            data = json.loads(self.info_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{self.info_path} is not readable JSON ({err}); it says how {self.output_dir} "
                "was measured: restore it or use another output folder"
            ) from err
        if not isinstance(data, dict):
            raise ValueError(f"{self.info_path}: expected a JSON object")
        return data

    def bind(self, info: dict[str, Any]) -> dict[str, Any]:
        """Make ``info`` (with an ``identity`` mapping) this output's ``run.json``, or check it.

        The first run creates ``run.json`` (exclusively: of concurrent shards one wins, the
        others compare against it). Later runs must present an equal ``identity``; a different
        one raises :class:`OutputConflictError` naming each difference, so results measured
        in two ways never share an output. Returns the stored info.
        """
        text = json.dumps(plain(info, strict=True), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
        if exclusive_write_text(self.info_path, text):
            return info
        stored = self.info()
        if stored is None:  # removed between the two calls: try once more
            return self.bind(info)
        old, new = stored.get("identity"), plain(info.get("identity"), strict=True)
        if old != new:
            changes = differences(old, new) if isinstance(old, dict) else ["run.json has no 'identity'"]
            empty = not self.done_keys()
            remedy = (
                f"It holds no results yet: delete {self.info_path} (or the folder) to start over with these options."
                if empty
                else "Replay into another --output, or rerun with the options recorded in run.json "
                "(geomtrace replay --like " + str(self.output_dir) + " takes the probes and precision from it)."
            )
            raise OutputConflictError(
                f"{self.output_dir} was measured with other options ({'; '.join(changes)}). One output holds one "
                f"measurement configuration, so nothing was measured. {remedy}"
            )
        return stored

    # -- reading ---------------------------------------------------------------------------

    def _raw_records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.records_path)

    def records(self, *, dedupe: bool = True) -> list[dict[str, Any]]:
        """All complete records, in file order; malformed or truncated lines are skipped.

        With ``dedupe`` (default) only the last record of each (key, layer) is kept (a
        checkpoint measured again, e.g. after an interrupted attempt, replaces the old one).
        ``null`` metric fields read back as ``nan``.
        """
        raw = self._raw_records()
        if dedupe:
            last: dict[tuple[Any, Any], int] = {}
            for i, r in enumerate(raw):
                last[(r.get("key"), r.get("layer"))] = i
            raw = [r for i, r in enumerate(raw) if last[(r.get("key"), r.get("layer"))] == i]
        return [_decode(r) for r in raw]

    def done_keys(self, probe_fingerprint: str | None = None, *, config_id: str | None = None) -> set[str]:
        """Keys of checkpoints whose records are complete (every layer of the unit present).

        Robust to a truncated last line (a killed process): that checkpoint is not done.
        With ``probe_fingerprint`` / ``config_id``, only records measured with that probe set /
        that whole measurement configuration (``run.json``'s ``config_id``) count.
        """
        layers: dict[str, set[Any]] = {}
        expected: dict[str, int] = {}
        for r in self._raw_records():
            key = r.get("key")
            if not isinstance(key, str):
                continue
            if probe_fingerprint is not None and r.get("probe_fingerprint") != probe_fingerprint:
                continue
            if config_id is not None and r.get("config_id") != config_id:
                continue
            layers.setdefault(key, set()).add(r.get("layer"))
            n = r.get("n_layers")
            if isinstance(n, int):
                expected[key] = max(expected.get(key, 0), n)
        return {k for k, ls in layers.items() if len(ls) >= expected.get(k, 1)}

    def failures(self) -> list[dict[str, Any]]:
        """All failure records (complete lines only)."""
        return read_jsonl(self.failures_path)

    def spectrum(self, key: str, layer: int) -> np.ndarray | None:
        """The stored eigenspectrum of ``key`` at ``layer``, or None when there is none.

        Raises ValueError naming the file when it exists but is not a spectrum file
        (truncated, overwritten, or holding pickled data, which is never loaded here)."""
        members = self._spectrum_file(key, layer)
        if members is None:
            return None
        if "eigenspectrum" not in members:
            self._unreadable(key, layer, "no 'eigenspectrum' array in it")
        return members["eigenspectrum"]

    def extra_arrays(self, key: str, layer: int) -> dict[str, np.ndarray]:
        """The non-scalar values of the extra metrics of ``key`` at ``layer`` (``{name:
        array}``, empty when there are none). Raises ValueError as :meth:`spectrum`."""
        members = self._spectrum_file(key, layer) or {}
        n = len(_EXTRA_ARRAY_PREFIX)
        return {name[n:]: a for name, a in members.items() if name.startswith(_EXTRA_ARRAY_PREFIX)}

    def _spectrum_file(self, key: str, layer: int) -> dict[str, np.ndarray] | None:
        """Every array of the spectrum file of ``key`` at ``layer``; None when absent."""
        p = self.spectrum_path(key, layer)
        if not p.is_file():
            return None
        import zipfile

        if not zipfile.is_zipfile(p):
            self._unreadable(key, layer, "not an .npz archive: truncated or overwritten")
        try:
            with np.load(p, allow_pickle=False) as z:
                return {name: np.array(z[name]) for name in z.files}
        except ValueError:  # numpy's message would suggest allow_pickle: never for files found on disk
            why = "it holds pickled (object) data, which geomtrace does not load"
        except (OSError, zipfile.BadZipFile, EOFError) as err:
            why = f"unreadable ({type(err).__name__})"
        self._unreadable(key, layer, why)

    def _unreadable(self, key: str, layer: int, why: str) -> NoReturn:
        raise ValueError(
            f"{self.spectrum_path(key, layer)}: not a readable eigenspectrum file ({why}); it is left as is. Delete "
            f"it and replay checkpoint {key!r} again, or export without spectra (--no-spectra)"
        )

    # -- writing ---------------------------------------------------------------------------

    def append(
        self,
        records: Sequence[dict[str, Any]],
        spectra: dict[int, np.ndarray] | None = None,
        arrays: dict[int, dict[str, np.ndarray]] | None = None,
    ) -> None:
        """Append one checkpoint's records (one per layer) as a unit.

        ``spectra`` maps layer -> eigenspectrum and ``arrays`` layer -> ``{name: array}``
        (non-scalar values of extra metrics, stored beside that layer's eigenspectrum); the
        files are written first (atomically), then all JSON lines in one ``write()``. All
        records must share one ``key`` and have a ``layer``.
        """
        records = list(records)
        if not records:
            raise ValueError("append() needs at least one record")
        keys = {r.get("key") for r in records}
        if len(keys) != 1 or not isinstance(next(iter(keys)), str):
            raise ValueError(
                f"append() takes the records of exactly one checkpoint (one string 'key'), got keys {keys}"
            )
        key = str(next(iter(keys)))
        if any("layer" not in r for r in records):
            raise ValueError("every record needs a 'layer' field")
        arrays = arrays or {}
        if spectra or arrays:
            self.spectra_dir.mkdir(parents=True, exist_ok=True)
            for layer in sorted(set(spectra or {}) | set(arrays)):
                members: dict[str, Any] = {  # Any: numpy's stub would match **members to allow_pickle
                    _EXTRA_ARRAY_PREFIX + name: np.asarray(_to_numpy(a)) for name, a in arrays.get(layer, {}).items()
                }
                if spectra and layer in spectra:
                    members["eigenspectrum"] = np.asarray(_to_numpy(spectra[layer]), dtype=np.float64)
                buf = io.BytesIO()
                np.savez(buf, **members)
                atomic_write_bytes(self.spectrum_path(key, layer), buf.getvalue())
        n = len({r["layer"] for r in records})
        append_jsonl(self.records_path, [{**r, "n_layers": r.get("n_layers", n)} for r in records])

    def record_failure(self, key: str, error: str, **fields: Any) -> None:
        """Log a failed checkpoint to ``failures.jsonl`` (key, error, time, extra fields).
        Failures never count as done, so a resumed run retries them."""
        rec = {"key": key, "error": str(error), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
        append_jsonl(self.failures_path, [rec])


def check_output_dir(path: str | os.PathLike, writable: bool = False) -> None:
    """Raise ValueError when ``path`` cannot be a results folder: a file, inside a file, or
    (``writable``) a folder this process may not write into."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"is inside {p}, which is a file"
                raise ValueError(f"the output {path} {what}: give a folder for the results")
            if writable and not os.access(p, os.W_OK | os.X_OK):
                raise ValueError(f"the output {path} cannot be written ({p} is not writable)")
            return


def _to_numpy(x: Any) -> Any:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        return x.detach().cpu().double().numpy()
    return x


# --------------------------------------------------------------------------------------
# Export / import
# --------------------------------------------------------------------------------------


def _records_and_spectra(
    records_or_store: ResultsStore | Iterable[dict[str, Any]],
) -> tuple[list[dict[str, Any]], ResultsStore | None]:
    if isinstance(records_or_store, ResultsStore):
        return records_or_store.records(), records_or_store
    return [dict(r) for r in records_or_store], None


def export_seed_npy(
    records_or_store: ResultsStore | Iterable[dict[str, Any]],
    path: str | os.PathLike,
    *,
    layer: int | None = None,
    spectra: bool = True,
) -> Path:
    """Write the paper's result format for one layer: ``np.save(path, {step: {'rankme',
    'alpha', 'eigenspectrum', 'r2', 'step', 'checkpoint', 'tokens', 'layer'}})``.

    ``layer`` defaults to the highest layer index present. The eigenspectrum comes from the
    store (or a record's ``eigenspectrum`` field); when missing an empty array is written.
    ``spectra=False`` leaves ``'eigenspectrum'`` out. Dict keys are the steps (int); if steps
    are missing or repeat (e.g. OLMo-2 stages) the checkpoint keys (str) are used instead,
    with a warning. Written atomically to exactly ``path`` (no ``.npy`` is appended).
    """
    recs, store = _records_and_spectra(records_or_store)
    if not recs:
        raise ValueError("no records to export")
    layers: set[int] = {r["layer"] for r in recs if r.get("layer") is not None}
    if layer is None:
        if not layers:
            raise ValueError("records have no 'layer' field; pass layer=")
        layer = max(layers)
    sel = [r for r in recs if r.get("layer") == layer]
    if not sel:
        raise ValueError(f"no records for layer {layer}; layers present: {sorted(layers)}")
    sel.sort(key=lambda r: (r.get("step") is None, r.get("step") or 0, str(r.get("key"))))
    steps = [r.get("step") for r in sel]
    use_steps = all(isinstance(s, int) for s in steps) and len(set(steps)) == len(steps)
    if not use_steps:
        warnings.warn(
            "steps are missing or repeated (several stages?): the exported dict is keyed by "
            "checkpoint key instead of step",
            stacklevel=2,
        )
    out: dict[Any, dict[str, Any]] = {}
    for r in sel:
        entry: dict[str, Any] = {
            "rankme": _num(r.get("rankme")),
            "alpha": _num(r.get("alpha")),
            "r2": _num(r.get("r2")),
            "step": r.get("step"),
            "checkpoint": r.get("revision") or r.get("key"),
            "tokens": r.get("tokens"),
            "layer": layer,
        }
        if spectra:
            spec = None
            if store is not None:
                spec = store.spectrum(r["key"], layer)
            if spec is None and r.get("eigenspectrum") is not None:
                spec = np.asarray(_to_numpy(r["eigenspectrum"]), dtype=np.float64)
            entry["eigenspectrum"] = spec if spec is not None else np.zeros(0, dtype=np.float64)
        out[r["step"] if use_steps else str(r.get("key"))] = entry
    return atomic_write_bytes(path, _npy_bytes(out, allow_pickle=True))


def import_seed_npy(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a paper-format ``.npy`` (``{step: {'rankme', 'alpha', 'eigenspectrum', 'r2'}}``)
    into records sorted by step.

    Security: this is the only place geomtrace uses ``allow_pickle=True``; unpickling can
    execute arbitrary code, so only load files you trust.

    Each record has ``key`` (the entry's ``checkpoint``, else ``step<N>``), ``step`` (the entry's,
    else its dict key's, else the one its checkpoint name gives by the naming registry),
    ``revision``, ``tokens``, ``layer``, ``rankme``, ``alpha``, ``r2`` (nan when absent) and
    ``eigenspectrum`` (an array, or None); other scalar fields of the entry are kept.
    """
    obj = np.load(path, allow_pickle=True)
    data = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () else obj
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a pickled dict {{step: {{...}}}}, got {type(data).__name__}")
    out = []
    for k, v in data.items():
        if not isinstance(v, dict):
            continue
        step = v.get("step")
        if step is None and isinstance(k, (int, np.integer)):
            step = int(k)
        elif step is None and isinstance(k, str) and k.lstrip("-").isdigit():
            step = int(k)
        step = int(step) if isinstance(step, (int, np.integer)) else step
        checkpoint = v.get("checkpoint")
        key = str(checkpoint) if checkpoint else (f"step{step}" if isinstance(step, int) else str(k))
        revision = str(checkpoint) if checkpoint else (f"step{step}" if isinstance(step, int) else None)
        if step is None:  # a checkpoint name (``checkpoint-10``, ``epoch=0-step=100.ckpt``) may say it
            parsed = parse_name(key.rsplit("/", 1)[-1])
            step = None if parsed is None else parsed.step
        spec = v.get("eigenspectrum")
        rec: dict[str, Any] = {
            "key": key,
            "step": step,
            "revision": revision,
            "tokens": v.get("tokens"),
            "layer": v.get("layer"),
            "rankme": _num(v.get("rankme")),
            "alpha": _num(v.get("alpha")),
            "r2": _num(v.get("r2")),
            "eigenspectrum": None if spec is None else np.asarray(spec, dtype=np.float64),
        }
        for name, value in v.items():
            if name not in rec and name != "checkpoint" and np.ndim(value) == 0:
                rec[name] = value.item() if isinstance(value, np.generic) else value
        out.append(rec)
    out.sort(key=lambda r: (not isinstance(r["step"], int), r["step"] if isinstance(r["step"], int) else 0, r["key"]))
    return out


def export_csv(records_or_store: ResultsStore | Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write records as CSV (atomically): the standard fields first, then extras sorted.
    Array-valued fields (eigenspectra) are left out; None is an empty cell, NaN is ``nan``."""
    recs, _ = _records_and_spectra(records_or_store)
    extras: set[str] = set()
    for r in recs:
        for k, v in r.items():
            if k not in RECORD_FIELDS and np.ndim(v) == 0 and not isinstance(v, (dict, list)):
                extras.add(k)
    columns = list(RECORD_FIELDS) + sorted(extras)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in recs:
        row = []
        for c in columns:
            v = r.get(c)
            if v is None:
                row.append("")
            elif isinstance(v, (float, np.floating)):
                row.append(repr(float(v)) if math.isfinite(v) else str(float(v)))
            else:
                row.append(v if np.ndim(v) == 0 and not isinstance(v, (dict, list)) else "")
        writer.writerow(row)
    return atomic_write_text(path, buf.getvalue())
