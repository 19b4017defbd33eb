"""The seed's two memorization result formats (``.npy`` files holding a pickled dict).

Inferred from the seed's ``memorization_scripts/`` and its notes (``results/infgram/...`` and
``results/llm_likelihood/...``); both are ``np.save`` of a dict keyed by the TriviaQA row
index, with pairs the seed skipped (API failures) simply absent:

* **infgram** (``triviaqa_{N}samples.npy``, N = rows processed so far)::

      {idx: {"Question": str, "Answer": str,
             "infgram_prob": [p_1, ..., p_m],   # ∞-gram prob of each answer token
             "logprob_result": float,           # Σ log p with zeros replaced by 1; NaN if all are 0
             "prob_result": float}}             # exp(logprob_result); 0.0 when all are 0

* **llm_likelihood** (``{model_name}/triviaqa_step_{step}.npy``, one file per checkpoint)::

      {idx: {"Question": str, "Answer": str,
             "llm_prob": [q_1, ..., q_m],       # model prob of each answer token
             "llm_logprob": [log q_1, ...],
             "logprob_result": float}}          # Σ log q

``logprob_result`` of an infgram file always follows the seed's zero rule, whatever rule the
probe used (that is what the format means); the readers return the raw token probabilities
too, so any rule can be applied again (:func:`geomtrace.memorization.infgram.answer_logprob`).

Reading: these files are pickles. By default they are read with an unpickler that accepts
only numpy arrays, numpy scalars and plain Python containers (what the seed writes) and
refuses anything else; ``trusted=True`` uses ``np.load(allow_pickle=True)``, which can
execute arbitrary code: only for files you trust.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geomtrace.memorization._io import atomic_write
from geomtrace.memorization.infgram import InfgramScores, ZeroProbability, answer_logprob
from geomtrace.memorization.likelihood import AnswerLogprobs
from geomtrace.memorization.qa import QASet

__all__ = [
    "SeedInfgram",
    "SeedLLMLikelihood",
    "UntrustedPickleError",
    "aligned",
    "infgram_file_name",
    "llm_likelihood_file_name",
    "read_pickled_npy",
    "read_seed_infgram",
    "read_seed_llm_likelihood",
    "read_seed_run",
    "write_seed_infgram",
    "write_seed_infgram_rows",
    "write_seed_llm_likelihood",
    "write_seed_llm_likelihood_rows",
]

_SAFE_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class UntrustedPickleError(pickle.UnpicklingError):
    """A pickled ``.npy`` refers to something a seed result file never holds."""


class _SeedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UntrustedPickleError(
            f"the file refers to {module}.{name}, which a seed result file never holds; geomtrace refuses to "
            "run it. If you trust the file, read it with trusted=True (that executes its pickle)."
        )


def infgram_file_name(n_rows: int) -> str:
    """The seed's name of an infgram file after ``n_rows`` QA rows."""
    return f"triviaqa_{n_rows}samples.npy"


def llm_likelihood_file_name(step: int | str) -> str:
    """The seed's name of the llm_likelihood file of a checkpoint step."""
    return f"triviaqa_step_{step}.npy"


def read_pickled_npy(path: str | os.PathLike, *, trusted: bool = False) -> Any:
    """The object in a pickled ``.npy`` (``.item()`` of a 0-d object array).

    ``trusted=False`` (default) reads it with an unpickler limited to numpy arrays/scalars
    and plain containers; ``trusted=True`` uses ``np.load(..., allow_pickle=True)``, which
    executes whatever the pickle says: only for files you made or trust.
    """
    path = Path(path)
    if trusted:
        array = np.load(path, allow_pickle=True)
    else:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                _, _, dtype = np.lib.format.read_array_header_2_0(handle)
            if not dtype.hasobject:
                raise ValueError(f"{path} holds a plain {dtype} array, not a pickled result dict")
            array = _SeedUnpickler(handle).load()
    if isinstance(array, np.ndarray) and array.shape == () and array.dtype == object:
        return array.item()
    return array


def _check_sizes(qa: QASet, n: int, what: str) -> None:
    if len(qa) != n:
        raise ValueError(f"{what} has {n} pairs, the QA set {len(qa)}")


