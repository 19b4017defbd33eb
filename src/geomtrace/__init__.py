"""geomtrace: representation geometry (RankMe, alpha-ReQ) of language models.

The core (``functional``, ``covariance``, ``metrics``) needs only torch, torchmetrics
and numpy. Integrations (``geomtrace.callbacks``, ``geomtrace.replay``) import their
frameworks lazily. The metrics below are imported on first use too, so that
``import geomtrace`` (and ``geomtrace --help``) does not pay torch's import time.
"""

from typing import TYPE_CHECKING, Any

from geomtrace._warnings import GeometryWarning

__version__ = "0.1.0"

__all__ = ["AlphaReQ", "EigenSpectrum", "Geometry", "GeometryWarning", "RankMe", "__version__"]

_LAZY = {name: "geomtrace.metrics" for name in ("AlphaReQ", "EigenSpectrum", "Geometry", "RankMe")}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from geomtrace.metrics import AlphaReQ, EigenSpectrum, Geometry, RankMe


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geomtrace' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
