"""What both callbacks write to a TensorBoard ``SummaryWriter`` besides scalars.

* Phase text under the trajectory's phase tag (``geometry/phase``, or
  ``geometry/layer{L}/phase`` when the deepest tracked layer is not the final one).
  TensorBoard's Text tab shows it as ``<tag>/text_summary``: ``SummaryWriter.add_text``
  appends that suffix to every text tag.
* The eigenspectrum with its fitted power law, one figure per tracked layer, under
  ``geometry/eigenspectrum`` (final layer) or ``geometry/layer{L}/eigenspectrum``.
"""

from __future__ import annotations

from typing import Any

from geomtrace.measure import metric_key
from geomtrace.tracking import Measurement

__all__ = ["write_text_and_figures"]


def write_text_and_figures(writer: Any, measurement: Measurement, prefix: str) -> str | None:
    """Write the measurement's phase text and (when due) its figures to ``writer``.

    Returns a reason when the figures were skipped (matplotlib missing), else None.
    """
    for tag, text in measurement.text.items():
        writer.add_text(tag, text, global_step=measurement.step)
    if not measurement.log_spectrum:
        return None
    from geomtrace.plots import eigenspectrum_figure

    result = measurement.result
    label = f"step {measurement.step}"
    for index, layer in result.layers.items():
        if layer.eigenvalues.size == 0:
            continue
        name = "last layer" if index == result.num_layers else f"layer {index}"
        try:
            figure = eigenspectrum_figure(
                {label: layer.eigenvalues},
                {label: (layer.fit_ranks, layer.fit_values)},
                title=f"{name}: RankMe {layer.rankme:.1f}, alpha {layer.alpha:.3f} (step {measurement.step})",
            )
        except ImportError as err:  # figures need matplotlib; scalars and text do not
            return f"eigenspectrum figures skipped ({err})"
        tag = metric_key("eigenspectrum", index, result.num_layers, prefix)
        writer.add_figure(tag, figure, global_step=measurement.step, close=True)
    return None
