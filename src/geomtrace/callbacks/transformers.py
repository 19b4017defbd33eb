"""GeometryCallback: live RankMe / alpha-ReQ for ``transformers.Trainer`` and every TRL trainer.

TRL's ``SFTTrainer``, ``DPOTrainer``, ``GRPOTrainer``, ``RewardTrainer`` ... are ``Trainer``
subclasses, so one ``TrainerCallback`` serves all of them.

How the values are logged (one design, see docs/transformers.md):

* transformers gives callbacks no trainer handle, and user callbacks run *after* the
  ``report_to`` callbacks, so adding keys to ``logs`` in ``on_log`` never reaches them.
  The callback therefore finds the ``Trainer`` that runs it (once, on ``on_train_begin``,
  by looking up the call stack; or explicitly with :meth:`GeometryCallback.bind`) and logs
  through the base ``transformers.Trainer.log``: every ``report_to`` integration, the
  console and ``state.log_history`` receive the values at ``state.global_step``.
  The *base* method is called on purpose: TRL's ``log`` overrides average and then clear
  their own accumulated metrics on every call, so calling them from here would change
  the user's loss/reward curves.
* TensorBoard is the exception: ``TensorBoardCallback`` prefixes every key with
  ``train/``. The callback writes its scalars to that callback's own ``SummaryWriter``
  with the exact tags (``geometry/rankme`` ...), the same tags the Lightning monitor and
  ``geomtrace replay`` use, so runs overlay; the TensorBoard callback is left out of the
  ``Trainer.log`` dispatch to avoid a ``train/geometry/...`` duplicate. Figures
  (eigenspectrum with its power-law fit) and phase text go to the same writer.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

from torch import nn
from torchmetrics import Metric

from geomtrace._optional import require
from geomtrace._tensorboard import summary_writer, write_scalars
from geomtrace._validate import plain
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

require("transformers", "the GeometryCallback")
from transformers import Trainer, TrainerCallback  # noqa: E402
from transformers.trainer_callback import ExportableState  # noqa: E402

__all__ = ["GeometryCallback"]

# What state() saves as "args" (JSON): transformers rebuilds the callback from them when it
# restores a checkpoint. The option objects are saved as dicts of their fields (the callback takes
# those too); a tokenizer, a model getter, a ready ProbeSet and extra metrics cannot be saved.
_SAVED_PLAIN = ("track_phases", "from_pretrained", "history_file", "strict", "prefix")


class GeometryCallback(TrainerCallback, ExportableState):
    r"""Track RankMe and alpha-ReQ of the model a ``transformers.Trainer`` (or TRL trainer) trains.

    Measures at the start of training (step 0), every ``every_n_steps`` optimizer steps and
    at the end, on a fixed probe set (by default 1024 paragraphs of the embedded corpus,
    tokenized once with the trainer's ``processing_class``). Every rank measures its shard of
    the probes; the moments are summed over ranks; only the main process writes.

    Logged keys (last layer; other tracked layers as ``geometry/layer{L}/...``):
    ``geometry/rankme``, ``geometry/alpha``, ``geometry/alpha_r2``, ``geometry/n_samples``,
    ``geometry/seconds`` (the measurement's wall time), with ``MeasureConfig(uncertainty="jackknife")``
    ``geometry/rankme_se`` and ``geometry/alpha_se`` (standard errors), and with ``track_phases``
    ``geometry/phase`` (0 stable, 1 warmup, 2 entropy-seeking, 3 compression-seeking) and
    ``geometry/phase_transition``, which follow the deepest tracked layer. TensorBoard also
    gets ``geometry/eigenspectrum`` figures and the phase as text.

    Args:
        schedule: when to measure, a :class:`~geomtrace.options.Schedule` (every_n_steps,
            extra_steps, measure_on_start, measure_on_end, log_spectrum_every); an int is
            ``every_n_steps`` (``GeometryCallback(100)``).
        measure: what and how to measure, a :class:`~geomtrace.measure.MeasureConfig` (layers,
            tokens, batch size, conventions, autocast, source: ``"training"`` measures the
            training batches' own hidden states, window by window, instead of probes, with no
            probe forward and no tokenizer; see docs/concepts.md, "Which rows").
        probes: the probe set: :class:`~geomtrace.probes.ProbeOptions` to build it with the
            tokenizer (source, num_sequences, text_column, split, config_name, chat_template,
            system_prompt...; default: 1024 paragraphs of the embedded corpus;
            ``chat_template=True`` wraps each probe as a user turn, for post-training), or a ready
            :class:`~geomtrace.probes.ProbeSet`.
        detector: the phase detector's options, :class:`~geomtrace.phases.DetectorOptions`.
        tokenizer: tokenizer for the probes; default: the trainer's ``processing_class``
            (its ``.tokenizer`` for multimodal processors).
        model_getter: ``callable(model) -> nn.Module`` returning the HF model to probe from
            the trainer's model, when it cannot be found automatically.
        track_phases: log the current geometric phase.
        from_pretrained: whether training starts from a trained model (post-training: a
            falling RankMe is compression-seeking, never warmup). ``None`` (default):
            automatic (TRL trainers and models loaded with ``from_pretrained`` are
            post-training), see docs/transformers.md.
        history_file: the main process writes the history with its provenance to this
            JSON file (atomically) after every measurement.
        strict: raise measurement errors (and NaN/Inf features) instead of warning.
        prefix: prefix of the logged keys.
        extra_metrics: ``{name: torchmetrics.Metric}`` whose ``update`` takes ``(N, d)``
            features: measured on the same probe forward, per tracked layer, and logged as
            ``geometry/<name>`` (``geometry/layer{L}/<name>``); a failing one is NaN with a
            warning. Not saved in ``state()`` (not JSON): a resumed run keeps the ones
            of the callback passed to the new trainer. See docs/transformers.md.
        memorization: a :class:`~geomtrace.memorization.MemorizationProbe` (QA set + ∞-gram
            index), or several with distinct names, measured right after each geometry
            measurement on every rank; logs ``memorization/spearman``, ``memorization/pearson``,
            ``memorization/answer_logprob``, ``memorization/n_scored`` (``memorization/<name>/...``
            for a named probe). The ∞-gram side is computed once per run. See docs/memorization.md.
        deprecated: the flat keywords of geomtrace 0.1 (``every_n_steps=``, ``layers=``,
            ``num_sequences=``, ``probe_source=``...): still taken, with a ``DeprecationWarning``
            naming the new spelling.

    Example::

        trainer = SFTTrainer(model=model, args=SFTConfig(..., report_to="tensorboard"),
                             train_dataset=ds, callbacks=[GeometryCallback(Schedule(every_n_steps=100))])
        trainer.train()
    """

    def __init__(
        self,
        schedule: Schedule | int | Mapping[str, Any] | None = None,
        *,
        measure: MeasureConfig | Mapping[str, Any] | None = None,
        probes: ProbeOptions | ProbeSet | Mapping[str, Any] | None = None,
        detector: DetectorOptions | Mapping[str, Any] | None = None,
        tokenizer: Any = None,
        model_getter: Callable[[nn.Module], nn.Module] | None = None,
        track_phases: bool = True,
        from_pretrained: bool | None = None,
        history_file: str | None = None,
        strict: bool = False,
        prefix: str = "geometry",
        extra_metrics: Mapping[str, Metric] | None = None,
        memorization: MemorizationProbe | Sequence[MemorizationProbe] | None = None,
        **deprecated: Any,
    ) -> None:
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
                owner="GeometryCallback",
                **deprecated,  # the flat keywords of 0.1: the tracker's shim, one warning naming GeometryCallback
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"GeometryCallback: {err}") from err
        if model_getter is not None and not callable(model_getter):
            raise ValueError("GeometryCallback: model_getter must be a callable(model) -> nn.Module.")
        given = locals()
        self._options = _saved_options(self.tracker, {name: given[name] for name in _SAVED_PLAIN})
        self.tokenizer = tokenizer
        self.model_getter = model_getter
        self._trainer: Trainer | None = None
        self._joined_replaced = False
        self._warned: set[str] = set()

    # ------------------------------------------------------------ public API
    @property
    def history(self) -> list[dict[str, Any]]:
        """Every measurement of the current training: ``{"step": ..., "geometry/rankme": ..., ...}``."""
        return self.tracker.history

    @history.setter
    def history(self, value: list[dict[str, Any]]) -> None:
        # Restores a checkpoint of an earlier geomtrace version (history, phase, num_measurements).
        self._join_replaced()
        self.tracker.load_state_dict({**self.tracker.state_dict(), "history": [dict(r) for r in value]})

    @property
    def stages(self) -> list[dict[str, Any]]:
        """Earlier trainings of this callback (a new ``Trainer`` started a new stage), oldest first."""
        return self.tracker.stages

    def bind(self, trainer: Trainer) -> GeometryCallback:
        """Log through ``trainer`` (normally found automatically on ``on_train_begin``)."""
        if not isinstance(trainer, Trainer):
            raise TypeError(f"bind() needs a transformers.Trainer, got {type(trainer).__name__}")
        self._trainer = trainer
        return self

    def summary(self) -> str:
        """A short text summary of the RankMe / alpha trajectory so far."""
        return self.tracker.summary()

    def record(self, **extra: Any) -> dict[str, Any]:
        """History, provenance, stages and cost as one JSON-ready dict (see ``GeometryTracker.record``)."""
        return self.tracker.record(**extra)

    # ---------------------------------------------------------- resumption
    def state(self) -> dict[str, Any]:
        """What ``Trainer`` saves in ``trainer_state.json`` at each checkpoint (ExportableState)."""
        return {
            "args": dict(self._options),
            "attributes": {"tracker_state": self.tracker.state_dict()},
        }

    # transformers restores a callback with setattr(new_instance, name, value) for each saved
    # attribute; these properties route the values into the tracker.
    @property
    def tracker_state(self) -> dict[str, Any]:
        """The tracker's state (history, provenance, stages): what a checkpoint restores."""
        return self.tracker.state_dict()

    @tracker_state.setter
    def tracker_state(self, value: dict[str, Any]) -> None:
        self._join_replaced()
        self.tracker.load_state_dict(value)

    @property
    def phase(self) -> str | None:
        """The current geometric phase (None until enough measurements)."""
        return self.tracker.phase

    @phase.setter
    def phase(self, value: str | None) -> None:
        self._join_replaced()
        self.tracker.phase = value

    @property
    def num_measurements(self) -> int:
        return self.tracker.num_measurements

    @num_measurements.setter
    def num_measurements(self, value: int) -> None:
        self._join_replaced()
        self.tracker.num_measurements = int(value)

    def _join_replaced(self) -> None:
        """Take over the configuration of the callback instance this one replaces on resume.

        transformers restores callback state by building a *new* instance from
        ``state()["args"]`` and removing the instance the user passed. The new one would lose
        what JSON cannot hold (tokenizer, a ProbeSet, a Dataset probe source), and the user's
        ``callback.history`` would go stale. While that restore runs, the replaced instance is
        still in the trainer's callback list: share its tracker and options instead, so both
        objects see one history and the user's options win over the saved ones.
        """
        if self._joined_replaced:
            return
        self._joined_replaced = True
        trainer = _trainer_in_stack(lambda t: not _holds(t, self))
        if trainer is None:
            return
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, type(self)) and callback is not self:
                self.__dict__.update(callback.__dict__)
                self._joined_replaced = True
                return

    # --------------------------------------------------------------- hooks
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._trainer is None or not _holds(self._trainer, self):
            self._trainer = _trainer_in_stack(lambda t: _holds(t, self))
            if self._trainer is None:
                self._warn_once(
                    "no-trainer",
                    "GeometryCallback could not find the Trainer that runs it, so geometry is kept in "
                    "`callback.history` only. Call `callback.bind(trainer)` before `trainer.train()`.",
                )
        tokenizer = self.tokenizer if self.tokenizer is not None else _text_tokenizer(kwargs.get("processing_class"))
        try:
            self.tracker.prepare(tokenizer)
        except (TypeError, ValueError, OSError, RuntimeError) as err:
            hint = (
                " Pass the model's tokenizer to the trainer (processing_class=...) or GeometryCallback(tokenizer=...)."
                if tokenizer is None
                else ""
            )
            raise ValueError(f"GeometryCallback could not build its probe set: {err}{hint}") from err
        model = self._probed_model(kwargs.get("model"))
        if model is not None:
            try:
                self.tracker.attach(model)  # source="training": hook the training forwards
            except (TypeError, ValueError) as err:
                raise ValueError(f"GeometryCallback: {err}") from err
        owner = self._trainer if self._trainer is not None else state
        messages = self.tracker.begin(
            owner, int(state.global_step), pretrained_hint=_pretrained_hint(self._trainer, model)
        )
        if state.is_world_process_zero:
            report(messages)
        self._maybe_measure(args, state, model, "start")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Measure the final step here rather than in on_train_end: TensorBoardCallback closes
        # its writer in its own on_train_end, which runs before ours, and the Trainer saves
        # its last checkpoint after on_step_end, so the checkpoint holds the final measurement.
        final = state.max_steps > 0 and state.global_step >= state.max_steps
        self._maybe_measure(args, state, self._probed_model(kwargs.get("model")), "end" if final else "step")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._maybe_measure(args, state, self._probed_model(kwargs.get("model")), "end")
        self.tracker.detach()
        if state.is_world_process_zero:
            report(self.tracker.end())
            self.tracker.autosave()

    def _probed_model(self, model: nn.Module | None) -> nn.Module | None:
        """The model the probes run through, checked: fails once, clearly, when it has no HF LM."""
        if model is None:
            return None
        if self.model_getter is not None:
            model = self.model_getter(model)
            if not isinstance(model, nn.Module):
                raise ValueError(
                    f"GeometryCallback: model_getter returned {type(model).__name__}, expected an nn.Module."
                )
        if id(model) != getattr(self, "_checked_model", None):
            try:
                self.tracker.check_model(model)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"GeometryCallback cannot measure {type(model).__name__}: {err} Pass "
                    "GeometryCallback(model_getter=lambda model: model.<your HF model>) and layers that exist."
                ) from err
            try:
                self.tracker.fit_probes(model)
            except ProbeLengthError as err:
                raise ValueError(f"GeometryCallback: {err}") from err
            self._checked_model = id(model)
        return model

    # ----------------------------------------------------------- measuring
    def _maybe_measure(self, args: Any, state: Any, model: nn.Module | None, event: str) -> None:
        # Every rank reaches the same decision from the same global_step, so all ranks enter
        # the measurement's collectives together.
        step = int(state.global_step)
        if model is None or not self.tracker.ready or not self.tracker.due(step, event):
            return
        autocast = self._trainer.accelerator.autocast() if self._trainer is not None else nullcontext()
        with self.tracker.timing():
            with autocast:
                measurement = self.tracker.measure(model, step, final=event == "end")
            if measurement is None:
                return
            if state.is_world_process_zero:
                report(measurement.notes)
            self._publish(args, state, measurement)
            if state.is_world_process_zero:
                self.tracker.autosave()

    # ------------------------------------------------------------- logging
    def _publish(self, args: Any, state: Any, measurement: Measurement) -> None:
        try:
            if state.is_world_process_zero:
                self._write_tensorboard(args, measurement)
            if self._trainer is not None:
                self._log_through_trainer(measurement)
        except Exception as err:  # a logger problem must not stop training
            if self.tracker.strict:
                raise
            self._warn_once("publish", f"GeometryCallback: logging geometry failed: {err}")

    def _log_through_trainer(self, measurement: Measurement) -> None:
        trainer = self._trainer
        assert trainer is not None  # _publish logs through the trainer only once it is bound
        handler, control = trainer.callback_handler, trainer.control
        callbacks, should_log = handler.callbacks, control.should_log
        # TensorBoard already has these values with exact tags (see _write_tensorboard).
        handler.callbacks = [cb for cb in callbacks if not _is_tensorboard(cb)]
        try:
            # The base method on purpose: TRL's overrides flush their own metrics on each call.
            Trainer.log(trainer, dict(measurement.scalars))
        finally:
            handler.callbacks = callbacks
            # CallbackHandler.on_log clears should_log; left cleared, the trainer would skip
            # its own loss logging at every step we measure.
            control.should_log = should_log

    def _write_tensorboard(self, args: Any, measurement: Measurement) -> None:
        board = (
            next((cb for cb in self._trainer.callback_handler.callbacks if _is_tensorboard(cb)), None)
            if self._trainer is not None
            else None
        )
        if board is None:
            return
        writer, own = board.tb_writer, False
        if writer is None and getattr(board, "logging_dir", None):
            # After TensorBoardCallback.on_train_end closed its writer: a short-lived one, same dir.
            writer, own = summary_writer(board.logging_dir), True
        if writer is None:
            return
        try:
            write_scalars(writer, measurement.scalars, measurement.step)
            skipped = write_text_and_figures(writer, measurement, self.tracker.prefix)
            if skipped:
                self._warn_once("figures", f"GeometryCallback: {skipped}")
            writer.flush()
        finally:
            if own:
                writer.close()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message)


