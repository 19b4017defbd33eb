"""Memorization benchmarks, each route measured side by side in one run.

(A) ∞-gram index over a corpus of about 5M tokens:
    * geomtrace: ``NgramIndex.build`` (write the stream, infini-gram's indexer with --cpus 1,
      the count check) and ``NgramIndex.prob`` queries (unbounded ∞-gram);
    * a plain Python n-gram counter: ``collections.Counter`` of every n-gram up to
      ``--max-n`` (never across documents), queried by the same longest-suffix rule but with
      suffixes capped at ``max_n - 1`` tokens (all a bounded counter can do).
    Reported: build seconds, peak memory added by the build, queries/s, and how often the two
    agree (exactly, whenever the ∞-gram match is no longer than the counter's cap).

(B) Model answer log-likelihood of cloze pairs: geomtrace's ``answer_logprobs`` (batched,
    left padding, logits only at answer positions) against the seed's loop (one pair per
    forward, full logits, softmax, log of each answer token; without the seed's extra top-5
    decoding, so a kinder baseline). The routes alternate per round.

The corpus is sampled from a bigram model of the embedded corpus (CPython's
``pydoc_data.topics`` tokenized with a locally trained BPE): realistic unigram and bigram
statistics, no download. Machines are noisy: read the ratios, not the absolute times.

Usage: python benchmarks/memorization.py [--tokens 5000000] [--queries 2000] [--max-n 4]
           [--pairs 512] [--rounds 3] [--part all|index|scoring] [--threads N]
"""

from __future__ import annotations

import argparse
import bisect
import math
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch


def current_rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def sample_corpus(n_tokens: int, seed: int = 0) -> tuple[list[np.ndarray], list[list[int]], object]:
    """Documents sampled from a bigram model of the embedded corpus, plus the real paragraphs."""
    from geomtrace.tiny import embedded_corpus, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer()
    paragraphs = tokenizer(embedded_corpus(), add_special_tokens=False)["input_ids"]
    vocab = len(tokenizer)
    counts = np.zeros((vocab, vocab), dtype=np.float64)
    for doc in paragraphs:
        np.add.at(counts, (doc[:-1], doc[1:]), 1.0)
    counts += 1e-3  # every transition possible, rare ones rarely
    cumulative = np.cumsum(counts / counts.sum(1, keepdims=True), axis=1)
    lengths = np.array([len(d) for d in paragraphs])
    starts = np.array([d[0] for d in paragraphs])
    rng = np.random.default_rng(seed)
    documents, total = [], 0
    tables = [row.tolist() for row in cumulative]
    while total < n_tokens:
        length = int(rng.choice(lengths))
        doc = np.empty(length, dtype=np.int64)
        token = int(rng.choice(starts))
        draws = rng.random(length)
        for i in range(length):
            doc[i] = token
            token = min(bisect.bisect_left(tables[token], draws[i]), vocab - 1)
        documents.append(doc)
        total += length
    return documents, paragraphs, tokenizer


class CounterNgrams:
    """The plain Python route: Counter of all n-grams up to max_n, longest suffix <= max_n - 1."""

    def __init__(self, documents: list[list[int]], max_n: int) -> None:
        self.max_n = max_n
        self.counts: Counter = Counter()
        self.stream = 0
        for doc in documents:
            self.stream += len(doc) + 1  # infini-gram's empty-context count: one separator per document
            for n in range(1, max_n + 1):
                self.counts.update(zip(*(doc[i:] for i in range(n))))

    def prob(self, context: list[int], token: int) -> tuple[float, int]:
        for length in range(min(len(context), self.max_n - 1), -1, -1):
            suffix = tuple(context[len(context) - length :])
            prompt = self.counts.get(suffix, 0) if length else self.stream
            if prompt:
                return self.counts.get(suffix + (token,), 0) / prompt, length
        return 0.0, 0


