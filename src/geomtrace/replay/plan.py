"""The replay plan: everything decided before the first checkpoint of the loop is measured.

:func:`resolve_options` turns :func:`~geomtrace.replay.run_replay`'s arguments into validated
option objects (:class:`ReplayOptions`); :func:`plan_replay` then, on every rank and in the
same order (it runs collectives):

1. bootstraps the probe set: the given :class:`~geomtrace.probes.ProbeSet`, or one built from
   the :class:`~geomtrace.probes.ProbeOptions` with the given tokenizer or the first
   checkpoint's that loads (a model loaded on the way is kept for its own measurement, a
   checkpoint that failed to load is remembered as failed);
2. fixes the measurement identity (:func:`measurement_identity`) and ``run.json``, and binds
   the output to it (every rank raises together on a conflict);
3. reads which checkpoints are done and prepares the memorization probes (which checkpoints
   still miss their records);
4. returns the :class:`ReplayPlan`: which checkpoints to measure and which are skipped.

The loop itself (load, measure, record, TensorBoard, failures) is :mod:`geomtrace.replay.runner`.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geomtrace._distributed import all_ranks, rank_and_world_size
from geomtrace._options import legacy_options, option_set
from geomtrace._provenance import probe_set_provenance
from geomtrace._warnings import warn
from geomtrace.measure import MeasureConfig
from geomtrace.options import LoadOptions
from geomtrace.probes import ProbeOptions, ProbeSet
from geomtrace.replay.loading import load_tokenizer
from geomtrace.replay.records import check_extra_metrics
from geomtrace.replay.sources import (
    Checkpoint,
    CheckpointKind,
    CheckpointLoadError,
    load_checkpoint_model,
    load_checkpoint_tokenizer,
    resolve_dtype,
)
from geomtrace.replay.store import OutputConflictError, ResultsStore

__all__ = [
    "Preloaded",
    "ReplayOptions",
    "ReplayPlan",
    "build_probes",
    "expected_precision",
    "init_distributed",
    "load_error_message",
    "measurement_identity",
    "plan_replay",
    "release_memory",
    "resolve_options",
]


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class ReplayOptions:
    """:func:`~geomtrace.replay.run_replay`'s option objects, resolved and validated.

    ``probe_set`` is a ready set the caller gave (then ``probe_options`` is None), else
    ``probe_options`` says how to build one.
    """

    measure: MeasureConfig
    load: LoadOptions
    probe_set: ProbeSet | None
    probe_options: ProbeOptions | None
    extra_metrics: Mapping[str, Any] = field(default_factory=dict)


def resolve_options(
    measure: MeasureConfig | Mapping[str, Any] | None,
    probes: ProbeSet | ProbeOptions | Mapping[str, Any] | None,
    load: LoadOptions | Mapping[str, Any] | None,
    extra_metrics: Mapping[str, Any] | None,
    deprecated: Mapping[str, Any],
) -> ReplayOptions:
    """The option objects of ``run_replay(...)``: the flat keywords of geomtrace 0.1
    (``deprecated``, one ``DeprecationWarning`` pointing at the user's call) merged in, each set
    validated, the extra metrics' names checked."""
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
    extras = check_extra_metrics(extra_metrics)
    if isinstance(probes, ProbeSet):
        return ReplayOptions(config, load_options, probes, None, extras)
    probe_options = option_set(probes, ProbeOptions, owner="run_replay")
    probe_options.validate()
    return ReplayOptions(config, load_options, None, probe_options, extras)


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


def _barrier() -> None:
    if rank_and_world_size()[1] > 1:
        torch.distributed.barrier()


def release_memory(device: str) -> None:
    """Return a dropped checkpoint's memory before the next load (call after dropping
    every reference to the model)."""
    gc.collect()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- probes


def build_probes(tokenizer: Any, options: ProbeOptions) -> ProbeSet:
    """The fixed probe set of a replay, from ``options`` (see :class:`ProbeOptions`)."""
    return options.build(tokenizer)


def load_error_message(err: BaseException) -> str:
    """How a checkpoint that failed to load is recorded (``failures.jsonl``, the summary)."""
    what = "" if isinstance(err, CheckpointLoadError) else f"{type(err).__name__}: "
    return f"load failed: {what}{err}"


class Preloaded:
    """A model loaded while bootstrapping the probe set (to get its tokenizer), handed to the
    loop once: :meth:`take` gives ``(ckpt, model, t0)`` and forgets it, so that no second
    reference keeps the model alive after its measurement."""

    def __init__(self, loaded: tuple[Checkpoint, Any, float] | None = None) -> None:
        self._loaded = loaded

    @property
    def key(self) -> str | None:
        """The preloaded checkpoint's key (None when nothing is held)."""
        return self._loaded[0].key if self._loaded is not None else None

    def take(self) -> tuple[Checkpoint, Any, float] | None:
        loaded, self._loaded = self._loaded, None
        return loaded


#: How many checkpoints are tried, in order, for the tokenizer that builds the probe set.
_TOKENIZER_TRIES = 3


def _probe_tokenizer(
    checkpoints: Sequence[Checkpoint], load: LoadOptions, fetching: Callable[[Checkpoint], None] | None = None
) -> tuple[Any, tuple[Checkpoint, Any, float] | None, dict[str, str]]:
    """The tokenizer for the probe set: the first checkpoint's that loads.

    Returns ``(tokenizer, preloaded, failures)``: ``preloaded = (ckpt, model, t0)`` when a
    model was loaded to get its tokenizer (a Lightning module or builder may hold one), so it
    is measured without a second load; ``failures`` maps the keys of checkpoints that failed
    to load on the way to their error (recorded as failed checkpoints, not loaded again).
    Raises CheckpointLoadError when none of the first few loads (e.g. a misspelt model id),
    ValueError when one loads but has no tokenizer (for hub revisions: when none of the first
    few that load has one; one revision without a tokenizer is measured all the same, and the
    first model loaded is kept for its measurement). ``fetching(ckpt)`` is called before a
    checkpoint's files are fetched (the downloads ledger of :mod:`geomtrace.replay.disk`).
    """
    failures: dict[str, str] = {}
    kept: tuple[Checkpoint, Any, float] | None = None
    for ckpt in checkpoints[:_TOKENIZER_TRIES]:
        if fetching is not None:
            fetching(ckpt)
        tok = load_checkpoint_tokenizer(
            ckpt, trust_remote_code=load.trust_remote_code, base_model=load.base_model, retries=load.retries
        )
        if tok is not None:
            return tok, kept, failures
        t0 = time.perf_counter()
        try:
            model, tok = load_checkpoint_model(ckpt, **load.kwargs())
        except Exception as err:  # noqa: BLE001 - recorded as that checkpoint's failure
            failures[ckpt.key] = load_error_message(err)
            continue
        if tok is not None:
            if kept is not None:  # one preloaded model at most
                kept = None
                release_memory(load.device)
            return tok, (ckpt, model, t0), failures
        if ckpt.kind == CheckpointKind.HUB:  # a revision without a tokenizer: try the next one
            if kept is None:
                kept = (ckpt, model, t0)
            model = None
            release_memory(load.device)
            continue
        model = kept = None
        release_memory(load.device)
        raise ValueError(
            f"no tokenizer to build the probe set from: checkpoint {ckpt.key!r} holds none. Pass "
            "--tokenizer NAME_OR_PATH (tokenizer= in Python), give the LightningModule a `tokenizer` "
            "attribute, or let --model-builder return (module, tokenizer)."
        )
    without = [c.key for c in checkpoints[:_TOKENIZER_TRIES] if c.key not in failures]
    kept = model = None
    release_memory(load.device)
    if without:  # hub revisions that load but hold no tokenizer
        raise ValueError(
            f"no tokenizer to build the probe set from: the hub revisions {', '.join(without)} hold none. "
            "Pass --tokenizer NAME_OR_PATH (tokenizer= in Python)."
        )
    tried = "; ".join(f"{key}: {error}" for key, error in failures.items())
    raise CheckpointLoadError(
        f"the first {len(failures)} checkpoint(s) failed to load (the probe set is built with the first one's "
        f"tokenizer): {tried}"
    )


@dataclass(frozen=True)
class _ProbeBootstrap:
    probes: ProbeSet
    options: ProbeOptions | None  # how the set was built (None: a given set that does not know)
    tokenizer: Any  # for the memorization probes
    preloaded: tuple[Checkpoint, Any, float] | None
    known_failures: dict[str, str]


def _bootstrap_probes(
    checkpoints: Sequence[Checkpoint],
    options: ReplayOptions,
    load: LoadOptions,
    tokenizer: Any,
    memorization: bool,
    fetching: Callable[[Checkpoint], None] | None = None,
) -> _ProbeBootstrap:
    """The probe set decides what counts as done, so it comes first. A model loaded only to
    get its tokenizer is kept for its own measurement."""
    preloaded: tuple[Checkpoint, Any, float] | None = None
    known_failures: dict[str, str] = {}
    tok = tokenizer
    if options.probe_set is None:
        if isinstance(tok, (str, os.PathLike)):
            tok = load_tokenizer(str(tok), trust_remote_code=load.trust_remote_code, retries=load.retries)
        if tok is None:
            tok, preloaded, known_failures = _probe_tokenizer(checkpoints, load, fetching)
        probe_options = options.probe_options or ProbeOptions()
        probes = build_probes(tok, probe_options)
        built: ProbeOptions | None = probe_options
    else:
        probes = options.probe_set
        built = probes.options  # a set built by load_probes knows its options (for --like)
        if isinstance(tok, (str, os.PathLike)) and memorization:
            tok = load_tokenizer(str(tok), trust_remote_code=load.trust_remote_code, retries=load.retries)
    if len(probes) < 2:
        raise ValueError(
            f"the probe set has {len(probes)} sequence(s): a spectrum needs at least 2 (use --num-sequences >= 2; "
            "the paper uses 1024)"
        )
    return _ProbeBootstrap(probes, built, tok, preloaded, known_failures)


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
    :meth:`~geomtrace.measure.MeasureConfig.speed_fields` nor ``output_fields``) and the weights' dtype. An output
    holds records of one identity only."""
    # Neither the speed nor the output fields (error bars: the values stay as they are) change the
    # identity, so its id stays that of outputs written before those fields existed; replay always
    # measures probes (check_replay_source): likewise.
    skip = {*MeasureConfig.speed_fields(), *MeasureConfig.output_fields(), "source"}
    measure = {k: v for k, v in config.to_dict().items() if k not in skip}
    return {
        "probe_fingerprint": probes.fingerprint(),
        "n_probes": len(probes),
        "measure_config": measure,
        "dtype": _dtype_name(dtype),
    }


def _identity_id(identity: Mapping[str, Any]) -> str:
    # Deliberately plain json.dumps(default=str), not geomtrace._jsonio: the id is stored in
    # every existing run.json and record (config_id), so its bytes must not change.
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
        # The live histories' shape (one builder), so either can be given to --like.
        "provenance": probe_set_provenance(probes, config, expected_precision(load.dtype, config.autocast), options),
        "load": load.to_dict() | {"dtype": _dtype_name(load.dtype)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _bind_output(output: str | os.PathLike, info: dict[str, Any], device: str) -> None:
    """Rank 0 binds ``info`` to the output; every rank raises together on a conflict."""
    rank, _ = rank_and_world_size()
    error: Exception | None = None
    if rank == 0:
        try:
            ResultsStore(output).bind(info)
        except (OutputConflictError, ValueError) as err:
            error = err
    if not all_ranks(error is None, device):
        raise error if error is not None else OutputConflictError(f"{output}: rank 0 refused the output")


# ----------------------------------------------------------------------------- memorization


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
    if not all_ranks(error is None, device):
        raise error if error is not None else RuntimeError("memorization set-up failed on another rank")
    return memo


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ReplayPlan:
    """What the replay loop (:mod:`geomtrace.replay.runner`) works through.

    Attributes:
        output: the results folder (bound to this identity).
        config, load, extra_metrics: the measurement options (``load.device``: this rank's device).
        device: this rank's device (``cuda:LOCAL_RANK`` under torchrun on CUDA).
        rank: this process's global rank (only rank 0 writes).
        probes: the fixed probe set.
        identity, info: :func:`measurement_identity` and ``run.json``'s content.
        config_id: the identity's id (``run.json``'s and every record's ``config_id``).
        tokens_per_step: ``tokens = step * tokens_per_step`` where the revision name has none.
        done: keys complete in the store for this identity.
        todo: the checkpoints to load, in order: not done, or still missing memorization records.
        skipped: keys of the checkpoints done (memorization included), not loaded.
        memorization: the :class:`~geomtrace.replay.memorization.ReplayMemorization` (or None).
        memorization_todo: keys still missing memorization records.
        known_failures: ``{key: error}`` of checkpoints that failed to load while the probe
            set was bootstrapped (recorded as failed, not loaded again).
        preloaded: the model loaded for its tokenizer, for the loop to :meth:`~Preloaded.take`.
        reference_precision: the reference run's forward precision (``--like``), to warn on.
    """

    output: Path
    config: MeasureConfig
    load: LoadOptions
    extra_metrics: Mapping[str, Any]
    device: str
    rank: int
    probes: ProbeSet
    identity: dict[str, Any]
    info: dict[str, Any]
    config_id: str
    tokens_per_step: int | None
    done: frozenset[str]
    todo: tuple[Checkpoint, ...]
    skipped: tuple[str, ...]
    memorization: Any
    memorization_todo: frozenset[str]
    known_failures: Mapping[str, str]
    preloaded: Preloaded
    reference_precision: str | None


def plan_replay(
    checkpoints: Sequence[Checkpoint],
    output: str | os.PathLike,
    options: ReplayOptions,
    *,
    device: str,
    tokenizer: Any = None,
    tokens_per_step: int | None = None,
    reference: Mapping[str, Any] | None = None,
    memorization: Any = None,
    fetching: Callable[[Checkpoint], None] | None = None,
) -> ReplayPlan:
    """The :class:`ReplayPlan` of a replay of ``checkpoints`` (not empty) into ``output``.

    ``device``: the resolved load device, after :func:`init_distributed`. Every rank calls
    it at the same point: binding the output and preparing the memorization probes are agreed
    on by all ranks (all raise together), and a barrier makes every rank read the same done
    set before rank 0 appends anything. ``fetching(ckpt)``: called before a checkpoint's
    files are fetched to build the probe set.
    """
    device = _rank_device(device)
    rank, _ = rank_and_world_size()
    load = options.load.replace(device=device)  # this rank's device, as run.json records it
    boot = _bootstrap_probes(checkpoints, options, load, tokenizer, memorization is not None, fetching)
    probes = boot.probes
    _check_reference(reference, probes)
    identity = measurement_identity(options.measure, probes, load.dtype)
    info = _run_info(identity, options.measure, probes, boot.options, load)
    if tokens_per_step is not None:
        info["tokens_per_step"] = int(tokens_per_step)
    config_id = info["config_id"]
    _bind_output(output, info, device)
    done = ResultsStore(output).done_keys(config_id=config_id)
    memo = _prepare_memorization(memorization, output, config_id, boot.tokenizer, device)
    _barrier()  # every rank has read the same done set before rank 0 appends anything
    memo_todo = memo.pending([c.key for c in checkpoints]) if memo is not None else set()
    todo = [c for c in checkpoints if c.key not in done or c.key in memo_todo]
    preloaded, known_failures = Preloaded(boot.preloaded), boot.known_failures
    del boot  # the plan holds the preloaded model through `preloaded` alone
    if preloaded.key is not None and preloaded.key in done and preloaded.key not in memo_todo:
        preloaded.take()
        release_memory(device)
    return ReplayPlan(
        output=Path(output),
        config=options.measure,
        load=load,
        extra_metrics=options.extra_metrics,
        device=device,
        rank=rank,
        probes=probes,
        identity=identity,
        info=info,
        config_id=config_id,
        tokens_per_step=tokens_per_step,
        done=frozenset(done),
        todo=tuple(todo),
        skipped=tuple(c.key for c in checkpoints if c.key in done and c.key not in memo_todo),
        memorization=memo,
        memorization_todo=frozenset(memo_todo),
        known_failures=known_failures,
        preloaded=preloaded,
        reference_precision=(reference or {}).get("precision"),
    )
