"""Replay throughput: geomtrace's runner vs the paper scripts' naive loop, side by side.

Both measure the same saved checkpoints (a GPT-NeoX, hidden 256, 4 layers, built from config
with Pythia's 50,304-token vocabulary and saved with ``save_pretrained``) on the same probe
set (512 sequences of 11..128 tokens):

* geomtrace: ``run_replay`` - batched forwards (32 sequences, padding-aware last token),
  streaming covariance, one ``eigvalsh`` per checkpoint, results store.
* naive: batch size 1 through the causal LM with ``output_hidden_states=True`` (so logits
  over the whole vocabulary at every position), stack all last-token features, center, full
  numpy SVD of the stacked matrix (eigenvalues = s^2 / (N - 1)), as the paper's scripts do.

geomtrace runs the base model only (no LM head): for small models with a large vocabulary
that is most of the saving; ``--vocab-size 2048`` shows the gain from batching alone.

Loading is timed in both; the routes alternate per checkpoint so that background load
hits both alike. Prints sequences/second, the ratio, and how closely the values agree.

``--part overlap`` times the replay loop itself: sequential (``prefetch=False``: load k,
measure k, load k + 1, ...) against overlapped (``prefetch=True``: checkpoint k + 1 loads in
a background thread while k is measured), on the same local checkpoints, in ``--rounds``
rounds whose order alternates; prints each round's ratio and the median, with the mean
load and measure time per checkpoint that explain it.

Usage: python benchmarks/replay.py [--part naive|overlap|all] [--checkpoints 3] [--probes 512]
       [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_checkpoints(root: Path, n: int, hidden: int, layers: int, vocab_size: int):
    from geomtrace.tiny import build_tiny_model, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer()
    for i in range(n):
        model = build_tiny_model("gpt_neox", hidden_size=hidden, num_layers=layers, num_heads=4, seed=i,
                                 tokenizer=tokenizer, vocab_size=max(vocab_size, len(tokenizer)))
        model.save_pretrained(root / f"checkpoint-{1000 * i}")
    tokenizer.save_pretrained(root)
    return tokenizer


def naive_replay(ckpt_dirs: list[Path], sequences: list[list[int]]) -> list[tuple[float, float]]:
    """The paper scripts' route: one sequence per forward, stack, center, full SVD."""
    from transformers import AutoModelForCausalLM

    out = []
    for path in ckpt_dirs:
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        rows = []
        with torch.no_grad():
            for seq in sequences:
                hidden = model(torch.tensor([seq]), output_hidden_states=True).hidden_states[-1]
                rows.append(hidden[0, -1].float().numpy())
        x = np.stack(rows).astype(np.float64)
        x -= x.mean(0)
        s = np.linalg.svd(x, compute_uv=False)
        lam = s**2 / (len(rows) - 1)
        p = lam / lam.sum() + 1e-7
        rankme = float(np.exp(-(p * np.log(p)).sum()))
        ranks = np.arange(12, min(100, len(lam)) + 1)
        w = 1.0 / ranks
        slope = np.polyfit(np.log(ranks), np.log(lam[ranks - 1]), 1, w=np.sqrt(w))[0]
        out.append((rankme, float(-slope)))
        del model
    return out


