"""CPU cost of ``MeasureConfig(source="training")`` on the demo, paired with a run without geometry.

Trains the demo (``recipes/pretrain.py`` at its defaults: a Pythia-14m-shaped GPT-NeoX, d = 128,
6 layers, a 4096-token BPE vocabulary, 32 sequences of 128 tokens per step, fp32) once without
geometry and once with ``GeometryMonitor(measure=MeasureConfig(source="training"))`` every
``--every-n-steps`` steps (10 by default; no extra steps, no memorization, no checkpoints), same
seed and data order, and compares the fits' CPU time (the process's own, all threads: far less
sensitive than wall time to other jobs on a shared machine). A second monitored variant turns the
eigenspectrum figures off (``--log-spectrum-every 0``): matplotlib's figure is logging, not
measuring, and its one-time import (about 0.5 s of CPU) weighs on a short run.

Each round runs every variant (the order alternates between rounds); the script prints each round
and the medians of the paired overhead ``(with - without) / without``, and the monitor's own
account (its cost line: hooks, windows and logging over the fit's time), which needs no pairing.

Usage: python benchmarks/training_source.py [--max-steps 60] [--every-n-steps 10] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain.py"
FIT = re.compile(r"fit took ([0-9.]+)s \(([0-9.]+)s of CPU time\)")


def run_recipe(common: list[str], extra: list[str], threads: int | None) -> dict[str, float]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, str(RECIPE), *common, "--output", out, "--no-save", "--quiet", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if proc.returncode:
            raise RuntimeError(f"the recipe failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        fit = FIT.search(proc.stdout)
        if not fit:
            raise RuntimeError(f"no fit time in the recipe's output:\n{proc.stdout[-2000:]}")
        result = {"fit": float(fit.group(1)), "cpu": float(fit.group(2))}
        history = Path(out) / "geometry.json"
        if history.is_file():
            record = json.loads(history.read_text())
            rows = record["history"]
            result.update(
                measurements=len(rows),
                share=100 * record["cost"]["share"],
                measuring=record["cost"]["seconds_measuring"],
                windows=sum(r["geometry/seconds"] for r in rows),
                hooks=record["provenance"]["window"]["hook_seconds"],
                rows=record["provenance"]["window"]["rows"],
            )
    return result


def load() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--every-n-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2, help="paired rounds")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs (0: torch's default)")
    args = parser.parse_args()
    common = ["--max-steps", str(args.max_steps), "--memorization-pairs", "0", "--warmup-steps", "4"]
    monitor = ["--source", "training", "--every-n-steps", str(args.every_n_steps), "--extra-steps", ""]
    variants = {
        "without": ["--no-geometry"],
        "source=training": monitor,
        "source=training, no figures": [*monitor, "--log-spectrum-every", "0"],
    }
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"{now:%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={args.threads or 'default'}; load {load()}; the demo at its defaults for "
          f"{args.max_steps} steps, geometry every {args.every_n_steps} steps", flush=True)
    rounds: list[dict[str, dict[str, float]]] = []
    for index in range(args.repeats):
        names = list(variants) if index % 2 == 0 else list(reversed(variants))
        seconds = {name: run_recipe(common, variants[name], args.threads) for name in names}
        rounds.append(seconds)
        base = seconds["without"]["cpu"]
        parts = [f"without: CPU {base:.1f}s (wall {seconds['without']['fit']:.1f}s)"]
        for name in variants:
            if name != "without":
                run = seconds[name]
                parts.append(f"{name}: CPU {run['cpu']:.1f}s ({100 * (run['cpu'] - base) / base:+.2f}%), "
                             f"self-reported {run['measuring']:.2f}s = {run['share']:.2f}%")
        print(f"  round {index + 1} (load {load()}): " + "; ".join(parts), flush=True)
    print(f"median over {args.repeats} paired round(s):")
    step_cpu = statistics.median(r["without"]["cpu"] for r in rounds) / args.max_steps
    for name in variants:
        if name == "without":
            continue
        paired = [100 * (r[name]["cpu"] - r["without"]["cpu"]) / r["without"]["cpu"] for r in rounds]
        first = rounds[0][name]
        own = statistics.median(r[name]["share"] for r in rounds)
        hooks_per_step = statistics.median(r[name]["hooks"] for r in rounds) / args.every_n_steps
        window = statistics.median(r[name]["windows"] / r[name]["measurements"] for r in rounds)
        print(f"  {name}: {first['measurements']} windows of {first['rows']} rows; paired CPU overhead "
              f"{statistics.median(paired):+.2f}% (rounds {', '.join(f'{p:+.2f}%' for p in paired)}); self-reported "
              f"{own:.2f}% (aim <= 1%)\n"
              f"    hooks {1e3 * hooks_per_step:.2f} ms per step ({100 * hooks_per_step / step_cpu:.3f}% of a "
              f"{step_cpu:.2f} s CPU step); one window's geometry {1e3 * window:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
