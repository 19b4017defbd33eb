"""An ∞-gram index over the user's own corpus, built and queried with the `infini-gram` package.

Nothing of suffix arrays is written here: geomtrace writes the token stream in infini-gram's
own on-disk layout (``tokenized.0``: per document a separator then its token ids;
``offset.0``: the byte offset of each document), runs infini-gram's indexer on it
(``python -m infini_gram.indexing``, which skips its tokenize step when those two files
exist) and queries the result with ``infini_gram.engine.InfiniGramEngine``.

Facts about infini-gram 2.6.0 this module relies on (found on the development machine):

* The separator is the all-ones token (``0xFFFF`` in 2-byte mode), so 2-byte token ids must
  be at most 65,534. A match never spans a separator: document boundaries are never crossed.
* The indexer must run with ``--cpus 1``: with 2 it once built, without any error, an index
  that counted nothing. So every build is checked by counting afterwards (unigrams and a few
  bigrams against numpy counts of the same stream); a miscounting index is never marked
  complete.
* ``--ulimit`` must not exceed the hard open-file limit (the default, 1,048,576, fails here).
* The 4-byte indexer allocates 2^32 x 8 bytes = 32 GiB whatever the corpus size. A corpus
  from a vocabulary above 65,535 therefore is indexed in 2 bytes by default, through a
  *compact vocabulary*: the distinct ids of the corpus (at most 65,534 of them) are renumbered
  0..K-1 and queries are renumbered the same way, an id absent from the corpus becoming K, a
  code no document contains. n-gram counts are unchanged by a one-to-one renumbering, so the
  probabilities are exactly those of the original ids. ``token_width=4`` forces the 4-byte
  route (checked against the memory available first).
* The empty context's count is the stream length *including* one separator per document:
  for a suffix length of 0, ``P(t) = count(t) / (n_tokens + n_documents)``.

A build is resumable-safe: ``geomtrace-building.json`` is written first, and
``geomtrace-index.json`` (what was indexed: its SHA-256, sizes, token width) is written
atomically last. A folder with the first and not the second is a half-built index: ``build``
clears infini-gram's files from it and starts over, ``open`` refuses it.

The completion marker also records, for every index file, its size, the SHA-256 of its whole
content and the SHA-256 of a fixed sample of it (:func:`sample_offsets`: the first and last
4 KiB and 30 blocks of 4 KiB evenly spaced between, 128 KiB per file at most), and the
identity of the tokenizer the ids came from, when one was given (:func:`tokenizer_identity`).
``open`` checks the sizes and the sampled hashes (a few milliseconds whatever the index size);
``open(verify=True)`` hashes every byte.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geomtrace._optional import require
from geomtrace._validate import as_bool
from geomtrace._warnings import warn
from geomtrace.memorization._io import ProgressOption, Reporter, atomic_write

__all__ = [
    "IndexBuildError",
    "IndexIntegrityError",
    "IndexNotReadyError",
    "IndexState",
    "InfgramProb",
    "NgramIndex",
    "require_infini_gram",
    "sample_offsets",
    "tokenizer_identity",
]

INDEX_MARKER = "geomtrace-index.json"
BUILD_MARKER = "geomtrace-building.json"
VOCABULARY_FILE = "geomtrace-vocabulary.npy"
_FORMAT = 1
_DTYPES: dict[int, type[np.unsignedinteger[Any]]] = {2: np.uint16, 4: np.uint32}
_MAX_ID = {2: 2**16 - 2, 4: 2**32 - 2}  # the all-ones value is the document separator
_U32_INDEXER_BYTES = 2**35  # infini-gram's 4-byte make-part allocates 2^32 x 8 bytes
_INFINI_GRAM_FILES = re.compile(r"^(tokenized|offset|table|metadata|metaoff|unigram)\.\d+$|^(parts|merged)-\d+$")
_MAX_ULIMIT = 1_048_576
_PREFETCH_ABOVE_BYTES = 8 * 2**30
#: The sampled fingerprint: blocks of this many bytes, this many per file (head and tail included).
SAMPLE_BLOCK_BYTES = 4096
SAMPLE_BLOCKS = 32
_HASH_CHUNK = 8 * 2**20

TokenWidth = Literal["auto"] | int


class IndexBuildError(RuntimeError):
    """infini-gram's indexer failed, or built an index whose counts are wrong."""


class IndexNotReadyError(RuntimeError):
    """The folder holds no complete infini-gram index (missing, half-built or truncated)."""


class IndexIntegrityError(IndexNotReadyError):
    """An index file differs from what was recorded when the index was built (changed or damaged since)."""


@dataclass(frozen=True)
class InfgramProb:
    """The ∞-gram probability of one token after a context.

    Attributes:
        prob: ``cont_cnt / prompt_cnt``: 0 when the longest matching suffix is never followed
            by the token in the corpus.
        suffix_len: length of the longest suffix of the context that occurs in the corpus.
        prompt_cnt: occurrences of that suffix.
        cont_cnt: occurrences of that suffix followed by the token.
    """

    prob: float
    suffix_len: int
    prompt_cnt: int
    cont_cnt: int


