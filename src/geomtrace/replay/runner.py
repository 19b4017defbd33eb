"""The replay loop: measure a list of checkpoints with one fixed probe set, resumably.

:func:`run_replay` loads each checkpoint (:func:`~geomtrace.replay.sources.load_checkpoint_model`),
measures it with :func:`geomtrace.measure.measure_geometry` (the same path as the live
callbacks, so the numbers are identical), and appends one record per layer plus the
eigenspectra to a :class:`~geomtrace.replay.store.ResultsStore`. Checkpoints already in the
store for the same probe set are skipped, so a killed run resumes where it stopped.

Under ``torchrun`` (``WORLD_SIZE > 1``) every rank loads every checkpoint, the probes are
sharded over ranks inside ``measure_geometry``, and only rank 0 writes.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geomtrace._distributed import rank_and_world_size
from geomtrace._options import legacy_options, option_set
from geomtrace._warnings import warn
from geomtrace.measure import GeometryResult, MeasureConfig, measure_geometry, validate_extra_metrics
from geomtrace.options import LoadOptions
from geomtrace.probes import ProbeOptions, ProbeSet
from geomtrace.replay.prefetch import CheckpointLoader
from geomtrace.replay.sources import (
    Checkpoint,
    CheckpointLoadError,
    load_checkpoint_model,
    load_checkpoint_tokenizer,
    resolve_device,
    resolve_dtype,
)
from geomtrace.replay.store import EXTRA_METRICS_FIELD, OutputConflictError, ResultsStore, check_output_dir

__all__ = [
    "ReplaySummary",
    "build_records",
    "expected_precision",
    "init_distributed",
    "check_replay_source",
    "measurement_identity",
    "run_replay",
]


@dataclass
class ReplaySummary:
    """What one :func:`run_replay` call did.

    Attributes:
        output: the output folder.
        measured: keys of the checkpoints measured in this call, in order.
        skipped: keys already complete in the store (same probe set), not measured again.
        failed: ``{key: error message}`` of checkpoints that could not be loaded or measured.
        probe_fingerprint: fingerprint of the probe set used.
        n_probes: number of probe sequences.
        config_id: id of the whole measurement configuration (``run.json``'s ``config_id``).
        precisions: the dtypes the probe forwards ran in (``"fp32"``, ``"bf16"``...).
        seconds: wall time of the call.
    """

    output: Path
    measured: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    probe_fingerprint: str = ""
    n_probes: int = 0
    config_id: str = ""
    precisions: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        if not (self.measured or self.skipped or self.failed):
            return f"replay -> {self.output}: no checkpoints to measure"
        precision = f", {'/'.join(self.precisions)}" if self.precisions else ""
        return (
            f"replay -> {self.output}: {len(self.measured)} measured, {len(self.skipped)} already done, "
            f"{len(self.failed)} failed ({self.n_probes} probes, fingerprint {self.probe_fingerprint}{precision}, "
            f"{self.seconds:.1f} s)"
        )


# ----------------------------------------------------------------------------- distributed


def init_distributed(device: str) -> bool:
    """Initialise torch.distributed from torchrun's env vars when ``WORLD_SIZE > 1``.

    Uses NCCL for CUDA devices and gloo otherwise; on CUDA each rank takes the GPU
    ``LOCAL_RANK``. Returns True when this call created the process group (the caller then
    destroys it), False when there is nothing to do or it was already initialised.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return False
    if torch.distributed.is_initialized():
        return False
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def _rank_device(device: str) -> str:
    """Under torchrun on CUDA every rank uses its own GPU (``cuda:LOCAL_RANK``)."""
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def _all_agree(ok: bool, device: str) -> bool:
    """True when ``ok`` holds on every rank (one tiny all_reduce under torch.distributed)."""
    _, world = rank_and_world_size()
    if world == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return flag.item() == 0.0


def _barrier() -> None:
    if rank_and_world_size()[1] > 1:
        torch.distributed.barrier()


# ----------------------------------------------------------------------------- probes


def _load_tokenizer(name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    from geomtrace._optional import require

    transformers = require("transformers", "loading tokenizers")
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if name_or_path.startswith(("/", "./", "../", "~")) and not Path(name_or_path).expanduser().exists():
        raise CheckpointLoadError(f"the tokenizer folder {name_or_path} does not exist (--tokenizer)")
    try:
        return transformers.AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise CheckpointLoadError(
            f"could not load the tokenizer {name_or_path!r} (--tokenizer): {type(err).__name__}: {err}"
        ) from err


def build_probes(tokenizer: Any, options: ProbeOptions) -> ProbeSet:
    """The fixed probe set of a replay, from ``options`` (see :class:`ProbeOptions`)."""
    return options.build(tokenizer)


#: How many checkpoints are tried, in order, for the tokenizer that builds the probe set.
_TOKENIZER_TRIES = 3


def _probe_tokenizer(
    checkpoints: Sequence[Checkpoint], load: LoadOptions
) -> tuple[Any, tuple[Checkpoint, Any, float] | None, dict[str, str]]:
    """The tokenizer for the probe set: the first checkpoint's that loads.

    Returns ``(tokenizer, preloaded, failures)``: ``preloaded = (ckpt, model, t0)`` when a
    model was loaded to get its tokenizer (a Lightning module or builder may hold one), so it
    is measured without a second load; ``failures`` maps the keys of checkpoints that failed
    to load on the way to their error (recorded as failed checkpoints, not loaded again).
    Raises CheckpointLoadError when none of the first few loads (e.g. a misspelt model id),
    ValueError when one loads but has no tokenizer.
    """
    failures: dict[str, str] = {}
    for ckpt in checkpoints[:_TOKENIZER_TRIES]:
        tok = load_checkpoint_tokenizer(ckpt, trust_remote_code=load.trust_remote_code, base_model=load.base_model)
        if tok is not None:
            return tok, None, failures
        t0 = time.perf_counter()
        try:
            model, tok = load_checkpoint_model(ckpt, **load.kwargs())
        except Exception as err:  # noqa: BLE001 - recorded as that checkpoint's failure
            failures[ckpt.key] = _load_error(err)
            continue
        if tok is not None:
            return tok, (ckpt, model, t0), failures
        model = None
        _release_memory(load.device)
        raise ValueError(
            f"no tokenizer to build the probe set from: checkpoint {ckpt.key!r} holds none. Pass "
            "--tokenizer NAME_OR_PATH (tokenizer= in Python), give the LightningModule a `tokenizer` "
            "attribute, or let --model-builder return (module, tokenizer)."
        )
    tried = "; ".join(f"{key}: {error}" for key, error in failures.items())
    raise CheckpointLoadError(
        f"the first {len(failures)} checkpoint(s) failed to load (the probe set is built with the first one's "
        f"tokenizer): {tried}"
    )


def _load_error(err: BaseException) -> str:
    what = "" if isinstance(err, CheckpointLoadError) else f"{type(err).__name__}: "
    return f"load failed: {what}{err}"


# ----------------------------------------------------------------------------- identity


def check_replay_source(config: MeasureConfig) -> None:
    """Replay measures probes: ``source="training"`` (the training batches' own forward) has no
    forward to hook here, so it is refused with a ValueError saying what to do."""
    if config.source != "probes":
        raise ValueError(
            f"source={config.source!r} measures the training batches during a live training; replay has no "
            "training forward: measure the checkpoints on probes (source='probes', the default)"
        )


def measurement_identity(config: MeasureConfig, probes: ProbeSet, dtype: Any) -> dict[str, Any]:
    """What makes two measurements of one checkpoint comparable: the probe set
    (fingerprint), every option of ``config`` that changes the values or the precision (not
    :meth:`~geomtrace.measure.MeasureConfig.speed_fields`) and the weights' dtype. An output
    holds records of one identity only."""
    speed = MeasureConfig.speed_fields()
    # Replay always measures probes (check_replay_source): outputs written before the field existed match.
    measure = {k: v for k, v in config.to_dict().items() if k not in speed and k != "source"}
    return {
        "probe_fingerprint": probes.fingerprint(),
        "n_probes": len(probes),
        "measure_config": measure,
        "dtype": _dtype_name(dtype),
    }


def _identity_id(identity: Mapping[str, Any]) -> str:
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _dtype_name(dtype: Any) -> str:
    resolved = resolve_dtype(dtype)
    return resolved if isinstance(resolved, str) else str(resolved).removeprefix("torch.")


_PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def expected_precision(dtype: Any, autocast: str) -> str | None:
    """The dtype the probe forward will run in (as :attr:`GeometryResult.precision` reports
    it) for replay's ``dtype`` and ``autocast`` options; None for ``dtype="auto"`` (each
    checkpoint's own dtype)."""
    if autocast in ("bf16", "fp16"):
        return autocast
    return _PRECISIONS.get(_dtype_name(dtype))


# ----------------------------------------------------------------------------- records


def _n_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def checkpoint_tokens(ckpt: Checkpoint, tokens_per_step: int | None) -> int | None:
    """Tokens seen at ``ckpt``: from the revision name, else ``step * tokens_per_step``."""
    if ckpt.tokens is None and tokens_per_step is not None and ckpt.step is not None:
        return int(ckpt.step) * int(tokens_per_step)
    return ckpt.tokens


def build_records(
    ckpt: Checkpoint,
    result: GeometryResult,
    *,
    n_params: int | None = None,
    tokens_per_step: int | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One store record per measured layer of ``result`` (fields of ``store.RECORD_FIELDS``
    plus ``precision``, ``n_params``, ``n_dropped``, ``num_layers``, ``spectrum``, ``kind``,
    ``path`` and ``extra``).

    The scalar values of the user's extra metrics (``LayerGeometry.extras``) are fields of
    the record under their names (``pr``; ``name/key`` for a metric returning a dict), listed
    in its ``extra_metrics`` field, beside ``rankme`` and ``alpha``.

    ``tokens`` comes from the revision name; else ``step * tokens_per_step`` when given.
    """
    tokens = checkpoint_tokens(ckpt, tokens_per_step)
    records = []
    for index, layer in sorted(result.layers.items()):
        records.append(
            {
                "key": ckpt.key,
                "step": ckpt.step,
                "revision": ckpt.revision,
                "tokens": tokens,
                "stage": ckpt.stage,
                "layer": index,
                "rankme": layer.rankme,
                "alpha": layer.alpha,
                "r2": layer.r2,
                "n_samples": layer.n_samples,
                "dim": layer.dim,
                "model": ckpt.model,
                "probe": result.probe_description,
                "probe_fingerprint": result.probe_fingerprint,
                "seconds": result.seconds,
                "precision": result.precision,
                "n_params": n_params,
                "n_dropped": layer.n_dropped,
                "num_layers": result.num_layers,
                "spectrum": result.config.spectrum,
                "kind": ckpt.kind,
                "path": ckpt.path,
                **(extra or {}),
            }
        )
        if layer.extras:
            records[-1].update(layer.extras)
            records[-1][EXTRA_METRICS_FIELD] = list(layer.extras)
    return records


#: Fields of a record that an extra metric's name may not take (build_records' own, the
#: fields run_replay and the store add, and those of the geometry itself).
RECORD_KEYS: frozenset[str] = frozenset(
    {
        "key",
        "step",
        "revision",
        "tokens",
        "stage",
        "layer",
        "rankme",
        "alpha",
        "r2",
        "n_samples",
        "dim",
        "model",
        "probe",
        "probe_fingerprint",
        "seconds",
        "precision",
        "n_params",
        "n_dropped",
        "num_layers",
        "spectrum",
        "kind",
        "path",
        "load_seconds",
        "load_wait_seconds",
        "config_id",
        "n_layers",
        "eigenspectrum",
        EXTRA_METRICS_FIELD,
    }
)


def check_extra_metrics(extra_metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`geomtrace.measure.validate_extra_metrics`, and names that are free in a replay
    record (a metric called ``step`` or ``path`` would overwrite that field)."""
    extras = validate_extra_metrics(extra_metrics)
    taken = sorted(name for name in extras if name in RECORD_KEYS)
    if taken:
        raise ValueError(
            f"extra metric name(s) {', '.join(map(repr, taken))} are fields of a replay record; rename them "
            "(e.g. extra_metrics={'pr': ParticipationRatio()})"
        )
    return extras


def _run_info(
    identity: dict[str, Any],
    config: MeasureConfig,
    probes: ProbeSet,
    options: ProbeOptions | None,
    load: LoadOptions,
) -> dict[str, Any]:
    """``run.json``: how this output is measured. ``provenance`` has the shape of the live
    histories' (``GeometryResult.provenance()`` plus the probe options), so either can be
    given to ``geomtrace replay --like``."""
    return {
        "identity": identity,
        "config_id": _identity_id(identity),
        "provenance": {
            "probe": probes.description,
            "probe_fingerprint": probes.fingerprint(),
            "n_probes": len(probes),
            "precision": expected_precision(load.dtype, config.autocast),
            "measure_config": config.to_dict(),
            "probe_options": options.to_dict() if options is not None else None,
        },
        "load": load.to_dict() | {"dtype": _dtype_name(load.dtype)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# ----------------------------------------------------------------------------- the loop


def _release_memory(device: str) -> None:
    """Return a dropped checkpoint's memory before the next load (call after dropping
    every reference to the model)."""
    gc.collect()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fmt(value: float, spec: str) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _summary_line(ckpt: Checkpoint, result: GeometryResult, load_seconds: float) -> str:
    last = result.last
    step = "-" if ckpt.step is None else str(ckpt.step)
    return (
        f"[geomtrace] {ckpt.key} (step {step}): RankMe {_fmt(last.rankme, '.2f')}  alpha {_fmt(last.alpha, '.4f')}"
        f"  R2 {_fmt(last.r2, '.3f')}  N={last.n_samples} d={last.dim} {result.precision}  "
        f"load {load_seconds:.1f}s measure {result.seconds:.1f}s"
    )


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # a progress bar is a nicety
        return None
    return tqdm(total=total, desc="checkpoints", unit="ckpt", dynamic_ncols=True)


def _say(line: str, bar: Any) -> None:
    if bar is not None:
        bar.write(line)
    else:
        print(line, flush=True)


@dataclass
class _CheckpointOutputs:
    """The one place where a checkpoint's outcome is written: the summary (every rank), and
    on rank 0 the results store, TensorBoard and the console. Whatever else is recorded per
    checkpoint belongs in :meth:`measured` / :meth:`failed`, so that all of it is written as
    one outcome and ``failures.jsonl`` stays the only record of a failure."""

    summary: ReplaySummary
    store: ResultsStore | None  # None off rank 0
    writer: Any  # TensorBoardLogger or None
    bar: Any
    rank: int
    verbose: bool
    tokens_per_step: int | None
    tensorboard_spectra: bool
    expected_precision: str | None

    def measured(
        self, ckpt: Checkpoint, result: GeometryResult, *, n_params: int, load_seconds: float, load_wait: float
    ) -> None:
        """Record a measured checkpoint: one record per layer, its spectra (and extra
        metrics' arrays) as one unit, its TensorBoard scalars and its summary line.
        ``load_seconds``: how long loading took; ``load_wait``: how long the loop waited for
        it (less when it was loaded ahead)."""
        if result.precision not in self.summary.precisions:
            self.summary.precisions.append(result.precision)
            if self.expected_precision and result.precision != self.expected_precision and self.rank == 0:
                warn(
                    f"{ckpt.key}: the probe forward ran in {result.precision}, the reference run's in "
                    f"{self.expected_precision}: values differ by round-off of that size (set --dtype/--autocast)"
                )
        self.summary.measured.append(ckpt.key)
        if self.store is None:
            return
        self.store.append(
            build_records(
                ckpt,
                result,
                n_params=n_params,
                tokens_per_step=self.tokens_per_step,
                extra={
                    "load_seconds": load_seconds,
                    "load_wait_seconds": load_wait,
                    "config_id": self.summary.config_id,
                },
            ),
            spectra={i: g.eigenvalues for i, g in result.layers.items()},
            arrays={i: g.extra_arrays for i, g in result.layers.items() if g.extra_arrays},
        )
        if self.writer is not None:
            self.writer.log(ckpt, result, spectra=self.tensorboard_spectra)
        if self.verbose:
            _say(_summary_line(ckpt, result, load_seconds), self.bar)

    def failed(self, ckpt: Checkpoint, error: str) -> None:
        """Record a checkpoint that could not be loaded or measured (retried by the next run)."""
        self.summary.failed[ckpt.key] = error
        if self.store is None:
            return
        self.store.record_failure(
            ckpt.key, error, step=ckpt.step, revision=ckpt.revision, model=ckpt.model, path=ckpt.path
        )
        if self.verbose:
            _say(f"[geomtrace] {ckpt.key}: FAILED, skipped ({error})", self.bar)


def _bind_output(output: str | os.PathLike, info: dict[str, Any], device: str) -> None:
    """Rank 0 binds ``info`` to the output; every rank raises together on a conflict."""
    rank, _ = rank_and_world_size()
    error: Exception | None = None
    if rank == 0:
        try:
            ResultsStore(output).bind(info)
        except (OutputConflictError, ValueError) as err:
            error = err
    if not _all_agree(error is None, device):
        raise error if error is not None else OutputConflictError(f"{output}: rank 0 refused the output")


def _check_reference(reference: Mapping[str, Any] | None, probes: ProbeSet) -> None:
    """Warn when the probe set differs from the reference run's (``--like``)."""
    if not reference:
        return
    theirs = reference.get("probe_fingerprint")
    if theirs and theirs != probes.fingerprint():
        warn(
            f"the probe set built here ({probes.description}, fingerprint {probes.fingerprint()}) differs from "
            f"the reference run's ({reference.get('probe')}, fingerprint {theirs}): replayed values will not "
            "match it. Same probe options but another tokenizer (--tokenizer) or probe source?"
        )


def _prepare_memorization(
    memorization: Any, output: str | os.PathLike, config_id: str, tokenizer: Any, device: str
) -> Any:
    """The replay's :class:`~geomtrace.replay.memorization.ReplayMemorization` (None without
    probes): the ∞-gram side and the probe files, before any checkpoint loads. All ranks call
    it; a failure raises on every rank."""
    if memorization is None:
        return None
    from geomtrace.replay.memorization import ReplayMemorization

    memo = ReplayMemorization(memorization, output, config_id)
    error: Exception | None = None
    try:
        memo.prepare(tokenizer)
    except Exception as err:  # noqa: BLE001 - raised below once every rank knows
        error = err
    if not _all_agree(error is None, device):
        raise error if error is not None else RuntimeError("memorization set-up failed on another rank")
    return memo


def _measure_memorization(
    memo: Any, model: Any, ckpt: Checkpoint, tokens: int | None, write: bool, writer: Any, verbose: bool, bar: Any
) -> str | None:
    """Score ``ckpt`` on the memorization probes; the error message, or None when done."""
    try:
        scalars = memo.measure(model, ckpt, tokens, write=write)
    except Exception as err:  # noqa: BLE001 - every rank fails together (answer_logprobs agrees)
        return f"memorization failed: {type(err).__name__}: {err}"
    if write and writer is not None and ckpt.step is not None:
        for tag, value in scalars.items():
            writer.writer.add_scalar(tag, value, global_step=ckpt.step)
        writer.writer.flush()
    if write and verbose and scalars:
        shown = "  ".join(
            f"{tag.removeprefix('memorization/')} {value:.3f}"
            for tag, value in scalars.items()
            if tag.endswith("/spearman")
        )
        _say(f"[geomtrace] {ckpt.key}: memorization {shown}", bar)
    return None


def run_replay(
    checkpoints: Sequence[Checkpoint],
    output: str | os.PathLike,
    *,
    measure: MeasureConfig | Mapping[str, Any] | None = None,
    probes: ProbeSet | ProbeOptions | Mapping[str, Any] | None = None,
    load: LoadOptions | Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    tokens_per_step: int | None = None,
    tensorboard_dir: str | os.PathLike | None = None,
    tensorboard_spectra: bool = False,
    progress: bool = True,
    verbose: bool = True,
    reference: Mapping[str, Any] | None = None,
    prefetch: bool = True,
    extra_metrics: Mapping[str, Any] | None = None,
    memorization: Any = None,
    **deprecated: Any,
) -> ReplaySummary:
    """Measure ``checkpoints`` in order into the results store at ``output``; resumable.

    Args:
        checkpoints: from :func:`~geomtrace.replay.sources.hub_checkpoints`,
            :func:`~geomtrace.replay.sources.local_checkpoints` (optionally
            :func:`~geomtrace.replay.sources.shard_checkpoints`). Empty: nothing is done.
        output: results folder (created). Several processes may write to the same one.
        measure: what to measure (:class:`~geomtrace.measure.MeasureConfig`; a dict of its fields).
        probes: a ready :class:`~geomtrace.probes.ProbeSet`, or the
            :class:`~geomtrace.probes.ProbeOptions` to build one (default: 1024 sequences of the
            embedded corpus), once, with ``tokenizer`` or, failing that, the first checkpoint's
            tokenizer that loads; kept fixed. At least 2 sequences.
        load: how each checkpoint is loaded (:class:`~geomtrace.options.LoadOptions`:
            dtype, device, device_map, trust_remote_code, model_builder, base_model).
        tokenizer: a tokenizer object or a name/path to load one from.
        tokens_per_step: fill ``tokens = step * tokens_per_step`` where the revision name has
            no token count (Pythia: 1024 x 2048 = 2097152).
        tensorboard_dir: also log ``result.scalars("geometry")`` at ``global_step = step``
            (the live callbacks' tags) into this folder; None: no TensorBoard.
        tensorboard_spectra: also log an eigenspectrum figure per checkpoint.
        progress: a progress bar over checkpoints (rank 0).
        verbose: a one-line summary per checkpoint (rank 0).
        reference: the provenance of a run to reproduce (``geomtrace replay --like``): a
            warning when the probe fingerprint or the forward's precision differs from it.
        prefetch: load checkpoint ``k + 1`` in a background thread while ``k`` is measured
            (at most one extra model, in host memory; see :mod:`geomtrace.replay.prefetch`).
            Off with ``device_map`` (a sharded model would be loaded twice onto the GPUs).
        extra_metrics: ``{name: metric}``, your torchmetrics metrics on the ``(N, d)`` feature
            rows, measured on the same forward (see :func:`geomtrace.measure.measure_geometry`).
            Their scalar values are record fields named ``name`` (listed in the record's
            ``extra_metrics``) and TensorBoard tags ``geometry/<name>`` /
            ``geometry/layer<L>/<name>``, like RankMe and alpha; non-scalar values are stored
            beside the eigenspectrum (:meth:`~geomtrace.replay.store.ResultsStore.extra_arrays`).
            They do not change the measurement configuration: checkpoints already done are
            skipped, so a metric added later is measured only on the checkpoints still to do.
        memorization: a :class:`~geomtrace.memorization.MemorizationProbe` or several with
            distinct names: each checkpoint is also scored on their QA sets, and one record per
            (checkpoint, probe) goes to ``OUT/memorization.jsonl`` (the ∞-gram side once, in
            ``OUT/memorization/<probe>.json``; see :mod:`geomtrace.replay.memorization`). A
            checkpoint missing only memorization records is loaded again for them alone.
        deprecated: the flat keywords of geomtrace 0.1 (``config=``, ``probe_options=``,
            ``dtype=``, ``device=``, ...), with a ``DeprecationWarning`` naming the new spelling.

    The output holds one measurement configuration (:func:`measurement_identity`, stored in
    ``run.json``): a run with another one raises
    :class:`~geomtrace.replay.store.OutputConflictError` before measuring anything. A
    checkpoint whose records are complete for this configuration is skipped. One that fails
    to load or measure is logged to ``failures.jsonl`` and skipped (retried by the next run).
    """
    start = time.perf_counter()
    if deprecated:
        upgraded = legacy_options(
            "run_replay",
            deprecated,
            {"measure": (MeasureConfig, measure), "probes": (ProbeOptions, probes), "load": (LoadOptions, load)},
            renamed={"config": "measure", "probe_options": "probes"},
        )
        measure, probes, load = upgraded["measure"], upgraded["probes"], upgraded["load"]
    config = option_set(measure, MeasureConfig, owner="run_replay")
    config.validate()
    check_replay_source(config)
    load_options = option_set(load, LoadOptions, owner="run_replay")
    load_options.validate()
    extra_metrics = check_extra_metrics(extra_metrics)
    probe_options: ProbeOptions | None = None
    if not isinstance(probes, ProbeSet):
        probe_options = option_set(probes, ProbeOptions, owner="run_replay")
        probe_options.validate()
        probes = None
    check_output_dir(output, writable=True)
    summary = ReplaySummary(output=Path(output))
    checkpoints = list(checkpoints)
    if not checkpoints:
        return summary
    device = str(resolve_device(load_options.device))
    created_group = init_distributed(device)
    device = _rank_device(device)
    rank, _ = rank_and_world_size()
    load_options = load_options.replace(device=device)  # this rank's device, as run.json records it
    trust_remote_code = load_options.trust_remote_code
    writer = loader = None
    try:
        # The probe set decides what counts as done, so it comes first. A model loaded only to
        # get its tokenizer is kept for its own measurement.
        preloaded: tuple[Checkpoint, Any, float] | None = None
        known_failures: dict[str, str] = {}
        if probes is None:
            tok = tokenizer
            if isinstance(tok, (str, os.PathLike)):
                tok = _load_tokenizer(str(tok), trust_remote_code=trust_remote_code)
            if tok is None:
                tok, preloaded, known_failures = _probe_tokenizer(checkpoints, load_options)
            options: ProbeOptions | None = probe_options or ProbeOptions()
            probes = build_probes(tok, options)  # type: ignore[arg-type]  # not None: just set
        else:
            options = probes.options  # a set built by load_probes knows its options (for --like)
            tok = tokenizer
            if isinstance(tok, (str, os.PathLike)) and memorization is not None:
                tok = _load_tokenizer(str(tok), trust_remote_code=trust_remote_code)
        probes_tokenizer = tok
        if len(probes) < 2:
            raise ValueError(
                f"the probe set has {len(probes)} sequence(s): a spectrum needs at least 2 (use --num-sequences >= 2; "
                "the paper uses 1024)"
            )
        _check_reference(reference, probes)
        identity = measurement_identity(config, probes, load_options.dtype)
        info = _run_info(identity, config, probes, options, load_options)
        if tokens_per_step is not None:
            info["tokens_per_step"] = int(tokens_per_step)
        summary.probe_fingerprint, summary.n_probes = probes.fingerprint(), len(probes)
        summary.config_id = info["config_id"]
        _bind_output(output, info, device)
        store = ResultsStore(output) if rank == 0 else None
        done = ResultsStore(output).done_keys(config_id=summary.config_id)
        memo = _prepare_memorization(memorization, output, summary.config_id, probes_tokenizer, device)
        _barrier()  # every rank has read the same done set before rank 0 appends anything
        memo_todo = memo.pending([c.key for c in checkpoints]) if memo is not None else set()
        todo = [c for c in checkpoints if c.key not in done or c.key in memo_todo]
        if preloaded is not None and preloaded[0].key in done and preloaded[0].key not in memo_todo:
            preloaded = None
            _release_memory(device)
        summary.skipped = [c.key for c in checkpoints if c.key in done and c.key not in memo_todo]
        if store is not None and tensorboard_dir is not None and todo:
            from geomtrace.replay.tensorboard import TensorBoardLogger

            writer = TensorBoardLogger(tensorboard_dir)
        bar = _progress_bar(len(todo), progress and rank == 0)
        if verbose and rank == 0 and summary.skipped:
            _say(f"[geomtrace] {len(summary.skipped)} checkpoint(s) already done in {output}; skipping them", bar)
        outputs = _CheckpointOutputs(
            summary,
            store,
            writer,
            bar,
            rank=rank,
            verbose=verbose,
            tokens_per_step=tokens_per_step,
            tensorboard_spectra=tensorboard_spectra,
            expected_precision=(reference or {}).get("precision"),
        )
        loader = CheckpointLoader(
            todo,
            load_options.kwargs(),
            prefetch=prefetch and load_options.device_map is None,
            describe_error=_load_error,
            known_failures=known_failures,
            preloaded=preloaded,
        )
        preloaded = None  # the loader holds it now
        for index, ckpt in enumerate(todo):
            loaded = loader.take(index)  # starts loading the next checkpoint in the background
            model, error, load_seconds, load_wait = loaded.model, loaded.error, loaded.seconds, loaded.wait
            del loaded  # its model is ours now: no second reference while measuring
            result = None
            loaded_ok = _all_agree(error is None, device)
            if loaded_ok and ckpt.key not in done:
                try:
                    result = measure_geometry(
                        model, probes, config, progress=progress and rank == 0, extra_metrics=extra_metrics
                    )
                except Exception as err:  # noqa: BLE001 - all ranks raise together (measure_geometry agrees)
                    error = f"measurement failed: {type(err).__name__}: {err}"
            elif not loaded_ok and error is None:
                error = "load failed on another rank"
            if result is not None:
                outputs.measured(
                    ckpt, result, n_params=_n_params(model), load_seconds=load_seconds, load_wait=load_wait
                )
            if memo is not None and error is None and ckpt.key in memo_todo:
                error = _measure_memorization(
                    memo, model, ckpt, checkpoint_tokens(ckpt, tokens_per_step), store is not None, writer, verbose, bar
                )
            if error is not None:
                if ckpt.key in summary.measured:  # geometry recorded, memorization failed
                    summary.measured.remove(ckpt.key)
                outputs.failed(ckpt, error)
            elif result is None:  # only the memorization records were missing
                summary.measured.append(ckpt.key)
            model = result = None
            _release_memory(device)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        if loader is not None:
            loader.close()
        if writer is not None:
            writer.close()
        if created_group:
            torch.distributed.destroy_process_group()
    summary.seconds = time.perf_counter() - start
    return summary
