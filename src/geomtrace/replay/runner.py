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
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from geomtrace._distributed import rank_and_world_size
from geomtrace.measure import GeometryResult, MeasureConfig, measure_geometry
from geomtrace.probes import ProbeSet
from geomtrace.replay.sources import Checkpoint, load_checkpoint_model, load_checkpoint_tokenizer, resolve_device
from geomtrace.replay.store import ResultsStore, atomic_write_text
from geomtrace.tracking import ProbeOptions

__all__ = ["ProbeOptions", "ReplaySummary", "build_records", "init_distributed", "run_replay"]


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
        seconds: wall time of the call.
    """

    output: Path
    measured: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    probe_fingerprint: str = ""
    n_probes: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"replay -> {self.output}: {len(self.measured)} measured, {len(self.skipped)} already done, "
            f"{len(self.failed)} failed ({self.n_probes} probes, fingerprint {self.probe_fingerprint}, "
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
    return transformers.AutoTokenizer.from_pretrained(name_or_path, **kwargs)


def build_probes(tokenizer: Any, options: ProbeOptions) -> ProbeSet:
    """The fixed probe set of a replay, from ``options`` (see :class:`ProbeOptions`)."""
    return options.build(tokenizer)


# ----------------------------------------------------------------------------- records


def _n_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def build_records(
    ckpt: Checkpoint,
    result: GeometryResult,
    *,
    n_params: int | None = None,
    tokens_per_step: int | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One store record per measured layer of ``result`` (fields of ``store.RECORD_FIELDS``
    plus ``n_params``, ``n_dropped``, ``num_layers``, ``spectrum``, ``kind``, ``path`` and ``extra``).

    ``tokens`` comes from the revision name; else ``step * tokens_per_step`` when given.
    """
    tokens = ckpt.tokens
    if tokens is None and tokens_per_step is not None and ckpt.step is not None:
        tokens = int(ckpt.step) * int(tokens_per_step)
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
                "n_params": n_params,
                "n_dropped": layer.n_dropped,
                "num_layers": result.num_layers,
                "spectrum": result.config.spectrum,
                "kind": ckpt.kind,
                "path": ckpt.path,
                **(extra or {}),
            }
        )
    return records


def _write_run_info(store: ResultsStore, config: MeasureConfig, probes: ProbeSet, options: dict[str, Any]) -> None:
    """``run.json``: how this output was measured (provenance; not needed to resume)."""
    import json

    info = {
        "measure_config": config.to_dict(),
        "probe": probes.description,
        "probe_fingerprint": probes.fingerprint(),
        "n_probes": len(probes),
        "options": options,
    }
    atomic_write_text(store.output_dir / "run.json", json.dumps(info, indent=2, default=str) + "\n")


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
        f"  R2 {_fmt(last.r2, '.3f')}  N={last.n_samples} d={last.dim}  "
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


