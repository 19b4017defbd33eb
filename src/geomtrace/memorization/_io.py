"""Small file and progress helpers shared by the memorization modules."""

from __future__ import annotations

import time
from collections.abc import Callable

from geomtrace._atomic import atomic_write_bytes
from geomtrace._log import get_logger

#: ``True`` (lines through the ``geomtrace.memorization`` logger: stderr unless the application
#: configured logging), ``False`` (silent), or a callable receiving each line.
ProgressOption = bool | Callable[[str], None]


atomic_write = atomic_write_bytes  # the one implementation, in geomtrace._atomic

_LOG = get_logger("memorization")


class Reporter:
    """Progress lines for long jobs, rate-limited so a tight loop does not flood the terminal."""

    def __init__(self, progress: ProgressOption, every_s: float = 5.0) -> None:
        if progress is True:
            self._emit: Callable[[str], None] | None = lambda line: _LOG.info("geomtrace: %s", line)
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
