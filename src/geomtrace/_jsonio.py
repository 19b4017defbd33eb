"""JSON and JSON Lines, beside :mod:`geomtrace._atomic`: one sanitizer, one locked appender, one reader.

* :func:`plain` turns numpy/torch scalars and arrays, tuples, paths and enums into plain Python.
  ``strict=False`` (history files) keeps NaN/Inf and leaves what JSON cannot hold as it is;
  ``strict=True`` (results files, strict JSON) writes NaN/Inf as ``null`` and anything else as
  its ``str``.
* :func:`append_jsonl` appends records as one ``write()`` on an ``O_APPEND`` descriptor under
  ``flock`` (where available), starting on a fresh line after a torn one, fsynced, and never cut
  in two by a handled signal (:func:`geomtrace._signals.critical`); several processes (shards)
  may append to one file.
* :func:`write_json` writes one document (a history file) atomically (:mod:`geomtrace._atomic`).
* :func:`read_jsonl` / :func:`parse_jsonl` read back the complete object lines; a truncated last
  line (a killed writer) and malformed lines are skipped.

Standard library only (numpy values are recognised when numpy is loaded), so any layer may import it.
"""

from __future__ import annotations

import enum
import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from geomtrace import _signals
from geomtrace._atomic import atomic_write_text

try:  # POSIX advisory locks; O_APPEND alone already keeps single writes whole.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["append_jsonl", "dumps_line", "parse_jsonl", "plain", "read_jsonl", "write_json"]


def plain(value: Any, *, strict: bool = False) -> Any:
    """``value`` with numpy/torch scalars, arrays, tuples, paths and enums as plain JSON-ready Python.

    ``strict=False``: NaN and Inf are kept (the history file writes them as ``NaN``); anything
    JSON cannot hold is left as it is (``json.dumps`` then says what). ``strict=True``: NaN and
    Inf become None and anything JSON cannot hold becomes its ``str``, so that
    ``json.dumps(..., allow_nan=False)`` never fails.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return plain(value.value, strict=strict)
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return None if strict and not math.isfinite(value) else value
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else str(plain(k, strict=strict)): plain(v, strict=strict) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [plain(v, strict=strict) for v in value]
    np = sys.modules.get("numpy")  # not imported: no value is a numpy one
    if np is not None and isinstance(value, np.generic):
        return plain(value.item(), strict=strict)
    if np is not None and isinstance(value, np.ndarray):
        return plain(value.tolist(), strict=strict)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)  # torch scalars (0-d or one-element tensors) and tensors
    numel = getattr(value, "numel", None)
    if callable(item) and callable(numel):
        try:
            return plain(item() if numel() == 1 else value.tolist(), strict=strict)
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value) if strict else value


def dumps_line(value: Any, *, strict: bool = True) -> str:
    """One JSON line (no newline) of ``value`` made :func:`plain`; ``strict`` writes strict JSON."""
    return json.dumps(plain(value, strict=strict), allow_nan=not strict, ensure_ascii=False)


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 1) -> Path:
    """Write ``value`` made :func:`plain` (NaN/Inf kept) as one JSON document, atomically.

    What JSON cannot hold is written as its ``repr``, so that a history file is always written.
    """
    return atomic_write_text(path, json.dumps(plain(value), indent=indent, allow_nan=True, default=repr))


def append_jsonl(path: str | os.PathLike, records: Iterable[Any], *, strict: bool = True) -> None:
    """Append ``records`` to ``path``, one line each, as one unit (see the module doc)."""
    lines = [dumps_line(r, strict=strict) for r in records]
    if not lines:
        return
    data = ("\n".join(lines) + "\n").encode("utf-8")
    with _signals.critical():  # a signal (Ctrl-C, SIGTERM) waits for the whole append
        _append_unit(Path(path), data)


def _append_unit(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a killed writer left a partial line: don't glue onto it
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    """Complete JSON-object lines of ``data``; a last line without ``\\n`` is ignored."""
    out = []
    lines = data.split(b"\n")
    # the element after the last '\n' is either empty or a truncated line: drop it
    for raw in lines[:-1]:
        raw = raw.strip()
        if not raw:
            continue
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete object lines of ``path`` (:func:`parse_jsonl`); ``[]`` when it does not exist."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return parse_jsonl(data)
