"""Wall-clock overhead of GeometryMonitor on the pretrain recipe, side by side in one run.

Runs ``recipes/pretrain.py`` with and without the monitor (same seed, same data order),
alternating the two so machine noise hits both alike, and prints the fit times and the
overhead ratio. Default monitor settings: every 100 steps, 1024 probes.

Usage: python benchmarks/callback_overhead.py [--max-steps 400] [--repeats 1] [--every-n-steps 100]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain.py"


def fit_seconds(extra: list[str], max_steps: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, str(RECIPE), "--max-steps", str(max_steps), "--output", out,
               "--no-save", "--quiet", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    match = re.search(r"fit took ([0-9.]+)s", proc.stdout)
    if not match:
        raise RuntimeError(f"no fit time in the recipe's output:\n{proc.stdout[-2000:]}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--every-n-steps", type=int, default=100, help="GeometryMonitor default: 100")
    parser.add_argument("--probe-batch-size", type=int, default=32, help="GeometryMonitor default: 32")
    args = parser.parse_args()
    with_monitor = ["--every-n-steps", str(args.every_n_steps), "--probe-batch-size", str(args.probe_batch_size),
                    "--extra-steps", ""]
    base, geo = [], []
    for _ in range(args.repeats):
        base.append(fit_seconds(["--no-geometry"], args.max_steps))
        geo.append(fit_seconds(with_monitor, args.max_steps))
        print(f"  without {base[-1]:.1f}s, with GeometryMonitor {geo[-1]:.1f}s", flush=True)
    b, g = min(base), min(geo)
    measurements = 2 + args.max_steps // args.every_n_steps - (1 if args.max_steps % args.every_n_steps == 0 else 0)
    print(f"pretrain recipe, {args.max_steps} steps, monitor every {args.every_n_steps} steps "
          f"({measurements} measurements of 1024 probes): without {b:.1f}s, with {g:.1f}s "
          f"-> overhead {100 * (g - b) / b:.1f}% (aim <= 3%)")


if __name__ == "__main__":
    main()
