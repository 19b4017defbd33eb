"""Live geometry tracking, independent of the training framework.

:class:`GeometryTracker` decides when to measure, runs the shared measuring path
(:func:`geomtrace.measure.measure_geometry`), keeps the history, follows the current
geometric phase and turns failures into warnings. The Lightning callback
(:class:`geomtrace.callbacks.GeometryMonitor`) and the transformers callback
(:class:`geomtrace.callbacks.GeometryCallback`) are thin adapters around it, so both
log the same keys with the same values.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

from torch import nn

from geomtrace._warnings import warn
from geomtrace.measure import GeometryResult, MeasureConfig, measure_geometry
from geomtrace.probes import ProbeSet, load_probes

__all__ = ["TRACKER_OPTIONS", "GeometryTracker", "Measurement", "ProbeOptions"]


@dataclass(frozen=True)
class ProbeOptions:
    """How the default probe set is built when no :class:`ProbeSet` is given."""

    source: Any = None
    num_sequences: int = 1024
    min_tokens: int = 11
    max_tokens: int = 128
    seed: int = 0
    chat_template: bool = False
    text_column: str = "text"
    split: str = "train"
    config_name: str | None = None

    def build(self, tokenizer: Any) -> ProbeSet:
        """Tokenize the probe set described by these options (once; deterministic)."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}  # not asdict: no deep copy
        return load_probes(tokenizer, kwargs.pop("source"), **kwargs)


@dataclass
class Measurement:
    """What one measurement produced, ready for a logger."""

    step: int
    scalars: dict[str, float]
    result: GeometryResult
    phase: str | None = None
    transition: tuple[str, str] | None = None
    log_spectrum: bool = False
    text: dict[str, str] = field(default_factory=dict)


