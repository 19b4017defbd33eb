"""What watching costs: the time spent measuring (and logging) in one training, and its share.

:class:`CostMeter` is the tracker's accountant: :meth:`CostMeter.start` at the start of each
training (it resets the counts), :meth:`CostMeter.timing` around each measurement and its logging,
:meth:`CostMeter.count` per successful measurement; :meth:`CostMeter.cost` is the record's ``cost``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geomtrace.probes import ProbeSet

__all__ = ["CostMeter", "cost_line"]


class CostMeter:
    """Seconds spent measuring and the number of measurements since :meth:`start`."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.measurements = 0
        #: ``time.perf_counter()`` when the current training started; None before one has.
        self.started: float | None = None

    def start(self) -> None:
        """A training starts: counts from zero, and its clock from now."""
        self.seconds, self.measurements = 0.0, 0
        self.started = time.perf_counter()

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Count the time of the block (a measurement and its logging) as measuring cost."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def add(self, seconds: float) -> None:
        """Time spent elsewhere on measuring (the training-batch hooks' share of the forwards)."""
        self.seconds += seconds

    def count(self) -> None:
        """One more measurement."""
        self.measurements += 1

    def cost(self, probes: ProbeSet | None) -> dict[str, Any] | None:
        """Time spent measuring in the current training and its share of it (None before a training)."""
        if self.started is None:
            return None
        training = time.perf_counter() - self.started
        return {
            "measurements": self.measurements,
            "seconds_measuring": round(self.seconds, 3),
            "seconds_training": round(training, 3),
            "share": self.seconds / training if training > 0 else math.nan,
            "probes": len(probes) if probes is not None else 0,
            "probe_tokens": probes.num_tokens() if probes is not None else 0,
        }


def cost_line(cost: dict[str, Any] | None) -> str | None:
    """The end-of-training line for :meth:`CostMeter.cost` (None when nothing was measured)."""
    if cost is None or not cost["measurements"]:
        return None
    if cost.get("source") == "training":
        return (
            f"cost: {cost['measurements']} window(s) of training-batch rows took "
            f"{cost['seconds_measuring']:.1f} s (hooks, windows, logging), {100 * cost['share']:.2f}% of the "
            f"{cost['seconds_training']:.1f} s of training"
        )
    return (
        f"cost: {cost['measurements']} measurement(s) took {cost['seconds_measuring']:.1f} s, "
        f"{100 * cost['share']:.2f}% of the {cost['seconds_training']:.1f} s of training; "
        f"{cost['probe_tokens']:,} probe tokens ({cost['probes']} probes) per measurement"
    )
