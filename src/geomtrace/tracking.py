"""Live geometry tracking, independent of the training framework.

:class:`GeometryTracker` decides when to measure, runs the shared measuring path
(:func:`geomtrace.measure.measure_geometry`), keeps the history with its provenance,
follows the current geometric phase, accounts for its own cost and turns failures into
warnings. The Lightning callback (:class:`geomtrace.callbacks.GeometryMonitor`) and the
transformers callback (:class:`geomtrace.callbacks.GeometryCallback`) are thin adapters
around it, so both log the same keys with the same values and write the same records.

The tracker is the orchestrator; each of its other jobs is a small piece of its own: when to
measure (:class:`geomtrace.options.Schedule`), the record and its resumption
(:mod:`geomtrace._history`), provenance and its comparison (:mod:`geomtrace._provenance`, shared
with replay) and the cost of watching (:mod:`geomtrace._cost`).

The record (:meth:`GeometryTracker.record`, written by ``history_file=``) is one JSON
object: ``history`` (one row per measurement), ``provenance`` (how the rows were measured:
probe set, fingerprint, precision, the full measurement config, the probe options), and,
when they apply, ``provenance_changes``, ``memorization`` (the memorization probes: QA
set, index, zero rule), ``stages`` (earlier trainings of a reused callback) and ``cost``
(time spent measuring). It is self-contained: ``geomtrace replay``
can measure checkpoints "the same way as this run" from it.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

from torch import nn
from torchmetrics import Metric

from geomtrace._cost import CostMeter, cost_line
from geomtrace._history import STATE_VERSION as STATE_VERSION  # re-exported: the state_dict's version
from geomtrace._history import RunRecord
from geomtrace._jsonio import write_json
from geomtrace._log import get_logger
from geomtrace._options import legacy_options, option_set
from geomtrace._provenance import precision_note, provenance_differences, record_provenance, trajectory_of
from geomtrace._validate import OptionTypeError, Rule
from geomtrace._warnings import warn
from geomtrace.features import find_causal_lm, num_hidden_layers, resolve_layers
from geomtrace.measure import GeometryResult, MeasureConfig, max_positions, measure_geometry, validate_extra_metrics
from geomtrace.memorization.live import LiveMemorization
from geomtrace.memorization.probe import MemorizationProbe
from geomtrace.options import Schedule
from geomtrace.phases import DetectorOptions
from geomtrace.probes import ProbeOptions, ProbeSet
from geomtrace.training_features import TrainingFeatures

__all__ = [
    "OPTION_SETS",
    "GeometryTracker",
    "Measurement",
    "ProbeLengthError",
    "ProbeOptions",
    "loaded_model_hint",
    "report",
    "upgrade_flat_options",
]

_T = TypeVar("_T")


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
    #: Lines for the user (main process): how the probes ran, at the first measurement.
    notes: list[str] = field(default_factory=list)


class ProbeLengthError(ValueError):
    """The model takes fewer positions than the probe options' ``min_tokens``."""


_logger = get_logger("tracking")


def loaded_model_hint(model: nn.Module | None) -> tuple[bool, str] | None:
    """``(True, reason)`` when the HF model inside ``model`` was loaded by name (``from_pretrained``).

    transformers sets ``name_or_path`` when loading; a model built from a config has none,
    unless the config itself came from a named checkpoint (``AutoConfig.from_pretrained``):
    that case needs an explicit ``from_pretrained=False``.
    """
    if model is None:
        return None
    try:
        name = getattr(find_causal_lm(model), "name_or_path", "") or ""
    except (TypeError, ValueError):
        return None
    return (True, f"the model was loaded from {name!r}") if name else None


def report(lines: Sequence[str]) -> None:
    """geomtrace's own messages to the user, through the ``geomtrace.tracking`` logger (INFO, rank
    zero; on stderr unless the application routes logging elsewhere)."""
    for line in lines:
        _logger.info("[geomtrace] %s", line)


