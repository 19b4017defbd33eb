#!/usr/bin/env python
"""Are the post-training shifts larger than their noise? (issue 19, part 4)

    python recipes/experiments/posttrain_noise.py \\
        sft=outputs/pretrain/final:outputs/sft/final \\
        dpo=outputs/pretrain/final:outputs/dpo/final \\
        grpo=outputs/sft/final:outputs/grpo/final  [--num-probes 256] [--groups 20] [--json OUT.json]

For each ``name=BEFORE:AFTER`` pair, both models are measured on the *same* chat-formatted
probes as the post-training recipes use (``recipes/_common.py``: 256 embedded-corpus paragraphs
as user turns, seed 0, the last layer's last token), with the delete-a-group jackknife of
``geomtrace.uncertainty`` (probe ``i`` in group ``i mod G``, as the measuring path groups them).
Two standard errors of the change are printed:

- ``se (independent)``: ``sqrt(se_before^2 + se_after^2)``, what ``geomtrace.phases.shift`` and the
  detector combine. It treats the two values as independent samples, which overstates the error
  when both are measured on the same probes.
- ``se (paired)``: the jackknife of the *difference*, ``theta_(g)(after) - theta_(g)(before)`` with
  the same group deleted on both sides (``geomtrace.phases.paired_jackknife_se``): the probe
  sample's own noise in the change, the right error for "did this checkpoint move geometry on
  these probes?", and what ``shift()`` uses when both sides carry their replicates.

Both are measured through ``measure_geometry`` (the callbacks' measuring path), so the values and
standard errors are those the recipes log; its ``LayerGeometry`` carries the replicates.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def parse_pair(text: str) -> tuple[str, str, str]:
    name, sep, paths = text.partition("=")
    before, sep2, after = paths.partition(":")
    if not (sep and sep2 and name and before and after):
        raise argparse.ArgumentTypeError(f"expected NAME=BEFORE:AFTER, got {text!r}")
    return name, before, after


def chat_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    from geomtrace.tiny import CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:  # as recipes/_common.load_start does
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def measure(path: str, probes: Any, groups: int, batch_size: int) -> Any:
    """The last layer's :class:`~geomtrace.measure.LayerGeometry` of the model at ``path`` on
    ``probes``, through the callbacks' measuring path (values, standard errors, replicates)."""
    from transformers import AutoModelForCausalLM

    from geomtrace.measure import MeasureConfig, measure_geometry

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    config = MeasureConfig(uncertainty="jackknife", uncertainty_groups=groups, batch_size=batch_size)
    return measure_geometry(model, probes, config).last


def change(before: Any, after: Any, name: str) -> dict[str, float]:
    from geomtrace.phases import paired_jackknife_se

    b, a = float(getattr(before, name)), float(getattr(after, name))
    se_b, se_a = float(getattr(before, f"{name}_se")), float(getattr(after, f"{name}_se"))
    reps_b, reps_a = getattr(before, f"{name}_replicates"), getattr(after, f"{name}_replicates")
    independent = math.hypot(se_b, se_a)
    paired = paired_jackknife_se(reps_b, reps_a)
    assert paired is not None, "both measurements have G finite replicates"
    delta = a - b
    return {
        "before": b,
        "before_se": se_b,
        "after": a,
        "after_se": se_a,
        "change": delta,
        "se_independent": independent,
        "se_paired": paired,
        "z_independent": delta / independent if independent > 0 else math.nan,
        "z_paired": delta / paired if paired > 0 else math.nan,
    }


def one_side(rows: dict[str, dict[str, float]], side: str, result: Any = None) -> dict[str, Any]:
    """``{"rankme", "rankme_se", "alpha", "alpha_se"}`` of the ``"before"`` or ``"after"`` model, and
    the replicates when ``result`` (its :class:`~geomtrace.measure.LayerGeometry`) is given."""
    out: dict[str, Any] = {
        key: rows[q][side + suffix] for q in ("rankme", "alpha") for key, suffix in ((q, ""), (q + "_se", "_se"))
    }
    if result is not None:
        out.update({f"{q}_replicates": getattr(result, f"{q}_replicates") for q in ("rankme", "alpha")})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", nargs="+", type=parse_pair, metavar="NAME=BEFORE:AFTER")
    parser.add_argument("--num-probes", type=int, default=256, help="as the post-training recipes (256)")
    parser.add_argument("--groups", type=int, default=20, help="jackknife groups (geomtrace's default, 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default=None, help="write the table's numbers here")
    args = parser.parse_args(argv)

    from geomtrace.phases import shift
    from geomtrace.probes import load_probes

    report: dict[str, Any] = {"num_probes": args.num_probes, "groups": args.groups, "pairs": {}}
    print("| run | | before ± se | after ± se | change | se indep. | z indep. | se paired | z paired |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, before_path, after_path in args.pairs:
        tokenizer = chat_tokenizer(before_path)
        probes = load_probes(tokenizer, num_sequences=args.num_probes, chat_template=True, seed=args.seed)
        before = measure(before_path, probes, args.groups, args.batch_size)
        after = measure(after_path, probes, args.groups, args.batch_size)
        rows = {quantity: change(before, after, quantity) for quantity in ("rankme", "alpha")}
        # shift()'s verdicts: from the values and their standard errors alone (independent), and
        # with the replicates (paired, what the recipes' callbacks now record)
        independent = shift(one_side(rows, "before"), one_side(rows, "after"))
        verdict = shift(one_side(rows, "before", before), one_side(rows, "after", after))
        for quantity, r in rows.items():
            print(
                f"| {name} | {quantity} | {r['before']:.3f} ± {r['before_se']:.3f} | {r['after']:.3f} ± "
                f"{r['after_se']:.3f} | {r['change']:+.3f} | {r['se_independent']:.3f} | {r['z_independent']:+.1f} | "
                f"{r['se_paired']:.3f} | {r['z_paired']:+.1f} |"
            )
        print(f"|   | shift(), independent | {independent.summary()} |||||||")
        print(f"|   | shift(), paired | {verdict.summary()} |||||||")
        report["pairs"][name] = {
            "before": before_path,
            "after": after_path,
            **rows,
            "shift": verdict.to_dict(),
            "shift_independent": independent.to_dict(),
        }
    if args.json:
        target = Path(args.json)
        partial = target.with_name(target.name + ".partial")
        partial.write_text(json.dumps(report, indent=1, default=float))
        partial.replace(target)  # atomic: a reader never sees half a file
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
