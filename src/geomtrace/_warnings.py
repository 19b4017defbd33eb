"""Warning category and small helpers shared across geomtrace."""

from __future__ import annotations

import warnings


class GeometryWarning(UserWarning):
    """Raised as a warning when a geometry measurement is degenerate or was skipped."""


def warn(message: str, stacklevel: int = 3) -> None:
    """Emit a :class:`GeometryWarning`."""
    warnings.warn(message, GeometryWarning, stacklevel=stacklevel)
