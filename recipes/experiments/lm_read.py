#!/usr/bin/env python
"""Read an lm_compress.py run with error bars (issue 19, part 4): a table, the detector's verdict, a figure.

    python recipes/experiments/lm_read.py OUT/geometry.json [--png docs/img/lm_run4.png] [--rows 0]

Prints a markdown table (step, tokens, RankMe ± se, alpha ± se, top-eigenvalue share ± se, val loss,
lr), then ``detect_phases`` twice: with the jackknife standard errors and without (the trajectory's
own scatter as the noise). The figure has RankMe, alpha and the top share with ±1 se bands on a
log step axis (detector segments shaded), and the validation loss with the learning rate.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def column(history: list[dict], key: str) -> np.ndarray:
    return np.array([math.nan if r.get(key) is None else float(r[key]) for r in history])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json")
    p.add_argument("--png", default=None)
    p.add_argument("--title", default=None)
    p.add_argument("--every-row", type=int, default=1, help="print every N-th row of the table (and the last)")
    args = p.parse_args()

    from geomtrace.phases import detect_phases, format_segments

    payload = json.loads(Path(args.json).read_text())
    h = payload["history"]
    steps = column(h, "step")
    r, r_se = column(h, "geometry/rankme"), column(h, "geometry/rankme_se")
    a, a_se = column(h, "geometry/alpha"), column(h, "geometry/alpha_se")
    top, top_se = column(h, "geometry/top_share"), column(h, "geometry/top_share_se")
    val, lr, tokens = column(h, "val_loss"), column(h, "lr"), column(h, "tokens")

    print("| step | tokens | RankMe ± se | α ± se | λ1/Σλ ± se | val loss | lr |")
    print("|---:|---:|---|---|---|---:|---:|")
    for i in range(len(h)):
        if i % args.every_row and i != len(h) - 1:
            continue
        print(f"| {int(steps[i])} | {tokens[i] / 1e6:.2f}M | {r[i]:.2f} ± {r_se[i]:.2f} | {a[i]:.3f} ± {a_se[i]:.3f} "
              f"| {top[i]:.3f} ± {top_se[i]:.3f} | {val[i]:.3f} | {lr[i]:.1e} |")
    peak = int(np.nanargmax(r))
    print(f"\nRankMe peak {r[peak]:.2f} ± {r_se[peak]:.2f} at step {int(steps[peak])}; last step {int(steps[-1])} "
          f"({steps[-1] / max(steps[peak], 1):.0f}x the peak's step), {tokens[-1] / 1e6:.1f}M tokens")
    with_se = detect_phases(steps, r, a, rankme_se=r_se, alpha_se=a_se, spectrum="covariance")
    without = detect_phases(steps, r, a, spectrum="covariance")
    print("\ndetect_phases with the jackknife standard errors:")
    print(format_segments(with_se))
    for s in with_se:
        if s.note:
            print(f"  {s.start_step:.0f}-{s.end_step:.0f}: {s.note}")
    print("\ndetect_phases without them:")
    print(format_segments(without))

    if args.png:
        import logging

        import matplotlib

        matplotlib.use("Agg")
        logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
        import matplotlib.pyplot as plt

        x = np.maximum(steps, 0.5)  # step 0 drawn at 0.5 on the log axis
        fig, axes = plt.subplots(4, 1, figsize=(7, 9.5), sharex=True)
        colours = {"warmup": "#dddddd", "entropy-seeking": "#cfe3ff", "compression-seeking": "#ffd9c7"}
        for ax, (y, se, name) in zip(axes, ((r, r_se, "RankMe"), (a, a_se, "α-ReQ"), (top, top_se, "λ1 / Σλ"))):
            for s in with_se:
                ax.axvspan(max(s.start_step, 0.5), s.end_step, color=colours.get(s.name, "#eeeeee"), lw=0)
            ax.plot(x, y, "o-", ms=3, color="C0")
            ax.fill_between(x, y - se, y + se, color="C0", alpha=0.3, lw=0)
            ax.set_ylabel(name)
        axes[3].plot(x, val, "o-", ms=3, color="C2", label="val loss")
        axes[3].set_ylabel("val loss")
        twin = axes[3].twinx()
        twin.plot(x, lr, color="C3", lw=1, label="lr")
        twin.set_ylabel("lr", color="C3")
        axes[3].set_xscale("log")
        axes[3].set_xlabel("step (step 0 at 0.5); bands: ±1 jackknife se\nshading (detect_phases with se): "
                           "dark grey warmup, light grey stable, blue entropy-, orange compression-seeking")
        axes[0].set_title(args.title or Path(args.json).parent.name)
        fig.tight_layout()
        fig.savefig(args.png, dpi=80)
        print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
