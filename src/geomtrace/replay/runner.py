"""The replay loop: measure a list of checkpoints with one fixed probe set, resumably.

:func:`run_replay` is a short composition: :func:`geomtrace.replay.plan.resolve_options`
(the option objects), :func:`geomtrace.replay.plan.plan_replay` (the probe set, the
measurement identity and ``run.json``, which checkpoints are done and which to do, the
memorization probes) and :func:`replay_loop`, which loads each checkpoint to do
(:class:`~geomtrace.replay.prefetch.CheckpointLoader`), measures it with
:func:`geomtrace.measure.measure_geometry` (the same path as the live callbacks, so the
numbers are identical), and appends one record per layer plus the eigenspectra to a
:class:`~geomtrace.replay.store.ResultsStore`. Checkpoints already in the store for the same
probe set are skipped, so a killed run resumes where it stopped.

Hub revisions that this run downloads are deleted from the hub cache once their records are
written (``LoadOptions.keep_downloads`` keeps them; what was cached before is never touched),
and the disk they need is estimated before the first load: :mod:`geomtrace.replay.disk`.

Under ``torchrun`` (``WORLD_SIZE > 1``) every rank loads every checkpoint, the probes are
sharded over ranks inside ``measure_geometry``, and only rank 0 writes.

The per-checkpoint lines (``verbose``) are ``INFO`` records of the logger
``geomtrace.replay``, emitted on rank 0 only. While :func:`run_replay` runs with
``verbose=True`` it attaches a handler that prints them on stdout as before (through the
progress bar's ``write`` while a bar is shown); they also propagate to the application's own
logging handlers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geomtrace._distributed import all_ranks, rank_and_world_size
from geomtrace._warnings import warn
from geomtrace.measure import GeometryResult, MeasureConfig, measure_geometry
from geomtrace.options import LoadOptions
from geomtrace.probes import ProbeOptions, ProbeSet
from geomtrace.replay.disk import LEDGER_FILE, HubDownloads, check_disk, estimate_disk
from geomtrace.replay.loading import loading_progress_bars
from geomtrace.replay.plan import (
    ReplayPlan,
    build_probes,
    expected_precision,
    init_distributed,
    load_error_message,
    measurement_identity,
    plan_replay,
    release_memory,
    resolve_options,
)
from geomtrace.replay.prefetch import CheckpointLoader
from geomtrace.replay.records import RECORD_KEYS, build_records, check_extra_metrics, checkpoint_tokens
from geomtrace.replay.sources import Checkpoint, resolve_device
from geomtrace.replay.store import ResultsStore, check_output_dir

__all__ = [
    "RECORD_KEYS",
    "ReplaySummary",
    "build_probes",
    "build_records",
    "check_extra_metrics",
    "checkpoint_tokens",
    "expected_precision",
    "init_distributed",
    "measurement_identity",
    "replay_loop",
    "run_replay",
]

#: The replay's user-facing lines (INFO, rank 0): one per checkpoint measured, failed or
#: scored for memorization, and the "already done" line.
logger = logging.getLogger("geomtrace.replay")


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
        deleted: keys of the hub revisions this call deleted from the hub cache: its own downloads,
            and those an earlier run into the same output left when it stopped (its ledger,
            ``OUT/downloads.jsonl``); ``--keep-downloads`` keeps them; recorded in
            ``OUT/deleted_downloads.jsonl``.
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
    deleted: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if not (self.measured or self.skipped or self.failed):
            return f"replay -> {self.output}: no checkpoints to measure"
        precision = f", {'/'.join(self.precisions)}" if self.precisions else ""
        deleted = (
            f"; {len(self.deleted)} download(s) deleted from the hub cache once measured (--keep-downloads keeps them)"
            if self.deleted
            else ""
        )
        return (
            f"replay -> {self.output}: {len(self.measured)} measured, {len(self.skipped)} already done, "
            f"{len(self.failed)} failed ({self.n_probes} probes, fingerprint {self.probe_fingerprint}{precision}, "
            f"{self.seconds:.1f} s){deleted}"
        )


# ----------------------------------------------------------------------------- console


class _ConsoleLines(logging.Handler):
    """Prints each record's message on stdout as ``print`` did, through the progress bar's
    ``write`` while a bar is shown (so the bar is redrawn below the line)."""

    def __init__(self, bar: Any) -> None:
        super().__init__(logging.INFO)
        self.bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = record.getMessage()
            if self.bar is not None:
                self.bar.write(line)
            else:
                print(line, flush=True)
        except Exception:  # noqa: BLE001 - logging's rule: a handler reports, never raises
            self.handleError(record)


@contextlib.contextmanager
def _console(enabled: bool, bar: Any) -> Iterator[None]:
    """While enabled (``verbose`` on rank 0), :data:`logger`'s INFO lines reach stdout."""
    if not enabled:
        yield
        return
    handler = _ConsoleLines(bar)
    level = logger.level
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ----------------------------------------------------------------------------- the loop