class _StageField(Generic[_T]):
    """A tracker attribute that lives in its current stage (:class:`geomtrace._history.Stage`)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _StageField[_T]: ...
    @overload
    def __get__(self, obj: GeometryTracker, owner: type | None = None) -> _T: ...
    def __get__(self, obj: GeometryTracker | None, owner: type | None = None) -> _T | _StageField[_T]:
        return self if obj is None else getattr(obj.run.stage, self.name)

    def __set__(self, obj: GeometryTracker, value: _T) -> None:
        setattr(obj.run.stage, self.name, value)


class GeometryTracker:
    """Schedules measurements, keeps their history and the phase; never raises unless ``strict``.

    Args:
        schedule: when to measure (:class:`~geomtrace.options.Schedule`: every_n_steps,
            extra_steps, measure_on_start, measure_on_end, log_spectrum_every); an int is
            ``every_n_steps``.
        measure: what and how to measure (:class:`~geomtrace.measure.MeasureConfig`).
        probes: a ready :class:`~geomtrace.probes.ProbeSet`, or the
            :class:`~geomtrace.probes.ProbeOptions` to build one at :meth:`prepare` with the
            tokenizer (default: 1024 sequences of the embedded corpus, 11 to 128 tokens).
        detector: the phase detector's options (:class:`~geomtrace.phases.DetectorOptions`;
            default: its defaults), recorded as ``record()["detector"]`` so that ``geomtrace
            phases`` and ``plot --phases`` detect the same phases from the history.
        track_phases: log the current geometric phase and its transitions.
        from_pretrained: whether training starts from a trained model (post-training):
            then a falling RankMe is compression-seeking, never "warmup". ``None`` decides
            per training (see :meth:`begin`).
        history_file: write :meth:`record` to this JSON file (atomically) at every
            :meth:`autosave` (the callbacks call it after every measurement, on the main
            process only; a custom loop calls it itself).
        strict: raise errors from the measurement instead of warning and going on.
        prefix: tag prefix of the logged keys.
        extra_metrics: ``{name: torchmetrics.Metric}`` taking ``(N, d)`` features, measured
            on the same forward as the geometry, per tracked layer, and logged beside it as
            ``<prefix>/<name>`` (``<prefix>/layer<L>/<name>`` for other layers); see
            :func:`~geomtrace.measure.measure_geometry`. Their names (and classes) are part
            of the recorded ``measure_config``.
        memorization: a :class:`~geomtrace.memorization.MemorizationProbe` (or several, with
            distinct names) measured after each geometry measurement, logged as
            ``memorization[/<name>]/{spearman,pearson,answer_logprob,n_scored}`` (see
            :mod:`geomtrace.memorization.live`).
        deprecated: the flat keywords of geomtrace 0.1 (``every_n_steps=``, ``config=``,
            ``probe_options=``, ``layers=``...), applied to the option objects with one
            ``DeprecationWarning`` naming the new spelling (:func:`geomtrace._options.legacy_options`).

    Each option object may also be given as a dict of its fields (a config file, a transformers
    checkpoint's saved arguments).
    """

    def __init__(
        self,
        *,
        schedule: Schedule | int | Mapping[str, Any] | None = None,
        measure: MeasureConfig | Mapping[str, Any] | None = None,
        probes: ProbeSet | ProbeOptions | Mapping[str, Any] | None = None,
        detector: DetectorOptions | Mapping[str, Any] | None = None,
        track_phases: bool = True,
        from_pretrained: bool | None = None,
        history_file: str | os.PathLike | None = None,
        strict: bool = False,
        prefix: str = "geometry",
        extra_metrics: Mapping[str, Metric] | None = None,
        memorization: MemorizationProbe | Sequence[MemorizationProbe] | None = None,
        owner: str = "GeometryTracker",
        **deprecated: Any,
    ) -> None:
        if deprecated:
            groups = upgrade_flat_options(owner, deprecated, schedule=schedule, measure=measure, probes=probes)
            schedule, measure, probes = groups["schedule"], groups["measure"], groups["probes"]
        track_phases = _TRACKER_RULES["track_phases"]("track_phases", track_phases)
        from_pretrained = _TRACKER_RULES["from_pretrained"]("from_pretrained", from_pretrained)
        strict = _TRACKER_RULES["strict"]("strict", strict)
        prefix = _TRACKER_RULES["prefix"]("prefix", prefix)
        if "/" in (prefix[0], prefix[-1]) or any(c.isspace() for c in prefix):
            raise ValueError(
                f"prefix must be a tag such as 'geometry' (no spaces, no leading or trailing '/'), got {prefix!r}"
            )
        if probes is not None and not isinstance(probes, (ProbeSet, ProbeOptions, Mapping)):
            raise TypeError(
                "probes must be a geomtrace.probes.ProbeSet or ProbeOptions; to build one from texts, a file or a "
                "dataset pass probes=ProbeOptions(source=...) (or use geomtrace.probes.load_probes)."
            )
        if history_file is not None:
            if not isinstance(history_file, (str, os.PathLike)) or not os.fspath(history_file):
                raise OptionTypeError(
                    f"history_file must be a file path (str or PathLike) or None, got {history_file!r}"
                )
            if Path(history_file).is_dir():
                raise ValueError(f"history_file must be a file path, got the directory {history_file!r}")
        self.extra_metrics = _validate_extra_metrics(extra_metrics)
        self.schedule = Schedule.of(schedule)
        self.schedule.validate()
        self.config = option_set(measure, MeasureConfig, owner=owner)
        self.config.validate()
        self._probes_from_options = not isinstance(probes, ProbeSet)
        self.probes: ProbeSet | None = None if self._probes_from_options else probes  # type: ignore[assignment]
        if self._probes_from_options:
            self.probe_options = option_set(probes, ProbeOptions, owner=owner)
            self.probe_options.validate()  # at construction, not when the training starts
        else:
            self.probe_options = self.probes.options or ProbeOptions()  # type: ignore[union-attr]
        self.track_phases: bool = track_phases
        self.from_pretrained_option: bool | None = from_pretrained
        self.history_file = Path(history_file) if history_file is not None else None
        self.strict: bool = strict
        self.prefix: str = prefix
        self.memorization = LiveMemorization(memorization, strict=strict) if memorization is not None else None
        #: The record: the current stage (history, phase, provenance...) and the earlier ones.
        self.run = RunRecord()
        #: Time spent measuring in the current training.
        self.meter = CostMeter()
        self._restored = False
        self._owner: weakref.ref | None = None
        self._last_attempt: int | None = None
        self._warned_save = False
        self._tokenizer: Any = None
        self._fitted_to: int | None = None
        # The phase detector's options (recorded; the offline tools reuse them).
        if detector is not None and not isinstance(detector, (DetectorOptions, Mapping)):
            raise TypeError(f"detector must be a geomtrace.phases.DetectorOptions, got {type(detector).__name__}")
        self.detector = option_set(detector, DetectorOptions, owner=owner, name="detector")
        self.detector.validate()
        # source="training": the training forwards' own rows, window by window (no probe forward).
        self.training_features: TrainingFeatures | None = None
        if self.config.source == "training":
            self.training_features = TrainingFeatures(self.config, self.extra_metrics)
        self._window_start = 0

    # The current stage's record, as attributes (see geomtrace._history.Stage).
    history = _StageField[list[dict[str, Any]]]()
    phase = _StageField[str | None]()
    num_measurements = _StageField[int]()
    #: How the rows of :attr:`history` were measured (``GeometryResult.provenance()`` + more).
    provenance = _StageField[dict[str, Any] | None]()
    provenance_changes = _StageField[list[dict[str, Any]]]()
    #: Rows from this step on were measured like the latest one (phases use only them).
    comparable_from = _StageField[int | None]()
    #: Whether this training starts from a trained model; resolved by :meth:`begin`.
    from_pretrained = _StageField[bool | None]()
    from_pretrained_reason = _StageField[str | None]()

    @property
    def stages(self) -> list[dict[str, Any]]:
        """Earlier trainings of a reused tracker (their :meth:`Stage.to_dict`)."""
        return self.run.stages

    # The schedule's options, as attributes (read by the callbacks and older code).
    @property
    def every_n_steps(self) -> int:
        return self.schedule.every_n_steps

    @property
    def extra_steps(self) -> frozenset[int]:
        return frozenset(self.schedule.extra_steps)

    @property
    def measure_on_start(self) -> bool:
        return self.schedule.measure_on_start

    @property
    def measure_on_end(self) -> bool:
        return self.schedule.measure_on_end

    @property
    def log_spectrum_every(self) -> int:
        return self.schedule.log_spectrum_every

    # The cost of the current training, as attributes.
    @property
    def cost_seconds(self) -> float:
        return self.meter.seconds

    @property
    def cost_measurements(self) -> int:
        return self.meter.measurements

    @classmethod
    def from_options(cls, **options: Any) -> GeometryTracker:
        """Deprecated: ``GeometryTracker(**options)`` takes the same (flat keywords included)."""
        return cls(**options)

    # ------------------------------------------------------------------ set-up
    def prepare(self, tokenizer: Any | None) -> ProbeSet | None:
        """Build the probe set once (tokenized once, deterministic). Raises on misconfiguration.

        With ``source="training"`` no probe set is built (None; no tokenizer needed unless a
        memorization probe is measured)."""
        if self.training_features is not None:
            self._tokenizer = tokenizer
            if self.memorization is not None:
                if tokenizer is None:
                    raise ValueError("geomtrace needs a tokenizer for its memorization probes: pass tokenizer=...")
                self.memorization.start_run(tokenizer)
            return None
        if self.probes is None:
            if tokenizer is None:
                raise ValueError(
                    "geomtrace needs a tokenizer to build its probe set: pass tokenizer=... "
                    "(or a ready probes=ProbeSet)."
                )
            self.probes = self.probe_options.build(tokenizer)
        self._tokenizer = tokenizer
        if len(self.probes) < 2:
            raise ValueError(f"the probe set has {len(self.probes)} sequence(s); geometry needs at least 2.")
        if self.memorization is not None:
            self.memorization.start_run(tokenizer)
        return self.probes

    @property
    def ready(self) -> bool:
        """Whether :meth:`measure` can run: the probe set is built, or the source is the training batches."""
        return self.probes is not None or self.training_features is not None

    def attach(self, model: nn.Module) -> None:
        """``source="training"``: hook the training forwards of ``model`` (a no-op for probes)."""
        if self.training_features is not None:
            self.training_features.attach(model)

    def detach(self) -> None:
        """Remove the training-forward hooks (at the end of a training)."""
        if self.training_features is not None:
            self.training_features.detach()

    def check_model(self, model: nn.Module) -> nn.Module:
        """The HF causal LM inside ``model``, after checking the tracked layers exist in it.

        Raises ``ValueError`` (no HF model inside, a layer out of range) so that the
        callbacks fail once, before the first step, instead of warning at every measurement.
        """
        lm = find_causal_lm(model)
        resolve_layers(self.config.layers, num_hidden_layers(lm))
        return lm

    def fit_probes(self, model: nn.Module) -> None:
        """Make the probes fit the model's positions (``max_position_embeddings``/``n_positions``).

        Probes longer than the model takes would fail every measurement (GPT-2: ``IndexError``).
        Probes built from :attr:`probe_options` are rebuilt with ``max_tokens`` lowered to the
        model's positions (chat probes keep their generation prompt; the record names the new
        ``max_tokens``); a ready :class:`ProbeSet` is cut to them. One warning says so. Raises
        :class:`ProbeLengthError` when ``min_tokens`` exceeds the model's positions. Called by
        the callbacks before the first step and by :meth:`measure` (once per model).
        """
        if self.probes is None or self._fitted_to == id(model):
            return
        limit = max_positions(model)
        self._fitted_to = id(model)
        longest = self.probes.longest()
        if limit is None or longest <= limit:
            return
        tokenizer = self._tokenizer
        if self._probes_from_options and tokenizer is not None:
            if self.probe_options.min_tokens > limit:
                raise ProbeLengthError(
                    f"the model takes at most {limit} positions (config.max_position_embeddings / n_positions) but "
                    f"min_tokens={self.probe_options.min_tokens}: pass min_tokens <= {limit} and max_tokens <= {limit}"
                )
            self.probe_options = replace(self.probe_options, max_tokens=limit)
            self.probes = self.probe_options.build(tokenizer)
            how = f"rebuilt with max_tokens={limit}"
        else:
            self.probes = self.probes.truncated(limit)
            how = f"cut to their first {limit} tokens"
        warn(
            f"geomtrace: probe sequences of up to {longest} tokens are longer than the model's {limit} positions "
            f"(config.max_position_embeddings / n_positions); the probes are {how}. Pass max_tokens <= {limit} "
            "to choose this yourself."
        )

    def begin(self, owner: Any, start_step: int, *, pretrained_hint: tuple[bool, str] | None = None) -> list[str]:
        """Start (or resume) a training run driven by ``owner`` (the trainer); returns messages.

        * A state restored from a checkpoint continues its history.
        * The same trainer training on from where it stopped continues its history too.
        * Otherwise (a different trainer, or one that starts over at an earlier step) a
          non-empty history is a finished stage: it moves to :attr:`stages` (nothing is
          dropped) and a new history starts.

        ``from_pretrained=None`` is resolved here, per stage, by the first rule that applies:
        a restored stage keeps its value; a later stage of a reused tracker is post-training;
        a run starting at step > 0 has no initialisation to see; else ``pretrained_hint``
        (the adapter's ``(value, reason)``, e.g. a TRL trainer or a model loaded with
        ``from_pretrained``); else from scratch.
        """
        messages: list[str] = []
        same_owner = self._owner is not None and self._owner() is owner
        went_back = bool(self.history) and start_step < self.history[-1]["step"]
        if self.history and not self._restored and (not same_owner or went_back):
            n = self.run.new_stage()
            messages.append(
                f"a new training with the same callback: stage {len(self.stages) + 1} starts; the "
                f"{n} measurement(s) of the earlier stage are kept in `stages` (not in `history`)."
            )
        restored_value = self.from_pretrained if self._restored else None
        self._restored = False
        try:
            self._owner = weakref.ref(owner)
        except TypeError:
            self._owner = None
        self._last_attempt = None
        self.meter.start()
        self._window_start = int(start_step)
        if self.training_features is not None:
            self.training_features.reset()  # rows left from an earlier training are not this window's
        first = self.history[0]["step"] if self.history else start_step
        if self.from_pretrained_option is not None:
            value, reason = self.from_pretrained_option, "from_pretrained option"
        elif restored_value is not None:
            value, reason = restored_value, self.from_pretrained_reason or "restored from the checkpoint"
        elif self.stages:
            value, reason = True, "a later stage of a reused callback"
        elif first > 0:
            value, reason = True, f"the trajectory starts at step {first}, not at initialisation"
        elif pretrained_hint is not None:
            value, reason = pretrained_hint
        else:
            value, reason = False, "a model without a pretrained name_or_path"
        changed = value != self.from_pretrained
        self.from_pretrained, self.from_pretrained_reason = value, reason
        if changed and self.track_phases and self.from_pretrained_option is None:
            if value:
                messages.append(
                    f"phases: post-training ({reason}): a falling RankMe is compression-seeking, never "
                    "warmup. Pass from_pretrained=False if this run trains from scratch."
                )
            else:
                messages.append(
                    f"phases: training from scratch ({reason}): an early RankMe collapse is warmup. "
                    "Pass from_pretrained=True for post-training."
                )
        return messages

    # ------------------------------------------------------------- scheduling
    @property
    def last_step(self) -> int | None:
        return self.run.stage.last_step

    def due(self, step: int, event: str) -> bool:
        """Whether to measure at ``step`` for ``event`` in ``{"start", "step", "end"}``.

        One attempt per step: a step already measured, or whose measurement failed, is not
        tried again (the final step is seen by two hooks, and under gradient accumulation
        every micro-batch of a step sees the same global step).
        """
        if step == self.last_step or step == self._last_attempt:
            return False
        if self.training_features is not None and event == "start":
            return False  # no training forward yet: the first window ends at the first due step
        return self.schedule.due(step, event)

    # --------------------------------------------------------------- measuring
    def timing(self) -> AbstractContextManager[None]:
        """Count the time of the block (a measurement and its logging) as measuring cost."""
        return self.meter.timing()

    def measure(self, model: nn.Module, step: int, *, final: bool = False) -> Measurement | None:
        """Measure now. All ranks must call this together. None if the measurement failed."""
        if not self.ready:
            raise RuntimeError("GeometryTracker.prepare(tokenizer) must run before measure().")
        self._last_attempt = int(step)
        start = time.perf_counter()
        try:
            if self.training_features is not None:
                result = self._measure_window(model, int(step))
                if result is None:
                    return None
            else:
                self.fit_probes(model)
                assert self.probes is not None  # ready, and fit_probes keeps a probe set
                result = measure_geometry(model, self.probes, self.config, extra_metrics=self.extra_metrics)
        except Exception as err:
            if self.strict:
                raise
            warn(f"geomtrace: geometry measurement at step {step} failed and was skipped: {err}")
            return None
        if self.strict:
            _raise_on_bad_rows(result, step)
        self.meter.count()
        # Until the measurement is complete (memorization included) an interrupt (Ctrl-C, a
        # signal) must leave no trace of it: what the history file and a checkpoint save
        # then holds only completed measurements.
        saved = self.run.snapshot()
        try:
            return self._record(model, step, final, result, start)
        except BaseException:
            self.run.restore(saved)
            raise

    def _measure_window(self, model: nn.Module, step: int) -> GeometryResult | None:
        """``source="training"``: the window since the previous measurement (None when empty)."""
        features = self.training_features
        assert features is not None
        if not features.attached:
            features.attach(model)
        hook_seconds = features.seconds
        result = features.measure_window((self._window_start + 1, step))
        self._window_start = step
        self.meter.add(hook_seconds)  # the hooks' share of the training forwards
        if result is None:
            warn(
                f"geomtrace: no training forward was seen in the window ending at step {step}, so it is not "
                "measured (source='training' counts forwards of the HF model in training mode with gradients on)."
            )
        return result

    @contextmanager
    def _capture_paused(self) -> Iterator[None]:
        """The tracker's own forwards (memorization probes) never enter a training window."""
        features = self.training_features
        if features is None:
            yield
            return
        enabled, features.enabled = features.enabled, False
        try:
            yield
        finally:
            features.enabled = enabled

    def _record(self, model: nn.Module, step: int, final: bool, result: GeometryResult, start: float) -> Measurement:
        """Add a finished geometry measurement (and its memorization values) to the history.
        Everything slow (the memorization probe's forwards) runs before the history changes,
        so a checkpoint saved meanwhile (SLURM's SIGUSR1 handler) never holds half a record."""
        seconds = time.perf_counter() - start
        values: dict[str, Any] = {}
        notes: list[str] = []
        if self.memorization is not None:
            # After geometry, on every rank alike (its collectives follow the same schedule).
            with self._capture_paused():
                values, notes = self.memorization.measure(model, int(step))
        if self.history and step <= self.history[-1]["step"]:
            # The run went back (a manual call, or a resume without the checkpoint's state):
            # later records no longer describe this run, and phases need increasing steps.
            self.history = [r for r in self.history if r["step"] < step]
        scalars = result.scalars(self.prefix)
        # the jackknife replicates (with uncertainty=, on probes) go to the history only: they
        # pair two steps' errors (phases), they are not scalars to log
        record: dict[str, Any] = {"step": int(step), **scalars, **result.replicates(self.prefix)}
        measurement = Measurement(step=int(step), scalars=scalars, result=result)
        self._check_provenance(result, int(step), measurement.notes)
        self.num_measurements += 1
        measurement.log_spectrum = self.schedule.spectrum_due(self.num_measurements, final)
        self.history.append(record)
        if self.track_phases:
            self._update_phase(measurement, record)
        scalars[f"{self.prefix}/seconds"] = seconds
        record[f"{self.prefix}/seconds"] = seconds
        scalars.update(values)
        record.update(values)
        measurement.notes.extend(notes)
        return measurement

    def recorded_probe_options(self) -> dict[str, Any] | None:
        """The probe options the record keeps: this tracker's, or those a ready probe set was
        built with (:attr:`ProbeSet.options`); None for a hand-made set, or with ``source="training"``
        (no probes measured)."""
        if self.training_features is not None:
            return None
        if self._probes_from_options:
            return self.probe_options.to_dict()
        options = self.probes.options if self.probes is not None else None
        return options.to_dict() if options is not None else None

    def extra_metric_classes(self) -> dict[str, str]:
        """``{name: "module.Class"}`` of the extra metrics, as the record keeps them."""
        return {name: f"{type(m).__module__}.{type(m).__qualname__}" for name, m in self.extra_metrics.items()}

    def _check_provenance(self, result: GeometryResult, step: int, notes: list[str]) -> None:
        """Adopt the provenance of ``result``; warn by name when it differs from the history's."""
        current = record_provenance(
            result.provenance(),
            probe_options=self.recorded_probe_options(),
            # The extra metrics ride along on the same forward: part of how this was measured.
            extra_metrics=self.extra_metric_classes(),
            trajectory=trajectory_of(result, self.prefix),
        )
        previous = self.provenance
        self.provenance = current
        if previous is None or previous.get("precision") != current["precision"]:
            notes.append(precision_note(current, self.config.autocast))
        if previous is None:
            if self.comparable_from is None:
                self.comparable_from = self.history[0]["step"] if self.history else step
            return
        changed = provenance_differences(previous, current)
        if not changed:
            return
        self.provenance_changes.append({"step": step, "changed": changed})
        self.comparable_from = step
        self.phase = None
        names = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
        warn(
            f"geomtrace: from step {step} the geometry is measured differently from the earlier history "
            f"({names}); values before and after are not comparable, and phases restart at step {step}."
        )

    def _update_phase(self, measurement: Measurement, record: dict[str, Any]) -> None:
        from geomtrace.phases import PHASE_CODES, current_phase

        keys = self.trajectory_keys()
        first = self.comparable_from if self.comparable_from is not None else -math.inf
        points = [r for r in self.history if r["step"] >= first and math.isfinite(r.get(keys["rankme"], math.nan))]
        if not points:
            return
        try:
            segment = current_phase(
                [r["step"] for r in points],
                [r[keys["rankme"]] for r in points],
                [r.get(keys["alpha"], math.nan) for r in points],
                self.detector,
                # error bars (the value's tag + "_se") when measured: the detector names a trend only
                # beyond its noise; the spectrum says whether the values were centred
                rankme_se=[r.get(keys["rankme"] + "_se") for r in points],
                alpha_se=[r.get(keys["alpha"] + "_se") for r in points],
                # the same probes at every comparable step: changes pair over the replicates
                rankme_replicates=[r.get(keys["rankme"] + "_replicates") for r in points],
                alpha_replicates=[r.get(keys["alpha"] + "_replicates") for r in points],
                spectrum=self.config.spectrum,
                allow_warmup=self.detector.allow_warmup and not self.from_pretrained,
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
        measurement.scalars[keys["phase"]] = code
        record[keys["phase"]] = code
        record["phase"] = name
        if self.phase is not None and name != self.phase:
            measurement.transition = (self.phase, name)
            measurement.scalars[f"{keys['phase']}_transition"] = 1.0
            measurement.text[keys["phase"]] = (
                f"step {measurement.step}: {self.phase} -> {name} (confidence {segment.confidence:.2f}, "
                f"since step {segment.start_step:g})"
            )
        elif self.phase is None:
            measurement.text[keys["phase"]] = f"step {measurement.step}: phase {name}"
        self.phase = name

    def trajectory_keys(self) -> dict[str, str]:
        """Tags of *the* trajectory (the deepest tracked layer): ``rankme``, ``alpha``, ``phase``.

        From the latest measurement's provenance (:meth:`GeometryResult.trajectory_key`);
        before any measurement, the last layer's ``geometry/<name>``.
        """
        return self.run.stage.trajectory_keys(self.prefix)

    # ------------------------------------------------------------------ ending
    def end(self) -> list[str]:
        """Messages for the end of a training: the trajectory summary and the cost of watching."""
        lines = []
        if self.history:
            lines.append(self.summary())
        line = cost_line(self.cost())
        if line is not None:
            lines.append(line)
        return lines

    def cost(self) -> dict[str, Any] | None:
        """Time spent measuring (and logging) in the current training, and its share of it."""
        cost = self.meter.cost(self.probes)
        return None if cost is None else {**cost, "source": self.config.source}

    # ------------------------------------------------------------------ record

    def record(self, **extra: Any) -> dict[str, Any]:
        """The JSON-ready record of this run: ``history``, ``provenance`` and the rest.

        Top-level keys: ``history`` (rows ``{"step", "geometry/rankme", ...}``),
        ``provenance`` (probe description and fingerprint, ``n_probes``, ``precision`` the
        probes ran in, ``measure_config``, ``probe_options``, ``trajectory``), ``phase``,
        ``from_pretrained``, ``detector`` (the phase detector's options, as given: a
        post-training run never has a warmup whatever its ``allow_warmup``), ``schedule``;
        when they apply ``provenance_changes``, ``memorization``, ``stages`` and ``cost``;
        then ``extra``.
        """
        out: dict[str, Any] = {
            "history": [dict(r) for r in self.history],
            "provenance": self.provenance,
            "phase": self.phase,
            "from_pretrained": self.from_pretrained,
            "detector": self.detector.to_dict(),
            "schedule": self.schedule.to_dict(),
        }
        if self.provenance_changes:
            out["provenance_changes"] = [dict(c) for c in self.provenance_changes]
        if self.memorization is not None:
            out["memorization"] = self.memorization.describe()
        if self.stages:
            out["stages"] = [dict(s) for s in self.stages]
        cost = self.cost()
        if cost is not None:
            out["cost"] = cost
        out.update(extra)
        return out

    def save(self, path: str | os.PathLike | None = None, **extra: Any) -> Path | None:
        """Write :meth:`record` as JSON, atomically (a temporary file, then a rename)."""
        target = Path(path) if path is not None else self.history_file
        if target is None:
            return None
        return write_json(target, self.record(**extra))

    def autosave(self) -> None:
        """:meth:`save` to ``history_file`` when set; a failure warns once (raises if ``strict``)."""
        try:
            self.save()
        except (OSError, TypeError, ValueError) as err:  # a full disk (or anything) must not stop training
            if self.strict:
                raise
            if not self._warned_save:
                self._warned_save = True
                warn(f"geomtrace: writing the history to {self.history_file} failed: {err}")

    # ------------------------------------------------------------- resumption
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the current stage, earlier stages (no options: they may change)."""
        return self.run.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (or a version-1 one: history, phase, num_measurements).

        A state logged under another ``prefix`` continues under this tracker's: its keys are
        renamed (``geometry/rankme`` -> ``geo/rankme``), with one warning naming both prefixes.
        """
        self.run.load_state_dict(state, self.prefix)
        self._restored = True
        self._last_attempt = None

    def summary(self) -> str:
        """A short text summary of the RankMe / alpha trajectory so far (the trajectory layer)."""
        return self.run.stage.summary(self.prefix)


#: One rule per option of :class:`GeometryTracker` (the probe and measurement options have theirs).
_TRACKER_RULES: dict[str, Rule] = {
    "track_phases": Rule("bool"),
    "from_pretrained": Rule("bool", optional=True, example="None: automatic"),
    "strict": Rule("bool"),
    "prefix": Rule("str", example="'geometry'"),
}

#: Tags the tracker logs beside a layer's values, which an extra metric must not shadow.
_TRACKER_NAMES = frozenset({"seconds", "phase", "phase_transition"})


def _validate_extra_metrics(extra_metrics: Mapping[str, Metric] | None) -> dict[str, Metric]:
    """The measuring path's checks, plus the names of the tags only the tracker logs."""
    extras = validate_extra_metrics(extra_metrics)
    clash = sorted(set(extras) & _TRACKER_NAMES)
    if clash:
        raise ValueError(f"extra metric name(s) {clash} are logged by geomtrace itself; choose other names.")
    return extras


def _raise_on_bad_rows(result: GeometryResult, step: int) -> None:
    """``strict``: NaN/Inf features are an error, not just dropped rows."""
    for index, layer in result.layers.items():
        if layer.n_dropped or not math.isfinite(layer.rankme):
            raise FloatingPointError(
                f"geomtrace (strict=True): layer {index} at step {step} had {layer.n_dropped} feature "
                f"row(s) with NaN/Inf (RankMe {layer.rankme})."
            )


def upgrade_flat_options(owner: str, flat: Mapping[str, Any], **given: Any) -> dict[str, Any]:
    """The tracker's and the callbacks' flat keywords of geomtrace 0.1 in their option objects
    (``{"schedule", "measure", "probes"}``), with one DeprecationWarning (see
    :func:`geomtrace._options.legacy_options`)."""
    groups = {"schedule": Schedule, "measure": MeasureConfig, "probes": ProbeOptions}
    schedule = given.get("schedule")
    if isinstance(schedule, int) and not isinstance(schedule, bool):
        given["schedule"] = Schedule.of(schedule)
    return legacy_options(
        owner,
        flat,
        {name: (cls, given.get(name)) for name, cls in groups.items()},
        renamed={"config": "measure", "probe_options": "probes"},
    )


#: The option objects the tracker and both callbacks take (each declared once, as a dataclass).
OPTION_SETS: dict[str, type] = {
    "schedule": Schedule,
    "measure": MeasureConfig,
    "probes": ProbeOptions,
    "detector": DetectorOptions,
}
