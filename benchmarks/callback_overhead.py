"""Wall-clock overhead of GeometryMonitor at its defaults, side by side in one run.

Trains ``recipes/pretrain.py`` with a batch of at least 64k tokens per optimizer step (512
sequences of 128 tokens by default), once without the monitor and once with
``GeometryMonitor`` at its defaults (1024 probes of 11..128 tokens, probe batch 32, last
layer, the trainer's precision, eigenspectrum figure every 5 measurements and at the last,
measurements at the start and the end), same seed and data order. The model is the demo's
Pythia shape scaled down (by default d = 32, 1 layer, a 512-token BPE vocabulary) so that a
run takes minutes on a shared 2-core CPU; a small model is the unfavourable case for the
monitor: its fixed costs (logging, the figure, the eigendecomposition) weigh more against
a cheap training step.

The schedule. At the default ``every_n_steps=100`` a run would need hundreds of these steps
to hold a few measurements, and the overhead (well under 1 %) would sit below the
run-to-run noise of a shared machine. The overhead is linear in how often the monitor
measures (every measurement does the same work), so the script measures densely
(``--every-n-steps 3`` over ``--max-steps 12`` by default: 5 measurements), where the
paired difference is far above the noise, and converts it to the defaults' rate:
overhead at every N steps = (cost of one measurement in training steps) / N.
Pass ``--every-n-steps 100 --max-steps 200`` on a quiet machine to time the defaults'
schedule end to end.

Each round runs both variants (their order alternates between rounds, so a slow spell or
a warm cache does not always favour the same one) and gives the paired overhead
``(with - without) / without`` of the fit's wall time and of its CPU time (the process's
own, all threads: far less sensitive than wall time to other jobs on a shared machine).
The script prints every round, the medians over rounds, and the monitor's own account of
its cost (the share it prints at the end of training: its measuring and logging time over
the fit's time), which does not depend on comparing two runs.

Usage: python benchmarks/callback_overhead.py [--max-steps 12] [--every-n-steps 3] [--repeats 2]
       [--batch-size 512] [--seq-len 128] [--hidden-size 32] [--num-layers 1] [--vocab-size 512]
       [--threads 1] [--autocast bf16]
"""

from __future__ import annotations

import argparse
import datetime
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
DEFAULT_EVERY = 100  # GeometryMonitor's every_n_steps


