"""Small file and progress helpers shared by the memorization modules."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Union

#: ``True`` (lines on stderr), ``False`` (silent), or a callable receiving each line.
ProgressOption = Union[bool, Callable[[str], None]]


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a tmp file in the same folder, fsync, ``os.replace``.

    A reader (or a rerun after a kill) sees the old file or the new one, never a partial one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


class Reporter:
    """Progress lines for long jobs, rate-limited so a tight loop does not flood the terminal."""

    def __init__(self, progress: ProgressOption, every_s: float = 5.0) -> None:
        if progress is True:
            self._emit: Callable[[str], None] | None = lambda line: print(f"geomtrace: {line}", file=sys.stderr, flush=True)
        elif progress is False or progress is None:
            self._emit = None
        elif callable(progress):
            self._emit = progress
        else:
            raise TypeError(f"progress must be a bool or a callable taking a string, got {type(progress).__name__}")
        self._every_s = every_s
        self._last = -float("inf")

    def __call__(self, line: str) -> None:
        """Report ``line`` now."""
        if self._emit is not None:
            self._emit(line)
            self._last = time.monotonic()

    def throttled(self, line: str) -> None:
        """Report ``line`` unless a line was reported in the last few seconds."""
        if self._emit is not None and time.monotonic() - self._last >= self._every_s:
            self(line)
