#!/usr/bin/env python
"""Memorization against the geometric phases of a live run (the figure of docs/phases.md).

Reads a history JSON written with memorization probes (``recipes/pretrain.py`` writes
``outputs/pretrain/geometry.json`` with ``train``, ``heldout`` and ``heldout_seedrule``), detects
the phases on RankMe / alpha, prints where each probe's Spearman correlation peaks and in which
phase, a table per measurement, and draws RankMe, alpha, the Spearman correlations, the answer
log-likelihoods and the train - held-out gap on one x axis with the phases shaded.

    python recipes/memorization_phases.py outputs/pretrain/geometry.json docs/img/pretrain_memorization.png
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("history", help="a live history JSON with memorization/... values")
    parser.add_argument("figure", help="output figure (.png, .svg or .pdf)")
    parser.add_argument("--train", default="train", help="probe on training text")
    parser.add_argument("--heldout", default="heldout", help="probe on held-out text")
    args = parser.parse_args(argv)

    from geomtrace.phases import detect_phases, format_segments
    from geomtrace.plots import memorization_series, save_figure, trajectory_figure

    run = json.load(open(args.history, encoding="utf-8"))
    history = run["history"] if isinstance(run, dict) else run
    keys = (run.get("provenance") or {}).get("trajectory") or {}
    rankme_key, alpha_key = keys.get("rankme", "geometry/rankme"), keys.get("alpha", "geometry/alpha")
    steps = [r["step"] for r in history]
    rankme = [r[rankme_key] for r in history]
    alpha = [r[alpha_key] for r in history]
    segments = detect_phases(steps, rankme, alpha) if len(steps) >= 5 else []
    print(format_segments(segments) if segments else "fewer than 5 measurements: no phases")

    def phase_at(step: float) -> str:
        return next((s.name for s in segments if s.start_step <= step <= s.end_step), "-")

    memo: dict[str, dict[str, list[float]]] = {}
    for key in ("spearman", "answer_logprob", "n_scored"):
        for name, series in memorization_series(history, key).items():
            memo.setdefault(name, {"step": series["step"]})[key] = series[key]
    if not memo:
        raise SystemExit(f"{args.history} has no memorization/... values")
    for name, series in memo.items():
        rho = np.asarray(series["spearman"], dtype=np.float64)
        if np.all(np.isnan(rho)):
            print(f"{name}: no finite Spearman correlation")
            continue
        i = int(np.nanargmax(rho))
        print(f"{name}: Spearman peaks at {rho[i]:+.3f}, step {series['step'][i]:.0f} ({phase_at(series['step'][i])}); "
              f"{rho[0]:+.3f} at the start, {rho[-1]:+.3f} at the end; {series['n_scored'][0]:.0f} pairs scored")
    lines = {name: {"step": s["step"], "spearman": s["spearman"]} for name, s in memo.items()}
    if args.train in memo and args.heldout in memo:
        gap = np.asarray(memo[args.train]["answer_logprob"]) - np.asarray(memo[args.heldout]["answer_logprob"])
        i = int(np.argmax(gap))
        print(f"answer log-likelihood gap {args.train} - {args.heldout}: largest {gap[i]:.2f} nats at step "
              f"{memo[args.train]['step'][i]:.0f} ({phase_at(memo[args.train]['step'][i])}); {gap[-1]:.2f} at the end")
        for name in (args.train, args.heldout):
            lines[name]["answer_logprob"] = memo[name]["answer_logprob"]
        lines[f"{args.train} − {args.heldout}"] = {"step": memo[args.train]["step"], "gap": gap.tolist()}
    names = list(memo)
    print("step  RankMe  alpha  phase            " + "  ".join(f"ρ {n}" for n in names))
    for j, row in enumerate(history):
        rhos = "  ".join(f"{memo[n]['spearman'][j]:+.3f}" if j < len(memo[n]["spearman"]) else "-" for n in names)
        print(f"{row['step']:4d}  {rankme[j]:6.2f}  {alpha[j]:5.2f}  {phase_at(row['step']):15s}  {rhos}")
    figure = trajectory_figure({"run": {"step": steps, "rankme": rankme, "alpha": alpha}}, phases=segments or None,
                               memorization=lines, memorization_keys=("spearman", "answer_logprob", "gap"),
                               title="geometry and memorization")
    figure.axes[-1].set_ylabel("answer log-lik.\ngap (train − held-out)")
    print(save_figure(figure, args.figure))
    return 0


if __name__ == "__main__":
    sys.exit(main())