def write_seed_infgram(path: str | os.PathLike, qa: QASet, scores: InfgramScores, tokenizer: Any = None) -> Path:
    """Write the ∞-gram side in the seed's infgram format (atomically).

    ``tokenizer`` decodes cloze pairs into the ``Question``/``Answer`` strings.
    """
    _check_sizes(qa, len(scores.token_probs), "the ∞-gram scores")
    return write_seed_infgram_rows(path, [p.key for p in qa.pairs], qa.texts(tokenizer), scores.token_probs)


def write_seed_infgram_rows(
    path: str | os.PathLike, keys: Sequence[int], texts: Sequence[tuple[str, str]], token_probs: Sequence[Any]
) -> Path:
    """:func:`write_seed_infgram` from plain rows: pair keys, ``(question, answer)`` strings
    and each answer's ∞-gram token probabilities (e.g. as a replay output stores them)."""
    out: dict[int, dict[str, Any]] = {}
    for key, (question, answer), probs in zip(keys, texts, token_probs, strict=True):
        probs = np.asarray(probs, dtype=np.float64).reshape(-1)
        seed_logprob = answer_logprob(probs, "as_one")
        out[int(key)] = {
            "Question": question,
            "Answer": answer,
            "infgram_prob": [float(p) for p in probs],
            "logprob_result": seed_logprob,
            "prob_result": 0.0 if math.isnan(seed_logprob) else math.exp(seed_logprob),
        }
    return _save(path, out)


def write_seed_llm_likelihood(
    path: str | os.PathLike, qa: QASet, scores: AnswerLogprobs, tokenizer: Any = None
) -> Path:
    """Write one checkpoint's model side in the seed's llm_likelihood format (atomically)."""
    _check_sizes(qa, len(scores.per_token), "the model scores")
    return write_seed_llm_likelihood_rows(path, [p.key for p in qa.pairs], qa.texts(tokenizer), scores.per_token)


def write_seed_llm_likelihood_rows(
    path: str | os.PathLike, keys: Sequence[int], texts: Sequence[tuple[str, str]], per_token: Sequence[Any]
) -> Path:
    """:func:`write_seed_llm_likelihood` from plain rows: pair keys, ``(question, answer)``
    strings and each answer's per-token model log-probabilities."""
    out: dict[int, dict[str, Any]] = {}
    for key, (question, answer), tokens in zip(keys, texts, per_token, strict=True):
        tokens = np.asarray(tokens, dtype=np.float64).reshape(-1)
        out[int(key)] = {
            "Question": question,
            "Answer": answer,
            "llm_prob": [math.exp(float(v)) for v in tokens],
            "llm_logprob": [float(v) for v in tokens],
            "logprob_result": float(np.sum(tokens)),
        }
    return _save(path, out)


def _save(path: str | os.PathLike, data: dict[int, dict[str, Any]]) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, np.array(data, dtype=object), allow_pickle=True)
    return atomic_write(path, buffer.getvalue())


def _entries(path: str | os.PathLike, trusted: bool, fields: Sequence[str]) -> list[tuple[int, dict[str, Any]]]:
    data = read_pickled_npy(path, trusted=trusted)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a pickled dict {{row index: {{...}}}}, got {type(data).__name__}")
    out = []
    for key, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry {key!r} is a {type(entry).__name__}, expected a dict")
        missing = [f for f in fields if f not in entry]
        if missing:
            raise ValueError(f"{path}: entry {key!r} lacks {missing} (has {sorted(entry)})")
        out.append((int(key), entry))
    out.sort(key=lambda item: item[0])
    return out


@dataclass
class SeedInfgram:
    """An infgram file read back: pairs sorted by key."""

    keys: np.ndarray
    questions: list[str]
    answers: list[str]
    token_probs: list[np.ndarray]
    logprob: np.ndarray  # under ``zero_probability`` (NaN = unscorable)
    seed_logprob: np.ndarray  # the file's own logprob_result


@dataclass
class SeedLLMLikelihood:
    """An llm_likelihood file read back: pairs sorted by key."""

    keys: np.ndarray
    questions: list[str]
    answers: list[str]
    per_token: list[np.ndarray]
    total: np.ndarray