def require_infini_gram() -> Any:
    """Import ``infini_gram.engine`` or raise an ImportError saying how to get it."""
    if sys.version_info < (3, 11):
        raise ImportError(
            "geomtrace's ∞-gram index needs the `infini-gram` package, which ships wheels for Python >= 3.11 "
            f"only (this is Python {sys.version_info.major}.{sys.version_info.minor}). Use Python 3.11+ and "
            'pip install "geomtrace[memorization]", or query the public API instead (InfiniGramAPI).'
        )
    return require("infini_gram.engine", "∞-gram indexes")


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _ratio(stream_bytes: int) -> int:
    # Bytes per suffix-array pointer, as infini-gram's indexer computes it.
    return max(1, math.ceil(math.log2(max(stream_bytes, 2)) / 8))


def _as_documents(token_sequences: Iterable[Sequence[int]]) -> list[np.ndarray]:
    """Validated int64 arrays, one per non-empty document."""
    if isinstance(token_sequences, (str, bytes)):
        raise TypeError("token_sequences must be an iterable of token-id sequences, not a string")
    documents = []
    for i, seq in enumerate(token_sequences):
        arr = np.asarray(seq)
        if arr.ndim != 1:
            raise ValueError(f"document {i} must be a 1-D sequence of token ids, got shape {arr.shape}")
        if arr.size == 0:
            continue
        if arr.dtype.kind not in "iu":
            raise ValueError(f"document {i} holds {arr.dtype} values; token ids must be integers")
        arr = arr.astype(np.int64, copy=False)
        if int(arr.min()) < 0:
            raise ValueError(f"document {i} holds a negative token id ({int(arr.min())})")
        documents.append(arr)
    if not documents:
        raise ValueError("nothing to index: every document is empty")
    return documents


