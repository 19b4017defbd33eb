"""TensorBoard logging for replay, through the one writer (:mod:`geomtrace._tensorboard`), so the
tags are the live callbacks'.

Scalars are ``result.scalars(prefix)`` (``geometry/rankme``, ``geometry/alpha``,
``geometry/alpha_r2``, ``geometry/n_samples`` and ``geometry/layer{L}/...``) and the optional
eigenspectrum figures are one per layer (``geometry/eigenspectrum``,
``geometry/layer{L}/eigenspectrum``), at ``global_step = checkpoint step``, so a replayed run
and a live run overlay in one TensorBoard. Checkpoints without a step (``main``) are not logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from geomtrace._tensorboard import summary_writer, write_eigenspectra, write_scalars
from geomtrace._warnings import warn
from geomtrace.measure import GeometryResult
from geomtrace.replay.sources import Checkpoint

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger:
    """A thin wrapper around ``torch.utils.tensorboard.SummaryWriter`` for replay results."""

    def __init__(self, log_dir: str | os.PathLike, prefix: str = "geometry") -> None:
        self.prefix = prefix
        self.writer = summary_writer(log_dir, "TensorBoard logging (or pass --no-tensorboard)")
        self._warned: set[str] = set()

    def log(self, ckpt: Checkpoint, result: GeometryResult, spectra: bool = False) -> None:
        """Log one checkpoint's scalars (and optionally its eigenspectrum figures)."""
        if ckpt.step is None:
            self._warn_once("step", f"checkpoint {ckpt.key!r} has no step: not logged to TensorBoard")
            return
        write_scalars(self.writer, result.scalars(self.prefix), ckpt.step)
        if spectra:
            skipped = write_eigenspectra(
                self.writer, result, ckpt.step, self.prefix, label=f"{ckpt.key}, step {ckpt.step}"
            )
            if skipped:
                self._warn_once("figures", f"geomtrace replay: {skipped}")
        self.writer.flush()

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """Log other scalars (the memorization probes') at ``step``."""
        write_scalars(self.writer, scalars, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message)