def make_queries(documents, held_out, n: int, seed: int = 1) -> list[tuple[list[int], int]]:
    """Half from the corpus (long matches), half from held-out real text (short matches)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        source = documents if i % 2 == 0 else held_out
        doc = source[int(rng.integers(len(source)))]
        while len(doc) < 34:
            doc = source[int(rng.integers(len(source)))]
        end = int(rng.integers(32, len(doc)))
        out.append(([int(t) for t in doc[end - 32 : end]], int(doc[end])))
    return out


def bench_index(args) -> None:
    from geomtrace.memorization import NgramIndex

    print(f"sampling a {args.tokens:,}-token corpus ...", flush=True)
    documents, paragraphs, _ = sample_corpus(args.tokens)
    n_tokens = sum(len(d) for d in documents)
    as_lists = [d.tolist() for d in documents]
    queries = make_queries(as_lists, paragraphs, args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        rss0 = current_rss_mib()
        start = time.perf_counter()
        index = NgramIndex.build(documents, Path(tmp) / "index", progress=False)
        build_s = time.perf_counter() - start
        index_mib = sum(p.stat().st_size for p in (Path(tmp) / "index").iterdir()) / 2**20
        rss_index = current_rss_mib() - rss0

        rss0 = current_rss_mib()
        start = time.perf_counter()
        counter = CounterNgrams(as_lists, args.max_n)
        counter_s = time.perf_counter() - start
        rss_counter = current_rss_mib() - rss0

        # Queries: interleave the routes in blocks so background load hits both alike.
        t_index = t_counter = 0.0
        agree = comparable = 0
        for block in range(0, len(queries), 100):
            chunk = queries[block : block + 100]
            start = time.perf_counter()
            answers = [index.prob(c, t) for c, t in chunk]
            t_index += time.perf_counter() - start
            start = time.perf_counter()
            bounded = [counter.prob(c, t) for c, t in chunk]
            t_counter += time.perf_counter() - start
            for a, (p, length) in zip(answers, bounded):
                if a.suffix_len <= args.max_n - 1:
                    comparable += 1
                    agree += a.suffix_len == length and math.isclose(a.prob, p, rel_tol=1e-12)
        long_matches = sum(index.prob(c, t).suffix_len > args.max_n - 1 for c, t in queries)

        # Answer scoring: infgram_scores sends each later answer token only the context its
        # previous match allows; the plain route sends the full context every time.
        from geomtrace.memorization import QASet, infgram_scores

        pairs = QASet.cloze(paragraphs, n=250, answer_tokens=4, question_tokens=32, seed=0).tokenize()
        start = time.perf_counter()
        trimmed = infgram_scores(index, pairs)
        t_trimmed = time.perf_counter() - start
        start = time.perf_counter()
        full = [[index.prob(list(p.context_ids) + list(p.answer_ids[:j]), t).prob for j, t in enumerate(p.answer_ids)]
                for p in pairs]
        t_full = time.perf_counter() - start
        same = all(np.array_equal(a, np.array(b)) for a, b in zip(trimmed.token_probs, full))

    print(f"\n(A) corpus {n_tokens:,} tokens in {len(documents):,} documents, vocabulary {len(set(np.concatenate(documents).tolist())):,}")
    print(f"  build: geomtrace {build_s:.1f} s (index files {index_mib:.0f} MiB, +{rss_index:.0f} MiB RSS) | "
          f"Counter n<={args.max_n} {counter_s:.1f} s (+{rss_counter:.0f} MiB RSS) | ratio {counter_s / build_s:.1f}x")
    qps_index, qps_counter = len(queries) / t_index, len(queries) / t_counter
    print(f"  queries (32-token contexts): geomtrace ∞-gram {qps_index:,.0f}/s | Counter (suffix <= {args.max_n - 1}) "
          f"{qps_counter:,.0f}/s | ratio {qps_index / qps_counter:.2f}")
    print(f"  agreement where the ∞-gram match is <= {args.max_n - 1} tokens: {agree}/{comparable}; "
          f"queries whose ∞-gram match is longer than the counter can see: {long_matches}/{len(queries)}")
    n_answer = 250 * 4
    print(f"  answer scoring ({n_answer} answer tokens of 250 cloze pairs from real text): infgram_scores "
          f"{n_answer / t_trimmed:,.0f} tokens/s | full context per query {n_answer / t_full:,.0f} tokens/s | "
          f"ratio {t_full / t_trimmed:.1f}x | identical: {same}")


def seed_loop(model, pairs) -> np.ndarray:
    out = []
    with torch.no_grad():
        for pair in pairs:
            ids = torch.tensor([list(pair.context_ids) + list(pair.answer_ids)])
            probs = torch.softmax(model(ids).logits[0], dim=-1)
            start = len(pair.context_ids) - 1
            out.append(sum(math.log(probs[start + j, t].item()) for j, t in enumerate(pair.answer_ids)))
    return np.array(out)


def bench_scoring(args) -> None:
    from geomtrace.memorization import QASet, answer_logprobs
    from geomtrace.tiny import build_tiny_model, embedded_corpus, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer()
    docs = tokenizer(embedded_corpus(), add_special_tokens=False)["input_ids"]
    pairs = QASet.cloze(docs, n=args.pairs, answer_tokens=4, question_tokens=32, seed=0).tokenize()
    vocab = 50_304  # Pythia's
    model = build_tiny_model("gpt_neox", vocab_size=vocab, hidden_size=128, num_layers=6, num_heads=4,
                             intermediate_size=512, max_position_embeddings=2048).eval()
    t_batched, t_seed = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        batched = answer_logprobs(model, pairs, batch_size=32, padding_side="left")
        t_batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference = seed_loop(model, pairs)
        t_seed.append(time.perf_counter() - start)
    diff = float(np.max(np.abs(batched.total - reference)))
    b, s = np.median(t_batched), np.median(t_seed)
    print(f"\n(B) {len(pairs)} cloze pairs (32-token question, 4-token answer), Pythia-14m shape, vocabulary {vocab:,}, "
          f"{args.rounds} rounds (median)")
    print(f"  geomtrace batched {len(pairs) / b:,.0f} pairs/s | seed loop {len(pairs) / s:,.0f} pairs/s | "
          f"speed-up {s / b:.1f}x | max |difference| {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=5_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--max-n", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part", choices=("all", "index", "scoring"), default="all")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()} | {torch.get_num_threads()} torch threads | "
          f"Python {platform.python_version()} | torch {torch.__version__} | {time.strftime('%Y-%m-%d %H:%M')}")
    if args.part in ("all", "index"):
        bench_index(args)
    if args.part in ("all", "scoring"):
        bench_scoring(args)


if __name__ == "__main__":
    main()
