"""Wall-clock overhead of GeometryMonitor on the pretrain recipe, side by side in one run.

Runs ``recipes/pretrain.py`` without the monitor, with it at its defaults (every 100 steps,
1024 probes, probe forward in the trainer's precision) and with the probe forward autocast to
``--autocast`` (default bf16), same seed and data order, round-robin so machine noise hits all
alike, and prints each round's fit times and overheads (each variant against the baseline
of its own round) and their median over ``--repeats`` rounds.

Usage: python benchmarks/callback_overhead.py [--max-steps 400] [--repeats 1] [--every-n-steps 100]
       [--autocast bf16|fp16|none]
"""

from __future__ import annotations

import argparse
import re
import statistics
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
    parser.add_argument("--autocast", default="bf16", choices=("bf16", "fp16", "none"),
                        help="also time the monitor with its probe forward autocast to this dtype ('none': skip)")
    args = parser.parse_args()
    with_monitor = ["--every-n-steps", str(args.every_n_steps), "--probe-batch-size", str(args.probe_batch_size),
                    "--extra-steps", ""]
    variants = {"without": ["--no-geometry"], "GeometryMonitor (defaults)": with_monitor}
    if args.autocast != "none":
        variants[f"GeometryMonitor (autocast={args.autocast})"] = [*with_monitor, "--probe-autocast", args.autocast]
    overheads: dict[str, list[float]] = {name: [] for name in variants if name != "without"}
    for round_index in range(args.repeats):
        seconds = {name: fit_seconds(extra, args.max_steps) for name, extra in variants.items()}
        base = seconds["without"]
        # Paired within the round: a slow spell on the machine hits neighbours alike, while the
        # fastest baseline of one round against the fastest monitor run of another does not.
        for name in overheads:
            overheads[name].append(100 * (seconds[name] - base) / base)
        print(f"  round {round_index + 1}: " + ", ".join(
            f"{name} {value:.1f}s" + ("" if name == "without" else f" ({overheads[name][-1]:+.1f}%)")
            for name, value in seconds.items()), flush=True)
    measurements = 2 + args.max_steps // args.every_n_steps - (1 if args.max_steps % args.every_n_steps == 0 else 0)
    print(f"pretrain recipe, {args.max_steps} steps, monitor every {args.every_n_steps} steps "
          f"({measurements} measurements of 1024 probes), median over {args.repeats} round(s):")
    for name, values in overheads.items():
        print(f"  {name}: overhead {statistics.median(values):.1f}% (aim <= 3%)")


if __name__ == "__main__":
    main()