def run_replay(
    checkpoints: Sequence[Checkpoint],
    output: str | os.PathLike,
    *,
    config: MeasureConfig | None = None,
    probes: ProbeSet | None = None,
    probe_options: ProbeOptions | None = None,
    dtype: Any = "float32",
    device: str = "auto",
    device_map: Any = None,
    trust_remote_code: bool = False,
    tokenizer: Any = None,
    model_builder: Callable[..., Any] | str | None = None,
    tokens_per_step: int | None = None,
    tensorboard_dir: str | os.PathLike | None = None,
    tensorboard_spectra: bool = False,
    progress: bool = True,
    verbose: bool = True,
) -> ReplaySummary:
    """Measure ``checkpoints`` in order into the results store at ``output``; resumable.

    Args:
        checkpoints: from :func:`~geomtrace.replay.sources.hub_checkpoints`,
            :func:`~geomtrace.replay.sources.local_checkpoints` (optionally
            :func:`~geomtrace.replay.sources.shard_checkpoints`).
        output: results folder (created). Several processes may write to the same one.
        config: what to measure (:class:`~geomtrace.measure.MeasureConfig`).
        probes: a ready probe set. Otherwise one is built once with ``probe_options`` from
            ``tokenizer`` or, failing that, the first checkpoint's tokenizer, and kept fixed.
        probe_options: how to build the probe set (default: 1024 sequences of the embedded corpus).
        dtype, device, device_map, trust_remote_code, model_builder: passed to
            :func:`~geomtrace.replay.sources.load_checkpoint_model`.
        tokenizer: a tokenizer object or a name/path to load one from.
        tokens_per_step: fill ``tokens = step * tokens_per_step`` where the revision name has
            no token count (Pythia: 1024 x 2048 = 2097152).
        tensorboard_dir: also log ``result.scalars("geometry")`` at ``global_step = step``
            (the live callbacks' tags) into this folder; None: no TensorBoard.
        tensorboard_spectra: also log an eigenspectrum figure per checkpoint.
        progress: a progress bar over checkpoints (rank 0).
        verbose: a one-line summary per checkpoint (rank 0).

    A checkpoint whose records are complete in the store for the same probe fingerprint is
    skipped. One that fails to load or measure is logged to ``failures.jsonl`` and skipped
    (retried by the next run).
    """
    start = time.perf_counter()
    config = config or MeasureConfig()
    config.validate()
    device = str(resolve_device(device))
    created_group = init_distributed(device)
    device = _rank_device(device)
    rank, _ = rank_and_world_size()
    store = ResultsStore(output) if rank == 0 else None
    summary = ReplaySummary(output=Path(output))
    checkpoints = list(checkpoints)
    load = dict(dtype=dtype, device=device, device_map=device_map,
                trust_remote_code=trust_remote_code, model_builder=model_builder)
    writer = None
    try:
        # The probe set decides what counts as done, so it comes first. A model loaded only to
        # get its tokenizer is kept for its own measurement.
        preloaded: tuple[Checkpoint, Any, float] | None = None
        if probes is None:
            tok = tokenizer
            if isinstance(tok, (str, os.PathLike)):
                tok = _load_tokenizer(str(tok), trust_remote_code=trust_remote_code)
            if tok is None and checkpoints:
                tok = load_checkpoint_tokenizer(checkpoints[0], trust_remote_code=trust_remote_code)
            if tok is None and checkpoints:
                preloaded, tok = _preload_for_tokenizer(checkpoints, load)
            probes = build_probes(tok, probe_options or ProbeOptions())
        fingerprint = probes.fingerprint()
        summary.probe_fingerprint, summary.n_probes = fingerprint, len(probes)
        done = ResultsStore(output).done_keys(fingerprint)
        _barrier()  # every rank has read the same done set before rank 0 appends anything
        todo = [c for c in checkpoints if c.key not in done]
        if preloaded is not None and preloaded[0].key in done:
            preloaded = None
            _release_memory(device)
        summary.skipped = [c.key for c in checkpoints if c.key in done]
        if store is not None:
            _write_run_info(store, config, probes, {k: v for k, v in load.items() if k != "model_builder"})
            if tensorboard_dir is not None and todo:
                from geomtrace.replay.tensorboard import TensorBoardLogger

                writer = TensorBoardLogger(tensorboard_dir)
        bar = _progress_bar(len(todo), progress and rank == 0)
        if verbose and rank == 0 and summary.skipped:
            _say(f"[geomtrace] {len(summary.skipped)} checkpoint(s) already done in {output}; skipping them", bar)
        for ckpt in todo:
            t0 = time.perf_counter()
            model, error = None, None
            try:
                if preloaded is not None and preloaded[0] is ckpt:
                    model, t0 = preloaded[1], preloaded[2]
                    preloaded = None
                else:
                    model, _ = load_checkpoint_model(ckpt, **load)
            except Exception as err:  # noqa: BLE001 - one bad checkpoint must not stop the replay
                error = f"load failed: {type(err).__name__}: {err}"
            load_seconds = time.perf_counter() - t0
            result = None
            if _all_agree(error is None, device):
                try:
                    result = measure_geometry(model, probes, config, progress=progress and rank == 0)
                except Exception as err:  # noqa: BLE001 - all ranks raise together (measure_geometry agrees)
                    error = f"measurement failed: {type(err).__name__}: {err}"
            elif error is None:
                error = "load failed on another rank"
            if result is not None and store is not None:
                n_params = _n_params(model)
                store.append(
                    build_records(ckpt, result, n_params=n_params, tokens_per_step=tokens_per_step,
                                  extra={"load_seconds": load_seconds}),
                    spectra={i: g.eigenvalues for i, g in result.layers.items()},
                )
                if writer is not None:
                    writer.log(ckpt, result, spectra=tensorboard_spectra)
                if verbose:
                    _say(_summary_line(ckpt, result, load_seconds), bar)
            if result is not None:
                summary.measured.append(ckpt.key)
            else:
                summary.failed[ckpt.key] = error or "unknown error"
                if store is not None:
                    store.record_failure(ckpt.key, error or "unknown error", step=ckpt.step,
                                         revision=ckpt.revision, model=ckpt.model, path=ckpt.path)
                    if verbose:
                        _say(f"[geomtrace] {ckpt.key}: FAILED, skipped ({error})", bar)
            model = result = None
            _release_memory(device)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    finally:
        if writer is not None:
            writer.close()
        if created_group:
            torch.distributed.destroy_process_group()
    summary.seconds = time.perf_counter() - start
    return summary


def _preload_for_tokenizer(
    checkpoints: Sequence[Checkpoint], load: dict[str, Any]
) -> tuple[tuple[Checkpoint, Any, float] | None, Any]:
    """Load the first checkpoint to get its tokenizer (a Lightning builder may return one).

    Returns ``((ckpt, model, t0), tokenizer)`` so that the loaded model is measured without
    a second load. Raises a ValueError saying what to pass when there is no tokenizer.
    """
    t0 = time.perf_counter()
    try:
        model, tok = load_checkpoint_model(checkpoints[0], **load)
    except Exception:  # noqa: BLE001 - the replay loop records this failure properly
        model, tok = None, None
    if tok is not None:
        return (checkpoints[0], model, t0), tok
    model = None
    _release_memory(str(load["device"]))
    raise ValueError(
        "no tokenizer to build the probe set from: the first checkpoint has none. Pass "
        "--tokenizer NAME_OR_PATH (tokenizer= in Python), or let --model-builder return (module, tokenizer)."
    )