def _n_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _fmt(value: float, spec: str) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _summary_line(ckpt: Checkpoint, result: GeometryResult, load_seconds: float) -> str:
    last = result.last
    step = "-" if ckpt.step is None else str(ckpt.step)
    se_r = "" if last.rankme_se is None else f" +- {_fmt(last.rankme_se, '.2f')}"  # MeasureConfig.uncertainty
    se_a = "" if last.alpha_se is None else f" +- {_fmt(last.alpha_se, '.4f')}"
    return (
        f"[geomtrace] {ckpt.key} (step {step}): RankMe {_fmt(last.rankme, '.2f')}{se_r}  "
        f"alpha {_fmt(last.alpha, '.4f')}{se_a}"
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


@dataclass
class _CheckpointOutputs:
    """The one place where a checkpoint's outcome is written: the summary (every rank), and
    on rank 0 the results store, TensorBoard and the console. Whatever else is recorded per
    checkpoint belongs in :meth:`measured` / :meth:`failed`, so that all of it is written as
    one outcome and ``failures.jsonl`` stays the only record of a failure."""

    summary: ReplaySummary
    store: ResultsStore | None  # None off rank 0
    writer: Any  # TensorBoardLogger or None
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
            logger.info(_summary_line(ckpt, result, load_seconds))

    def failed(self, ckpt: Checkpoint, error: str) -> None:
        """Record a checkpoint that could not be loaded or measured (retried by the next run)."""
        self.summary.failed[ckpt.key] = error
        if self.store is None:
            return
        self.store.record_failure(
            ckpt.key, error, step=ckpt.step, revision=ckpt.revision, model=ckpt.model, path=ckpt.path
        )
        if self.verbose:
            logger.info(f"[geomtrace] {ckpt.key}: FAILED, skipped ({error})")


def _measure_memorization(
    memo: Any, model: Any, ckpt: Checkpoint, tokens: int | None, write: bool, writer: Any, verbose: bool
) -> str | None:
    """Score ``ckpt`` on the memorization probes; the error message, or None when done."""
    try:
        scalars = memo.measure(model, ckpt, tokens, write=write)
    except Exception as err:  # noqa: BLE001 - every rank fails together (answer_logprobs agrees)
        return f"memorization failed: {type(err).__name__}: {err}"
    if write and writer is not None and ckpt.step is not None:
        writer.log_scalars(scalars, ckpt.step)
    if write and verbose and scalars:
        shown = "  ".join(
            f"{tag.removeprefix('memorization/')} {value:.3f}"
            for tag, value in scalars.items()
            if tag.endswith("/spearman")
        )
        logger.info(f"[geomtrace] {ckpt.key}: memorization {shown}")
    return None


def _collect_downloads(downloads: HubDownloads, pending: Sequence[Checkpoint], *, sweep: bool = False) -> None:
    """Delete the released downloads (:meth:`HubDownloads.collect`) at a point where no rank
    fetches anything: under torch.distributed every rank calls it at the same point, and the
    deleting rank waits for the others to finish their loads first."""
    if not downloads.deleting:
        return
    distributed = rank_and_world_size()[1] > 1
    if distributed:
        torch.distributed.barrier()  # every rank's background fetch is done
    downloads.collect(pending, sweep=sweep)
    if distributed:
        torch.distributed.barrier()  # nobody starts the next fetch while a rank deletes


def _leftovers(downloads: HubDownloads, plan: ReplayPlan, verbose: bool) -> None:
    """What an earlier run into this output downloaded and did not delete (it stopped first):
    deleted once measured, those measured already at the first safe point."""
    if not downloads.leftovers or not downloads.deleting:
        return
    todo = set(plan.todo)
    for ckpt in downloads.leftovers:
        if ckpt not in todo:
            downloads.release(ckpt)
    if verbose:
        logger.info(
            f"[geomtrace] {len(downloads.leftovers)} revision(s) in the hub cache were downloaded by an earlier run "
            f"into this output that stopped before deleting them ({', '.join(c.key for c in downloads.leftovers)}): "
            "deleted once measured (--keep-downloads keeps them)"
        )


def _check_disk(plan: ReplayPlan, downloads: HubDownloads, prefetch: bool) -> None:
    """Log the disk estimate; refuse (on every rank) a run that certainly does not fit."""
    error: Exception | None = None
    try:
        check_disk(estimate_disk(plan.todo, downloads, prefetch=prefetch))
    except OSError as err:
        error = err
    if not all_ranks(error is None, plan.device):
        raise error if error is not None else OSError("the disk estimate refused the run on another rank")


def replay_loop(
    plan: ReplayPlan,
    summary: ReplaySummary,
    *,
    tensorboard_dir: str | os.PathLike | None = None,
    tensorboard_spectra: bool = False,
    progress: bool = True,
    verbose: bool = True,
    prefetch: bool = True,
    downloads: HubDownloads | None = None,
) -> None:
    """Load, measure and record each checkpoint of ``plan.todo`` in order, into ``summary``.

    Every rank runs it (loads are agreed on, the measurement runs collectives); rank 0
    writes the store, TensorBoard and the console lines. A checkpoint that fails to load or
    measure on any rank is a failure on every rank (``failures.jsonl``), and the loop goes on.
    ``downloads``: the hub revisions this run downloads (:meth:`HubDownloads.before`): the disk
    they need is checked first, and each is deleted once its outcome is written (unless kept).
    """
    rank, device, memo, memo_todo = plan.rank, plan.device, plan.memorization, plan.memorization_todo
    store = ResultsStore(plan.output) if rank == 0 else None
    writer = loader = None
    prefetch = prefetch and plan.load.device_map is None
    finished = False
    if downloads is not None:
        downloads.verbose = verbose and rank == 0
    try:
        if store is not None and tensorboard_dir is not None and plan.todo:
            from geomtrace.replay.tensorboard import TensorBoardLogger

            writer = TensorBoardLogger(tensorboard_dir)
        bar = _progress_bar(len(plan.todo), progress and rank == 0)
        with _console(verbose and rank == 0, bar):
            if verbose and rank == 0 and summary.skipped:
                logger.info(
                    f"[geomtrace] {len(summary.skipped)} checkpoint(s) already done in {summary.output}; skipping them"
                )
            if downloads is not None:
                _leftovers(downloads, plan, verbose and rank == 0)
                _check_disk(plan, downloads, prefetch)
            outputs = _CheckpointOutputs(
                summary,
                store,
                writer,
                rank=rank,
                verbose=verbose,
                tokens_per_step=plan.tokens_per_step,
                tensorboard_spectra=tensorboard_spectra,
                expected_precision=plan.reference_precision,
            )
            loader = CheckpointLoader(
                plan.todo,
                plan.load.kwargs(),
                prefetch=prefetch,
                describe_error=load_error_message,
                known_failures=dict(plan.known_failures),
                preloaded=plan.preloaded.take(),  # the loader holds it now
                # Deleting the downloads measured so far while nothing is fetched.
                idle=None if downloads is None else lambda index: _collect_downloads(downloads, plan.todo[index:]),
                fetching=None if downloads is None else downloads.declare,
            )
            for index, ckpt in enumerate(plan.todo):
                loaded = loader.take(index)  # starts loading the next checkpoint in the background
                model, error, load_seconds, load_wait = loaded.model, loaded.error, loaded.seconds, loaded.wait
                del loaded  # its model is ours now: no second reference while measuring
                result = None
                loaded_ok = all_ranks(error is None, device)
                if loaded_ok and ckpt.key not in plan.done:
                    try:
                        result = measure_geometry(
                            model,
                            plan.probes,
                            plan.config,
                            progress=progress and rank == 0,
                            extra_metrics=plan.extra_metrics,
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
                    tokens = checkpoint_tokens(ckpt, plan.tokens_per_step)
                    error = _measure_memorization(memo, model, ckpt, tokens, store is not None, writer, verbose)
                if error is not None:
                    if ckpt.key in summary.measured:  # geometry recorded, memorization failed
                        summary.measured.remove(ckpt.key)
                    outputs.failed(ckpt, error)
                elif result is None:  # only the memorization records were missing
                    summary.measured.append(ckpt.key)
                model = result = None
                release_memory(device)
                if downloads is not None:  # its outcome is written: its download may go
                    downloads.release(ckpt)
                if bar is not None:
                    bar.update(1)
            if downloads is not None:  # the last one, and what building the probe set fetched
                _collect_downloads(downloads, (), sweep=True)
            finished = True
        if bar is not None:
            bar.close()
    finally:
        busy = loader is not None and loader.busy
        if loader is not None:
            loader.close()
        if writer is not None:
            writer.close()
        if downloads is not None:
            _leave_downloads(downloads, finished, busy)
        summary.deleted = list(downloads.deleted) if downloads is not None else []


def _leave_downloads(downloads: HubDownloads, finished: bool, busy: bool) -> None:
    """A loop that stopped early (an error, Ctrl-C) still deletes what it measured, when it
    safely can: one process, no background download running."""
    if finished or not downloads.deleting:
        return
    if busy or rank_and_world_size()[1] > 1:
        logger.info(
            "[geomtrace] stopped while a download was running: this run's last downloads stay in the hub cache "
            f"(the next run into this output deletes them: they are noted in its {LEDGER_FILE})"
        )
        return
    with contextlib.suppress(Exception):  # housekeeping on the way out: never hide the error
        downloads.collect((), sweep=True)


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
    options = resolve_options(measure, probes, load, extra_metrics, deprecated)
    check_output_dir(output, writable=True)
    summary = ReplaySummary(output=Path(output))
    checkpoints = list(checkpoints)
    if not checkpoints:
        return summary
    device = str(resolve_device(options.load.device))
    created_group = init_distributed(device)
    try:
        # Before anything is fetched (building the probe set may fetch a tokenizer): what is in
        # the hub cache now is never deleted. Under torchrun the first process of each machine deletes.
        downloads = HubDownloads.before(
            checkpoints,
            keep=options.load.keep_downloads,
            deleter=int(os.environ.get("LOCAL_RANK", "0")) == 0,
            output=output if rank_and_world_size()[0] == 0 else None,
            ledger=Path(output) / LEDGER_FILE,  # every rank takes the same leftovers for its downloads
        )
        plan = plan_replay(
            checkpoints,
            output,
            options,
            device=device,
            tokenizer=tokenizer,
            tokens_per_step=tokens_per_step,
            reference=reference,
            memorization=memorization,
            fetching=downloads.declare,
        )
        summary.probe_fingerprint, summary.n_probes = plan.probes.fingerprint(), len(plan.probes)
        summary.config_id, summary.skipped = plan.config_id, list(plan.skipped)
        with loading_progress_bars(progress):  # no "Loading weights" bars when progress is off
            replay_loop(
                plan,
                summary,
                tensorboard_dir=tensorboard_dir,
                tensorboard_spectra=tensorboard_spectra,
                progress=progress,
                verbose=verbose,
                prefetch=prefetch,
                downloads=downloads,
            )
    finally:
        if created_group:
            torch.distributed.destroy_process_group()
    summary.seconds = time.perf_counter() - start
    return summary
