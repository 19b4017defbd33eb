"""geomtrace's user-facing lines, through :mod:`logging` (global rank zero only).

Each package area logs to a child of the ``geomtrace`` logger: ``get_logger("cli")`` is
``geomtrace.cli``, ``get_logger("memorization")`` is ``geomtrace.memorization``. The lines reach
the user without any setup: the ``geomtrace`` logger is at INFO and holds a default handler
that writes ``%(message)s`` to the *current* ``sys.stderr``. That handler steps aside for each
record that a handler of the application's would take (one on the root logger or on a
``geomtrace`` logger), so configuring logging (``logging.basicConfig(...)``, a file handler on
``geomtrace``) takes the lines over and never doubles them; ``logging.getLogger("geomtrace")
.setLevel(logging.WARNING)`` silences them. The handlers pytest installs for ``caplog`` are the
test harness's, not the application's, and do not count.

Like Lightning's ``rank_zero_info``, a process of global rank > 0 logs nothing: ranks agree on
what they would say, and one copy is enough.

Imports no torch (``geomtrace --help`` stays fast): the rank is read from ``torch.distributed``
only when torch is already imported, else from ``RANK``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

__all__ = ["ROOT", "get_logger", "rank_zero"]

#: The name of the package's root logger.
ROOT = "geomtrace"


def rank_zero() -> bool:
    """Whether this process is global rank 0 (also outside torch.distributed)."""
    torch: Any = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is not None and dist.is_available() and dist.is_initialized():
        return bool(dist.get_rank() == 0)
    try:
        return int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


class _RankZero(logging.Filter):
    """Drops records on ranks other than global rank 0."""

    def filter(self, record: logging.LogRecord) -> bool:
        return rank_zero()


def _harness(handler: logging.Handler) -> bool:
    """A handler of the test harness (pytest's capture), not of the application."""
    return type(handler).__module__.startswith("_pytest")


class _DefaultHandler(logging.StreamHandler):
    """``%(message)s`` on the current ``sys.stderr`` (so redirections and capture see it), unless
    a handler of the application's takes the record."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.setLevel(logging.INFO)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ sets it; the current stderr wins
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if not _taken_elsewhere(record, self):
            super().emit(record)


def _taken_elsewhere(record: logging.LogRecord, own: logging.Handler) -> bool:
    """Whether a handler other than ``own`` (and pytest's) on the way from the record's logger
    up to the root takes the record, i.e. the application configured where these lines go."""
    logger: logging.Logger | None = logging.getLogger(record.name)
    while logger is not None:
        if any(h is not own and not _harness(h) and record.levelno >= h.level for h in logger.handlers):
            return True
        if not logger.propagate:
            return False
        logger = logger.parent
    return False


def _configure() -> logging.Logger:
    root = logging.getLogger(ROOT)
    if root.level == logging.NOTSET:  # an application's own setting stays
        root.setLevel(logging.INFO)
    if not any(isinstance(h, _DefaultHandler) for h in root.handlers):
        root.addHandler(_DefaultHandler())
    return root


_configure()


def get_logger(area: str) -> logging.Logger:
    """The logger of one package area (``"cli"``, ``"memorization"``, ``"replay"`` ...), a child
    of ``geomtrace`` that logs on global rank 0 only."""
    logger = logging.getLogger(f"{ROOT}.{area}")
    if not any(isinstance(f, _RankZero) for f in logger.filters):
        logger.addFilter(_RankZero())
    return logger