def overlap_benchmark(ckpts, probes, config, tmp: Path, rounds: int) -> None:
    """Sequential vs overlapped replay loop, side by side in each round (order alternating)."""
    from geomtrace.replay import ResultsStore, run_replay

    print(f"\n{'round':<8}{'sequential s':>14}{'overlapped s':>14}{'ratio':>8}")
    ratios, loads, measures = [], [], []
    for r in range(rounds):
        times = {}
        for prefetch in ((False, True) if r % 2 == 0 else (True, False)):
            out = tmp / f"overlap-{r}-{prefetch}"
            start = time.perf_counter()
            summary = run_replay(ckpts, out, probes=probes, config=config, prefetch=prefetch, progress=False,
                                 verbose=False, tensorboard_dir=None)
            times[prefetch] = time.perf_counter() - start
            assert not summary.failed, summary.failed
            if not prefetch:
                records = ResultsStore(out).records()
                loads += [rec["load_seconds"] for rec in records]
                measures += [rec["seconds"] for rec in records]
        ratios.append(times[False] / times[True])
        print(f"{r + 1:<8}{times[False]:>14.2f}{times[True]:>14.2f}{ratios[-1]:>8.2f}")
    load, measure = statistics.mean(loads), statistics.mean(measures)
    print(f"median sequential / overlapped over {rounds} rounds: {statistics.median(ratios):.2f}x")
    print(f"per checkpoint (sequential runs): load {load:.2f} s, measure {measure:.2f} s; "
          f"perfect overlap would give (L + M) / max(L, M) = {(load + measure) / max(load, measure):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--probes", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vocab-size", type=int, default=50304, help="model vocabulary (Pythia: 50304)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--part", choices=("naive", "overlap", "all"), default="all",
                        help="naive: vs the paper scripts' loop; overlap: sequential vs prefetching replay loop")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the overlap comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from geomtrace.measure import MeasureConfig
    from geomtrace.probes import load_probes
    from geomtrace.replay import ResultsStore, local_checkpoints, run_replay

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ckpts"
        tokenizer = make_checkpoints(root, args.checkpoints, args.hidden, args.layers, args.vocab_size)
        probes = load_probes(tokenizer, None, num_sequences=args.probes, min_tokens=11, max_tokens=128)
        ckpts = local_checkpoints(root)
        n_seq = len(ckpts) * len(probes)
        print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"workload: {len(ckpts)} checkpoints x {len(probes)} probes ({probes.num_tokens()} tokens each pass), "
              f"GPT-NeoX hidden {args.hidden}, {args.layers} layers, vocab {max(args.vocab_size, len(tokenizer))}, "
              "last layer, last token")

        # warm-up (first-call costs of torch / transformers) on one checkpoint, not timed
        run_replay(ckpts[:1], Path(tmp) / "warm", probes=probes, config=MeasureConfig(batch_size=args.batch_size),
                   progress=False, verbose=False)
        if args.part in ("overlap", "all"):
            overlap_benchmark(ckpts, probes, MeasureConfig(batch_size=args.batch_size), Path(tmp), args.rounds)
        if args.part == "overlap":
            return
        naive_replay([Path(ckpts[0].path)], probes.sequences[:16])

        # Interleaved per checkpoint, so load from other processes hits both routes alike.
        ours = baseline = 0.0
        naive = []
        for ckpt in ckpts:
            start = time.perf_counter()
            run_replay([ckpt], Path(tmp) / "out", probes=probes, config=MeasureConfig(batch_size=args.batch_size),
                       progress=False, verbose=False)
            ours += time.perf_counter() - start
            start = time.perf_counter()
            naive += naive_replay([Path(ckpt.path)], probes.sequences)
            baseline += time.perf_counter() - start

        records = ResultsStore(Path(tmp) / "out").records()
        rankme_err = max(abs(r["rankme"] / n[0] - 1) for r, n in zip(records, naive))
        alpha_err = max(abs(r["alpha"] / n[1] - 1) for r, n in zip(records, naive) if math.isfinite(r["alpha"]))

    print(f"{'route':<44}{'seconds':>10}{'seq/s':>10}")
    print(f"{'geomtrace replay (batch ' + str(args.batch_size) + ', streaming cov)':<44}{ours:>10.2f}"
          f"{n_seq / ours:>10.1f}")
    print(f"{'naive (batch 1, stack + full SVD)':<44}{baseline:>10.2f}{n_seq / baseline:>10.1f}")
    print(f"speed-up: {baseline / ours:.1f}x")
    print(f"agreement: max relative difference RankMe {rankme_err:.1e}, alpha {alpha_err:.1e}")


if __name__ == "__main__":
    main()
