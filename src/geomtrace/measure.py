"""The one measuring path shared by the live callbacks and checkpoint replay.

``measure_geometry(model, probes, config)`` runs the model over its shard of a fixed probe
set, streams the selected hidden states into one covariance accumulator per layer, sums
the moments over ranks, and returns RankMe, alpha-ReQ and the eigenspectrum per layer.
Because the Lightning callback, the transformers callback and ``geomtrace replay`` all call
this function, they give identical numbers for the same model and probe set.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection

from geomtrace._distributed import any_rank, any_rank_each, rank_and_world_size
from geomtrace._provenance import measurement_provenance
from geomtrace._warnings import warn
from geomtrace.features import (
    extract_features,
    find_causal_lm,
    num_hidden_layers,
    resolve_layers,
    row_sequences,
)
from geomtrace.metrics import Geometry, GeometrySummary
from geomtrace.options import AUTOCAST_CHOICES, AutocastSetting, MeasureConfig
from geomtrace.probes import ProbeSet

__all__ = [
    "AUTOCAST_CHOICES",
    "RESERVED_NAMES",
    "AutocastSetting",
    "batch_count",
    "check_probe_positions",
    "device_of",
    "eval_mode",
    "forward_precision",
    "GeometryResult",
    "layer_collection",
    "LayerGeometry",
    "max_positions",
    "measure_geometry",
    "MeasureConfig",
    "metric_key",
    "REPLICATE_FIELDS",
    "probe_autocast",
    "progress_bar",
    "summarize_layers",
    "update_layer",
    "validate_extra_metrics",
    "value_fields",
]

#: The :class:`LayerGeometry` fields holding the jackknife replicates (``MeasureConfig.uncertainty``):
#: kept in the live history (``<tag>_replicates``) and in replay records, never logged as scalars.
REPLICATE_FIELDS: tuple[str, ...] = ("rankme_replicates", "alpha_replicates")

#: Names an extra metric cannot take: the built-in values of a layer (and the tags the
#: callbacks log beside them).
RESERVED_NAMES: frozenset[str] = frozenset(
    {
        *REPLICATE_FIELDS,
        "geometry",
        "rankme",
        "alpha",
        "alpha_r2",
        "r2",
        "n_samples",
        "eigenspectrum",
        "eigenvalues",
        "seconds",
        "phase",
        "rankme_se",
        "alpha_se",
    }
)
_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def value_fields() -> tuple[str, ...]:
    """The :class:`MeasureConfig` fields that change the values (:meth:`MeasureConfig.identity_fields`)."""
    return MeasureConfig.identity_fields()


@dataclass
class LayerGeometry:
    """Geometry of one layer's features over the probe set."""

    layer: int
    rankme: float
    alpha: float
    r2: float
    n_samples: int
    dim: int
    n_dropped: int = 0
    eigenvalues: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fit_ranks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fit_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: Scalar values of the ``extra_metrics`` (:func:`measure_geometry`), by name; a metric
    #: whose ``compute()`` returns a dict contributes ``"<name>/<key>"`` entries; a metric
    #: that failed is NaN (with a warning).
    extras: dict[str, float] = field(default_factory=dict)
    #: Non-scalar values of the ``extra_metrics`` (tensors of more than one element), by name.
    extra_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    #: Jackknife standard errors of :attr:`rankme` and :attr:`alpha`
    #: (``MeasureConfig(uncertainty="jackknife")``); None without uncertainty, NaN when undefined.
    rankme_se: float | None = None
    alpha_se: float | None = None
    #: The jackknife's delete-one-group values behind :attr:`rankme_se` / :attr:`alpha_se`, group
    #: ``g`` = the probes ``i`` with ``i mod G == g``: two measurements on the same probes pair
    #: them, so that the standard error of a change is the jackknife of the differences
    #: (:func:`geomtrace.phases.shift`). Not logged as scalars.
    rankme_replicates: tuple[float, ...] | None = None
    alpha_replicates: tuple[float, ...] | None = None

    def scalars(self) -> dict[str, float]:
        """The logged numbers: rankme, alpha, alpha_r2, n_samples, rankme_se and alpha_se (when
        measured), then the extra metrics' scalars."""
        out = {"rankme": self.rankme, "alpha": self.alpha, "alpha_r2": self.r2, "n_samples": float(self.n_samples)}
        if self.rankme_se is not None:
            out["rankme_se"] = self.rankme_se
        if self.alpha_se is not None:
            out["alpha_se"] = self.alpha_se
        out.update(self.extras)
        return out