def _fingerprint(documents: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(doc.tobytes())
        digest.update(b"|")  # [1, 2] + [3] differs from [1] + [2, 3]
    return digest.hexdigest()


class IndexState(str, Enum):
    """What an index folder holds (:meth:`IndexState.of`), a closed set; a member is its value as a ``str``.

    ``EMPTY``: no index files (or no folder). ``HALF_BUILT``: geomtrace's build marker without
    its completion marker (an interrupted build: ``build`` starts over, ``open`` refuses it).
    ``FOREIGN``: infini-gram files geomtrace did not build (``open`` checks their sizes;
    ``build`` will not delete them). ``COMPLETE``: geomtrace's completion marker (``open``
    checks the files against it; ``build`` reuses it for the same corpus).
    """

    EMPTY = "empty"
    HALF_BUILT = "half-built"
    FOREIGN = "foreign"
    COMPLETE = "complete"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def of(cls, directory: str | os.PathLike) -> IndexState:
        """The state of the folder ``directory`` (read from its marker files; nothing is opened)."""
        directory = Path(directory)
        if (directory / INDEX_MARKER).is_file():
            return cls.COMPLETE
        if (directory / BUILD_MARKER).is_file():
            return cls.HALF_BUILT
        if directory.is_dir() and any(_INFINI_GRAM_FILES.match(p.name) for p in directory.iterdir()):
            return cls.FOREIGN
        return cls.EMPTY


def _clear(directory: Path) -> None:
    """Remove infini-gram's and geomtrace's index files (and nothing else) from ``directory``.

    The build marker goes in first and the completion marker out next, so a kill part-way
    leaves a folder that reads as half-built, never as complete.
    """
    atomic_write(directory / BUILD_MARKER, b"{}")
    (directory / INDEX_MARKER).unlink(missing_ok=True)
    for path in directory.iterdir():
        if _INFINI_GRAM_FILES.match(path.name) or path.name == VOCABULARY_FILE:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def _choose_encoding(documents: Sequence[np.ndarray], token_width: TokenWidth) -> tuple[int, np.ndarray | None]:
    """(bytes per token, sorted distinct corpus ids when a compact vocabulary is used)."""
    if token_width not in ("auto", 2, 4):
        raise ValueError(f"token_width must be 'auto', 2 or 4, got {token_width!r}")
    max_id = max(int(doc.max()) for doc in documents)
    if token_width == 4:
        if max_id > _MAX_ID[4]:
            raise ValueError(f"token id {max_id} does not fit in 4 bytes (max {_MAX_ID[4]})")
        return 4, None
    if max_id <= _MAX_ID[2]:
        return 2, None
    distinct = np.unique(np.concatenate(documents))
    if distinct.size <= _MAX_ID[2]:  # leaves code K = distinct.size free for absent ids
        return 2, distinct
    if token_width == 2:
        raise ValueError(
            f"the corpus uses {distinct.size:,} distinct token ids; 2-byte tokens hold at most {_MAX_ID[2]:,}. "
            "Use token_width=4 (needs about 34 GiB of memory while indexing) or index a smaller corpus."
        )
    return 4, None


def _check_u32_memory() -> None:
    available = _available_memory_bytes()
    needed = _U32_INDEXER_BYTES + 2 * 2**30
    if available is not None and available < needed:
        raise IndexBuildError(
            f"a 4-byte infini-gram index needs about {needed / 2**30:.0f} GiB of free memory while indexing "
            f"(its indexer allocates 32 GiB whatever the corpus size); this machine has {available / 2**30:.1f} GiB "
            "available. Index on a larger machine, or keep the corpus to at most 65,534 distinct token ids so "
            "geomtrace can index it in 2 bytes (token_width='auto')."
        )


def sample_offsets(size: int, block: int = SAMPLE_BLOCK_BYTES, blocks: int = SAMPLE_BLOCKS) -> list[int]:
    """Byte offsets of the blocks the default :meth:`NgramIndex.open` check hashes in a file of ``size`` bytes.

    The first and the last ``block`` bytes and ``blocks - 2`` blocks evenly spaced between them:
    fixed by the size alone, so the blocks read at ``open`` are those hashed at build time. A file
    of at most ``block * blocks`` bytes is sampled whole.
    """
    if size <= block * blocks:
        return list(range(0, size, block))
    last = size - block
    return sorted({last * i // (blocks - 1) for i in range(blocks)})


def _sampled_sha256(path: Path, size: int, block: int, blocks: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for offset in sample_offsets(size, block, blocks):
            handle.seek(offset)
            digest.update(handle.read(block))
    return digest.hexdigest()


def _full_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _index_files(directory: Path) -> list[str]:
    """The files the engine reads (infini-gram's, and the compact vocabulary), by name."""
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file() and (_INFINI_GRAM_FILES.match(p.name) or p.name == VOCABULARY_FILE)
    )


def _file_record(directory: Path) -> dict[str, Any]:
    """Size, whole-file SHA-256 and sampled SHA-256 of every index file (written in the marker)."""
    return {
        "sample": {"block_bytes": SAMPLE_BLOCK_BYTES, "blocks": SAMPLE_BLOCKS},
        "files": {
            name: {
                "bytes": (size := (directory / name).stat().st_size),
                "sha256": _full_sha256(directory / name),
                "sampled_sha256": _sampled_sha256(directory / name, size, SAMPLE_BLOCK_BYTES, SAMPLE_BLOCKS),
            }
            for name in _index_files(directory)
        },
    }


def _check_files(directory: Path, record: dict[str, Any], verify: bool) -> None:
    """Compare the index files with the build's record: names and sizes, then sampled or whole hashes."""
    rebuild = (
        "Its ∞-gram values cannot be trusted: rebuild the index (NgramIndex.build or from_texts with the same "
        "corpus and folder rebuilds a damaged index; or delete the folder and build again)."
    )
    files: dict[str, dict[str, Any]] = record["files"]
    present = set(_index_files(directory))
    missing = sorted(set(files) - present)
    extra = sorted(present - set(files))
    if missing or extra:
        what = "; ".join(
            part
            for part in (
                f"missing since the build: {', '.join(missing)}" if missing else "",
                f"not part of the build: {', '.join(extra)}" if extra else "",
            )
            if part
        )
        raise IndexIntegrityError(f"{directory}: the index files differ from those built ({what}). {rebuild}")
    block, blocks = int(record["sample"]["block_bytes"]), int(record["sample"]["blocks"])
    for name, expected in files.items():
        path = directory / name
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise IndexIntegrityError(
                f"{path} has {size:,} bytes; it had {expected['bytes']:,} when the index was built. {rebuild}"
            )
        if verify:
            if _full_sha256(path) != expected["sha256"]:
                raise IndexIntegrityError(
                    f"{path} differs from the file built (its SHA-256 changed: verify=True hashed every byte). "
                    + rebuild
                )
        elif _sampled_sha256(path, size, block, blocks) != expected["sampled_sha256"]:
            raise IndexIntegrityError(
                f"{path} differs from the file built (the hash of its sampled blocks changed). {rebuild}"
            )


def _stream_fingerprint(directory: Path, width: int, vocabulary: np.ndarray | None) -> str:
    """The corpus fingerprint (:func:`_fingerprint`) recomputed from ``tokenized.0``."""
    stream = np.fromfile(directory / "tokenized.0", dtype=_DTYPES[width])
    separator = np.iinfo(_DTYPES[width]).max
    starts = np.flatnonzero(stream == separator)
    digest = hashlib.sha256()
    for begin, end in zip(starts + 1, [*starts[1:].tolist(), stream.size]):
        codes = stream[begin:end].astype(np.int64)
        ids = vocabulary[codes] if vocabulary is not None else codes
        digest.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """What identifies a tokenizer's ids: its ``name_or_path``, size and a SHA-256 of its vocabulary.

    The vocabulary fingerprint hashes the sorted ``(token, id)`` items of ``get_vocab()``
    (added tokens included), so two copies of one tokenizer (hub name and local path) agree and
    tokenizers that give other ids to any token differ. ``None`` where the tokenizer has none.
    """
    vocab_sha256 = None
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab):
        try:
            items = sorted((str(token), int(i)) for token, i in get_vocab().items())
            vocab_sha256 = hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()
        except Exception:  # noqa: BLE001 - identity only; never fail a build over it
            vocab_sha256 = None
    try:
        size: int | None = len(tokenizer)
    except TypeError:
        size = getattr(tokenizer, "vocab_size", None)
    name = getattr(tokenizer, "name_or_path", None)
    return {"name_or_path": str(name) if name else None, "vocab_size": size, "vocab_sha256": vocab_sha256}


class NgramIndex:
    """An infini-gram index in a folder, queried for ∞-gram probabilities.

    Build one with :meth:`build` (token-id sequences) or :meth:`from_texts` (texts and a
    tokenizer), or open an existing infini-gram index folder with :meth:`open`. Needs the
    ``infini-gram`` package (``pip install "geomtrace[memorization]"``, Python >= 3.11).
    """

    def __init__(self, directory: Path, engine: Any, info: dict[str, Any], vocabulary: np.ndarray | None) -> None:
        self.directory = directory
        self.info = info
        self.token_width: int = int(info["token_width"])
        self.n_tokens: int = int(info["n_tokens"])
        self.n_documents: int = int(info["n_documents"])
        self._engine = engine
        self._vocabulary = vocabulary  # sorted original ids; code = position (compact vocabulary)

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        token_sequences: Iterable[Sequence[int]],
        directory: str | os.PathLike,
        *,
        vocab_size: int | None = None,
        token_width: TokenWidth = "auto",
        overwrite: bool = False,
        memory_gib: int | None = None,
        tokenizer: Any = None,
        progress: ProgressOption = True,
    ) -> NgramIndex:
        """Index ``token_sequences`` (one document each) into ``directory`` and open it.

        Args:
            token_sequences: token ids per document (lists, tuples, numpy arrays). Matches
                never cross from one document into the next. Empty documents are skipped.
            directory: the index folder (created). Other files in it are left alone.
            vocab_size: if given, every id must be below it (catches a wrong tokenizer).
            token_width: ``"auto"`` (2 bytes, through a compact vocabulary when ids exceed
                65,534; 4 bytes only when the corpus has more distinct ids than that), ``2``,
                or ``4`` (needs ~34 GiB of free memory while indexing).
            overwrite: rebuild when the folder holds a complete index of *other* content
                (an index of the same content is reused, after :meth:`open`'s check; one that
                fails it is rebuilt with a warning).
            memory_gib: memory the indexer may use (default: half of what is available).
            tokenizer: the tokenizer that made the ids (optional): its identity
                (:func:`tokenizer_identity`) is recorded, and a probe that uses the index with
                another tokenizer warns. ``vocab_size`` defaults to ``len(tokenizer)``.
            progress: ``True`` logs progress lines (logger ``geomtrace.memorization``: stderr by
                default), ``False`` is silent, or a callable receives each line.

        Raises:
            FileExistsError: the folder holds a different complete index (and not
                ``overwrite``), or an infini-gram index geomtrace did not build.
            IndexBuildError: the indexer failed or its index miscounts.
        """
        require_infini_gram()
        report = Reporter(progress)
        directory = Path(directory).resolve()
        documents = _as_documents(token_sequences)
        identity = tokenizer_identity(tokenizer) if tokenizer is not None else None
        if vocab_size is None and identity is not None:
            vocab_size = identity["vocab_size"]
        if vocab_size is not None:
            top = max(int(doc.max()) for doc in documents)
            if top >= vocab_size:
                raise ValueError(
                    f"token id {top} is not below vocab_size={vocab_size}: "
                    "was the corpus tokenized with this tokenizer?"
                )
        fingerprint = _fingerprint(documents)
        width, vocabulary = _choose_encoding(documents, token_width)

        state = IndexState.of(directory)
        if state is IndexState.COMPLETE:
            existing = json.loads((directory / INDEX_MARKER).read_text(encoding="utf-8"))
            if existing.get("fingerprint") == fingerprint:
                reused = cls._reuse(directory, existing, fingerprint, report)
                if reused is not None:
                    return reused
            elif not overwrite:
                raise FileExistsError(
                    f"{directory} holds a complete index of a different corpus ({existing.get('n_tokens')} tokens). "
                    "Pass overwrite=True to replace it, or choose another folder."
                )
        elif state is IndexState.FOREIGN:
            raise FileExistsError(
                f"{directory} holds infini-gram index files that geomtrace did not build; geomtrace will not delete "
                "them. Open that index with NgramIndex.open, or build into another folder."
            )
        if width == 4:
            _check_u32_memory()  # before anything in the folder is touched
        if state is IndexState.HALF_BUILT:
            warn(f"{directory} holds a half-built index (an earlier build was interrupted); rebuilding it.")
        if state in (IndexState.COMPLETE, IndexState.HALF_BUILT):
            _clear(directory)
        directory.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        atomic_write(
            directory / BUILD_MARKER, json.dumps({"fingerprint": fingerprint, "started": time.time()}).encode()
        )
        n_tokens = sum(int(doc.size) for doc in documents)
        report(
            f"indexing {n_tokens:,} tokens in {len(documents):,} documents into {directory} ({width}-byte tokens"
            + (f", compact vocabulary of {vocabulary.size:,} ids)" if vocabulary is not None else ")")
        )
        if vocabulary is not None:
            atomic_write(directory / VOCABULARY_FILE, _npy_bytes(vocabulary))
        _write_stream(directory, documents, width, vocabulary, report)
        _run_indexer(directory, width, memory_gib, report)
        info = {
            "format": _FORMAT,
            "token_width": width,
            "compact_vocabulary": vocabulary is not None,
            "n_tokens": n_tokens,
            "n_documents": len(documents),
            "max_token_id": max(int(doc.max()) for doc in documents),
            "vocab_size": vocab_size,
            "fingerprint": fingerprint,
            "tokenizer": identity,
            "seconds": round(time.perf_counter() - start, 3),
            "built_with": {"infini-gram": _infini_gram_version()},
        }
        index = cls._load(directory, info, vocabulary)
        _verify_counts(index, directory, width)
        info.update(_file_record(directory))
        index.info = dict(index.info, **info)
        atomic_write(directory / INDEX_MARKER, json.dumps(info, indent=1).encode())
        (directory / BUILD_MARKER).unlink(missing_ok=True)
        report(f"index ready in {info['seconds']:.1f} s: {directory}")
        return index

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        tokenizer: Any,
        directory: str | os.PathLike,
        *,
        batch_size: int = 1000,
        progress: ProgressOption = True,
        **build_kwargs: Any,
    ) -> NgramIndex:
        """Tokenize ``texts`` (one document each, no special tokens added) and :meth:`build`.

        ``tokenizer`` is any Hugging Face tokenizer (one trained locally works); ``vocab_size``
        defaults to ``len(tokenizer)``. Other keyword arguments go to :meth:`build`.
        """
        report = Reporter(progress)
        texts = list(texts)
        documents: list[list[int]] = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            if not all(isinstance(t, str) for t in chunk):
                raise TypeError("texts must be strings")
            documents.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
            report.throttled(f"tokenized {min(start + batch_size, len(texts)):,} / {len(texts):,} texts")
        build_kwargs.setdefault("vocab_size", len(tokenizer))
        return cls.build(documents, directory, progress=progress, tokenizer=tokenizer, **build_kwargs)

    @classmethod
    def _reuse(cls, directory: Path, existing: dict[str, Any], fingerprint: str, report: Reporter) -> NgramIndex | None:
        """The complete index of the same corpus in ``directory``, or None (warned) when it must be rebuilt.

        An index built before the file record (no ``"files"`` in its marker) is checked the build's
        way (its token stream is the corpus; unigram and bigram counts) and gets the record.
        """
        try:
            if existing.get("files"):
                index = cls.open(directory)
            else:
                vocabulary = (
                    np.load(directory / VOCABULARY_FILE, allow_pickle=False)
                    if existing.get("compact_vocabulary")
                    else None
                )
                width = _check_shards(directory, existing.get("token_width"))
                if _shard_ids(directory) != [0] or _stream_fingerprint(directory, width, vocabulary) != fingerprint:
                    raise IndexIntegrityError(f"{directory}/tokenized.0 does not hold the corpus its marker records")
                index = cls._load(directory, existing, vocabulary)
                _verify_counts(index, directory, width)
                info = dict(existing, **_file_record(directory))
                atomic_write(directory / INDEX_MARKER, json.dumps(info, indent=1).encode())
                index.info = dict(index.info, **info)
        except (IndexNotReadyError, IndexBuildError, OSError, ValueError) as err:
            warn(f"rebuilding the index in {directory}: {err}")
            return None
        (directory / BUILD_MARKER).unlink(missing_ok=True)
        report(f"reusing the complete index of the same corpus in {directory}")
        return index

    @classmethod
    def open(cls, directory: str | os.PathLike, *, token_width: int | None = None, verify: bool = False) -> NgramIndex:
        """Open the infini-gram index in ``directory`` (built by geomtrace or not).

        A folder built by geomtrace must carry its completion marker; any folder must hold,
        for each shard, ``tokenized.N``, ``offset.N`` and a ``table.N`` of the size a complete
        suffix array has. ``token_width`` (2 or 4) is inferred from those sizes when omitted.

        What is checked against the record the build wrote (geomtrace's indexes):

        * by default: the set of index files, each file's size, and the SHA-256 of a fixed
          sample of each (:func:`sample_offsets`: first and last 4 KiB and 30 blocks of 4 KiB
          evenly spaced, at most 128 KiB read per file, a few milliseconds whatever the index
          size). This catches a missing, extra, truncated, extended or replaced file (another
          build, another corpus) and damage inside a sampled block; it does **not** catch a few
          bytes changed between sampled blocks (in a 20 MB ``tokenized.0``, 99% of its bytes).
        * ``verify=True``: the SHA-256 of every byte of every file (about as long as reading
          the index once; see ``docs/benchmarks.md``). Catches any change.

        An index built by an earlier geomtrace without that record (its marker holds only the corpus
        fingerprint) opens with a warning that only sizes were checked; ``verify=True`` then
        recomputes the corpus fingerprint from ``tokenized.0`` (the suffix array is not
        covered). Building the same corpus into the folder again adds the record. A folder
        geomtrace did not build has no record: sizes only (``verify=True`` warns so).
        After the file checks, the engine's stream length must equal the files'.

        Raises:
            IndexNotReadyError: no index, a half-built one, or a truncated table.
            IndexIntegrityError: (a subclass) a file differs from the build's record: rebuild
                the index (``build``/``from_texts`` with the same corpus and folder rebuild it).
        """
        require_infini_gram()
        verify = as_bool("verify", verify)
        directory = Path(directory).resolve()
        if not directory.is_dir():
            raise IndexNotReadyError(f"{directory} is not a folder; build an index with NgramIndex.build first")
        state = IndexState.of(directory)
        if state is IndexState.HALF_BUILT:
            raise IndexNotReadyError(
                f"{directory} holds a half-built index (its build was interrupted). Rebuild it with "
                "NgramIndex.build(..., directory), which detects this and starts over."
            )
        if state is IndexState.EMPTY:
            raise IndexNotReadyError(f"{directory} holds no infini-gram index (no tokenized.0 / table.0)")
        vocabulary = None
        recorded = False
        if state is IndexState.COMPLETE:
            info = json.loads((directory / INDEX_MARKER).read_text(encoding="utf-8"))
            recorded = bool(info.get("files"))
            if recorded:
                _check_files(directory, info, verify)
            if info.get("compact_vocabulary"):
                vocabulary = np.load(directory / VOCABULARY_FILE, allow_pickle=False)
        else:
            info = {}
        width = _check_shards(directory, info.get("token_width", token_width))
        if state is IndexState.COMPLETE and not recorded:
            if verify and info.get("fingerprint") and _shard_ids(directory) == [0]:
                if _stream_fingerprint(directory, width, vocabulary) != info["fingerprint"]:
                    raise IndexIntegrityError(
                        f"{directory}/tokenized.0 does not hold the corpus recorded when the index was built (its "
                        "token ids changed): its ∞-gram values cannot be trusted. Rebuild the index (NgramIndex.build "
                        "with the same corpus and folder rebuilds it)."
                    )
                why = "verify=True checked the token stream against the corpus fingerprint, not the suffix array"
            else:
                why = "open() checked the file sizes only, not their content"
            warn(
                f"{directory} was built by an older geomtrace that recorded no file fingerprints: {why}. Build the "
                "same corpus into the folder again (NgramIndex.build: it checks and reuses the index) to record them."
            )
        elif state is IndexState.FOREIGN and verify:
            warn(
                f"verify=True: {directory} was not built by geomtrace, so nothing is recorded to check its content "
                "against; only the file sizes were checked."
            )
        if not info:
            n_documents = sum((directory / f"offset.{s}").stat().st_size // 8 for s in _shard_ids(directory))
            stream = sum((directory / f"tokenized.{s}").stat().st_size for s in _shard_ids(directory)) // width
            info = {
                "token_width": width,
                "n_tokens": stream - n_documents,
                "n_documents": n_documents,
                "compact_vocabulary": False,
                "fingerprint": None,
            }
        return cls._load(directory, info, vocabulary)

    @classmethod
    def _load(cls, directory: Path, info: dict[str, Any], vocabulary: np.ndarray | None) -> NgramIndex:
        engine_module = require_infini_gram()
        width = int(info["token_width"])
        vocab_bound = 2**16 - 1 if width == 2 else int(info.get("max_token_id") or _MAX_ID[4]) + 1
        index_bytes = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
        # infini-gram prefetches pages of huge on-disk indexes ahead of each lookup; for an index
        # that sits in the page cache that only costs time (4x fewer queries/s measured here).
        prefetch = (
            {}
            if index_bytes > _PREFETCH_ABOVE_BYTES
            else {"ds_prefetch_depth": 0, "sa_prefetch_depth": 0, "od_prefetch_depth": 0}
        )
        engine = engine_module.InfiniGramEngine(
            index_dir=str(directory), eos_token_id=0, vocab_size=vocab_bound, token_dtype=f"u{8 * width}", **prefetch
        )
        index = cls(directory, engine, dict(info, token_width=width), vocabulary)
        total = index._engine.count(input_ids=[])["count"]
        if total != index.n_tokens + index.n_documents:
            raise IndexNotReadyError(
                f"{directory}: the engine counts {total} stream tokens, the files say "
                f"{index.n_tokens + index.n_documents}; the index is damaged. Rebuild it."
            )
        return index

    # ------------------------------------------------------------------ queries

    def describe(self) -> str:
        """One line of provenance: folder, size, token width."""
        return (
            f"infini-gram index {self.directory} ({self.n_tokens:,} tokens, {self.n_documents:,} documents, "
            f"{self.token_width}-byte{', compact vocabulary' if self._vocabulary is not None else ''})"
        )

    @property
    def fingerprint(self) -> str | None:
        """SHA-256 of the indexed token ids (None for an index geomtrace did not build)."""
        return self.info.get("fingerprint")

    def check_tokenizer(self, tokenizer: Any) -> str | None:
        """Warn (and return the message) when ``tokenizer`` is not the one the index was built with.

        Compared: the vocabulary fingerprint of :func:`tokenizer_identity` when both sides have
        one, else the vocabulary sizes. An index with no tokenizer recorded is checked only for
        ids the tokenizer cannot produce (an indexed id >= ``len(tokenizer)``). ``None``: no
        mismatch found. Queried with another tokenizer's ids, the ∞-gram values are those of
        other tokens: typically no answer is scorable (all NaN).
        """
        if tokenizer is None:
            return None
        given = tokenizer_identity(tokenizer)
        recorded = self.info.get("tokenizer") or None
        problem = None
        if recorded is not None:
            if recorded.get("vocab_sha256") and given["vocab_sha256"]:
                differs = recorded["vocab_sha256"] != given["vocab_sha256"]
            else:
                differs = recorded.get("vocab_size") != given["vocab_size"]
            if differs:
                problem = (
                    f"was built with the tokenizer {recorded.get('name_or_path')!r} (vocabulary of "
                    f"{recorded.get('vocab_size')} tokens, fingerprint {str(recorded.get('vocab_sha256'))[:12]}), but "
                    f"is queried with {given['name_or_path']!r} ({given['vocab_size']} tokens, fingerprint "
                    f"{str(given['vocab_sha256'])[:12]})"
                )
        else:
            top = self.info.get("max_token_id")
            if top is not None and given["vocab_size"] is not None and int(top) >= int(given["vocab_size"]):
                problem = (
                    f"holds token id {top}, which the tokenizer {given['name_or_path']!r} "
                    f"({given['vocab_size']} tokens) cannot produce"
                )
        if problem is None:
            return None
        message = (
            f"the ∞-gram index {self.directory} {problem}: its values would be those of other tokens (typically no "
            "answer is scorable: all NaN). Rebuild the index with this tokenizer (NgramIndex.from_texts(texts, "
            "tokenizer, folder)), or pass the index's own tokenizer as index_tokenizer= (CLI: --index_tokenizer)."
        )
        warn(message)
        return message

    def _codes(self, ids: Sequence[int]) -> list[int]:
        codes = [int(t) for t in ids]  # the engine accepts Python ints only
        if not codes:
            return codes
        if min(codes) < 0:
            raise ValueError(f"token ids must be >= 0, got {min(codes)}")
        if self._vocabulary is not None:
            vocab = self._vocabulary
            arr = np.asarray(codes, dtype=np.int64)
            pos = np.searchsorted(vocab, arr)
            hit = vocab[np.minimum(pos, vocab.size - 1)] == arr
            return np.where(hit, pos, vocab.size).tolist()  # absent ids -> code K, in no document
        if max(codes) > _MAX_ID[self.token_width]:
            raise ValueError(
                f"token id {max(codes)} cannot occur in this {self.token_width}-byte index (ids <= "
                f"{_MAX_ID[self.token_width]}): was the query tokenized with the index's tokenizer?"
            )
        return codes

    def count(self, ids: Sequence[int]) -> int:
        """Occurrences of the n-gram ``ids`` in the corpus (the empty n-gram: stream length)."""
        return int(self._engine.count(input_ids=self._codes(ids))["count"])

    def prob(self, context_ids: Sequence[int], next_id: int) -> InfgramProb:
        """∞-gram ``P(next_id | longest suffix of context_ids that occurs in the corpus)``."""
        codes = self._codes([*context_ids, next_id])
        result = self._engine.infgram_prob(prompt_ids=codes[:-1], cont_id=codes[-1])
        if "error" in result:
            raise ValueError(f"infini-gram rejected the query: {result['error']}")
        return InfgramProb(
            prob=max(0.0, float(result["prob"])),  # the engine reports -1 when nothing matches
            suffix_len=int(result["suffix_len"]),
            prompt_cnt=int(result["prompt_cnt"]),
            cont_cnt=int(result["cont_cnt"]),
        )

    def __repr__(self) -> str:
        return f"NgramIndex({self.describe()})"


# ---------------------------------------------------------------------- build steps


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _infini_gram_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("infini-gram")
    except Exception:  # noqa: BLE001 - provenance only
        return None


def _write_stream(
    directory: Path, documents: Sequence[np.ndarray], width: int, vocabulary: np.ndarray | None, report: Reporter
) -> None:
    """Write ``tokenized.0`` and ``offset.0`` in infini-gram's layout."""
    dtype = _DTYPES[width]
    separator = np.full(1, np.iinfo(dtype).max, dtype=dtype).tobytes()
    offsets = np.empty(len(documents), dtype=np.uint64)
    position = 0
    with open(directory / "tokenized.0", "wb") as stream:
        for i, doc in enumerate(documents):
            codes = np.searchsorted(vocabulary, doc) if vocabulary is not None else doc
            payload = separator + codes.astype(dtype).tobytes()
            offsets[i] = position
            stream.write(payload)
            position += len(payload)
            if i % 10_000 == 0:
                report.throttled(f"writing the token stream: {i:,} / {len(documents):,} documents")
        stream.flush()
        os.fsync(stream.fileno())
    atomic_write(directory / "offset.0", offsets.tobytes())


def _ulimit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return _MAX_ULIMIT if hard == resource.RLIM_INFINITY else min(hard, _MAX_ULIMIT)


def _run_indexer(directory: Path, width: int, memory_gib: int | None, report: Reporter) -> None:
    if memory_gib is None:
        available = _available_memory_bytes() or 2 * 2**30
        memory_gib = max(1, int(available / 2**30 / 2))
    command = [
        sys.executable,
        "-m",
        "infini_gram.indexing",
        "--data_dir",
        str(directory),
        "--save_dir",
        str(directory),
        "--token_dtype",
        f"u{8 * width}",
        "--cpus",
        "1",  # with more, infini-gram 2.6.0 once built an index that counted nothing
        "--mem",
        str(memory_gib),
        "--ulimit",
        str(_ulimit()),
    ]
    tail: deque[str] = deque(maxlen=30)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            for part in line.split("\r"):
                part = part.strip()
                if part:
                    tail.append(part)
                    if part.startswith("Step") and "Skipped" not in part:
                        report(f"infini-gram: {part}")
        code = proc.wait()
    if code != 0 or not (directory / "table.0").is_file():
        raise IndexBuildError(
            f"infini-gram's indexer failed (exit code {code}) in {directory}; the folder stays marked half-built "
            "and the next build starts over. Its last output:\n  " + "\n  ".join(tail)
        )


def _verify_counts(index: NgramIndex, directory: Path, width: int) -> None:
    """Check the new index by counting: unigrams and bigrams against numpy counts of the stream."""
    stream = np.fromfile(directory / "tokenized.0", dtype=_DTYPES[width]).astype(np.int64)
    separator = int(np.iinfo(_DTYPES[width]).max)
    stream[stream == separator] = -1
    engine = index._engine
    rng = np.random.default_rng(0)
    values, counts = np.unique(stream[stream >= 0], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    picks = set(order[:8].tolist()) | set(rng.choice(values.size, size=min(24, values.size), replace=False).tolist())
    for k in sorted(picks):
        got = engine.count(input_ids=[int(values[k])])["count"]
        if got != counts[k]:
            raise IndexBuildError(
                f"the index built in {directory} miscounts: token code {int(values[k])} occurs {int(counts[k])} times "
                f"in the corpus, the index says {got}. The folder stays marked half-built; rebuild it."
            )
    starts = np.flatnonzero((stream[:-1] >= 0) & (stream[1:] >= 0))
    for pos in rng.choice(starts, size=min(16, starts.size), replace=False) if starts.size else []:
        a, b = int(stream[pos]), int(stream[pos + 1])
        expected = int(np.count_nonzero((stream[:-1] == a) & (stream[1:] == b)))
        got = engine.count(input_ids=[a, b])["count"]
        if got != expected:
            raise IndexBuildError(
                f"the index built in {directory} miscounts the bigram ({a}, {b}): {expected} in the corpus, "
                f"{got} in the index. The folder stays marked half-built; rebuild it."
            )


def _shard_ids(directory: Path) -> list[int]:
    return sorted(int(p.name.split(".")[1]) for p in directory.glob("tokenized.*") if p.name.split(".")[1].isdigit())


def _check_shards(directory: Path, token_width: int | None) -> int:
    """The token width, after checking every shard has complete files."""
    shards = _shard_ids(directory)
    if not shards:
        raise IndexNotReadyError(f"{directory} holds no tokenized.N file: not an infini-gram index")
    width = token_width
    for shard in shards:
        stream_bytes = (directory / f"tokenized.{shard}").stat().st_size
        for name in (f"offset.{shard}", f"table.{shard}"):
            if not (directory / name).is_file():
                raise IndexNotReadyError(f"{directory} lacks {name}: the index is incomplete; rebuild it")
        table_bytes = (directory / f"table.{shard}").stat().st_size
        ratio = _ratio(stream_bytes)
        if width is None:
            candidates = [w for w in (2, 4) if stream_bytes % w == 0 and table_bytes == ratio * stream_bytes // w]
            if len(candidates) != 1:
                raise IndexNotReadyError(
                    f"{directory}/table.{shard} has {table_bytes} bytes, which fits no complete suffix array of "
                    f"tokenized.{shard} ({stream_bytes} bytes): the index is incomplete or of an unknown kind"
                )
            width = candidates[0]
        if width not in (2, 4):
            raise ValueError(f"token_width must be 2 or 4, got {width!r}")
        if stream_bytes % width or table_bytes != ratio * stream_bytes // width:
            raise IndexNotReadyError(
                f"{directory}/table.{shard} has {table_bytes} bytes, expected {ratio * stream_bytes // width} for a "
                f"complete {width}-byte index: the index is incomplete (interrupted build?); rebuild it"
            )
    assert width is not None  # every shard set it
    return int(width)
