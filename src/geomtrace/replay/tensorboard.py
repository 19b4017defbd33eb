"""TensorBoard logging for replay, with the live callbacks' tags.

Scalars are ``result.scalars("geometry")`` (``geometry/rankme``, ``geometry/alpha``,
``geometry/alpha_r2``, ``geometry/n_samples`` and ``geometry/layer{L}/...``) at
``global_step = checkpoint step``, so a replayed run and a live run overlay in one
TensorBoard. Checkpoints without a step (``main``) are not logged.
"""

from __future__ import annotations

import os
from typing import Any

from geomtrace._optional import require
from geomtrace._warnings import warn
from geomtrace.measure import GeometryResult
from geomtrace.replay.sources import Checkpoint

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger:
    """A thin wrapper around ``torch.utils.tensorboard.SummaryWriter`` for replay results."""

    def __init__(self, log_dir: str | os.PathLike, prefix: str = "geometry") -> None:
        require("tensorboard", "TensorBoard logging (or pass --no-tensorboard)")
        from torch.utils.tensorboard import SummaryWriter

        self.prefix = prefix
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self._warned_no_step = False

    def log(self, ckpt: Checkpoint, result: GeometryResult, spectra: bool = False) -> None:
        """Log one checkpoint's scalars (and optionally its eigenspectrum figure)."""
        if ckpt.step is None:
            if not self._warned_no_step:
                warn(f"checkpoint {ckpt.key!r} has no step: not logged to TensorBoard")
                self._warned_no_step = True
            return
        for tag, value in result.scalars(self.prefix).items():
            self.writer.add_scalar(tag, value, global_step=ckpt.step)
        if spectra:
            self.writer.add_figure(
                f"{self.prefix}/eigenspectrum", _spectrum_figure(ckpt, result), global_step=ckpt.step
            )
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _spectrum_figure(ckpt: Checkpoint, result: GeometryResult) -> Any:
    # geomtrace.plots is a leaf (numpy, matplotlib, geomtrace.trajectory) that the callbacks
    # and replay both draw with: this import points down. Lazy: matplotlib only when drawing.
    from geomtrace.plots import eigenspectrum_figure

    spectra = {f"layer {i}": g.eigenvalues for i, g in result.layers.items()}
    fits = {f"layer {i}": (g.fit_ranks, g.fit_values) for i, g in result.layers.items()}
    return eigenspectrum_figure(spectra, fits, title=f"{ckpt.key} (step {ckpt.step})")
