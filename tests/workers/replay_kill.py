"""Worker for the signal tests of tests/test_replay_runner.py: a CLI replay that stops and
waits, inside the phase under test, for the test's signal.

Usage: python replay_kill.py PHASE MARKER -- <geomtrace replay arguments>

It runs :func:`geomtrace.cli.run` (the console script's entry point) and, when it is inside
PHASE, writes its pid to MARKER (``MARKER.<rank>`` under torchrun) and waits (at most 60 s):

* ``startup``: at the first ``import torch``, before the command's imports finish;
* ``loop``: at the load of a checkpoint when at least one is already recorded in --output
  (under torchrun: the ranks listed in $WAIT_RANKS, default 0; the others go on into the
  next collective and wait there);
* ``exit``: in an exit handler of the interpreter, after the summary line, until the file
  MARKER.release exists (a signal noted then must not end the wait: the test creates it).

Nothing heavier than geomtrace.cli is imported here, so the phases are those of the real
command (torch is first imported by the command itself).
"""

from __future__ import annotations

import atexit
import importlib.abc
import os
import sys
import time
from pathlib import Path

import geomtrace.cli as cli
from timeouts import SUBPROCESS_TIMEOUT


def mark() -> None:
    rank = os.environ.get("RANK")
    path = Path(marker if rank is None else f"{marker}.{rank}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, path)


def wait(until=lambda: False) -> None:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT
    while time.monotonic() < deadline and not until():
        time.sleep(0.02)  # a handled signal raises here


class StopAtTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            mark()
            wait()
        return None


def patched_replay(replay):
    def wrapped(args):
        if phase == "loop":
            import geomtrace.replay.prefetch as prefetch

            load = prefetch.load_checkpoint_model
            results = Path(args.output) / "results.jsonl"

            def slow_load(*a, **k):
                recorded = results.is_file() and results.stat().st_size > 0
                if recorded and os.environ.get("RANK", "0") in os.environ.get("WAIT_RANKS", "0"):
                    mark()
                    wait()
                return load(*a, **k)

            prefetch.load_checkpoint_model = slow_load
        code = replay(args)
        if phase == "exit":  # registered after geomtrace's and torch's: runs before them
            atexit.register(lambda: (mark(), wait(Path(marker + ".release").exists)))
        return code

    return wrapped


if __name__ == "__main__":
    phase, marker = sys.argv[1], sys.argv[2]
    assert sys.argv[3] == "--" and phase in ("startup", "loop", "exit"), sys.argv
    if phase == "startup":
        sys.meta_path.insert(0, StopAtTorch())
    cli._cmd_replay = patched_replay(cli._cmd_replay)
    cli.run(sys.argv[4:])
