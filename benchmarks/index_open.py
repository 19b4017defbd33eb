"""Cost of ``NgramIndex.open``'s content check: the default (sizes + sampled blocks) vs ``verify=True``.

Two indexes are built in a temporary folder: a test-sized one (about 800 tokens, what the test
suite builds) and a larger one (``--tokens``, default 10M tokens: a 20 MB ``tokenized.0``). For
each, the two routes alternate for ``--rounds`` rounds: the whole ``open()`` (engine start and
its stream-length count included) and the file check alone. Reported: the median seconds of
each and the ratio verify / default. The files sit in the page cache (they were just written):
``verify=True`` on a cold index also pays the disk read. Machines are noisy: read the ratios.

Usage: python benchmarks/index_open.py [--tokens 10000000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(label: str, documents: list[np.ndarray], folder: Path, rounds: int) -> None:
    import json

    from geomtrace.memorization import NgramIndex
    from geomtrace.memorization import index as index_module

    start = time.perf_counter()
    NgramIndex.build(documents, folder, progress=False)
    build_s = time.perf_counter() - start
    info = json.loads((folder / index_module.INDEX_MARKER).read_text())
    index_kb = sum(f["bytes"] for f in info["files"].values()) / 1e3
    times: dict[str, list[float]] = {"open": [], "open verify": [], "check": [], "check verify": []}
    for _ in range(rounds):
        times["open"].append(timed(lambda: NgramIndex.open(folder)))
        times["open verify"].append(timed(lambda: NgramIndex.open(folder, verify=True)))
        times["check"].append(timed(lambda: index_module._check_files(folder, info, False)))
        times["check verify"].append(timed(lambda: index_module._check_files(folder, info, True)))
    med = {k: statistics.median(v) for k, v in times.items()}
    n_tokens = sum(int(d.size) for d in documents)
    print(f"\n{label}: {n_tokens:,} tokens, {index_kb:,.1f} kB of index files, built in {build_s:.1f} s")
    print(f"  {'':14s} {'default':>10s} {'verify=True':>12s} {'ratio':>8s}")
    for what, name in (("open", "open()"), ("check", "file check")):
        a, b = med[what], med[f"{what} verify"]
        print(f"  {name:14s} {a * 1e3:8.2f} ms {b * 1e3:9.2f} ms {b / a:7.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {platform.machine()}, rounds={args.rounds} (medians)")
    rng = np.random.default_rng(0)
    small = [rng.integers(0, 12, size=int(rng.integers(1, 40))) for _ in range(40)]
    large = [rng.integers(0, 2048, size=1000) for _ in range(max(1, args.tokens // 1000))]
    with tempfile.TemporaryDirectory() as tmp:
        bench("test-sized index", small, Path(tmp) / "small", args.rounds)
        bench("larger index", large, Path(tmp) / "large", args.rounds)


if __name__ == "__main__":
    main()