def metric_key(name: str, layer: int, last_layer: int, prefix: str = "geometry") -> str:
    """Logging tag: ``geometry/<name>`` for the last layer, ``geometry/layer<L>/<name>`` else.

    Shared by the callbacks and replay so that live and replayed runs overlay in TensorBoard.
    """
    if layer == last_layer:
        return f"{prefix}/{name}"
    return f"{prefix}/layer{layer}/{name}"


@dataclass
class GeometryResult:
    """Result of one measurement: per-layer geometry plus provenance."""

    layers: dict[int, LayerGeometry]
    num_layers: int
    probe_description: str
    probe_fingerprint: str
    n_probes: int
    seconds: float
    config: MeasureConfig = field(default_factory=MeasureConfig)
    #: The dtype the probe forward actually ran in (``"fp32"``, ``"bf16"``, ``"fp16"``,
    #: ``"fp64"``): the autocast dtype when autocast was on, else the weights' dtype.
    precision: str = "fp32"
    #: With ``MeasureConfig(source="training")``: the window the rows came from (``steps``
    #: covered, ``rows``, ``sequences``, ``forwards``); None for a probe measurement.
    window: dict[str, Any] | None = None

    def provenance(self) -> dict[str, Any]:
        """How this was measured: probe set, fingerprint, precision and the full config.

        Live histories and replay outputs both record it, so that a comparison can tell
        whether two values were measured the same way.
        """
        out = measurement_provenance(
            self.probe_description, self.probe_fingerprint, self.n_probes, self.precision, self.config
        )
        if self.window is not None:  # measured on the training batches (source="training")
            out["source"] = "training"
            out["window"] = dict(self.window)
        return out

    def scalars(self, prefix: str = "geometry") -> dict[str, float]:
        """Flat ``{tag: value}`` for loggers (see :func:`metric_key`)."""
        out: dict[str, float] = {}
        for index, layer in self.layers.items():
            for name, value in layer.scalars().items():
                out[metric_key(name, index, self.num_layers, prefix)] = value
        return out

    def replicates(self, prefix: str = "geometry") -> dict[str, list[float]]:
        """``{tag + "_replicates": [theta_(g), ...]}`` of each layer's jackknife, for the history.

        Only for a probe measurement: the probes are the same at every step, so two steps'
        replicates pair group by group (:func:`geomtrace.phases.shift`). The training
        batches (``source="training"``) differ from window to window, so they give none.
        """
        if self.window is not None:
            return {}
        out: dict[str, list[float]] = {}
        for index, layer in self.layers.items():
            for name in REPLICATE_FIELDS:
                values = getattr(layer, name)
                if values is not None:
                    out[metric_key(name, index, self.num_layers, prefix)] = list(values)
        return out

    @property
    def last(self) -> LayerGeometry:
        """The deepest tracked layer: *the* trajectory (summary, phases, plots follow it)."""
        return self.layers[max(self.layers)]

    def trajectory_key(self, name: str, prefix: str = "geometry") -> str:
        """Tag of ``name`` for the trajectory layer (:attr:`last`).

        One rule everywhere: the trajectory is the deepest tracked layer; its tag is
        ``geometry/<name>`` when that is the model's final layer, else
        ``geometry/layer<L>/<name>`` (:func:`metric_key`).
        """
        return metric_key(name, self.last.layer, self.num_layers, prefix)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def probe_autocast(setting: str, device: torch.device) -> AbstractContextManager:
    """The context the probe forward runs in for a :attr:`MeasureConfig.autocast` setting."""
    if setting == "auto":
        return nullcontext()
    if setting == "off":
        return torch.autocast(device_type=device.type, enabled=False)
    try:
        return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[setting])
    except RuntimeError as err:  # e.g. a device type without autocast support
        raise ValueError(f"autocast={setting!r} is not available on {device.type}: {err} Use autocast='auto'.") from err


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def forward_precision(model: nn.Module, device: torch.device) -> str:
    """The dtype a forward of ``model`` runs its matmuls in, in the current context."""
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    else:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the HF LM inside ``model`` takes (``config.max_position_embeddings``,
    GPT-2's ``n_positions``), or None when its config says nothing."""
    try:
        config = getattr(find_causal_lm(model), "config", None)
    except (TypeError, ValueError, AttributeError):  # no HF LM inside: measure_geometry says so
        return None
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_probe_positions(model: nn.Module, probes: ProbeSet) -> None:
    """Raise ``ValueError`` when a probe is longer than the model's positions.

    Such a forward fails with an ``IndexError`` deep in the position embedding (GPT-2) or runs
    past the lengths a rotary model was trained on; say so, and what to do, instead.
    """
    limit = max_positions(model)
    if limit is not None and probes.longest() > limit:
        raise ValueError(
            f"probe sequences of up to {probes.longest()} tokens are longer than the model's {limit} positions "
            f"(config.max_position_embeddings / n_positions): build the probes with max_tokens <= {limit} "
            f"(or use probes.truncated({limit}))"
        )


def device_of(lm: nn.Module) -> torch.device:
    """The device of the first parameter of ``lm`` (CPU for a module without parameters)."""
    for parameter in lm.parameters():
        return parameter.device
    return torch.device("cpu")


def batch_count(n_local: int, batch_size: int, world_size: int, device: torch.device) -> int:
    """How many forwards every rank runs: the most any rank needs for its shard."""
    count = math.ceil(n_local / batch_size)
    if world_size == 1:
        return count
    # Every rank runs the same number of forwards: FSDP / ZeRO-3 gather parameters inside
    # each forward, so a rank that stopped early would leave the others waiting forever.
    tensor = torch.tensor([count], device=device, dtype=torch.int64)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return int(tensor.item())


def progress_bar(total: int, enabled: bool, description: str):
    """A tqdm bar over ``total`` batches, or None when disabled or tqdm is missing."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are a nicety, not a requirement
        return None
    return tqdm(total=total, desc=description, unit="batch", leave=False)


def measure_geometry(
    model: nn.Module,
    probes: ProbeSet,
    config: MeasureConfig | None = None,
    *,
    distributed: bool | None = None,
    progress: bool = False,
    extra_metrics: Mapping[str, Metric] | None = None,
) -> GeometryResult:
    """Measure RankMe and alpha-ReQ of ``model`` on ``probes`` for each configured layer.

    Each tracked layer gets one :class:`torchmetrics.MetricCollection`: a
    :class:`geomtrace.Geometry` (RankMe, alpha-ReQ and the spectrum from one covariance
    accumulation) plus a fresh copy of every ``extra_metrics`` entry, all fed the same
    ``(N, d)`` feature rows of the same forward.

    Args:
        model: an HF causal LM, or a module holding one (Lightning module, DDP, PEFT...).
            It is put in eval mode for the measurement; every module's mode is restored.
        probes: the fixed probe set; under torch.distributed each rank runs its shard.
        config: options (:class:`MeasureConfig`).
        distributed: sum over torch.distributed ranks; default: when initialised with > 1 rank.
            Every rank must call this function at the same point (it runs collectives).
        progress: show a progress bar (rank 0 only).
        extra_metrics: ``{name: metric}``, torchmetrics metrics whose ``update`` takes one
            ``(N, d)`` float tensor of feature rows (the rows the geometry sees, fp32 or
            fp64, NaN/Inf rows included as extracted). Each is
            cloned and reset per layer (the objects given are not touched) and synchronised
            by its own ``compute()`` under torch.distributed. Its value appears in
            :attr:`LayerGeometry.extras` under ``name`` (a dict result as ``name/key``; a
            tensor of more than one element in :attr:`LayerGeometry.extra_arrays`), hence in
            :meth:`GeometryResult.scalars` as ``geometry/<name>`` (final layer) or
            ``geometry/layer<L>/<name>``. Names: letters, digits, ``_`` and ``-``, starting
            with a letter, not one of :data:`RESERVED_NAMES`. A metric that raises is NaN with
            a :class:`~geomtrace.GeometryWarning`; the geometry is still measured.

    Raises:
        RuntimeError: when the forward failed on this or another rank (all ranks raise, none hang).
    """
    config = config or MeasureConfig()
    config.validate()
    extras = validate_extra_metrics(extra_metrics)
    if len(probes) == 0:
        raise ValueError("the probe set is empty: give at least 2 probe sequences")
    start = time.perf_counter()
    lm = find_causal_lm(model)
    check_probe_positions(lm, probes)
    n_layers = num_hidden_layers(lm)
    layers = resolve_layers(config.layers, n_layers)
    rank, world_size = rank_and_world_size()
    if distributed is False:
        rank, world_size = 0, 1
    device = device_of(lm)
    shard = probes.shard(rank, world_size) if world_size > 1 else probes
    shard_start = probes.shard_range(rank, world_size).start if world_size > 1 else 0
    collections = {layer: layer_collection(layer, config, device, world_size > 1, extras) for layer in layers}
    failed: set[tuple[int, str]] = set()
    n_batches = batch_count(len(shard), config.batch_size, world_size, device)

    error: BaseException | None = None
    precision = "fp32"
    try:
        precision = _run_forwards(
            model, probes, shard, config, collections, failed, n_batches, device, progress and rank == 0, shard_start
        )
    except Exception as err:  # noqa: BLE001 - re-raised below after the ranks agree
        error = err
    if any_rank(error is not None, device, world_size=world_size):
        if error is not None:
            raise RuntimeError(f"geometry measurement failed: {type(error).__name__}: {error}") from error
        raise RuntimeError("geometry measurement failed on another rank")
    results = summarize_layers(collections, layers, list(extras), failed, world_size, device)
    return GeometryResult(
        layers=results,
        num_layers=n_layers,
        probe_description=probes.description,
        probe_fingerprint=probes.fingerprint(),
        n_probes=len(probes),
        seconds=time.perf_counter() - start,
        config=config,
        precision=precision,
    )


def _run_forwards(
    model: nn.Module,
    probes: ProbeSet,
    shard: ProbeSet,
    config: MeasureConfig,
    collections: dict[int, MetricCollection],
    failed: set[tuple[int, str]],
    n_batches: int,
    device: torch.device,
    progress: bool,
    shard_start: int = 0,
) -> str:
    """Run the probe forwards into each layer's metrics; returns the forward's precision.
    ``shard_start``: the position of ``shard``'s first sequence in ``probes``."""
    spec = config.feature_spec
    pending: dict[int, list[torch.Tensor]] = {layer: [] for layer in collections}
    # With uncertainty: each row's probe position in the whole set (the jackknife's sampling
    # unit), so the groups do not depend on the shard, the sort below or the batch size.
    pending_index: list[torch.Tensor] = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending_rows
        index = torch.cat(pending_index) if pending_index else None
        for layer, chunks in pending.items():
            if chunks:
                update_layer(layer, collections[layer], torch.cat(chunks), failed, sample_index=index)
                chunks.clear()
        pending_index.clear()
        pending_rows = 0

    bar = progress_bar(n_batches, progress, "geometry")
    # Batch sequences of similar length together: the covariance does not depend on row
    # order, and padding every batch to its longest member wastes up to half the forward.
    order = sorted(range(len(shard)), key=lambda i: len(shard.sequences[i]))
    ordered = ProbeSet([shard.sequences[i] for i in order], shard.description, shard.pad_token_id)
    batches = ordered.batches(config.batch_size, padding_side=config.padding_side)
    positions = torch.tensor([shard_start + i for i in order], dtype=torch.int64)
    done = 0  # sequences of ``ordered`` forwarded so far
    # A rank whose shard ran out repeats a one-sequence forward and discards it.
    filler = ProbeSet([probes.sequences[0]], probes.description, probes.pad_token_id)
    with eval_mode(model), probe_autocast(config.autocast, device):
        precision = forward_precision(model, device)
        for _ in range(n_batches):
            batch = next(batches, None)
            real = batch is not None
            if batch is None:
                batch = next(filler.batches(1))
            features = extract_features(model, batch["input_ids"], batch["attention_mask"], spec)
            if real:
                for layer, rows in features.items():
                    pending[layer].append(rows.detach())
                if config.uncertainty is not None:
                    mask = batch["attention_mask"]
                    rows_of = row_sequences(mask, spec.tokens, spec.skip_first_token).cpu()
                    pending_index.append(positions[done + rows_of])
                    done += mask.shape[0]
                pending_rows += next(iter(features.values())).shape[0]
                if pending_rows >= config.rows_per_update:
                    flush()
            if bar is not None:
                bar.update(1)
        flush()
    if bar is not None:
        bar.close()
    return precision


_GEOMETRY = "geometry"


def summarize_layers(
    collections: Mapping[int, MetricCollection],
    layers: list[int],
    extras: list[str],
    failed: set[tuple[int, str]],
    world_size: int,
    device: torch.device,
) -> dict[int, LayerGeometry]:
    """Each layer's geometry (and extra metrics) from its accumulated collection, summed over
    ranks (every rank calls it at the same point). Shared by the probe forward and the
    training-batch window (:mod:`geomtrace.training_features`)."""
    # compute_summary() / compute() sum the states over ranks, metric by metric in the same
    # order on every rank; a metric that failed on any rank is skipped on all of them.
    failed = _failed_on_any_rank(failed, layers, extras, world_size, device)
    geometries: dict[int, Any] = {layer: collections[layer][_GEOMETRY] for layer in layers}  # Geometry metrics
    results = {layer: _layer_geometry(layer, geometries[layer].compute_summary()) for layer in layers}
    for layer in layers:
        for name in extras:
            _add_extra(results[layer], name, collections[layer][name], (layer, name) in failed)
    return results


def validate_extra_metrics(extra_metrics: Mapping[str, Metric] | None) -> dict[str, Metric]:
    """Check ``extra_metrics`` (see :func:`measure_geometry`); returns a plain dict.

    Raises ``TypeError``/``ValueError`` saying which entry is wrong and what to do. The
    callbacks and replay call it when they are created, so a bad entry fails at once.
    """
    if extra_metrics is None:
        return {}
    if not isinstance(extra_metrics, Mapping):
        raise TypeError(
            "extra_metrics must be a mapping {name: torchmetrics.Metric}, got "
            f"{type(extra_metrics).__name__}; e.g. extra_metrics={{'pr': ParticipationRatio()}}."
        )
    out: dict[str, Metric] = {}
    for name, metric in extra_metrics.items():
        if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
            raise ValueError(
                f"extra metric name {name!r} is not usable as a logging tag: use letters, digits, '_' "
                "and '-', starting with a letter (e.g. 'participation_ratio')."
            )
        if name in RESERVED_NAMES:
            raise ValueError(
                f"extra metric name {name!r} is taken by geomtrace's own values "
                f"({', '.join(sorted(RESERVED_NAMES))}); choose another name."
            )
        if isinstance(metric, MetricCollection) or not isinstance(metric, Metric):
            raise TypeError(
                f"extra metric {name!r} must be a torchmetrics.Metric whose update() takes (N, d) "
                f"features, got {type(metric).__name__}. Give each metric of a collection its own name."
            )
        out[name] = metric
    return out


def layer_collection(
    layer: int, config: MeasureConfig, device: torch.device, sync: bool, extras: Mapping[str, Metric]
) -> MetricCollection:
    """The layer's metrics: the geometry plus a fresh, reset copy of each extra metric."""
    geometry = Geometry(
        spectrum=config.spectrum,
        eps=config.eps,
        fit_range=config.fit_range,
        max_components=config.max_components,
        sync_on_compute=sync,
        uncertainty=config.uncertainty,
        groups=None if config.uncertainty is None else config.uncertainty_groups,
    )
    geometry.label = f"layer {layer}"
    members: dict[str, Metric | MetricCollection] = {_GEOMETRY: geometry}
    for name, template in extras.items():
        metric = template.clone()
        metric.reset()
        # Sum over ranks exactly when the geometry does (also when distributed=False is
        # asked for inside an initialised process group).
        metric.sync_on_compute = sync
        metric._to_sync = sync
        members[name] = metric
    # Each member is updated by update_layer (a failing extra must not stop the others);
    # the collection holds them, moves them and resets them as one.
    return MetricCollection(members, compute_groups=False).to(device)


def update_layer(
    layer: int,
    collection: MetricCollection,
    rows: Tensor,
    failed: set[tuple[int, str]],
    sample_index: Tensor | None = None,
) -> None:
    """Feed ``rows`` to the layer's metrics (a failing extra metric is NaN, with a warning).
    ``sample_index`` (one per row, with ``MeasureConfig.uncertainty``): the jackknife's sampling
    unit of each row (:meth:`geomtrace.Geometry.update`); the extra metrics get the rows only."""
    # Extra metrics get fp32 (fp64 stays fp64), as the contract says; the geometry upcasts itself.
    extra_rows = rows if rows.dtype in (torch.float32, torch.float64) else rows.float()
    for name, metric in collection.items(keep_base=True, copy_state=False):
        if name == _GEOMETRY:
            if sample_index is None:
                metric.update(rows)
            else:
                metric.update(rows, sample_index=sample_index)
            continue
        if (layer, name) in failed:
            continue
        try:
            metric.update(extra_rows)
        except Exception as err:  # noqa: BLE001 - a user's metric must not cost the geometry
            failed.add((layer, name))
            warn(f"extra metric {name!r} failed to update on layer {layer} ({type(err).__name__}: {err}); it is NaN.")


def _failed_on_any_rank(
    failed: set[tuple[int, str]], layers: list[int], names: list[str], world_size: int, device: torch.device
) -> set[tuple[int, str]]:
    """The (layer, extra metric) pairs that failed on any rank (one collective, none without extra metrics)."""
    if world_size == 1 or not names:
        return failed
    keys = [(layer, name) for layer in layers for name in names]
    agreed = any_rank_each([key in failed for key in keys], device, world_size=world_size)
    return {key for key, flag in zip(keys, agreed) if flag}


def _add_extra(target: LayerGeometry, name: str, metric: Metric, failed: bool) -> None:
    """Put an extra metric's value into ``target.extras`` / ``target.extra_arrays``."""
    if failed:
        target.extras[name] = math.nan
        return
    try:
        scalars, arrays = _flatten_value(name, metric.compute())
    except Exception as err:  # noqa: BLE001 - a user's metric must not cost the geometry
        warn(
            f"extra metric {name!r} failed to compute on layer {target.layer} ({type(err).__name__}: {err}); it is NaN."
        )
        target.extras[name] = math.nan
        return
    target.extras.update(scalars)
    target.extra_arrays.update(arrays)


def _flatten_value(name: str, value: Any) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    scalars: dict[str, float] = {}
    arrays: dict[str, np.ndarray] = {}
    if isinstance(value, Mapping):
        for key, item in value.items():
            inner_scalars, inner_arrays = _flatten_value(f"{name}/{key}", item)
            scalars.update(inner_scalars)
            arrays.update(inner_arrays)
    elif isinstance(value, Tensor) and value.numel() != 1:
        arrays[name] = value.detach().to(torch.float64).cpu().numpy()
    elif isinstance(value, (Tensor, int, float, np.floating, np.integer)):
        scalars[name] = float(value)
    else:
        raise TypeError(f"compute() returned {type(value).__name__}; expected a tensor, a number or a dict of them")
    return scalars, arrays


def _layer_geometry(layer: int, summary: GeometrySummary) -> LayerGeometry:
    n = summary.n_samples
    eigenvalues = summary.eigenvalues.cpu().numpy()
    if n < 2 or not np.isfinite(eigenvalues).any():
        eigenvalues = np.zeros(0)  # undefined (warned by the metric): no spectrum to plot
    return LayerGeometry(
        layer=layer,
        rankme=float(summary.rankme),
        alpha=float(summary.alpha),
        r2=float(summary.r2),
        n_samples=n,
        dim=summary.dim,
        n_dropped=summary.n_dropped,
        eigenvalues=eigenvalues,
        fit_ranks=summary.fit.ranks.cpu().numpy(),
        fit_values=summary.fit.fitted.cpu().numpy(),
        rankme_se=None if summary.rankme_se is None else float(summary.rankme_se),
        alpha_se=None if summary.alpha_se is None else float(summary.alpha_se),
        rankme_replicates=_floats(summary.rankme_replicates),
        alpha_replicates=_floats(summary.alpha_replicates),
    )


def _floats(values: Tensor | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values.detach().cpu().double())
