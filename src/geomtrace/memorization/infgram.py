"""∞-gram log-likelihood of answers: one ``infgram_prob`` query per answer token.

For answer tokens ``a_1..a_m`` after context ``c``, token ``a_j`` is scored by the ∞-gram
probability ``P(a_j | longest suffix of c + a_1..a_{j-1} that occurs in the corpus)``
(infini-gram's ``infgram_prob`` rule: the count of that suffix followed by ``a_j`` over the
count of the suffix; no back-off to shorter suffixes). The answer's ∞-gram log-likelihood is
``Σ_j log P(a_j | ...)``.

A token with probability 0 (its longest matching context is never followed by it) makes the
sum ``-inf``. Two rules, chosen with ``zero_probability=``:

* ``"unscorable"`` (default): the answer is *unscorable*; it is counted and left out of the
  correlations.
* ``"as_one"`` (the seed's rule, only on request): zeros are replaced by 1 before the logs
  are summed, i.e. unseen tokens are silently dropped from the sum; an answer whose tokens
  are *all* zero stays unscorable (the seed stores NaN for it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from geomtrace.memorization._io import ProgressOption, Reporter
from geomtrace.memorization.index import InfgramProb
from geomtrace.memorization.qa import TokenizedPair

__all__ = ["InfgramScores", "NgramSource", "ZeroProbability", "answer_logprob", "infgram_scores"]

ZeroProbability = Literal["unscorable", "as_one"]
_ZERO_RULES = ("unscorable", "as_one")


class NgramSource(Protocol):
    """What answers are scored against: a local :class:`NgramIndex` or an :class:`InfiniGramAPI`."""

    def prob(self, context_ids: Sequence[int], next_id: int) -> InfgramProb: ...

    def describe(self) -> str: ...


def answer_logprob(
    token_probs: Sequence[float] | np.ndarray, zero_probability: ZeroProbability = "unscorable"
) -> float:
    """Σ log p over an answer's token probabilities under a zero rule; NaN when unscorable."""
    if zero_probability not in _ZERO_RULES:
        raise ValueError(f"zero_probability must be one of {_ZERO_RULES}, got {zero_probability!r}")
    probs = np.clip(np.asarray(token_probs, dtype=np.float64), 0.0, None)
    if probs.size == 0 or not np.any(probs > 0):
        return float("nan")
    if np.any(probs == 0):
        if zero_probability == "unscorable":
            return float("nan")
        probs = np.where(probs == 0, 1.0, probs)
    return float(np.sum(np.log(probs)))


@dataclass
class InfgramScores:
    """∞-gram side of a QA set: per pair and per answer token.

    Attributes:
        token_probs: per pair, the ∞-gram probability of each answer token.
        suffix_lens: per pair, the matched suffix length for each answer token.
        logprob: per pair, the answer's ∞-gram log-likelihood (NaN when unscorable).
        zero_probability: the zero rule used for ``logprob``.
        source: provenance of the index (:meth:`NgramSource.describe`).
    """

    token_probs: list[np.ndarray]
    suffix_lens: list[np.ndarray]
    logprob: np.ndarray
    zero_probability: str
    source: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scorable(self) -> np.ndarray:
        """Boolean mask of the pairs with a finite ∞-gram log-likelihood."""
        return np.isfinite(self.logprob)

    @property
    def n_scored(self) -> int:
        return int(self.scorable.sum())

    @property
    def n_unscorable(self) -> int:
        return int(self.logprob.size - self.n_scored)

    def with_rule(self, zero_probability: ZeroProbability) -> InfgramScores:
        """The same token probabilities summed under another zero rule."""
        logprob = np.array([answer_logprob(p, zero_probability) for p in self.token_probs], dtype=np.float64)
        return InfgramScores(
            self.token_probs, self.suffix_lens, logprob, zero_probability, self.source, dict(self.extra)
        )


def infgram_scores(
    source: NgramSource,
    pairs: Sequence[TokenizedPair],
    *,
    zero_probability: ZeroProbability = "unscorable",
    progress: ProgressOption = False,
) -> InfgramScores:
    """Query ``source`` for every answer token of every pair and sum the logs per pair."""
    if zero_probability not in _ZERO_RULES:
        raise ValueError(f"zero_probability must be one of {_ZERO_RULES}, got {zero_probability!r}")
    report = Reporter(progress)
    total = sum(len(p.answer_ids) for p in pairs)
    done = 0
    token_probs, suffix_lens = [], []
    for pair in pairs:
        context = list(pair.context_ids)
        probs = np.empty(len(pair.answer_ids), dtype=np.float64)
        lens = np.empty(len(pair.answer_ids), dtype=np.int64)
        for j, token in enumerate(pair.answer_ids):
            answer = source.prob(context, token)
            probs[j], lens[j] = answer.prob, answer.suffix_len
            # The next longest match is at most one token longer than this one (a suffix that
            # occurs has a prefix that occurs), so only that much context is sent: same answer,
            # fewer engine steps.
            if 0 <= answer.suffix_len < len(context):
                context = context[len(context) - answer.suffix_len :]
            context.append(token)
        token_probs.append(probs)
        suffix_lens.append(lens)
        done += len(pair.answer_ids)
        report.throttled(f"∞-gram queries: {done:,} / {total:,} answer tokens")
    logprob = np.array([answer_logprob(p, zero_probability) for p in token_probs], dtype=np.float64)
    return InfgramScores(token_probs, suffix_lens, logprob, zero_probability, source.describe())