class GeometryTracker:
    """Schedules measurements, keeps their history and the phase; never raises unless ``strict``.

    Args:
        every_n_steps: measure every this many optimizer steps (``0`` disables periodic
            measurements; start/end still run).
        extra_steps: further optimizer steps to measure at, e.g. log-spaced early steps
            (``(1, 2, 4, 8, 16, 32, 64)``) that resolve the fast warmup collapse.
        config: what and how to measure (:class:`~geomtrace.measure.MeasureConfig`).
        probes: a ready :class:`~geomtrace.probes.ProbeSet`; otherwise one is built at
            :meth:`prepare` from ``probe_options`` and the tokenizer.
        probe_options: options for building the probe set (default: 1024 sequences of the
            embedded corpus, 11 to 128 tokens).
        measure_on_start: measure before the first optimizer step (step 0).
        measure_on_end: measure when training ends (if that step was not measured yet).
        log_spectrum_every: log an eigenspectrum figure every this many measurements
            (``0`` never).
        track_phases: log the current geometric phase and its transitions.
        strict: raise errors from the measurement instead of warning and going on.
        prefix: tag prefix of the logged keys.
    """

    def __init__(
        self,
        *,
        every_n_steps: int = 100,
        extra_steps: Sequence[int] = (),
        config: MeasureConfig | None = None,
        probes: ProbeSet | None = None,
        probe_options: ProbeOptions | None = None,
        measure_on_start: bool = True,
        measure_on_end: bool = True,
        log_spectrum_every: int = 5,
        track_phases: bool = True,
        strict: bool = False,
        prefix: str = "geometry",
    ) -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 0:
            raise ValueError(f"every_n_steps must be an int >= 0, got {every_n_steps!r}")
        if not isinstance(log_spectrum_every, int) or log_spectrum_every < 0:
            raise ValueError(f"log_spectrum_every must be an int >= 0, got {log_spectrum_every!r}")
        if probes is not None and not isinstance(probes, ProbeSet):
            raise TypeError(
                "probes must be a geomtrace.probes.ProbeSet; to build one from texts, a file or a "
                "dataset pass it as probe_source=... (or use geomtrace.probes.load_probes)."
            )
        if any(not isinstance(s, int) or s < 1 for s in extra_steps):
            raise ValueError(f"extra_steps must be positive ints, got {list(extra_steps)!r}")
        self.extra_steps = frozenset(extra_steps)
        self.config = config or MeasureConfig()
        self.config.validate()
        self.every_n_steps = every_n_steps
        self.probes = probes
        self.probe_options = probe_options or ProbeOptions()
        self.measure_on_start = measure_on_start
        self.measure_on_end = measure_on_end
        self.log_spectrum_every = log_spectrum_every
        self.track_phases = track_phases
        self.strict = strict
        self.prefix = prefix
        self.history: list[dict[str, Any]] = []
        self.phase: str | None = None
        self.num_measurements = 0

    @classmethod
    def from_options(
        cls,
        *,
        every_n_steps: int = 100,
        extra_steps: Sequence[int] = (),
        probes: ProbeSet | None = None,
        probe_source: Any = None,
        num_sequences: int = 1024,
        min_tokens: int = 11,
        max_tokens: int = 128,
        seed: int = 0,
        chat_template: bool = False,
        layers: Any = "last",
        tokens: Any = "last",
        skip_first_token: bool = False,
        batch_size: int = 32,
        spectrum: Any = "covariance",
        eps: float = MeasureConfig.eps,
        fit_range: Sequence[int] = MeasureConfig.fit_range,
        max_components: int | None = None,
        autocast: Any = "auto",
        measure_on_start: bool = True,
        measure_on_end: bool = True,
        log_spectrum_every: int = 5,
        track_phases: bool = True,
        strict: bool = False,
        prefix: str = "geometry",
    ) -> GeometryTracker:
        """A tracker from the flat option list the callbacks expose (one place for both)."""
        config = MeasureConfig(
            layers=layers,
            tokens=tokens,
            skip_first_token=skip_first_token,
            batch_size=batch_size,
            spectrum=spectrum,
            eps=eps,
            fit_range=tuple(fit_range),
            max_components=max_components,
            autocast=autocast,
        )
        probe_options = ProbeOptions(
            source=probe_source,
            num_sequences=num_sequences,
            min_tokens=min_tokens,
            max_tokens=max_tokens,
            seed=seed,
            chat_template=chat_template,
        )
        return cls(
            every_n_steps=every_n_steps,
            extra_steps=tuple(extra_steps),
            config=config,
            probes=probes,
            probe_options=probe_options,
            measure_on_start=measure_on_start,
            measure_on_end=measure_on_end,
            log_spectrum_every=log_spectrum_every,
            track_phases=track_phases,
            strict=strict,
            prefix=prefix,
        )

    # ------------------------------------------------------------------ set-up
    def prepare(self, tokenizer: Any | None) -> ProbeSet:
        """Build the probe set once (tokenized once, deterministic). Raises on misconfiguration."""
        if self.probes is None:
            if tokenizer is None:
                raise ValueError(
                    "geomtrace needs a tokenizer to build its probe set: pass tokenizer=... "
                    "(or a ready probes=ProbeSet)."
                )
            self.probes = self.probe_options.build(tokenizer)
        if len(self.probes) < 2:
            raise ValueError(f"the probe set has {len(self.probes)} sequence(s); geometry needs at least 2.")
        return self.probes

    # ------------------------------------------------------------- scheduling
    @property
    def last_step(self) -> int | None:
        return self.history[-1]["step"] if self.history else None

    def due(self, step: int, event: str) -> bool:
        """Whether to measure at ``step`` for ``event`` in ``{"start", "step", "end"}``."""
        if step == self.last_step:
            return False
        if event == "start":
            return self.measure_on_start and step == 0
        if event == "end":
            return self.measure_on_end
        periodic = self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0
        return periodic or step in self.extra_steps

    # --------------------------------------------------------------- measuring
    def measure(self, model: nn.Module, step: int) -> Measurement | None:
        """Measure now. All ranks must call this together. None if the measurement failed."""
        if self.probes is None:
            raise RuntimeError("GeometryTracker.prepare(tokenizer) must run before measure().")
        try:
            result = measure_geometry(model, self.probes, self.config)
        except Exception as err:
            if self.strict:
                raise
            warn(f"geomtrace: geometry measurement at step {step} failed and was skipped: {err}")
            return None
        if self.strict:
            _raise_on_bad_rows(result, step)
        scalars = result.scalars(self.prefix)
        record: dict[str, Any] = {"step": int(step), **scalars}
        measurement = Measurement(step=int(step), scalars=scalars, result=result)
        self.num_measurements += 1
        measurement.log_spectrum = self.log_spectrum_every > 0 and (
            (self.num_measurements - 1) % self.log_spectrum_every == 0
        )
        if self.history and step <= self.history[-1]["step"]:
            # The run went back (resumed from an earlier checkpoint, or a manual call): its
            # future records no longer describe this run, and phases need increasing steps.
            self.history = [r for r in self.history if r["step"] < step]
        self.history.append(record)
        if self.track_phases:
            self._update_phase(measurement, record)
        return measurement

    def _update_phase(self, measurement: Measurement, record: dict[str, Any]) -> None:
        from geomtrace.phases import PHASE_CODES, current_phase

        rankme_key, alpha_key = f"{self.prefix}/rankme", f"{self.prefix}/alpha"
        points = [r for r in self.history if math.isfinite(r.get(rankme_key, math.nan))]
        if not points:
            return
        try:
            segment = current_phase(
                [r["step"] for r in points],
                [r[rankme_key] for r in points],
                [r.get(alpha_key, math.nan) for r in points],
            )
        except Exception as err:  # phase detection is advisory: never stop tracking for it
            if self.strict:
                raise
            warn(f"geomtrace: phase detection failed at step {measurement.step}: {err}")
            return
        if segment is None:
            return
        name = segment.name
        measurement.phase = name
        code = float(PHASE_CODES[name])
        measurement.scalars[f"{self.prefix}/phase"] = code
        record[f"{self.prefix}/phase"] = code
        record["phase"] = name
        if self.phase is not None and name != self.phase:
            measurement.transition = (self.phase, name)
            measurement.scalars[f"{self.prefix}/phase_transition"] = 1.0
            measurement.text[f"{self.prefix}/phase"] = (
                f"step {measurement.step}: {self.phase} -> {name} (confidence {segment.confidence:.2f}, "
                f"since step {segment.start_step:g})"
            )
        elif self.phase is None:
            measurement.text[f"{self.prefix}/phase"] = f"step {measurement.step}: phase {name}"
        self.phase = name

    # ------------------------------------------------------------- resumption
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r) for r in self.history], "phase": self.phase, "num_measurements": self.num_measurements}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state.get("history", [])]
        self.phase = state.get("phase")
        self.num_measurements = int(state.get("num_measurements", len(self.history)))

    def summary(self) -> str:
        """A short text summary of the RankMe / alpha trajectory so far."""
        key_r, key_a = f"{self.prefix}/rankme", f"{self.prefix}/alpha"
        rows = [r for r in self.history if key_r in r]
        if not rows:
            return "no geometry measurements yet"
        low = min(rows, key=lambda r: r[key_r])
        high = max(rows, key=lambda r: r[key_r])
        first, last = rows[0], rows[-1]
        return (
            f"RankMe {first[key_r]:.1f} (step {first['step']}) -> min {low[key_r]:.1f} (step {low['step']}) "
            f"-> max {high[key_r]:.1f} (step {high['step']}) -> {last[key_r]:.1f} (step {last['step']}); "
            f"alpha {first.get(key_a, math.nan):.3f} -> {last.get(key_a, math.nan):.3f}"
            + (f"; phase now: {self.phase}" if self.phase else "")
        )


def _raise_on_bad_rows(result: GeometryResult, step: int) -> None:
    """``strict``: NaN/Inf features are an error, not just dropped rows."""
    for index, layer in result.layers.items():
        if layer.n_dropped or not math.isfinite(layer.rankme):
            raise FloatingPointError(
                f"geomtrace (strict=True): layer {index} at step {step} had {layer.n_dropped} feature "
                f"row(s) with NaN/Inf (RankMe {layer.rankme})."
            )


#: Keyword options of :meth:`GeometryTracker.from_options`, which both callbacks expose.
TRACKER_OPTIONS: frozenset[str] = frozenset(
    name for name in inspect.signature(GeometryTracker.from_options).parameters if name != "cls"
)