# --------------------------------------------------------------------------- helpers
def _saved_options(tracker: GeometryTracker, plain_options: Mapping[str, Any]) -> dict[str, Any]:
    """The callback's arguments as JSON (what ``state()`` saves): the option objects as dicts of
    their fields (probe options only where JSON holds their source), the plain options as given."""
    saved: dict[str, Any] = {name: plain(value) for name, value in plain_options.items()}
    saved["schedule"] = tracker.schedule.to_dict()
    saved["measure"] = tracker.config.to_dict()
    saved["detector"] = tracker.detector.to_dict()
    source = tracker.probe_options.source
    if tracker.probes is None and (source is None or isinstance(source, (str, os.PathLike))):
        saved["probes"] = tracker.probe_options.to_dict()
    return saved


def _holds(trainer: Trainer, callback: TrainerCallback) -> bool:
    return any(cb is callback for cb in trainer.callback_handler.callbacks)


def _trainer_in_stack(accept: Callable[[Trainer], bool]) -> Trainer | None:
    """The innermost ``Trainer`` bound as ``self`` in a calling frame that ``accept`` approves."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Trainer) and accept(candidate):
                return candidate
            frame = frame.f_back
    finally:
        del frame  # break the frame reference cycle
    return None


def _pretrained_hint(trainer: Trainer | None, model: nn.Module | None) -> tuple[bool, str] | None:
    """``(True, reason)`` for a TRL trainer (post-training by design) or a model loaded by name."""
    if trainer is not None and type(trainer).__module__.split(".")[0] == "trl":
        return True, f"a TRL {type(trainer).__name__}"
    return loaded_model_hint(model)


def _text_tokenizer(processing_class: Any) -> Any:
    """The text tokenizer of a processing class (multimodal processors hold one as ``.tokenizer``)."""
    from transformers import PreTrainedTokenizerBase

    if isinstance(processing_class, PreTrainedTokenizerBase):
        return processing_class
    return getattr(processing_class, "tokenizer", None) or processing_class


def _is_tensorboard(callback: Any) -> bool:
    from transformers.integrations import TensorBoardCallback

    return isinstance(callback, TensorBoardCallback)
