"""When the live callbacks measure: :class:`Schedule`, declared once.

The tracker asks :meth:`Schedule.due` at every optimizer step; the record keeps
:meth:`Schedule.to_dict` (``record()["schedule"]``). No torch here (the command line and LightningCLI
read it without importing torch).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

from geomtrace._options import OptionSet, option_set
from geomtrace._validate import Rule, check_fields, coerce_fields

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule(OptionSet):
    """When to measure during training.

    Attributes:
        every_n_steps: measure every this many optimizer steps (0: only at start and end).
        extra_steps: further steps to measure at, e.g. log-spaced early steps
            ``(1, 2, 4, 8, 16, 32, 64)`` that resolve the fast warmup collapse.
        measure_on_start: measure before the first optimizer step (step 0, the initial geometry).
        measure_on_end: measure when training ends (if that step was not measured yet).
        log_spectrum_every: log an eigenspectrum figure every this many measurements, and always
            at the final one (0: never).
    """

    group = "schedule"

    every_n_steps: int = 100
    extra_steps: tuple[int, ...] = field(default=())
    measure_on_start: bool = True
    measure_on_end: bool = True
    log_spectrum_every: int = 5

    def __post_init__(self) -> None:
        coerce_fields(self, _SCHEDULE_RULES)  # types now, as plain Python values (the record is JSON)
        object.__setattr__(self, "extra_steps", tuple(sorted(set(self.extra_steps))))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option when a value is out of range."""
        check_fields(self, _SCHEDULE_RULES)

    @classmethod
    def of(cls, value: Any) -> Schedule:
        """``value`` as a schedule: an int is ``every_n_steps`` (``GeometryMonitor(tok, 100)``)."""
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return cls(every_n_steps=int(value))
        return option_set(value, cls, owner="schedule")

    def periodic(self, step: int) -> bool:
        """Whether ``step`` is on the schedule (``every_n_steps`` or ``extra_steps``)."""
        regular = self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0
        return regular or step in self.extra_steps

    def due(self, step: int, event: str) -> bool:
        """Whether ``event`` (``"start"``, ``"step"``, ``"end"``) at ``step`` calls for a measurement
        (the tracker adds: not twice at one step)."""
        if event == "start":
            return self.measure_on_start and step == 0
        if event == "end":
            return self.measure_on_end or self.periodic(step)
        return self.periodic(step)

    def spectrum_due(self, measurement_number: int, final: bool) -> bool:
        """Whether the ``measurement_number``-th measurement (1-based) logs an eigenspectrum figure."""
        return self.log_spectrum_every > 0 and (final or (measurement_number - 1) % self.log_spectrum_every == 0)


#: One rule per option of :class:`Schedule`.
_SCHEDULE_RULES: dict[str, Rule] = {
    "every_n_steps": Rule("int", minimum=0, example="100; 0 measures only at start and end"),
    "extra_steps": Rule("ints", minimum=1, example="(1, 2, 4, 8)"),
    "measure_on_start": Rule("bool"),
    "measure_on_end": Rule("bool"),
    "log_spectrum_every": Rule("int", minimum=0, example="5; 0 never"),
}
