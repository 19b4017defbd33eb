"""How long a test waits for a subprocess (a worker, a torchrun, a command) before calling it hung.

One generous number: it is only a safety net against a hang, never a synchronisation (the signal
tests wait on a marker the worker writes), so it costs nothing when the test passes. A tight one
flipped tests on a loaded 2-core machine, where starting a worker that imports torch, lightning
and transformers can take minutes (issue 15).
"""

SUBPROCESS_TIMEOUT = 600  # seconds
