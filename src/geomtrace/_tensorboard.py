"""The one TensorBoard writer: every tag geomtrace writes, live (both callbacks) and replayed.

One function per thing written to a ``SummaryWriter`` (``torch.utils.tensorboard``: Lightning's
``TensorBoardLogger.experiment``, transformers' ``TensorBoardCallback.tb_writer`` or the one
:func:`summary_writer` opens for replay), so a live and a replayed run of the same model carry
the same tags and overlay in one TensorBoard:

* :func:`write_scalars`: ``{tag: value}`` at a step, e.g. ``GeometryResult.scalars(prefix)``
  (``geometry/rankme``, ``geometry/alpha``, ``geometry/alpha_r2``, ``geometry/n_samples``, with
  error bars ``geometry/rankme_se``, ``geometry/alpha_se``, for the final layer,
  ``geometry/layer{L}/...`` for the others, then the extra metrics').
* :func:`write_eigenspectra`: the eigenspectrum with its fitted power law, one figure per
  layer, under :func:`eigenspectrum_tag` (``geometry/eigenspectrum`` for the final layer,
  ``geometry/layer{L}/eigenspectrum`` else: :func:`~geomtrace.measure.metric_key`, the rule of
  the scalars).
* :func:`write_phase_text`: the live phase text under the trajectory's phase tag
  (``geometry/phase`` or ``geometry/layer{L}/phase``). TensorBoard's Text tab shows it as
  ``<tag>/text_summary``: ``SummaryWriter.add_text`` appends that suffix to every text tag.
  Phases are detected live only (replay leaves them to ``geomtrace phases``), and so are the
  ``geometry/phase`` and ``geometry/phase_transition`` scalars.

Optional dependencies are imported when used: tensorboard in :func:`summary_writer` (with the
install hint), matplotlib in :func:`write_eigenspectra` (a missing matplotlib skips the figures
with a reason, never the scalars or the text).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from geomtrace._optional import require
from geomtrace.measure import GeometryResult, metric_key

__all__ = ["eigenspectrum_tag", "summary_writer", "write_eigenspectra", "write_phase_text", "write_scalars"]


def summary_writer(log_dir: str | os.PathLike, purpose: str = "TensorBoard logging") -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir`` (ImportError with the install hint)."""
    require("tensorboard", purpose)
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def write_scalars(writer: Any, scalars: Mapping[str, float], step: int) -> None:
    """Write ``{tag: value}`` at ``step``."""
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, global_step=step)


def write_phase_text(writer: Any, text: Mapping[str, str], step: int) -> None:
    """Write ``{phase tag: text}`` at ``step`` (TensorBoard shows ``<tag>/text_summary``)."""
    for tag, line in text.items():
        writer.add_text(tag, line, global_step=step)


def eigenspectrum_tag(layer: int, num_layers: int, prefix: str = "geometry") -> str:
    """The figure's tag: ``geometry/eigenspectrum`` (final layer) or ``geometry/layer{L}/eigenspectrum``."""
    return metric_key("eigenspectrum", layer, num_layers, prefix)


def write_eigenspectra(
    writer: Any, result: GeometryResult, step: int, prefix: str = "geometry", label: str | None = None
) -> str | None:
    """Write one eigenspectrum figure (spectrum and alpha-ReQ fit) per layer of ``result`` at ``step``.

    ``label`` names the measurement in the legend and the title (default ``"step <step>"``).
    Layers without eigenvalues are left out. Returns the reason when the figures were skipped
    (matplotlib missing), else None.
    """
    from geomtrace.plots import eigenspectrum_figure  # a leaf module; matplotlib only when drawing

    label = label or f"step {step}"
    for index, layer in result.layers.items():
        if layer.eigenvalues.size == 0:
            continue
        name = "last layer" if index == result.num_layers else f"layer {index}"
        try:
            figure = eigenspectrum_figure(
                {label: layer.eigenvalues},
                {label: (layer.fit_ranks, layer.fit_values)},
                title=f"{name}: RankMe {layer.rankme:.1f}, alpha {layer.alpha:.3f} ({label})",
            )
        except ImportError as err:  # figures need matplotlib; scalars and text do not
            return f"eigenspectrum figures skipped ({err})"
        writer.add_figure(eigenspectrum_tag(index, result.num_layers, prefix), figure, global_step=step, close=True)
    return None
