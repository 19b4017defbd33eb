"""GeometryMonitor: live RankMe / alpha-ReQ for a Lightning ``trainer.fit``."""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

from torch import nn

from geomtrace._optional import require
from geomtrace._warnings import warn
from geomtrace.features import LayerSelection, TokenSelection, find_causal_lm
from geomtrace.functional import DEFAULT_EPS, DEFAULT_FIT_RANGE
from geomtrace.measure import AutocastSetting
from geomtrace.probes import ProbeSet
from geomtrace.tracking import TRACKER_OPTIONS, GeometryTracker, Measurement

_lightning = require("lightning", "the GeometryMonitor callback")
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.utilities.exceptions import MisconfigurationException  # noqa: E402
from lightning.pytorch.utilities.rank_zero import rank_zero_info  # noqa: E402

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
    and with ``track_phases`` ``geometry/phase`` (0 stable, 1 warmup, 2 entropy-seeking,
    3 compression-seeking) and ``geometry/phase_transition``.

    Args:
        tokenizer: tokenizer for the probes. Default: ``pl_module.tokenizer`` or
            ``trainer.datamodule.tokenizer``.
        every_n_steps: measure every this many optimizer steps (0: only start and end).
        extra_steps: further steps to measure at, e.g. log-spaced early steps
            ``(1, 2, 4, 8, 16, 32, 64)`` to resolve the fast warmup collapse.
        probes: a ready :class:`~geomtrace.probes.ProbeSet` (overrides the probe options).
        probe_source: texts, a ``.txt``/``.jsonl`` path, a ``datasets.Dataset`` or a hub
            dataset name (default: the embedded corpus).
        num_sequences, min_tokens, max_tokens, seed, chat_template: probe set options.
        layers: ``"last"`` (default), ``"all"``, an index or a list of indices.
        tokens: ``"last"`` (default), ``"mean"`` or ``"all"``.
        skip_first_token: leave out the first real token (``tokens="all"``/``"mean"``).
        batch_size: probe sequences per forward.
        spectrum, eps, fit_range, max_components: metric conventions (see docs/concepts.md).
        autocast: precision of the probe forward: ``"auto"`` (the trainer's own mixed
            precision), ``"bf16"``/``"fp16"`` (autocast the probes only; cheaper in an fp32
            run), ``"off"`` (no autocast, the model's dtype). Statistics are fp32/fp64 always.
        model_getter: ``callable(pl_module) -> nn.Module`` returning the HF model, for
            modules where it cannot be found automatically.
        measure_on_start, measure_on_end: measure at step 0 / when training ends.
        log_spectrum_every: eigenspectrum figure every this many measurements (0: never).
        track_phases: log the current geometric phase.
        strict: raise measurement errors instead of warning and training on.
        prefix: prefix of the logged keys.

    Example::

        trainer = L.Trainer(callbacks=[GeometryMonitor(tokenizer=tok, every_n_steps=100)],
                            logger=TensorBoardLogger("runs"))
        trainer.fit(model)
    """

    def __init__(
        self,
        tokenizer: Any | None = None,
        every_n_steps: int = 100,
        *,
        extra_steps: Sequence[int] = (),
        probes: ProbeSet | None = None,
        probe_source: Any = None,
        num_sequences: int = 1024,
        min_tokens: int = 11,
        max_tokens: int = 128,
        seed: int = 0,
        chat_template: bool = False,
        layers: LayerSelection = "last",
        tokens: TokenSelection = "last",
        skip_first_token: bool = False,
        batch_size: int = 32,
        spectrum: Literal["covariance", "singular"] = "covariance",
        eps: float = DEFAULT_EPS,
        fit_range: tuple[int, int] = DEFAULT_FIT_RANGE,
        max_components: int | None = None,
        autocast: AutocastSetting = "auto",
        model_getter: Callable[[Any], nn.Module] | None = None,
        measure_on_start: bool = True,
        measure_on_end: bool = True,
        log_spectrum_every: int = 5,
        track_phases: bool = True,
        strict: bool = False,
        prefix: str = "geometry",
    ) -> None:
        tracker_options = {name: value for name, value in locals().items() if name in TRACKER_OPTIONS}
        super().__init__()
        try:
            self.tracker = GeometryTracker.from_options(**tracker_options)
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(f"GeometryMonitor: {err}") from err
        if model_getter is not None and not callable(model_getter):
            raise MisconfigurationException("GeometryMonitor: model_getter must be a callable(pl_module) -> nn.Module.")
        self.tokenizer = tokenizer
        self.model_getter = model_getter
        self._model: nn.Module | None = None

    # ----------------------------------------------------------------- state
    @property
    def state_key(self) -> str:
        config = self.tracker.config
        return self._generate_state_key(
            every_n_steps=self.tracker.every_n_steps, layers=config.layers, tokens=config.tokens, prefix=self.tracker.prefix
        )

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every measurement so far: ``{"step": ..., "geometry/rankme": ..., ...}``."""
        return self.tracker.history

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict)

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
            raise MisconfigurationException(
                f"GeometryMonitor could not build its probe set: {err} "
                "Pass GeometryMonitor(tokenizer=...) or set `self.tokenizer` on your LightningModule."
            ) from err

    def _find_model(self, pl_module: Any) -> nn.Module:
        if self.model_getter is not None:
            model = self.model_getter(pl_module)
            if not isinstance(model, nn.Module):
                raise MisconfigurationException(
                    f"GeometryMonitor: model_getter returned {type(model).__name__}, expected an nn.Module."
                )
            return model
        try:
            return find_causal_lm(pl_module)
        except (TypeError, ValueError) as err:
            raise MisconfigurationException(
                f"GeometryMonitor found no Hugging Face model in {type(pl_module).__name__}: {err} "
                "Pass GeometryMonitor(model_getter=lambda module: module.<your model>)."
            ) from err

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        # Looked up here rather than in setup: a model built in `configure_model` (the way
        # to create large or sharded models) exists only after setup, and the strategy has
        # wrapped it by now. Still before the first step, so a miss fails fast.
        self._model = self._find_model(pl_module)

    # ---------------------------------------------------------------- hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._maybe_measure(trainer, "start")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._maybe_measure(trainer, "step")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._maybe_measure(trainer, "end")
        if trainer.is_global_zero and self.tracker.history:
            rank_zero_info(f"[geomtrace] {self.tracker.summary()}")

    def _maybe_measure(self, trainer: Any, event: str) -> None:
        # Every rank reaches the same decision from the same global_step, so all ranks
        # enter the measurement's collectives together.
        step = int(trainer.global_step)
        if self._model is None or not self.tracker.due(step, event):
            return
        with trainer.precision_plugin.forward_context():
            measurement = self.tracker.measure(self._model, step)
        if measurement is not None and trainer.is_global_zero:
            self._log(trainer, measurement)

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
        for tag, text in measurement.text.items():
            experiment.add_text(tag, text, global_step=measurement.step)
        if measurement.log_spectrum:
            from geomtrace.plots import eigenspectrum_figure

            result = measurement.result
            label = f"step {measurement.step}"
            for index, layer in result.layers.items():
                name = "last layer" if index == result.num_layers else f"layer {index}"
                figure = eigenspectrum_figure(
                    {label: layer.eigenvalues},
                    {label: (layer.fit_ranks, layer.fit_values)},
                    title=f"{name}: RankMe {layer.rankme:.1f}, alpha {layer.alpha:.3f}",
                )
                tag = f"{self.tracker.prefix}/eigenspectrum" + ("" if index == result.num_layers else f"/layer{index}")
                experiment.add_figure(tag, figure, global_step=measurement.step, close=True)
