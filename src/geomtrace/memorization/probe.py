"""The memorization probe: a QA set and an ∞-gram source, measured on a model per checkpoint.

Distributional memorization (the paper's memorization curve) is the rank correlation, across
QA pairs, between the model's answer log-likelihood and the answer's ∞-gram log-likelihood
under the pretraining corpus. The ∞-gram side does not depend on the model: it is computed
once (:meth:`MemorizationProbe.prepare`) and reused at every measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from geomtrace._distributed import rank_and_world_size
from geomtrace.memorization._io import ProgressOption
from geomtrace.memorization.infgram import InfgramScores, NgramSource, ZeroProbability, infgram_scores
from geomtrace.memorization.likelihood import AnswerLogprobs, answer_logprobs, model_vocab_size
from geomtrace.memorization.qa import QASet, TokenizedPair
from geomtrace.memorization.stats import pearson, spearman

__all__ = ["MemorizationProbe", "MemorizationResult", "summarize"]

#: The keys of :func:`summarize` / :meth:`MemorizationProbe.measure`.
SUMMARY_KEYS = ("spearman", "pearson", "answer_logprob", "infgram_logprob", "n_scored", "n_unscorable", "n_pairs")


def summarize(model_logprob: np.ndarray, infgram_logprob: np.ndarray) -> dict[str, float]:
    """Per-checkpoint summary of model vs ∞-gram answer log-likelihoods.

    Returns:
        ``spearman`` and ``pearson``: correlations over the *scorable* pairs (finite on both
        sides; NaN with fewer than 3); ``answer_logprob``: mean model answer log-likelihood
        over all pairs; ``infgram_logprob``: mean ∞-gram answer log-likelihood over the
        scorable pairs; ``n_scored``, ``n_unscorable``, ``n_pairs``.
    """
    model_logprob = np.asarray(model_logprob, dtype=np.float64).reshape(-1)
    infgram_logprob = np.asarray(infgram_logprob, dtype=np.float64).reshape(-1)
    if model_logprob.shape != infgram_logprob.shape:
        raise ValueError(f"{model_logprob.size} model values for {infgram_logprob.size} ∞-gram values")
    scorable = np.isfinite(model_logprob) & np.isfinite(infgram_logprob)
    x, y = model_logprob[scorable], infgram_logprob[scorable]
    finite_model = model_logprob[np.isfinite(model_logprob)]
    return {
        "spearman": spearman(x, y),
        "pearson": pearson(x, y),
        "answer_logprob": float(finite_model.mean()) if finite_model.size else float("nan"),
        "infgram_logprob": float(y.mean()) if y.size else float("nan"),
        "n_scored": float(scorable.sum()),
        "n_unscorable": float(model_logprob.size - scorable.sum()),
        "n_pairs": float(model_logprob.size),
    }


@dataclass
class MemorizationResult:
    """One measurement: per-pair values of both sides and their summary."""

    model: AnswerLogprobs
    infgram: InfgramScores
    summary: dict[str, float]

    def scalars(self) -> dict[str, float]:
        """The summary (what is logged)."""
        return dict(self.summary)

    def to_record(self) -> dict[str, Any]:
        """JSON-able per-pair model values, for a results store (the ∞-gram side is per run)."""
        return {
            "summary": {k: float(v) for k, v in self.summary.items()},
            "pairs": {
                "answer_logprob": [float(v) for v in self.model.total],
                "answer_token_logprobs": [[float(v) for v in tokens] for tokens in self.model.per_token],
            },
            "precision": self.model.precision,
        }


class MemorizationProbe:
    """A QA set and an ∞-gram source, measured on a model at each checkpoint.

    Args:
        qa: the QA pairs (:class:`QASet`).
        index: where ∞-gram probabilities come from: an :class:`NgramIndex` over the
            training corpus, or an :class:`InfiniGramAPI`.
        name: optional label; logged keys become ``memorization/<name>/<key>``
            (e.g. one probe on training text, one on held-out text).
        zero_probability: ``"unscorable"`` (default) or the seed's ``"as_one"`` (see
            :mod:`geomtrace.memorization.infgram`).
        index_tokenizer: the index's tokenizer when it is not the model's (the seed queries a
            Llama-2 index for Pythia models); text QA sets only.
        batch_size, padding_side, autocast: model-side options (:func:`answer_logprobs`).
        progress: progress of the ∞-gram queries (lines logged to ``geomtrace.memorization``, on
            stderr by default, or a callable).
    """

    def __init__(
        self,
        qa: QASet,
        index: NgramSource,
        *,
        name: str | None = None,
        zero_probability: ZeroProbability = "unscorable",
        index_tokenizer: Any = None,
        batch_size: int = 32,
        padding_side: str = "left",
        autocast: str = "auto",
        progress: ProgressOption = False,
    ) -> None:
        if index_tokenizer is not None and qa.is_tokenized:
            raise ValueError("index_tokenizer applies to text QA sets; cloze pairs are token ids of one tokenizer")
        if name is not None and (not name or "/" in name):
            raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
        self.qa = qa
        self.index = index
        self.name = name
        self.zero_probability = zero_probability
        self.index_tokenizer = index_tokenizer
        self.batch_size = batch_size
        self.padding_side = padding_side
        self.autocast = autocast
        self.progress = progress
        self.infgram: InfgramScores | None = None
        self.last_result: MemorizationResult | None = None
        self._model_pairs: list[TokenizedPair] | None = None
        self._index_pairs: list[TokenizedPair] | None = None

    def key(self, name: str) -> str:
        """The logged tag of a summary key: ``memorization[/<probe name>]/<name>``."""
        return f"memorization/{self.name}/{name}" if self.name else f"memorization/{name}"

    def describe(self) -> dict[str, Any]:
        """Provenance: QA set, index, zero rule."""
        return {
            "qa": self.qa.description,
            "n_pairs": len(self.qa),
            "index": self.index.describe(),
            "zero_probability": self.zero_probability,
            "name": self.name,
        }

    def prepare(self, tokenizer: Any = None, *, distributed: bool | None = None) -> InfgramScores:
        """Tokenize the QA set and compute the ∞-gram side, once.

        Later calls reuse the ∞-gram scores (they are recomputed only if the index-side
        tokens changed). Under torch.distributed, global rank 0 queries the index and
        broadcasts the scores: every rank must call this at the same point (it is a
        collective), and every rank raises if rank 0 failed.
        """
        self._model_pairs = self.qa.tokenize(tokenizer)
        index_pairs = self.qa.tokenize(self.index_tokenizer) if self.index_tokenizer is not None else self._model_pairs
        if self.infgram is not None and index_pairs == self._index_pairs:
            return self.infgram
        rank, world_size = rank_and_world_size()
        check_tokenizer = getattr(self.index, "check_tokenizer", None)  # an NgramIndex records its tokenizer
        if callable(check_tokenizer) and rank == 0:
            check_tokenizer(self.index_tokenizer if self.index_tokenizer is not None else tokenizer)
        if distributed is False or world_size == 1:
            scores = infgram_scores(
                self.index, index_pairs, zero_probability=self.zero_probability, progress=self.progress
            )
        else:
            scores = self._broadcast_scores(rank, index_pairs)
        self._index_pairs = index_pairs
        self.infgram = scores
        return scores

    def _broadcast_scores(self, rank: int, index_pairs: list[TokenizedPair]) -> InfgramScores:
        payload: list[Any] = [None]
        if rank == 0:
            try:
                payload[0] = infgram_scores(
                    self.index, index_pairs, zero_probability=self.zero_probability, progress=self.progress
                )
            except Exception as err:  # noqa: BLE001 - every rank raises it below
                payload[0] = f"{type(err).__name__}: {err}"
        torch.distributed.broadcast_object_list(payload, src=0)
        if isinstance(payload[0], str):
            raise RuntimeError(f"the ∞-gram side failed on rank 0: {payload[0]}")
        return payload[0]

    def model_side_key(self) -> tuple[Any, ...]:
        """Probes with equal keys get the same model scores (same pairs, same forward options):
        one forward serves them all (e.g. one QA set under both zero rules)."""
        return (id(self.qa), self.batch_size, self.padding_side, self.autocast)

    def measure_result(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        *,
        distributed: bool | None = None,
        scores: AnswerLogprobs | None = None,
    ) -> MemorizationResult:
        """Score the model's answers and summarize against the ∞-gram side (kept per pair).

        ``scores``: the model side already computed by a probe with the same
        :meth:`model_side_key` at this checkpoint (no forward then).

        Raises:
            QAVocabularyError: a pair holds a token id the model has no embedding for.
        """
        if self.infgram is None or self._model_pairs is None:
            self.prepare(tokenizer, distributed=distributed)
        assert self.infgram is not None and self._model_pairs is not None
        vocab_size = model_vocab_size(model)
        if vocab_size is not None:
            self.qa.check_token_ids(self._model_pairs, vocab_size)
        if scores is None:
            scores = answer_logprobs(
                model,
                self._model_pairs,
                batch_size=self.batch_size,
                padding_side=self.padding_side,
                autocast=self.autocast,
                distributed=distributed,
            )
        elif scores.total.shape != (len(self._model_pairs),):
            raise ValueError(f"{scores.total.size} model scores for {len(self._model_pairs)} pairs")
        result = MemorizationResult(scores, self.infgram, summarize(scores.total, self.infgram.logprob))
        self.last_result = result
        return result

    def measure(self, model: nn.Module, tokenizer: Any = None, *, distributed: bool | None = None) -> dict[str, float]:
        """``{"spearman", "pearson", "answer_logprob", "infgram_logprob", "n_scored", "n_unscorable",
        "n_pairs"}`` for ``model`` (see :func:`summarize`). Every rank must call it together."""
        return self.measure_result(model, tokenizer, distributed=distributed).scalars()
