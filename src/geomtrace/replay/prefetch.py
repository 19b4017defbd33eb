"""Load the next checkpoint while the current one is measured.

:class:`CheckpointLoader` hands the replay loop one loaded checkpoint at a time; with
``prefetch`` it starts loading checkpoint ``k + 1`` in a background thread as soon as
checkpoint ``k`` is handed out, so that fetching (hub download, disk reads) and loading
overlap with the measurement of ``k``.

Bounds and rules:

* At most one extra model is resident: ``k + 1`` starts loading only after ``k`` was taken,
  and ``k + 2`` only after ``k + 1`` was taken (by then the loop has dropped ``k``).
* The background load goes to host memory; the loop's thread moves it to the device, so a
  GPU holds one model at a time.
* The background thread only runs what cannot disturb the measurement in the loop's
  thread. transformers builds a model under a process-wide ``torch.set_default_dtype``
  (the checkpoint's dtype) for a moment; a forward running then in the other thread could
  create tensors in that dtype. And a measurement on the CPU already uses every core: a
  model built beside it only competes with its threads (on a busy 2-core machine the
  overlapped loop measured slower, see ``docs/benchmarks.md``). So the whole load runs in
  the background only when the measurement runs on an accelerator and the weights are
  loaded in the process's default dtype (fp32, the default); otherwise (a CPU device, bf16,
  fp16, ``auto``, ``device_map``) the background thread only *fetches* (downloads the hub
  revision into the cache, reads the files into the page cache), which waits on the network
  or the disk rather than the CPU, and the model is built in the loop's thread.
* ``idle`` (the replay's deletion of its downloads, :mod:`geomtrace.replay.disk`) is called
  in :meth:`CheckpointLoader.take` at the one point where no background fetch runs: after
  checkpoint ``k``'s background load finished, before ``k + 1``'s starts (without prefetch:
  before ``k`` loads). So nothing is deleted while the background thread downloads or reads.
* A failed background load is that checkpoint's failure, with the same message as a load
  in the loop's thread. Under torch.distributed every rank keeps the same schedule: the
  background thread does local I/O only, every collective stays in the loop's thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from geomtrace.options import LoadOptions
from geomtrace.replay.sources import Checkpoint, fetch_checkpoint, load_checkpoint_model, resolve_dtype

__all__ = ["CheckpointLoader", "Loaded"]


@dataclass
class Loaded:
    """One checkpoint as the loop receives it: ``model`` (None when ``error``), the seconds
    its loading took (in the background: its own duration) and ``wait``, the seconds the
    loop waited for it (what prefetching did not hide)."""

    model: Any
    error: str | None
    seconds: float
    wait: float = 0.0


def background_build_is_safe(load: dict[str, Any]) -> bool:
    """Whether a whole load may run beside a measurement: on an accelerator, in the default
    dtype, without ``device_map`` (see the module doc)."""
    if load.get("device_map") is not None or str(load.get("device") or "cpu").startswith("cpu"):
        return False
    dtype = resolve_dtype(load.get("dtype"))
    return dtype == torch.get_default_dtype()


class CheckpointLoader:
    """Loads ``checkpoints`` in order for the replay loop, optionally one ahead.

    Args:
        checkpoints: the checkpoints to hand out, by index.
        load: keyword arguments of :func:`~geomtrace.replay.sources.load_checkpoint_model`.
        prefetch: load ``k + 1`` in a background thread while ``k`` is measured.
        describe_error: turns a load exception into the recorded error message.
        known_failures: ``{key: error}`` of checkpoints already known not to load.
        preloaded: ``(checkpoint, model, start time)`` of a model already loaded.
        idle: ``idle(index)`` is called by :meth:`take` while nothing loads in the background
            (then checkpoints ``index`` and later are still to be handed out).
        fetching: ``fetching(ckpt)`` is called, in the caller's thread, before a checkpoint's
            load (or background fetch) starts (the downloads ledger).
    """

    def __init__(
        self,
        checkpoints: Sequence[Checkpoint],
        load: dict[str, Any],
        *,
        prefetch: bool,
        describe_error: Callable[[BaseException], str],
        known_failures: dict[str, str] | None = None,
        preloaded: tuple[Checkpoint, Any, float] | None = None,
        idle: Callable[[int], None] | None = None,
        fetching: Callable[[Checkpoint], None] | None = None,
    ) -> None:
        self.checkpoints = list(checkpoints)
        self.load = dict(load)
        self.describe_error = describe_error
        self.known_failures = dict(known_failures or {})
        self.preloaded = preloaded
        self.idle = idle
        self.fetching = fetching
        self.build_in_background = background_build_is_safe(self.load)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geomtrace-prefetch") if prefetch else None
        self._pending: dict[int, Future] = {}

    # ------------------------------------------------------------------ the loop's side

    def take(self, index: int) -> Loaded:
        """Checkpoint ``index``, loaded on the loop's device (waits for its background load);
        then starts loading ``index + 1`` in the background."""
        t0 = time.perf_counter()
        ckpt = self.checkpoints[index]
        future = self._pending.pop(index, None)
        done = future.result() if future is not None else None
        if self.idle is not None:  # the background thread is idle now (only one load runs ahead)
            self.idle(index)
        if done is not None:
            loaded = self._finish(ckpt, done)
        else:
            loaded = self._load_here(ckpt, t0)
        loaded.wait = time.perf_counter() - t0
        self._start(index + 1)
        return loaded

    @property
    def busy(self) -> bool:
        """Whether a background load is still running (or queued)."""
        return any(not future.done() for future in self._pending.values())

    def close(self) -> None:
        """Drop what is still loading or loaded ahead (a loop that stops early)."""
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> CheckpointLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _load_here(self, ckpt: Checkpoint, t0: float) -> Loaded:
        error = self.known_failures.get(ckpt.key)
        if error is not None:
            return Loaded(None, error, 0.0)
        if self.preloaded is not None and self.preloaded[0] is ckpt:
            _, model, t0 = self.preloaded
            self.preloaded = None
            return Loaded(model, None, time.perf_counter() - t0)
        if self.fetching is not None:
            self.fetching(ckpt)
        try:
            model, _ = load_checkpoint_model(ckpt, **self.load)
        except Exception as err:  # noqa: BLE001 - one bad checkpoint must not stop the replay
            return Loaded(None, self.describe_error(err), time.perf_counter() - t0)
        return Loaded(model, None, time.perf_counter() - t0)

    def _finish(self, ckpt: Checkpoint, done: tuple[str, Any, float]) -> Loaded:
        kind, value, seconds = done
        if kind == "error":
            return Loaded(None, value, seconds)
        if kind == "fetched":  # the files are here; build in this thread
            loaded = self._load_here(ckpt, time.perf_counter())
            loaded.seconds += seconds
            return loaded
        t0 = time.perf_counter()
        device = str(self.load.get("device", "cpu"))
        if device != "cpu":
            value.to(device)
        return Loaded(value, None, seconds + time.perf_counter() - t0)

    def _start(self, index: int) -> None:
        if self._pool is None or index >= len(self.checkpoints) or index in self._pending:
            return
        ckpt = self.checkpoints[index]
        if ckpt.key in self.known_failures or (self.preloaded is not None and self.preloaded[0] is ckpt):
            return
        if self.fetching is not None:
            self.fetching(ckpt)
        self._pending[index] = self._pool.submit(self._background, ckpt)

    # ------------------------------------------------------------------ the background thread

    def _background(self, ckpt: Checkpoint) -> tuple[str, Any, float]:
        """``("model", model on the host, seconds)``, ``("fetched", None, seconds)`` or
        ``("error", message, seconds)``; never raises."""
        t0 = time.perf_counter()
        if not self.build_in_background:
            fetch_checkpoint(
                ckpt, base_model=self.load.get("base_model"), retries=self.load.get("retries", LoadOptions.retries)
            )
            return "fetched", None, time.perf_counter() - t0
        try:
            model, _ = load_checkpoint_model(ckpt, **{**self.load, "device": "cpu"})
        except Exception as err:  # noqa: BLE001 - recorded as this checkpoint's failure
            return "error", self.describe_error(err), time.perf_counter() - t0
        return "model", model, time.perf_counter() - t0
