"""Training-framework callbacks. Each is imported lazily, so only its own framework is needed.

- :class:`GeometryMonitor`: a Lightning ``Callback`` (``pip install "geomtrace[lightning]"``).
- :class:`GeometryCallback`: a transformers ``TrainerCallback``; every TRL trainer is a
  ``transformers.Trainer`` (``pip install "geomtrace[hf]"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geomtrace.callbacks.lightning import GeometryMonitor
    from geomtrace.callbacks.transformers import GeometryCallback

__all__ = ["GeometryCallback", "GeometryMonitor"]


def __getattr__(name: str) -> Any:
    if name == "GeometryMonitor":
        from geomtrace.callbacks.lightning import GeometryMonitor

        return GeometryMonitor
    if name == "GeometryCallback":
        from geomtrace.callbacks.transformers import GeometryCallback

        return GeometryCallback
    raise AttributeError(f"module 'geomtrace.callbacks' has no attribute {name!r}")
