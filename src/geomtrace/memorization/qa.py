"""Question/answer sets whose answer likelihood is compared between a model and the corpus.

Three sources:

* :meth:`QASet.trivia_qa` - the seed's: ``mandarjoshi/trivia_qa``, config ``rc``,
  ``validation``, from the Hugging Face hub.
* :meth:`QASet.from_jsonl` - one ``{"question": ..., "answer": ...}`` object per line, or
  tokenized pairs ``{"question_ids": [...], "answer_ids": [...]}`` (what :meth:`QASet.to_jsonl`
  writes for a cloze set).
* :meth:`QASet.cloze` - offline and the default: pairs cut deterministically from a corpus
  of token sequences (a prefix as the question, the next few tokens as the answer).
  :func:`hold_out` splits documents so cloze pairs can also come from text of the same kind
  that is not in the index.

Text pairs are rendered as the seed does: ``"Question: {q} Answer: {a}"``, with ``?`` added
when the question does not end with one. The *answer tokens* are the tokens of that text
after the tokens of its question prefix ``"Question: {q} Answer:"`` (the answer's leading
space belongs to the answer). When the prefix's tokens are not a prefix of the full text's
tokens (a merge across the boundary), the answer starts where the two tokenizations part.
Both the model and the index see exactly these ids (one tokenization for both sides unless
the index has its own tokenizer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np

from geomtrace._optional import require
from geomtrace._warnings import warn

__all__ = ["QALoadError", "QAPair", "QASet", "QAVocabularyError", "TokenizedPair", "hold_out", "seed_prompt"]

TRIVIA_QA = ("mandarjoshi/trivia_qa", "rc", "validation")


class QALoadError(RuntimeError):
    """A QA source could not be loaded (e.g. the hub while offline)."""


class QAVocabularyError(ValueError):
    """A QA pair holds a token id the model has no embedding for (ids of another tokenizer)."""


@dataclass(frozen=True)
class QAPair:
    """One question and its answer, as text or as token ids (cloze pairs).

    ``key`` identifies the pair in its source (the dataset row index for TriviaQA, the
    ``"key"`` field or else the line number for JSONL, the pair's position for cloze sets);
    the seed's result files are keyed by it. ``line``: the pair's line in its JSONL file (for
    messages; not part of the pair's value).
    """

    key: int
    question: str | None = None
    answer: str | None = None
    question_ids: tuple[int, ...] | None = None
    answer_ids: tuple[int, ...] | None = None
    line: int | None = dataclass_field(default=None, compare=False)


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of a pair: the context (question prefix) and the answer tokens after it."""

    context_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]


def seed_prompt(question: str, answer: str) -> tuple[str, str]:
    """``(prefix, full_text)`` as the seed renders a pair (``?`` added when missing)."""
    question = question.strip()
    mark = "" if question.endswith("?") else "?"
    prefix = f"Question: {question}{mark} Answer:"
    return prefix, f"{prefix} {answer.strip()}"


def _split_tokens(prefix_ids: Sequence[int], full_ids: Sequence[int]) -> TokenizedPair:
    shared = 0
    for a, b in zip(prefix_ids, full_ids):
        if a != b:
            break
        shared += 1
    return TokenizedPair(tuple(int(t) for t in full_ids[:shared]), tuple(int(t) for t in full_ids[shared:]))


class QASet:
    """An ordered, fixed list of :class:`QAPair` with a description of where it came from."""

    def __init__(self, pairs: Sequence[QAPair], description: str) -> None:
        if not pairs:
            raise ValueError(f"the QA set {description!r} is empty")
        self.pairs = list(pairs)
        self.description = description

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"QASet({self.description!r}, {len(self)} pairs)"

    @property
    def is_tokenized(self) -> bool:
        """True for cloze sets (token ids given), False for text pairs."""
        return self.pairs[0].answer_ids is not None

    # ------------------------------------------------------------------ sources

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]], description: str = "pairs") -> QASet:
        """A QA set from ``(question, answer)`` strings."""
        out = []
        for i, (question, answer) in enumerate(pairs):
            if not isinstance(question, str) or not isinstance(answer, str):
                raise TypeError(f"pair {i}: question and answer must be strings")
            if not answer.strip():
                raise ValueError(f"pair {i}: the answer is empty")
            out.append(QAPair(key=i, question=question, answer=answer))
        return cls(out, description)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike) -> QASet:
        """One JSON object per line: a text pair or a tokenized (cloze) pair.

        A text pair has string fields ``"question"`` and ``"answer"``; a tokenized pair has
        lists of non-negative integer token ids ``"question_ids"`` and ``"answer_ids"`` (both
        non-empty: the model needs a context token). All lines must be of one kind. An optional
        integer ``"key"`` names the pair (unique in the file); without it the key is the 1-based
        line number. Blank lines are skipped; other fields are ignored. Errors name the file and
        line. :meth:`to_jsonl` writes this format.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"QA file {path} does not exist")
        pairs: list[QAPair] = []
        first_kind: tuple[str, int] | None = None
        keys: dict[int, int] = {}
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}, line {number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"{where}: not valid JSON ({err.msg}); each line must be an object "
                        '{"question": "...", "answer": "..."} or {"question_ids": [...], '
                        '"answer_ids": [...]}'
                    ) from err
                if not isinstance(record, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
                kind = "token-id" if ("question_ids" in record or "answer_ids" in record) else "text"
                if first_kind is None:
                    first_kind = (kind, number)
                elif kind != first_kind[0]:
                    raise ValueError(
                        f"{where}: a {kind} pair in a file of {first_kind[0]} pairs (line "
                        f"{first_kind[1]}); one file holds one kind"
                    )
                key = _jsonl_key(record, number, where)
                if key in keys:
                    raise ValueError(f"{where}: key {key} already names the pair of line {keys[key]}")
                keys[key] = number
                if kind == "text":
                    pairs.append(_text_pair(record, key, where, number))
                else:
                    pairs.append(
                        QAPair(
                            key=key,
                            question_ids=_token_ids(record, "question_ids", where),
                            answer_ids=_token_ids(record, "answer_ids", where),
                            line=number,
                        )
                    )
        if not pairs:
            raise ValueError(f"QA file {path} holds no pairs")
        return cls(pairs, f"jsonl:{path}")

    def to_jsonl(self, path: str | os.PathLike) -> Path:
        """Write the pairs to ``path`` (atomically) in the format :meth:`from_jsonl` reads.

        Every line carries its pair's ``"key"``, so reading the file back gives the same
        pairs, keys, text or token ids (the description becomes the file's). Returns the path.
        """
        from geomtrace.memorization._io import atomic_write

        lines = []
        for pair in self.pairs:
            if self.is_tokenized:
                record: dict[str, Any] = {
                    "key": pair.key,
                    "question_ids": list(pair.question_ids or ()),
                    "answer_ids": list(pair.answer_ids or ()),
                }
            else:
                record = {"key": pair.key, "question": pair.question or "", "answer": pair.answer or ""}
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        return atomic_write(path, "".join(lines).encode("utf-8"))

    @classmethod
    def trivia_qa(cls, limit: int | None = None) -> QASet:
        """TriviaQA as the seed loads it: ``mandarjoshi/trivia_qa``, ``rc``, ``validation``.

        The answer is ``answer["value"]``; a pair's key is its row index. ``limit`` keeps the
        first rows only (streamed when online, so the evidence documents of the ``rc`` config
        are not all downloaded). Offline, only a locally cached copy works.

        Raises:
            QALoadError: the dataset cannot be loaded (offline without a cached copy, ...).
        """
        from geomtrace.probes import hub_offline

        name, config, split = TRIVIA_QA
        datasets = require("datasets", "loading TriviaQA")
        offline = hub_offline()
        try:
            rows = datasets.load_dataset(name, config, split=split, streaming=not offline)
            pairs = []
            for i, row in enumerate(rows):
                if limit is not None and i >= limit:
                    break
                answer = row["answer"]["value"] if isinstance(row["answer"], dict) else row["answer"]
                pairs.append(QAPair(key=i, question=row["question"], answer=answer))
        except Exception as err:  # noqa: BLE001 - datasets raises many types for "not reachable"
            why = (
                "the hub is off (HF offline mode) and no cached copy exists"
                if offline
                else "it could not be loaded from the Hugging Face Hub"
            )
            raise QALoadError(
                f"cannot load TriviaQA ({name}, {config}, {split}): {why} ({type(err).__name__}: {err}). "
                "Use QASet.cloze(...) on your own corpus (offline) or QASet.from_jsonl(path) instead."
            ) from err
        return cls(pairs, f"hub:{name}/{config}:{split}" + (f" limit={limit}" if limit is not None else ""))

    @classmethod
    def cloze(
        cls,
        token_sequences: Sequence[Sequence[int]],
        n: int = 512,
        *,
        answer_tokens: int = 4,
        question_tokens: int = 32,
        min_question_tokens: int = 8,
        seed: int = 0,
        description: str = "corpus",
    ) -> QASet:
        """Cloze pairs cut deterministically from documents of token ids.

        A position ``p`` is drawn uniformly (without replacement, ``numpy.random.default_rng
        (seed)``) among all positions of all documents that leave at least
        ``min_question_tokens`` tokens before and ``answer_tokens`` tokens from ``p`` in the same
        document. The question is the up to ``question_tokens`` tokens before ``p``, the answer
        the ``answer_tokens`` tokens from ``p``. Pairs are in corpus order. The same
        sequences, sizes and seed always give the same pairs.
        """
        if n < 1 or answer_tokens < 1 or min_question_tokens < 1 or question_tokens < min_question_tokens:
            raise ValueError("need n >= 1, answer_tokens >= 1 and 1 <= min_question_tokens <= question_tokens")
        documents = [np.asarray(seq, dtype=np.int64).reshape(-1) for seq in token_sequences]
        starts = np.array(
            [max(0, len(doc) - min_question_tokens - answer_tokens + 1) for doc in documents], dtype=np.int64
        )
        total = int(starts.sum())
        if total == 0:
            raise ValueError(
                f"no document has the {min_question_tokens + answer_tokens} tokens a cloze pair needs "
                f"(min_question_tokens={min_question_tokens} + answer_tokens={answer_tokens})"
            )
        if total < n:
            warn(f"the corpus offers only {total} cloze positions; using all of them instead of n={n}.")
        picks = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
        bounds = np.cumsum(starts)
        doc_ids = np.searchsorted(bounds, picks, side="right")
        pairs = []
        for key, (pick, doc_id) in enumerate(zip(picks.tolist(), doc_ids.tolist())):
            doc = documents[doc_id]
            position = pick - (int(bounds[doc_id - 1]) if doc_id else 0) + min_question_tokens
            question = doc[max(0, position - question_tokens) : position]
            answer = doc[position : position + answer_tokens]
            pairs.append(QAPair(key=key, question_ids=tuple(question.tolist()), answer_ids=tuple(answer.tolist())))
        label = f"cloze:{description} n={len(pairs)} answer={answer_tokens} question<={question_tokens} seed={seed}"
        return cls(pairs, label)

    # ------------------------------------------------------------------ tokenization

    def tokenize(self, tokenizer: Any = None) -> list[TokenizedPair]:
        """Token ids of every pair (cloze pairs as given; text pairs with ``tokenizer``).

        Text is encoded with the tokenizer's default special tokens (``add_special_tokens=
        True``: what the model saw in training). A BOS, if any, does not occur in an index built
        without special tokens, so the longest matching suffix never reaches it. A pair whose
        answer has no token of its own raises.
        """
        if self.is_tokenized:
            return [TokenizedPair(p.question_ids or (), p.answer_ids or ()) for p in self.pairs]
        if tokenizer is None:
            raise ValueError(f"the QA set {self.description!r} holds text: pass the tokenizer")
        prompts = [seed_prompt(p.question or "", p.answer or "") for p in self.pairs]
        prefix_ids = tokenizer([pr for pr, _ in prompts])["input_ids"]
        full_ids = tokenizer([full for _, full in prompts])["input_ids"]
        out = []
        for pair, prefix, full in zip(self.pairs, prefix_ids, full_ids):
            split = _split_tokens(prefix, full)
            if not split.answer_ids:
                raise ValueError(f"pair {pair.key}: the answer {pair.answer!r} has no tokens of its own")
            out.append(split)
        return out

    def check_token_ids(self, pairs: Sequence[TokenizedPair], vocab_size: int) -> None:
        """Raise :class:`QAVocabularyError` when a pair holds a token id ``>= vocab_size``.

        ``pairs`` are this set's :meth:`tokenize` output; ``vocab_size`` the model's number of
        embeddings. The message names the file (or set), the record (key and line), the field,
        the id and the vocabulary size, and says what to do. (Without it the model's embedding
        lookup fails with a bare ``IndexError``.)
        """
        for pair, tokenized in zip(self.pairs, pairs):
            for field_name, ids in (("question_ids", tokenized.context_ids), ("answer_ids", tokenized.answer_ids)):
                bad = next((int(t) for t in ids if int(t) >= vocab_size), None)
                if bad is None:
                    continue
                record = f"pair key={pair.key}" + (f" (line {pair.line})" if pair.line is not None else "")
                limit = f"the model's vocabulary has {vocab_size:,} ids (0..{vocab_size - 1:,})"
                if not self.is_tokenized:
                    raise QAVocabularyError(
                        f"QA set {self.description!r}, {record}: the tokenizer gives token id {bad:,}, but {limit}. "
                        "The tokenizer does not belong to this model: pass the model's own tokenizer."
                    )
                source = (
                    f"QA file {self.description[len('jsonl:') :]}"
                    if self.description.startswith("jsonl:")
                    else f"QA set {self.description!r}"
                )
                raise QAVocabularyError(
                    f"{source}, {record}: field {field_name!r} holds token id {bad:,}, but {limit}. The ids were "
                    "made with another tokenizer (or for a larger model): regenerate the pairs with this model's "
                    "tokenizer (e.g. QASet.cloze(...).to_jsonl(path)) or remove the record."
                )

    def texts(self, tokenizer: Any = None) -> list[tuple[str, str]]:
        """``(question, answer)`` strings per pair (cloze pairs decoded with ``tokenizer``)."""
        if not self.is_tokenized:
            return [(p.question or "", p.answer or "") for p in self.pairs]
        if tokenizer is None:
            return [
                (" ".join(map(str, p.question_ids or ())), " ".join(map(str, p.answer_ids or ()))) for p in self.pairs
            ]
        return [
            (tokenizer.decode(list(p.question_ids or ())), tokenizer.decode(list(p.answer_ids or ())))
            for p in self.pairs
        ]


def _jsonl_key(record: dict, number: int, where: str) -> int:
    """A JSONL pair's ``"key"`` (an integer), or its line number."""
    if "key" not in record:
        return number
    key = record["key"]
    if isinstance(key, bool) or not isinstance(key, int):
        raise ValueError(f"{where}: field 'key' must be an integer, got {type(key).__name__}")
    return key