def read_seed_infgram(
    path: str | os.PathLike, *, trusted: bool = False, zero_probability: ZeroProbability = "unscorable"
) -> SeedInfgram:
    """Read a seed infgram file; ``logprob`` is recomputed from the token probabilities
    under ``zero_probability`` (negative API values count as 0)."""
    entries = _entries(path, trusted, ("infgram_prob",))
    token_probs = [np.clip(np.asarray(e["infgram_prob"], dtype=np.float64).reshape(-1), 0.0, None) for _, e in entries]
    return SeedInfgram(
        keys=np.array([k for k, _ in entries], dtype=np.int64),
        questions=[str(e.get("Question", "")) for _, e in entries],
        answers=[str(e.get("Answer", "")) for _, e in entries],
        token_probs=token_probs,
        logprob=np.array([answer_logprob(p, zero_probability) for p in token_probs], dtype=np.float64),
        seed_logprob=np.array([float(e.get("logprob_result", np.nan)) for _, e in entries], dtype=np.float64),
    )


def read_seed_llm_likelihood(path: str | os.PathLike, *, trusted: bool = False) -> SeedLLMLikelihood:
    """Read a seed llm_likelihood file (one checkpoint)."""
    entries = _entries(path, trusted, ("llm_logprob",))
    per_token = [np.asarray(e["llm_logprob"], dtype=np.float64).reshape(-1) for _, e in entries]
    return SeedLLMLikelihood(
        keys=np.array([k for k, _ in entries], dtype=np.int64),
        questions=[str(e.get("Question", "")) for _, e in entries],
        answers=[str(e.get("Answer", "")) for _, e in entries],
        per_token=per_token,
        total=np.array([float(e.get("logprob_result", np.sum(t))) for (_, e), t in zip(entries, per_token)]),
    )


def aligned(infgram: SeedInfgram, llm: SeedLLMLikelihood) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys, model_logprob, infgram_logprob)`` over the pairs present in both files."""
    keys, in_infgram, in_llm = np.intersect1d(infgram.keys, llm.keys, return_indices=True)
    return keys, llm.total[in_llm], infgram.logprob[in_infgram]


_STEP_FILE = re.compile(r"triviaqa_step_(\d+)\.npy$")


def read_seed_run(
    infgram_path: str | os.PathLike,
    llm_likelihood: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    trusted: bool = False,
    zero_probability: ZeroProbability = "unscorable",
) -> list[dict[str, Any]]:
    """The memorization curve of a seed run: one summary per checkpoint, by step.

    Args:
        infgram_path: the run's infgram file.
        llm_likelihood: its llm_likelihood folder (every ``triviaqa_step_{step}.npy`` in it)
            or a list of those files.
        trusted, zero_probability: as for :func:`read_seed_infgram`.

    Returns ``[{"step", "path", "spearman", "pearson", "answer_logprob", "n_scored", ...}]``
    sorted by step, over the pairs present in both files (see :func:`summarize`).
    """
    from geomtrace.memorization.probe import summarize  # the probe module imports this one

    infgram = read_seed_infgram(infgram_path, trusted=trusted, zero_probability=zero_probability)
    if isinstance(llm_likelihood, (str, os.PathLike)) and Path(llm_likelihood).is_dir():
        files = [p for p in Path(llm_likelihood).iterdir() if _STEP_FILE.search(p.name)]
    elif isinstance(llm_likelihood, (str, os.PathLike)):
        files = [Path(llm_likelihood)]
    else:
        files = [Path(p) for p in llm_likelihood]
    rows = []
    for path in files:
        match = _STEP_FILE.search(path.name)
        if match is None:
            raise ValueError(f"{path}: not named triviaqa_step_<step>.npy, so its step is unknown")
        _, model, ngram = aligned(infgram, read_seed_llm_likelihood(path, trusted=trusted))
        rows.append({"step": int(match.group(1)), "path": str(path), **summarize(model, ngram)})
    if not rows:
        raise ValueError(f"no triviaqa_step_<step>.npy files in {llm_likelihood}")
    return sorted(rows, key=lambda r: r["step"])
