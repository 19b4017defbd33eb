"""GeometryMonitor: live RankMe / alpha-ReQ for a Lightning ``trainer.fit``."""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn
from torchmetrics import Metric

from geomtrace._optional import require
from geomtrace._warnings import warn
from geomtrace.callbacks._tensorboard import write_text_and_figures
from geomtrace.measure import MeasureConfig
from geomtrace.memorization.probe import MemorizationProbe
from geomtrace.options import Schedule
from geomtrace.phases import DetectorOptions
from geomtrace.probes import ProbeOptions, ProbeSet
from geomtrace.tracking import (
    GeometryTracker,
    Measurement,
    ProbeLengthError,
    loaded_model_hint,
    report,
)

_lightning = require("lightning", "the GeometryMonitor callback")
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.utilities.exceptions import MisconfigurationException  # noqa: E402

__all__ = ["GeometryMonitor"]


class GeometryMonitor(Callback):
    r"""Track RankMe and alpha-ReQ of a Hugging Face causal LM during ``trainer.fit``.

    Measures at the start of training (step 0, the initial geometry), every
    ``every_n_steps`` optimizer steps and at the end, on a fixed probe set (by default
    1024 paragraphs of the embedded corpus). Logs through every attached Lightning logger at
    the exact global step, under ``geometry/...``; on a ``TensorBoardLogger`` also the
    eigenspectrum with its fitted power law as a figure every ``log_spectrum_every``
    measurements, and phase transitions as text.

    Logged keys (last layer; other tracked layers as ``geometry/layer{L}/...``):
    ``geometry/rankme``, ``geometry/alpha``, ``geometry/alpha_r2``, ``geometry/n_samples``,
    ``geometry/seconds`` (the measurement's wall time), with ``MeasureConfig(uncertainty="jackknife")``
    ``geometry/rankme_se`` and ``geometry/alpha_se`` (standard errors), and with ``track_phases``
    ``geometry/phase`` (0 stable, 1 warmup, 2 entropy-seeking, 3 compression-seeking) and
    ``geometry/phase_transition``, which follow *the* trajectory: the deepest tracked layer
    (``geometry/layer{L}/phase`` when that is not the final layer).

    Args:
        tokenizer: tokenizer for the probes. Default: ``pl_module.tokenizer`` or
            ``trainer.datamodule.tokenizer``.
        schedule: when to measure, a :class:`~geomtrace.options.Schedule` (every_n_steps,
            extra_steps, measure_on_start, measure_on_end, log_spectrum_every); an int is
            ``every_n_steps`` (``GeometryMonitor(tok, 100)``).
        measure: what and how to measure, a :class:`~geomtrace.measure.MeasureConfig` (layers,
            tokens, batch size, conventions, autocast, source: ``"training"`` measures the
            training batches' own hidden states, window by window, instead of probes, with no
            probe forward and no tokenizer; see docs/concepts.md, "Which rows").
        probes: the probe set: :class:`~geomtrace.probes.ProbeOptions` to build it with the
            tokenizer (source, num_sequences, text_column, split, config_name, chat_template...;
            default: 1024 paragraphs of the embedded corpus), or a ready
            :class:`~geomtrace.probes.ProbeSet`.
        detector: the phase detector's options, :class:`~geomtrace.phases.DetectorOptions`.
        model_getter: ``callable(pl_module) -> nn.Module`` returning the HF model, for
            modules where it cannot be found automatically.
        track_phases: log the current geometric phase.
        from_pretrained: whether the fit starts from a trained model (post-training: a
            falling RankMe is compression-seeking, never warmup). ``None`` (default):
            automatic, see docs/lightning.md.
        history_file: rank 0 writes the history with its provenance to this JSON file
            (atomically) after every measurement.
        strict: raise measurement errors instead of warning and training on.
        prefix: prefix of the logged keys.
        extra_metrics: ``{name: torchmetrics.Metric}`` whose ``update`` takes ``(N, d)``
            features: measured on the same probe forward, per tracked layer, and logged as
            ``geometry/<name>`` (``geometry/layer{L}/<name>``); a failing one is NaN with a
            warning. See docs/lightning.md.
        memorization: a :class:`~geomtrace.memorization.MemorizationProbe` (QA set + ∞-gram
            index), or several with distinct names, measured right after each geometry
            measurement on every rank; logs ``memorization/spearman``, ``memorization/pearson``,
            ``memorization/answer_logprob``, ``memorization/n_scored`` (``memorization/<name>/...``
            for a named probe). The ∞-gram side is computed once per run. See docs/memorization.md.
        deprecated: the flat keywords of geomtrace 0.1 (``every_n_steps=``, ``layers=``,
            ``num_sequences=``, ``probe_source=``...): still taken, with a ``DeprecationWarning``
            naming the new spelling.

    Example::

        trainer = L.Trainer(
            callbacks=[GeometryMonitor(tok, Schedule(every_n_steps=100), measure=MeasureConfig(layers="all"))],
            logger=TensorBoardLogger("runs"),
        )
        trainer.fit(model)
    """

    def __init__(
        self,
        tokenizer: Any | None = None,
        schedule: Schedule | int | None = None,
        *,
        measure: MeasureConfig | None = None,
        probes: ProbeOptions | ProbeSet | None = None,
        detector: DetectorOptions | None = None,
        model_getter: Callable[[Any], nn.Module] | None = None,
        track_phases: bool = True,
        from_pretrained: bool | None = None,
        history_file: str | None = None,
        strict: bool = False,
        prefix: str = "geometry",
        extra_metrics: Mapping[str, Metric] | None = None,
        memorization: MemorizationProbe | Sequence[MemorizationProbe] | None = None,
        **deprecated: Any,
    ) -> None:
        super().__init__()
        try:
            self.tracker = GeometryTracker(
                schedule=schedule,
                measure=measure,
                probes=probes,
                detector=detector,
                track_phases=track_phases,
                from_pretrained=from_pretrained,
                history_file=history_file,
                strict=strict,
                prefix=prefix,
                extra_metrics=extra_metrics,
                memorization=memorization,
                owner="GeometryMonitor",
                **deprecated,  # the flat keywords of 0.1: the tracker's shim, one warning naming GeometryMonitor
            )
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(f"GeometryMonitor: {err}") from err
        if model_getter is not None and not callable(model_getter):
            raise MisconfigurationException("GeometryMonitor: model_getter must be a callable(pl_module) -> nn.Module.")
        self.tokenizer = tokenizer
        self.model_getter = model_getter
        self._model: nn.Module | None = None
        self._warned_figures = False

    # ----------------------------------------------------------------- state
    @property
    def state_key(self) -> str:
        # Only the prefix tells two monitors of one trainer apart. Options such as the
        # schedule may change between a run and its resume without losing the history;
        # changes that make values incomparable are warned about at the next measurement.
        return self._generate_state_key(prefix=self.tracker.prefix)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every measurement of the current training: ``{"step": ..., "geometry/rankme": ..., ...}``."""
        return self.tracker.history

    @property
    def stages(self) -> list[dict[str, Any]]:
        """Earlier trainings of this monitor (a new ``Trainer`` started a new stage), oldest first."""
        return self.tracker.stages

    def record(self, **extra: Any) -> dict[str, Any]:
        """History, provenance, stages and cost as one JSON-ready dict (see ``GeometryTracker.record``)."""
        return self.tracker.record(**extra)

    def summary(self) -> str:
        """A short text summary of the RankMe / alpha trajectory so far."""
        return self.tracker.summary()

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict)

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Checkpoints written before the state key held only the prefix used the options too
        # (``GeometryMonitor{'every_n_steps': 100, ...}``): take such a state over.
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        name = type(self).__qualname__
        legacy = [
            key
            for key in states
            if isinstance(key, str) and key.startswith(name + "{") and f"'prefix': {self.tracker.prefix!r}" in key
        ]
        if len(legacy) == 1:
            self.load_state_dict(states[legacy[0]])
            return
        # A resume with another prefix: a state of this class under a prefix that no monitor of
        # this trainer uses is this monitor's history (the tracker renames it, with a warning).
        prefixes = {cb.tracker.prefix for cb in getattr(trainer, "callbacks", []) if isinstance(cb, GeometryMonitor)}
        others = {key: prefix for key in states if (prefix := _state_key_prefix(key, name)) is not None}
        orphans = [key for key, prefix in others.items() if prefix not in prefixes]
        if len(orphans) == 1:
            self.load_state_dict(states[orphans[0]])
        elif orphans:
            warn(
                f"GeometryMonitor: the checkpoint holds geomtrace histories under prefixes "
                f"{sorted(others[k] for k in orphans)} but none under this monitor's prefix {self.tracker.prefix!r}; "
                "it starts a new history. Pass the prefix the run used to continue its history."
            )

    # ----------------------------------------------------------------- set-up
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        tokenizer = self.tokenizer
        if tokenizer is None:
            tokenizer = getattr(pl_module, "tokenizer", None)
        if tokenizer is None and getattr(trainer, "datamodule", None) is not None:
            tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        try:
            self.tracker.prepare(tokenizer)
        except (TypeError, ValueError, OSError, RuntimeError) as err:
            hint = (
                " Pass GeometryMonitor(tokenizer=...) or set `self.tokenizer` on your LightningModule."
                if tokenizer is None
                else ""
            )
            raise MisconfigurationException(f"GeometryMonitor could not build its probe set: {err}{hint}") from err

    def _find_model(self, pl_module: Any) -> nn.Module:
        if self.model_getter is not None:
            model = self.model_getter(pl_module)
            if not isinstance(model, nn.Module):
                raise MisconfigurationException(
                    f"GeometryMonitor: model_getter returned {type(model).__name__}, expected an nn.Module."
                )
        else:
            model = pl_module
        try:
            lm = self.tracker.check_model(model)
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(
                f"GeometryMonitor cannot measure {type(model).__name__}: {err} "
                "Pass GeometryMonitor(model_getter=lambda module: module.<your HF model>) and layers that exist."
            ) from err
        return model if self.model_getter is not None else lm

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Looked up here rather than in setup: a model built in `configure_model` (the way
        # to create large or sharded models) exists only after setup, and the strategy has
        # wrapped it by now. Still before the first step, so a miss fails fast.
        self._model = self._find_model(pl_module)
        try:
            self.tracker.fit_probes(self._model)
            self.tracker.attach(self._model)  # source="training": hook the training forwards
        except (ProbeLengthError, ValueError) as err:
            raise MisconfigurationException(f"GeometryMonitor: {err}") from err

    # ---------------------------------------------------------------- hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        messages = self.tracker.begin(trainer, int(trainer.global_step), pretrained_hint=loaded_model_hint(self._model))
        if trainer.is_global_zero:
            report(messages)
        self._maybe_measure(trainer, "start")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The final step is measured here, not in on_train_end: ModelCheckpoint (always run
        # after the other callbacks) then saves a state that holds it.
        self._maybe_measure(trainer, "end" if _final_batch(trainer, batch_idx) else "step")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._maybe_measure(trainer, "end")  # training stopped early (EarlyStopping, max_time, ...)
        self.tracker.detach()
        if trainer.is_global_zero:
            report(self.tracker.end())
            self.tracker.autosave()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Ctrl-C (KeyboardInterrupt), Lightning's SIGTERM exit (SIGTERMException) or an error:
        # the history file gets every completed measurement (one cut short left no trace).
        self.tracker.detach()
        if trainer.is_global_zero and self.tracker.ready:
            self.tracker.autosave()

    def _maybe_measure(self, trainer: Any, event: str) -> None:
        # Every rank reaches the same decision from the same global_step, so all ranks
        # enter the measurement's collectives together.
        step = int(trainer.global_step)
        if self._model is None or not self.tracker.due(step, event):
            return
        with self.tracker.timing():
            with trainer.precision_plugin.forward_context():
                measurement = self.tracker.measure(self._model, step, final=event == "end")
            if measurement is not None and trainer.is_global_zero:
                report(measurement.notes)
                self._log(trainer, measurement)
                self.tracker.autosave()

    # -------------------------------------------------------------- logging
    def _log(self, trainer: Any, measurement: Measurement) -> None:
        for logger in trainer.loggers:
            try:
                logger.log_metrics(dict(measurement.scalars), step=measurement.step)
                self._log_extras(logger, measurement)
            except Exception as err:  # a logger problem must not stop training
                if self.tracker.strict:
                    raise
                warn(f"geomtrace: logging geometry to {type(logger).__name__} failed: {err}")

    def _log_extras(self, logger: Any, measurement: Measurement) -> None:
        experiment = getattr(logger, "experiment", None)
        if not hasattr(experiment, "add_figure"):
            return  # figures and text only for TensorBoard-like writers
        skipped = write_text_and_figures(experiment, measurement, self.tracker.prefix)
        if skipped and not self._warned_figures:
            self._warned_figures = True
            warn(f"GeometryMonitor: {skipped}")


def _state_key_prefix(key: Any, name: str) -> str | None:
    """The prefix in a state key ``GeometryMonitor{'prefix': 'geo'}`` (None for other keys)."""
    if not isinstance(key, str) or not key.startswith(name + "{"):
        return None
    try:
        options = ast.literal_eval(key[len(name) :])
    except (ValueError, SyntaxError):
        return None
    prefix = options.get("prefix") if isinstance(options, dict) else None
    return prefix if isinstance(prefix, str) else None


def _final_batch(trainer: Any, batch_idx: int) -> bool:
    """Whether this batch ends the fit: ``max_steps`` reached or the last batch of the last epoch."""
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps:
        return True
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0 or trainer.current_epoch + 1 < max_epochs:
        return False
    return bool(trainer.is_last_batch) or batch_idx + 1 >= trainer.num_training_batches
