"""Worker for tests/test_replay_runner.py: a CLI replay that is slow enough to be killed.

Usage: python replay_kill.py SECONDS_PER_CHECKPOINT -- <geomtrace replay arguments>

Each checkpoint load first sleeps SECONDS_PER_CHECKPOINT, so the test can SIGKILL the
process after the first checkpoint's records appear and before the replay finishes.
"""

from __future__ import annotations

import sys
import time

import geomtrace.replay.prefetch as prefetch
import geomtrace.replay.runner as runner
from geomtrace.cli import main


def slow(load):
    def wrapped(*args, **kwargs):
        time.sleep(delay)
        return load(*args, **kwargs)

    return wrapped


if __name__ == "__main__":
    delay = float(sys.argv[1])
    runner.load_checkpoint_model = slow(runner.load_checkpoint_model)  # the tokenizer search
    prefetch.load_checkpoint_model = slow(prefetch.load_checkpoint_model)  # the loop (and its prefetch)
    sys.exit(main(sys.argv[3:]))
