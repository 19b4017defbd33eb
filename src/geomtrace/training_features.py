"""Geometry of the training batches themselves (``MeasureConfig(source="training")``).

:class:`TrainingFeatures` hooks the decoder layers (and the base model, for the last layer
after the final norm) of a Hugging Face causal LM, in the places where
:func:`geomtrace.features.extract_features` reads ``hidden_states``. While attached, every
*training* forward (the model in training mode, gradients on) gives its selected rows
(:func:`geomtrace.features.select_tokens`, with the attention mask the forward itself was
given) to one covariance accumulator per layer: the same :class:`~geomtrace.metrics.Geometry`
(plus the extra metrics) that the probe path uses. :meth:`TrainingFeatures.measure_window`
sums the window's moments over ranks, turns them into a :class:`~geomtrace.measure.GeometryResult`
and starts a new window.

What counts:

* every forward of the base model with ``module.training`` and ``torch.is_grad_enabled()``:
  each micro-batch of a gradient accumulation, on every rank;
* not eval / validation forwards (eval mode or no grad), not generation or a reference model's
  pass under ``no_grad`` (DPO, GRPO), not this package's own probe forwards;
* not the recomputation of gradient checkpointing: HF checkpoints each decoder layer, and its
  recomputed forward runs in the backward pass, after the base model's forward returned (the
  window takes rows only between the base model's pre- and post-forward hooks), and no forward
  that starts inside the autograd engine (a recompute of a checkpointed base model) is taken.

The hooks keep only the selected rows (one per sequence for ``tokens="last"``), detached;
nothing of the forward is copied otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from torchmetrics import Metric, MetricCollection

from geomtrace._distributed import rank_and_world_size
from geomtrace._warnings import warn
from geomtrace.features import (
    decoder_layers,
    find_causal_lm,
    first_tensor,
    last_hidden_state,
    num_hidden_layers,
    resolve_layers,
    row_sequences,
    select_tokens,
)
from geomtrace.measure import (
    GeometryResult,
    device_of,
    forward_precision,
    layer_collection,
    summarize_layers,
    update_layer,
    validate_extra_metrics,
)
from geomtrace.options import MeasureConfig

__all__ = ["TRAINING_DESCRIPTION", "TRAINING_FINGERPRINT", "TrainingFeatures"]

#: What a training-source result records in place of a probe set's description and fingerprint.
TRAINING_DESCRIPTION = "the training batches"
TRAINING_FINGERPRINT = "training-batches"


def _in_backward() -> bool:
    """Whether the autograd engine is running (a forward now is a checkpoint's recompute)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


class TrainingFeatures:
    """Accumulate the tracked layers' rows of each training forward into one window.

    Args:
        config: the measurement options (layers, tokens, skip_first_token, the conventions,
            ``rows_per_update``); ``batch_size``, ``padding_side`` and ``autocast`` do not apply.
        extra_metrics: ``{name: torchmetrics.Metric}`` fed the same rows, per layer.

    Call :meth:`attach` with the model (any module holding an HF causal LM) before training,
    :meth:`measure_window` at each scheduled step (on every rank together), :meth:`detach`
    after. ``enabled`` pauses the capture.
    """

    def __init__(self, config: MeasureConfig, extra_metrics: Mapping[str, Metric] | None = None) -> None:
        config.validate()
        self.config = config
        self.extras = validate_extra_metrics(extra_metrics)
        self.enabled = True
        self._spec = config.feature_spec
        self._handles: list[RemovableHandle] = []
        self._lm: nn.Module | None = None
        self._layers: list[int] = []
        self._num_layers = 0
        self._device = torch.device("cpu")
        self._world_size = 1
        self._collections: dict[int, MetricCollection] = {}
        self._active = False
        self._mask: Tensor | None = None
        self._rows: dict[int, Tensor] = {}
        self._warned: set[str] = set()
        self._pending: dict[int, list[Tensor]] = {}
        # With uncertainty: each row's sequence number in the window (the jackknife's sampling unit).
        self._pending_index: list[Tensor] = []
        self._pending_rows = 0
        self._failed: set[tuple[int, str]] = set()
        self._precision: str | None = None
        #: Rows, sequences and training forwards of the current window on this rank.
        self.rows = 0
        self.sequences = 0
        self.forwards = 0
        #: Time spent in the hooks during the current window (selection and accumulation).
        self.seconds = 0.0

    # ------------------------------------------------------------------ hooks
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, model: nn.Module) -> None:
        """Hook the HF causal LM inside ``model`` (wrappers peeled, as the probe path does).

        Attaching again to the same model keeps the window; another model starts a new one.
        """
        lm = find_causal_lm(model)
        if self._lm is lm and self.attached:
            return
        self.detach()
        n_layers = num_hidden_layers(lm)
        layers = resolve_layers(self.config.layers, n_layers)
        base = lm.base_model
        handles = [base.register_forward_pre_hook(self._begin, with_kwargs=True)]
        inner = [i for i in layers if i < n_layers]
        if inner:
            blocks = decoder_layers(base, n_layers)
            if 0 in inner:
                handles.append(blocks[0].register_forward_pre_hook(self._embeddings, with_kwargs=True))
            handles.extend(blocks[i - 1].register_forward_hook(self._layer_hook(i)) for i in inner if i > 0)
        handles.append(base.register_forward_hook(self._end))
        self._handles = handles
        self._lm, self._layers, self._num_layers = lm, layers, n_layers
        self._device = device_of(lm)
        self._world_size = rank_and_world_size()[1]
        sync = self._world_size > 1
        self._collections = {
            layer: layer_collection(layer, self.config, self._device, sync, self.extras) for layer in layers
        }
        self._reset_window()

    def detach(self) -> None:
        """Remove the hooks (the window's rows are kept until the next :meth:`attach`)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._active = False

    def _begin(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._active = self.enabled and module.training and torch.is_grad_enabled() and not _in_backward()
        self._rows = {}
        self._mask = None
        if not self._active:
            return
        start = time.perf_counter()
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], Tensor):
            mask = args[1]  # forward(input_ids, attention_mask, ...)
        self._mask = mask if isinstance(mask, Tensor) else None
        if self._precision is None:
            self._precision = forward_precision(module, self._device)
        self.seconds += time.perf_counter() - start

    def _mask_for(self, hidden: Tensor) -> Tensor:
        mask = self._mask
        if mask is not None and mask.shape == hidden.shape[:2]:
            return mask
        if mask is not None and "mask" not in self._warned:
            self._warned.add("mask")
            warn(
                f"geomtrace: the training forward's attention_mask has shape {tuple(mask.shape)}, not (batch, "
                f"tokens) = {tuple(hidden.shape[:2])}; every token of those batches counts as real."
            )
        self._mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return self._mask

    def _take(self, index: int, hidden: Any) -> None:
        start = time.perf_counter()
        try:
            hidden = hidden.detach()
            self._rows[index] = select_tokens(
                hidden, self._mask_for(hidden), self._spec.tokens, self._spec.skip_first_token
            )
        except Exception as err:  # noqa: BLE001 - a hook must never stop the user's training
            self._hook_failed(err)
        self.seconds += time.perf_counter() - start

    def _hook_failed(self, err: BaseException) -> None:
        """This forward is not counted; said once."""
        self._active = False
        self._rows = {}
        if "failed" not in self._warned:
            self._warned.add("failed")
            warn(
                f"geomtrace: reading a training forward's hidden states failed ({type(err).__name__}: {err}); "
                "such forwards are not counted."
            )

    def _embeddings(self, _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._active:
            self._take(0, args[0] if args else kwargs.get("hidden_states"))

    def _layer_hook(self, index: int):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if self._active:
                try:
                    hidden = first_tensor(output)
                except TypeError as err:
                    self._hook_failed(err)
                    return
                self._take(index, hidden)

        return hook

    def _end(self, _module: nn.Module, _args: Any, output: Any) -> None:
        if not self._active:
            return
        if self._num_layers in self._layers:
            try:
                self._take(self._num_layers, last_hidden_state(output))
            except TypeError as err:
                self._hook_failed(err)
        if not self._active:  # a hook of this forward failed
            return
        self._active = False
        start = time.perf_counter()
        rows, self._rows = self._rows, {}
        missing = [i for i in self._layers if i not in rows]
        if missing:
            if "missing" not in self._warned:
                self._warned.add("missing")
                warn(f"geomtrace: a training forward did not produce layers {missing}; such forwards are not counted.")
            return
        first = rows[self._layers[0]]
        for layer in self._layers:
            self._pending[layer].append(rows[layer])
        if self.config.uncertainty is not None and self._mask is not None:
            # Sequence j of this rank's window is sampling unit j * world_size + rank: all rows of
            # a sequence share a jackknife group, and the ranks' sequences interleave.
            local = row_sequences(self._mask, self._spec.tokens, self._spec.skip_first_token).cpu() + self.sequences
            rank = rank_and_world_size()[0] if self._world_size > 1 else 0
            self._pending_index.append(local * self._world_size + rank)
        self.rows += first.shape[0]
        self._pending_rows += first.shape[0]
        self.sequences += int(self._mask.shape[0]) if self._mask is not None else 0
        self.forwards += 1
        if self._pending_rows >= self.config.rows_per_update:
            try:
                self._flush()
            except Exception as err:  # noqa: BLE001 - e.g. rows of another width: not this run's model
                self._hook_failed(err)
        self.seconds += time.perf_counter() - start

    # ----------------------------------------------------------------- window
    def reset(self) -> None:
        """Drop the current window's rows (a new training starts a new window)."""
        self._reset_window()

    def _reset_window(self) -> None:
        self._pending = {layer: [] for layer in self._layers}
        self._pending_index = []
        self._pending_rows = 0
        self._failed = set()
        self._precision = None
        self.rows = 0
        self.sequences = 0
        self.forwards = 0
        self.seconds = 0.0
        for collection in self._collections.values():
            collection.reset()

    def _flush(self) -> None:
        index = torch.cat(self._pending_index) if self._pending_index else None
        for layer, chunks in self._pending.items():
            if chunks:
                update_layer(layer, self._collections[layer], torch.cat(chunks), self._failed, sample_index=index)
                chunks.clear()
        self._pending_index = []
        self._pending_rows = 0

    def measure_window(self, steps: tuple[int, int]) -> GeometryResult | None:
        """The window's geometry (summed over ranks), then a new window; None when no rank saw a
        training forward since the last window (every rank gets None alike).

        All ranks must call it together, also a rank whose window is empty: the collectives run
        in the same order on each. ``steps`` (first, last) are the optimizer steps the window
        covers, as recorded.
        """
        if self._lm is None:
            raise RuntimeError("TrainingFeatures.attach(model) must run before measure_window().")
        start = time.perf_counter()
        hook_seconds = self.seconds
        self._flush()
        counts = torch.tensor([self.rows, self.sequences, self.forwards], dtype=torch.float64, device=self._device)
        world_size = rank_and_world_size()[1]
        if world_size != self._world_size:
            raise RuntimeError(
                f"the world size changed from {self._world_size} to {world_size} since the hooks were attached"
            )
        precision = self._precision or forward_precision(self._lm, self._device)
        if world_size > 1:
            torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.SUM)
        rows, sequences, forwards = (int(v) for v in counts.tolist())
        if rows == 0:
            self._reset_window()
            return None
        try:
            results = summarize_layers(
                self._collections, self._layers, list(self.extras), self._failed, world_size, self._device
            )
        finally:
            self._reset_window()
        window = {
            "steps": [int(steps[0]), int(steps[1])],
            "rows": rows,
            "sequences": sequences,
            "forwards": forwards,
            "hook_seconds": round(hook_seconds, 6),
        }
        return GeometryResult(
            layers=results,
            num_layers=self._num_layers,
            probe_description=TRAINING_DESCRIPTION,
            probe_fingerprint=TRAINING_FINGERPRINT,
            n_probes=0,
            seconds=time.perf_counter() - start,
            config=self.config,
            precision=precision,
            window=window,
        )
