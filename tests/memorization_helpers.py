"""Brute-force n-gram counting: the oracle the memorization tests compare against."""

from __future__ import annotations

import random

from geomtrace.memorization.index import InfgramProb


def brute_count(documents: list[list[int]], ngram: list[int]) -> int:
    """Occurrences of ``ngram`` inside documents; the empty n-gram counts every stream token,
    one separator per document included (infini-gram's convention)."""
    if not ngram:
        return sum(len(doc) + 1 for doc in documents)
    n = len(ngram)
    return sum(1 for doc in documents for i in range(len(doc) - n + 1) if list(doc[i : i + n]) == list(ngram))


def brute_infgram(documents: list[list[int]], context: list[int], token: int) -> tuple[float, int, int, int]:
    """(prob, suffix_len, prompt_cnt, cont_cnt) by the longest-suffix rule, counted by hand."""
    context = list(context)
    for length in range(len(context), -1, -1):
        suffix = context[len(context) - length :]
        prompt = brute_count(documents, suffix)
        if prompt > 0:
            cont = brute_count(documents, suffix + [token])
            return cont / prompt, length, prompt, cont
    raise AssertionError("the empty suffix always occurs")


class BruteForceSource:
    """An ∞-gram source counting by hand (what the probe sees from an index), counting queries."""

    def __init__(self, documents: list[list[int]]) -> None:
        self.documents = documents
        self.queries = 0

    def prob(self, context_ids, next_id) -> InfgramProb:
        self.queries += 1
        return InfgramProb(*brute_infgram(self.documents, list(context_ids), int(next_id)))

    def describe(self) -> str:
        return f"brute force over {len(self.documents)} documents"


def random_docs(seed: int, n_docs: int = 40, alphabet: int = 12, shift: int = 0, scale: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[shift + scale * rng.randrange(alphabet) for _ in range(rng.randrange(1, 40))] for _ in range(n_docs)]


def queries(documents: list[list[int]], n: int, seed: int) -> list[tuple[list[int], int]]:
    """Contexts cut from documents (long matches) and random ones (short or no matches)."""
    rng = random.Random(seed)
    vocab = sorted({t for doc in documents for t in doc})
    out = []
    for i in range(n):
        doc = rng.choice(documents)
        if i % 2 == 0 and len(doc) > 1:
            end = rng.randrange(1, len(doc))
            context = doc[rng.randrange(0, end) : end]
            token = doc[end] if rng.random() < 0.6 else rng.choice(vocab)
        else:
            context = [rng.choice(vocab) for _ in range(rng.randrange(1, 7))]
            token = rng.choice(vocab)
        out.append((context, token))
    return out


def repetitive_documents(n_docs: int = 24, length: int = 24, seed: int = 1) -> list[list[int]]:
    """Token ids 3..6: short contexts recur, so answers get different ∞-gram probabilities."""
    rng = random.Random(seed)
    return [[rng.randrange(3, 7) for _ in range(length)] for _ in range(n_docs)]


def cloze_probe(documents: list[list[int]], source=None, **kwargs):
    """16 cloze pairs (2-4 question tokens, 3 answer tokens) of ``documents``, brute-force ∞-gram source."""
    from geomtrace.memorization import MemorizationProbe, QASet

    qa = QASet.cloze(documents, n=16, answer_tokens=3, question_tokens=4, min_question_tokens=2, seed=0)
    return MemorizationProbe(qa, source or BruteForceSource(documents), batch_size=8, **kwargs)