def _text_pair(record: dict, key: int, where: str, line: int | None = None) -> QAPair:
    for field in ("question", "answer"):
        if field not in record:
            raise ValueError(f"{where}: missing field {field!r} (fields: {sorted(record)})")
        if not isinstance(record[field], str):
            raise ValueError(f"{where}: field {field!r} must be a string, got {type(record[field]).__name__}")
    if not record["answer"].strip():
        raise ValueError(f"{where}: the answer is empty")
    return QAPair(key=key, question=record["question"], answer=record["answer"], line=line)


def _token_ids(record: dict, field: str, where: str) -> tuple[int, ...]:
    """A non-empty list of non-negative integer token ids, or a ValueError naming the line."""
    if field not in record:
        raise ValueError(
            f"{where}: missing field {field!r} (fields: {sorted(record)}); a tokenized pair "
            'needs "question_ids" and "answer_ids"'
        )
    ids = record[field]
    if not isinstance(ids, list):
        raise ValueError(f"{where}: field {field!r} must be a list of token ids, got {type(ids).__name__}")
    if not ids:
        raise ValueError(
            f"{where}: field {field!r} is empty; a pair needs at least one context token and one answer token"
        )
    for i, token in enumerate(ids):
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise ValueError(
                f"{where}: field {field!r}, position {i}: {token!r} is not a token id (a non-negative integer)"
            )
    return tuple(ids)


def hold_out(
    token_sequences: Sequence[Sequence[int]], fraction: float = 0.1, seed: int = 0
) -> tuple[list[Sequence[int]], list[Sequence[int]]]:
    """Split documents into ``(indexed, held_out)`` deterministically.

    Index (and train on) the first part; cut cloze pairs from the second for text of the same
    kind that the index does not contain. Order within each part follows the input.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = len(token_sequences)
    n_held = max(1, round(n * fraction)) if n > 1 else 0
    held = set(np.random.default_rng(seed).permutation(n)[:n_held].tolist())
    indexed = [seq for i, seq in enumerate(token_sequences) if i not in held]
    held_out = [seq for i, seq in enumerate(token_sequences) if i in held]
    return indexed, held_out
