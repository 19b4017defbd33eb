"""Worker for tests/test_memorization_likelihood.py: 2 gloo ranks score answer likelihoods.

Usage: python memorization_ddp.py OUT_JSON PORT N_PAIRS[,N_PAIRS...]   (one result per size)
Each rank scores its shard, every rank gets all values; the probe's ∞-gram side is computed by
rank 0 only (a brute-force source that counts its queries) and broadcast.
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_finish import finish_rank  # tests/workers/ is the script's folder, on sys.path


def worker_model():
    from geomtrace.tiny import build_tiny_model

    return build_tiny_model("gpt_neox", vocab_size=50, seed=7).eval()


def worker_docs() -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.integers(0, 6, size=int(rng.integers(12, 30))).tolist() for _ in range(10)]


def worker_pairs(n: int):
    from geomtrace.memorization import QASet

    return QASet.cloze(
        worker_docs(), n=n, answer_tokens=3, question_tokens=10, min_question_tokens=2, seed=1
    ).tokenize()


def run(rank: int, world_size: int, port: int, n_pairs: list[int], out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    from geomtrace.memorization import MemorizationProbe, QASet, answer_logprobs, infgram_scores, summarize
    from memorization_helpers import BruteForceSource

    model = worker_model()
    result = {}
    for n in n_pairs:
        pairs = worker_pairs(n)
        scores = answer_logprobs(model, pairs, batch_size=2)
        source = BruteForceSource(worker_docs())
        qa = QASet.cloze(worker_docs(), n=n, answer_tokens=3, question_tokens=10, min_question_tokens=2, seed=1)
        measured = MemorizationProbe(qa, source, batch_size=2).measure(model)
        expected = summarize(scores.total, infgram_scores(BruteForceSource(worker_docs()), pairs).logprob)
        result[str(n)] = {
            "total": scores.total.tolist(),
            "measured": measured,
            "expected": expected,
            "queries_sent": source.queries,
        }
    finish_rank(out, rank, result)


if __name__ == "__main__":
    out_path, port = sys.argv[1], int(sys.argv[2])
    sizes = [int(n) for n in sys.argv[3].split(",")]
    mp.spawn(run, args=(2, port, sizes, out_path), nprocs=2, join=True)