def run_recipe(common: list[str], extra: list[str], threads: int | None) -> dict[str, float]:
    """One fit of the recipe; its fit time and, with the monitor, the monitor's cost line."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, str(RECIPE), *common, "--output", out, "--no-save", "--quiet", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        raise RuntimeError(f"the recipe failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    fit = re.search(r"fit took ([0-9.]+)s \(([0-9.]+)s of CPU time\)", proc.stdout)
    if not fit:
        raise RuntimeError(f"no fit time in the recipe's output:\n{proc.stdout[-2000:]}")
    out = {"fit": float(fit.group(1)), "cpu": float(fit.group(2))}
    cost = COST.search(proc.stdout)
    if cost:
        out.update(measurements=int(cost.group(1)), measuring=float(cost.group(2)), share=float(cost.group(3)),
                   probe_tokens=int(cost.group(5).replace(",", "")), probes=int(cost.group(6)))
    elif "--no-geometry" not in extra:
        raise RuntimeError(f"no cost line in the monitor's output:\n{proc.stdout[-2000:]}")
    return out


def load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--every-n-steps", type=int, default=3,
                        help=f"the schedule timed (GeometryMonitor's default: {DEFAULT_EVERY}; see above)")
    parser.add_argument("--repeats", type=int, default=2, help="paired rounds")
    parser.add_argument("--batch-size", type=int, default=512, help="sequences per optimizer step")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--num-layers", type=int, default=1)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of the runs (0: torch's default); 1 keeps a shared machine's "
                             "thread contention out of the comparison")
    parser.add_argument("--autocast", default="none", choices=("bf16", "fp16", "none"),
                        help="also time the monitor with its probe forward autocast to this dtype")
    args = parser.parse_args()
    tokens_per_step = args.batch_size * args.seq_len
    if tokens_per_step < 65_536:
        print(f"note: {tokens_per_step:,} tokens per step, below the 64k this benchmark is about")
    common = ["--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
              "--hidden-size", str(args.hidden_size), "--num-layers", str(args.num_layers),
              "--vocab-size", str(args.vocab_size), "--warmup-steps", str(max(1, args.max_steps // 10))]
    # The monitor's defaults but the schedule: 1024 probes, probe batch 32, last layer, no extra steps.
    monitor = ["--every-n-steps", str(args.every_n_steps), "--extra-steps", "", "--num-probes", "1024",
               "--probe-batch-size", "32"]
    variants = {"without": ["--no-geometry"], "GeometryMonitor (defaults)": monitor}
    if args.autocast != "none":
        variants[f"GeometryMonitor (autocast={args.autocast})"] = [*monitor, "--probe-autocast", args.autocast]
    print(f"{datetime.date.today()}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={args.threads or 'default'}; load average {load()}; {args.max_steps} steps of "
          f"{tokens_per_step:,} tokens, d={args.hidden_size}, {args.num_layers} layer(s), vocabulary {args.vocab_size}; "
          f"monitor every {args.every_n_steps} steps", flush=True)
    rounds: list[dict[str, dict[str, float]]] = []
    for index in range(args.repeats):
        names = list(variants) if index % 2 == 0 else list(reversed(variants))
        seconds = {name: run_recipe(common, variants[name], args.threads) for name in names}
        rounds.append(seconds)
        base, base_cpu = seconds["without"]["fit"], seconds["without"]["cpu"]
        parts = [f"without {base:.1f}s (CPU {base_cpu:.1f}s)"]
        for name in variants:
            if name != "without":
                fit, cpu = seconds[name]["fit"], seconds[name]["cpu"]
                parts.append(f"{name} {fit:.1f}s ({100 * (fit - base) / base:+.2f}%), CPU {cpu:.1f}s "
                             f"({100 * (cpu - base_cpu) / base_cpu:+.2f}%); self-reported "
                             f"{seconds[name]['measuring']:.1f}s = {seconds[name]['share']:.2f}%")
        print(f"  round {index + 1} (load {load()}): " + ", ".join(parts), flush=True)

    step_seconds = statistics.median(r["without"]["fit"] for r in rounds) / max(1, args.max_steps)
    step_cpu = statistics.median(r["without"]["cpu"] for r in rounds) / max(1, args.max_steps)
    print(f"median over {args.repeats} paired round(s); a training step takes {step_seconds:.2f} s "
          f"({step_cpu:.2f} s of CPU) without the monitor:")
    for name in variants:
        if name == "without":
            continue
        first = rounds[0][name]
        count = first["measurements"]
        paired = [100 * (r[name]["fit"] - r["without"]["fit"]) / r["without"]["fit"] for r in rounds]
        paired_cpu = [100 * (r[name]["cpu"] - r["without"]["cpu"]) / r["without"]["cpu"] for r in rounds]
        # Per measurement, in training steps of the same round: wall, CPU, and the monitor's own clock.
        wall_steps = statistics.median((r[name]["fit"] - r["without"]["fit"]) / count / (r["without"]["fit"] / args.max_steps)
                                       for r in rounds)
        cpu_steps = statistics.median((r[name]["cpu"] - r["without"]["cpu"]) / count / (r["without"]["cpu"] / args.max_steps)
                                      for r in rounds)
        own_steps = statistics.median(r[name]["measuring"] / r[name]["measurements"]
                                      / ((r[name]["fit"] - r[name]["measuring"]) / args.max_steps) for r in rounds)
        print(f"  {name}: {count} measurements of {first['probes']} probes ({first['probe_tokens']:,} tokens)\n"
              f"    paired overhead at every {args.every_n_steps} steps: wall {statistics.median(paired):+.2f}% "
              f"(rounds {', '.join(f'{p:+.2f}%' for p in paired)}), CPU {statistics.median(paired_cpu):+.2f}% "
              f"(rounds {', '.join(f'{p:+.2f}%' for p in paired_cpu)}); self-reported share "
              f"{statistics.median(r[name]['share'] for r in rounds):.2f}%\n"
              f"    one measurement costs {wall_steps:.2f} (wall) / {cpu_steps:.2f} (CPU) / {own_steps:.2f} (self-reported) "
              f"training steps\n"
              f"    at the default every {DEFAULT_EVERY} steps: {100 * wall_steps / DEFAULT_EVERY:.2f}% wall, "
              f"{100 * cpu_steps / DEFAULT_EVERY:.2f}% CPU, {100 * own_steps / DEFAULT_EVERY:.2f}% self-reported "
              f"(aim <= 1%)", flush=True)


if __name__ == "__main__":
    main()
