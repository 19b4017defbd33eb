"""geomtrace: representation geometry (RankMe, alpha-ReQ) of language models.

The core (``functional``, ``covariance``, ``metrics``) needs only torch, torchmetrics
and numpy. Integrations (``geomtrace.callbacks``, ``geomtrace.replay``) import their
frameworks lazily.
"""

from geomtrace._warnings import GeometryWarning
from geomtrace.metrics import AlphaReQ, EigenSpectrum, Geometry, RankMe

__version__ = "0.1.0"

__all__ = ["AlphaReQ", "EigenSpectrum", "Geometry", "GeometryWarning", "RankMe", "__version__"]
