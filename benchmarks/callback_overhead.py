"""Wall-clock overhead of GeometryMonitor at its defaults, side by side in one run.

Trains ``recipes/pretrain.py`` with a batch of at least 64k tokens per optimizer step (512
sequences of 128 tokens by default), once without the monitor and once with
``GeometryMonitor`` at its defaults (every 100 steps, 1024 probes of 11..128 tokens, probe
batch 32, last layer, the trainer's precision), same seed and data order. The model is the
demo's Pythia shape scaled down (d = 64, 2 layers, the demo's 4096-token BPE vocabulary) so
that a 64k-token step takes about a second on a CPU and the benchmark runs in minutes.

Each round runs both variants (their order alternates between rounds, so a slow spell or
a warm cache does not always favour the same one) and gives the paired overhead
``(with - without) / without``. The script prints every round, the median over rounds, and
the monitor's own account of its cost (the share it prints at the end of training: its
measuring and logging time over the fit's time), which does not depend on comparing two
noisy runs. It also extrapolates to a long run, where measurements come once per
``every_n_steps``: seconds per measurement / (every_n_steps x seconds per step).

Usage: python benchmarks/callback_overhead.py [--max-steps 200] [--repeats 3] [--batch-size 512]
       [--seq-len 128] [--hidden-size 64] [--num-layers 2] [--every-n-steps 100] [--autocast bf16]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain.py"
COST = re.compile(
    r"cost: (\d+) measurement\(s\) took ([0-9.]+) s, ([0-9.]+)% of the ([0-9.]+) s of training; "
    r"([0-9,]+) probe tokens \((\d+) probes\)"
)


def run_recipe(common: list[str], extra: list[str]) -> dict[str, float]:
    """One fit of the recipe; its fit time and, with the monitor, the monitor's cost line."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, str(RECIPE), *common, "--output", out, "--no-save", "--quiet", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"the recipe failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    fit = re.search(r"fit took ([0-9.]+)s", proc.stdout)
    if not fit:
        raise RuntimeError(f"no fit time in the recipe's output:\n{proc.stdout[-2000:]}")
    out = {"fit": float(fit.group(1))}
    cost = COST.search(proc.stdout)
    if cost:
        out.update(measurements=int(cost.group(1)), measuring=float(cost.group(2)), share=float(cost.group(3)),
                   probe_tokens=int(cost.group(5).replace(",", "")), probes=int(cost.group(6)))
    return out


def load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="paired rounds")
    parser.add_argument("--batch-size", type=int, default=512, help="sequences per optimizer step")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--every-n-steps", type=int, default=100, help="GeometryMonitor default: 100")
    parser.add_argument("--autocast", default="none", choices=("bf16", "fp16", "none"),
                        help="also time the monitor with its probe forward autocast to this dtype")
    args = parser.parse_args()
    tokens_per_step = args.batch_size * args.seq_len
    if tokens_per_step < 65_536:
        print(f"note: {tokens_per_step:,} tokens per step, below the 64k this benchmark is about")
    common = ["--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
              "--hidden-size", str(args.hidden_size), "--num-layers", str(args.num_layers), "--warmup-steps", "10"]
    # The monitor's defaults: 1024 probes, probe batch 32, last layer, no extra steps.
    monitor = ["--every-n-steps", str(args.every_n_steps), "--extra-steps", "", "--num-probes", "1024",
               "--probe-batch-size", "32"]
    variants = {"without": ["--no-geometry"], "GeometryMonitor (defaults)": monitor}
    if args.autocast != "none":
        variants[f"GeometryMonitor (autocast={args.autocast})"] = [*monitor, "--probe-autocast", args.autocast]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average {load()}; "
          f"{args.max_steps} steps of {tokens_per_step:,} tokens, d={args.hidden_size}, {args.num_layers} layers",
          flush=True)
    rounds: list[dict[str, dict[str, float]]] = []
    for index in range(args.repeats):
        names = list(variants) if index % 2 == 0 else list(reversed(variants))
        seconds = {name: run_recipe(common, variants[name]) for name in names}
        rounds.append(seconds)
        base = seconds["without"]["fit"]
        parts = []
        for name in variants:
            fit = seconds[name]["fit"]
            if name == "without":
                parts.append(f"{name} {fit:.1f}s")
            else:
                parts.append(f"{name} {fit:.1f}s ({100 * (fit - base) / base:+.2f}%, "
                             f"self-reported {seconds[name]['share']:.2f}%)")
        print(f"  round {index + 1} (load {load()}): " + ", ".join(parts), flush=True)

    print(f"median over {args.repeats} paired round(s):")
    step_seconds = statistics.median(r["without"]["fit"] for r in rounds) / max(1, args.max_steps)
    for name in variants:
        if name == "without":
            continue
        paired = [100 * (r[name]["fit"] - r["without"]["fit"]) / r["without"]["fit"] for r in rounds]
        share = [r[name]["share"] for r in rounds]
        per_measurement = statistics.median(r[name]["measuring"] / r[name]["measurements"] for r in rounds)
        first = rounds[0][name]
        long_run = 100 * per_measurement / (args.every_n_steps * step_seconds)
        print(f"  {name}: paired overhead {statistics.median(paired):+.2f}% (rounds: "
              f"{', '.join(f'{p:+.2f}%' for p in paired)}); self-reported share {statistics.median(share):.2f}%; "
              f"{first['measurements']} measurements of {first['probes']} probes ({first['probe_tokens']:,} tokens), "
              f"{per_measurement:.2f} s each vs {step_seconds:.2f} s per training step; "
              f"a long run (one measurement per {args.every_n_steps} steps): {long_run:.2f}% (aim <= 1%)")


if __name__ == "__main__":
    main()
