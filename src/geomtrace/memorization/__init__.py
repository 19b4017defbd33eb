"""Memorization beside geometry: ∞-gram vs model answer likelihood (the paper's second half).

For each question/answer pair, compare (a) the answer's ∞-gram log-likelihood under an n-gram
index of the training corpus with (b) the model's answer log-likelihood; the Spearman
correlation of the two across pairs, checkpoint by checkpoint, is the paper's
*distributional memorization* curve.

```python
from geomtrace.memorization import NgramIndex, QASet, MemorizationProbe
index = NgramIndex.build(token_sequences, "runs/ngram", vocab_size=len(tok))  # or .open(dir), .from_texts(...)
qa = QASet.cloze(token_sequences, n=512, answer_tokens=4, seed=0)              # or .from_jsonl(path), .trivia_qa()
probe = MemorizationProbe(qa, index)
probe.measure(model, tok)   # {"spearman", "pearson", "answer_logprob", "n_scored", ...}
```

Modules: :mod:`~geomtrace.memorization.index` (local infini-gram index),
:mod:`~geomtrace.memorization.remote` (public API client with a disk cache),
:mod:`~geomtrace.memorization.qa` (QA sets), :mod:`~geomtrace.memorization.infgram`
(∞-gram answer scores and the zero rule), :mod:`~geomtrace.memorization.likelihood` (model
answer scores, batched and distributed), :mod:`~geomtrace.memorization.stats`,
:mod:`~geomtrace.memorization.probe`, :mod:`~geomtrace.memorization.seed_format` (the seed's
``.npy`` result files). The engine is the ``infini-gram`` package (``pip install
"geomtrace[memorization]"``, Python >= 3.11), imported only when an index is built or opened.
"""

from geomtrace.memorization.index import (
    IndexBuildError,
    IndexIntegrityError,
    IndexNotReadyError,
    IndexState,
    InfgramProb,
    NgramIndex,
)
from geomtrace.memorization.infgram import InfgramScores, NgramSource, answer_logprob, infgram_scores
from geomtrace.memorization.likelihood import AnswerLogprobs, answer_logprobs
from geomtrace.memorization.probe import MemorizationProbe, MemorizationResult, summarize
from geomtrace.memorization.qa import (
    QALoadError,
    QAPair,
    QASet,
    QAVocabularyError,
    TokenizedPair,
    hold_out,
    seed_prompt,
)
from geomtrace.memorization.remote import InfiniGramAPI, InfiniGramAPIError
from geomtrace.memorization.seed_format import (
    aligned,
    read_pickled_npy,
    read_seed_infgram,
    read_seed_llm_likelihood,
    read_seed_run,
    write_seed_infgram,
    write_seed_llm_likelihood,
)
from geomtrace.memorization.stats import pearson, spearman

__all__ = [
    "AnswerLogprobs",
    "IndexBuildError",
    "IndexIntegrityError",
    "IndexNotReadyError",
    "IndexState",
    "InfgramProb",
    "InfgramScores",
    "InfiniGramAPI",
    "InfiniGramAPIError",
    "MemorizationProbe",
    "MemorizationResult",
    "NgramIndex",
    "NgramSource",
    "QALoadError",
    "QAPair",
    "QASet",
    "QAVocabularyError",
    "TokenizedPair",
    "aligned",
    "answer_logprob",
    "answer_logprobs",
    "hold_out",
    "infgram_scores",
    "pearson",
    "read_pickled_npy",
    "read_seed_infgram",
    "read_seed_llm_likelihood",
    "read_seed_run",
    "seed_prompt",
    "spearman",
    "summarize",
    "write_seed_infgram",
    "write_seed_llm_likelihood",
]
