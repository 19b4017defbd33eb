"""Signals as interrupts: SIGINT, SIGTERM and SIGUSR1 end a command the way Ctrl-C does.

A user presses Ctrl-C (SIGINT); SLURM sends SIGTERM at the time limit, often SIGUSR1 some
time before (``--signal``), and ``torchrun``'s agent forwards SIGTERM/SIGINT to every rank.
:func:`handle_signals` turns each into :class:`Interrupted` (a ``KeyboardInterrupt``
carrying the signal number, so ``except KeyboardInterrupt`` still catches it) raised in the
main thread, and restores the previous handlers afterwards. The exit code of an interrupted
command is ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM), as a shell reports a
process killed by that signal.

:func:`critical` marks a block that a signal must not cut in two (an append to a results
file): a signal arriving inside it is raised when the block ends. :func:`finish` switches
the handlers to only *recording* a signal, for the time between a command's end and the
process's exit (the interpreter's exit handlers), see :func:`geomtrace.cli.run`.

Standard library only, so any layer may import it. Python runs signal handlers in the main
thread only; everything here acts there and is a no-op in other threads.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeAlias

__all__ = ["SIGNALS", "Interrupted", "critical", "finish", "handle_signals", "install", "pending"]

#: The signals handled as interrupts (those the platform has).
SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


class Interrupted(KeyboardInterrupt):
    """A handled signal arrived: ``signum`` says which; ``exit_code`` is ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:  # pragma: no cover - every handled signal has a name
            return f"signal {self.signum}"


class _State:
    record_only = False  # after finish(): note the signal, raise nothing
    depth = 0  # inside critical() blocks
    pending: int | None = None  # a signal noted (deferred or after finish)


_state = _State()

#: What ``signal.getsignal`` returns and ``signal.signal`` takes (None: a handler not set from Python).
SignalHandler: TypeAlias = "Callable[[int, FrameType | None], Any] | int | None"


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.record_only or _state.depth > 0:
        if _state.pending is None:
            _state.pending = signum
        return
    raise Interrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install(signals: tuple[int, ...] = SIGNALS) -> dict[int, SignalHandler]:
    """Install the interrupt handler for ``signals``; returns the previous handlers (an
    empty dict outside the main thread, where Python cannot set handlers)."""
    if not _main_thread():
        return {}
    previous = {s: signal.getsignal(s) for s in signals}
    _state.record_only, _state.depth, _state.pending = False, 0, None
    for s in signals:
        signal.signal(s, _handler)
    return previous


def restore(previous: dict[int, SignalHandler]) -> None:
    """Put back the handlers :func:`install` returned."""
    for s, handler in previous.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    _state.record_only, _state.depth, _state.pending = False, 0, None


@contextmanager
def handle_signals(signals: tuple[int, ...] = SIGNALS) -> Iterator[None]:
    """Within the block a handled signal raises :class:`Interrupted` in the main thread;
    the previous handlers come back when the block ends."""
    previous = install(signals)
    try:
        yield
    finally:
        restore(previous)


@contextmanager
def critical() -> Iterator[None]:
    """A signal arriving inside the block is raised (as :class:`Interrupted`) when it ends,
    so the block is never cut in two. Only where :func:`install`'s handler is active."""
    if not _main_thread():
        yield
        return
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0 and _state.pending is not None and not _state.record_only:
            signum, _state.pending = _state.pending, None
            raise Interrupted(signum)


def finish() -> None:
    """From now on a handled signal is only noted (see :func:`pending`), never raised: for
    the interpreter's exit, whose handlers must not be cut."""
    _state.record_only = True


def pending() -> int | None:
    """The signal noted since :func:`finish` (or deferred by :func:`critical`), if any."""
    return _state.pending
