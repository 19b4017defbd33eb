"""What both callbacks write to a TensorBoard ``SummaryWriter`` besides scalars: the phase text
and (when due) the eigenspectrum figures, through the one writer, :mod:`geomtrace._tensorboard`
(its tags are those of replay)."""

from __future__ import annotations

from typing import Any

from geomtrace._tensorboard import write_eigenspectra, write_phase_text
from geomtrace.tracking import Measurement

__all__ = ["write_text_and_figures"]


def write_text_and_figures(writer: Any, measurement: Measurement, prefix: str) -> str | None:
    """Write the measurement's phase text and (when due) its figures to ``writer``.

    Returns a reason when the figures were skipped (matplotlib missing), else None.
    """
    write_phase_text(writer, measurement.text, measurement.step)
    if not measurement.log_spectrum:
        return None
    return write_eigenspectra(writer, measurement.result, measurement.step, prefix)
