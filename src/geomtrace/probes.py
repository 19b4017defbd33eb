"""Fixed probe sets: token sequences measured at every step of a run.

A probe set is built once (deterministically from its source, tokenizer and seed) and
then only read: every measurement of a run uses exactly the same sequences, which is
what makes values comparable across steps (RankMe and alpha-ReQ depend on N).

Selection follows the paper's Pythia scripts: tokenize, keep sequences with at least
``min_tokens`` tokens (11 = "more than 10"), truncate to ``max_tokens`` (128), and pick
``num_sequences`` with a seeded shuffle. One rule for every way a source is read:

1. the **pool** is the first ``pool_size`` (10,000) non-empty texts of the source, in its
   order (blank texts are skipped, surrounding whitespace stripped): a hub dataset streamed
   online, the same dataset read from the local cache offline, a ``datasets.Dataset`` in
   memory, its ``to_iterable_dataset()``, a file or a list all give the same pool, and a
   stream is read no further than the pool;
2. the pool is shuffled with ``numpy.random.default_rng(seed)`` and the first
   ``num_sequences`` texts that pass the length filter are kept, in shuffled order (only as
   many texts are tokenized as needed).

A file written by :func:`write_probe_file` (``geomtrace probes export``) holds chosen probes:
it is read in its order, without pool or shuffle, so a later (offline) run reuses exactly them.

Tokenization uses the tokenizer's default special tokens (``add_special_tokens=True``):
nothing for Pythia/GPT-NeoX/OLMo-2 tokenizers, a BOS for Llama-family ones, i.e. what the
model saw in pre-training. The length filter counts those tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geomtrace._atomic import atomic_write_text
from geomtrace._jsonio import dumps_line
from geomtrace._optional import require
from geomtrace._warnings import warn
from geomtrace.options import PROBE_OPTION_RULES, ProbeOptions, check_probe_lengths

__all__ = [
    "PROBE_OPTION_RULES",
    "ProbeFileError",
    "ProbeLoadError",
    "ProbeOptions",
    "ProbeSet",
    "check_probe_lengths",
    "load_probes",
    "hub_offline",
    "PROBE_FILE_KEY",
    "read_probe_file_header",
    "write_probe_file",
]

_TOKENIZE_CHUNK = 512
#: Rows of an in-memory ``datasets.Dataset`` read at a time while filling the pool.
_DATASET_SLICE = 1024
#: The key of the first line of a probe file written by :func:`write_probe_file`.
PROBE_FILE_KEY = "geomtrace_probe_set"


class ProbeLoadError(RuntimeError):
    """A probe source could not be loaded (e.g. a hub dataset while offline)."""


class _ColumnError(ValueError):
    """The dataset lacks the requested split or text column (a user error, not a load error)."""


@dataclass
class ProbeSet:
    """A fixed, ordered list of token sequences used as probes.

    Attributes:
        sequences: token ids of each probe sequence (no padding).
        description: human-readable provenance, e.g.
            ``"embedded:pydoc_data.topics n=1024 len=11..128 seed=0"``.
        pad_token_id: id used to pad batches (masked out, so its value never matters).
        options: the :class:`ProbeOptions` that rebuild this set (:func:`load_probes` records
            them), or None (a hand-made set); the callbacks record them, so that ``geomtrace
            replay --like`` can rebuild a ready set passed to a callback.
        texts: the text of each probe (the user text of chat probes), as :func:`load_probes`
            chose them, or None (a hand-made set); :func:`write_probe_file` writes them.
    """

    sequences: list[list[int]]
    description: str
    pad_token_id: int
    options: ProbeOptions | None = field(default=None, compare=False, repr=False)
    texts: list[str] | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.sequences)

    def shard(self, rank: int, world_size: int) -> ProbeSet:
        """The contiguous part of the probes that ``rank`` of ``world_size`` measures.

        Shards cover every sequence exactly once; sizes differ by at most one and a shard is
        empty when there are fewer sequences than ranks (that rank still joins the reduce).
        """
        span = self.shard_range(rank, world_size)
        start, stop = span.start, span.stop
        return ProbeSet(
            sequences=self.sequences[start:stop],
            description=f"{self.description} shard={rank}/{world_size}",
            pad_token_id=self.pad_token_id,
            texts=None if self.texts is None else self.texts[start:stop],
        )

    def shard_range(self, rank: int, world_size: int) -> range:
        """The positions in this set of the sequences of :meth:`shard` ``(rank, world_size)``."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        n = len(self.sequences)
        return range(rank * n // world_size, (rank + 1) * n // world_size)

    def batches(
        self,
        batch_size: int,
        padding_side: str = "right",
        device: torch.device | str | None = None,
    ) -> Iterator[dict[str, Tensor]]:
        """Yield ``{"input_ids", "attention_mask"}`` long tensors, in probe order.

        Each batch is padded to its own longest sequence on ``padding_side``. Features do
        not depend on the padding side (see :mod:`geomtrace.features`).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        for start in range(0, len(self.sequences), batch_size):
            chunk = self.sequences[start : start + batch_size]
            width = max(len(seq) for seq in chunk)
            input_ids = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                cols = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
                input_ids[row, cols] = torch.tensor(seq, dtype=torch.long)
                attention_mask[row, cols] = 1
            yield {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}

    def longest(self) -> int:
        """Length of the longest sequence (0 for an empty set)."""
        return max((len(seq) for seq in self.sequences), default=0)

    def truncated(self, max_tokens: int) -> ProbeSet:
        """The same probes cut to their first ``max_tokens`` tokens (e.g. a model's positions)."""
        max_tokens = PROBE_OPTION_RULES["max_tokens"]("max_tokens", max_tokens)
        if self.longest() <= max_tokens:
            return self
        # Without a chat template, cutting is rebuilding with the lower max_tokens (the selection
        # depends on min_tokens only); chat probes lose their generation prompt, which no option says.
        options = self.options
        rebuilt = replace(options, max_tokens=max_tokens) if options and not options.chat_template else None
        return ProbeSet(
            sequences=[list(seq[:max_tokens]) for seq in self.sequences],
            description=f"{self.description} cut={max_tokens}",
            pad_token_id=self.pad_token_id,
            options=rebuilt,
            texts=self.texts if rebuilt is not None else None,  # chat probes: the texts no longer rebuild them
        )

    def num_tokens(self) -> int:
        """Total number of (unpadded) tokens."""
        return sum(len(seq) for seq in self.sequences)

    def fingerprint(self) -> str:
        """Short SHA-256 of the token ids; equal fingerprints mean the same probes."""
        digest = hashlib.sha256()
        for seq in self.sequences:
            digest.update(np.asarray(seq, dtype=np.int64).tobytes())
            digest.update(b"|")  # separator: [1, 2] + [3] differs from [1] + [2, 3]
        return digest.hexdigest()[:16]


def load_probes(
    tokenizer: Any,
    source: Any = None,
    *,
    num_sequences: int = 1024,
    min_tokens: int = 11,
    max_tokens: int = 128,
    seed: int = 0,
    pool_size: int = 10_000,
    text_column: str = "text",
    split: str = "train",
    config_name: str | None = None,
    chat_template: bool = False,
    system_prompt: str | None = None,
) -> ProbeSet:
    """Build a deterministic probe set.

    The probes are drawn from the first ``pool_size`` non-empty texts of ``source`` in its
    order, shuffled with ``seed``; the first ``num_sequences`` with at least ``min_tokens``
    tokens are kept. The rule is the same for every way a source is read, so a hub dataset
    streamed online, read from the cache offline, or passed as a ``Dataset`` or its
    ``to_iterable_dataset()`` gives the same probe set (and fingerprint). A file written by
    :func:`write_probe_file` is read in its order (its texts are already chosen).

    Args:
        tokenizer: an HF tokenizer (the model's own).
        source: ``None`` (the embedded corpus, :func:`geomtrace.tiny.embedded_corpus`), a list
            of strings, a local ``.txt`` (one text per line), ``.jsonl`` (one object per line,
            field ``text_column``) or ``.json`` (a list of texts or of such objects) path, a
            ``datasets.Dataset`` / ``IterableDataset`` / ``DatasetDict``, or a hub dataset name such
            as ``"wikitext"`` (with ``config_name``, ``split``; streamed online, read from the local cache offline).
        num_sequences: how many sequences to keep (all available, with a warning, if fewer).
        min_tokens: keep sequences with at least this many tokens (11: "more than 10").
        max_tokens: truncate longer sequences to this many tokens.
        seed: seed of the shuffle that picks the sequences.
        pool_size: draw from the first this many non-empty texts of the source (a stream is
            read no further).
        text_column: the text field of a dataset or jsonl file.
        split: dataset split for hub names and ``DatasetDict``.
        config_name: dataset config for hub names, e.g. ``"wikitext-103-raw-v1"``.
        chat_template: wrap each text as a user message and apply the tokenizer's chat
            template with ``add_generation_prompt=True`` (probes for post-trained models).
        system_prompt: optional system message when ``chat_template=True``.

    Raises:
        FileNotFoundError: a local path that does not exist (a string with a file suffix, a
            path-like start such as ``./`` or an existing parent folder counts as a path).
        ProbeFileError: a file that cannot be read as probes (not UTF-8, a malformed
            ``.jsonl`` line, a line that is not an object, a missing text field, a folder);
            the message names the file and line.
        ProbeLoadError: a hub dataset that cannot be loaded (e.g. offline).
        ValueError: bad arguments, or no text passes the filters.
    """
    given: dict[str, Any] = {"num_sequences": num_sequences, "min_tokens": min_tokens, "max_tokens": max_tokens}
    given.update(seed=seed, pool_size=pool_size, text_column=text_column, split=split, config_name=config_name)
    given.update(chat_template=chat_template, system_prompt=system_prompt)
    options: dict[str, Any] = {name: PROBE_OPTION_RULES[name](name, value) for name, value in given.items()}
    check_probe_lengths(options["min_tokens"], options["max_tokens"])
    num_sequences, min_tokens, max_tokens = options["num_sequences"], options["min_tokens"], options["max_tokens"]
    seed, chat_template, pool_size = options["seed"], options["chat_template"], options["pool_size"]
    recorded = ProbeOptions(source=source, **options)
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template=True but the tokenizer has no chat template; set tokenizer.chat_template")
    if system_prompt is not None and not chat_template:
        raise ValueError("system_prompt is only used with chat_template=True")

    pool = _read_texts(source, text_column=text_column, split=split, config_name=config_name, pool_size=pool_size)
    texts, label = pool.texts, pool.label
    # A written probe file holds chosen probes: its order is the selection.
    order = np.arange(len(texts)) if pool.chosen is not None else np.random.default_rng(seed).permutation(len(texts))
    encode = _encoder(tokenizer, max_tokens, chat_template, system_prompt)

    sequences: list[list[int]] = []
    chosen: list[str] = []
    seen = too_short = 0
    pos = 0
    while pos < len(order) and len(sequences) < num_sequences:
        # Tokenize in chunks sized to what is still missing, so a small probe set from a big
        # corpus stays cheap; the result does not depend on the chunking.
        step = min(_TOKENIZE_CHUNK, max(16, 2 * (num_sequences - len(sequences))))
        chunk = [texts[i] for i in order[pos : pos + step]]
        pos += step
        for text, (ids, text_tokens) in zip(chunk, encode(chunk)):
            seen += 1
            if text_tokens < min_tokens:
                too_short += 1
                continue
            sequences.append(ids)
            chosen.append(text)
            if len(sequences) == num_sequences:
                break

    full = pool.chosen is None and len(texts) >= pool_size  # the source may hold more than the pool
    if not sequences:
        raise ValueError(
            f"no probe sequence left from {label}: {len(texts)} texts read, {seen} tokenized, {too_short} had fewer "
            f"than min_tokens={min_tokens} tokens. Use longer texts or lower min_tokens"
            + (f", or raise pool_size={pool_size} (--pool-size)." if full else ".")
        )
    # A written file holds the whole set: fewer texts than num_sequences is no shortage.
    if len(sequences) < num_sequences and (pool.chosen is None or too_short):
        more = f"; raise pool_size={pool_size} (--pool-size) to draw from more texts" if full else ""
        warn(
            f"only {len(sequences)} of the requested {num_sequences} probe sequences are available from {label} "
            f"(texts with >= {min_tokens} tokens among the {len(texts)} read); using all of them{more}"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    chat = " chat" if chat_template else ""
    drawn = f" pool={pool_size}" if full else ""  # said only where the pool left texts out
    probes = ProbeSet(
        sequences=sequences,
        description=f"{label} n={len(sequences)} len={min_tokens}..{max_tokens} seed={seed}{drawn}{chat}",
        pad_token_id=int(pad) if pad is not None else 0,
        options=recorded,
        texts=chosen,
    )
    if pool.chosen is not None:
        _check_written_fingerprint(probes, pool.chosen, label)
    return probes


def _check_written_fingerprint(probes: ProbeSet, header: dict[str, Any], label: str) -> None:
    """Warn when a written probe file's texts give other probes here than when it was written."""
    theirs = header.get("fingerprint")
    written_n = header.get("n_probes")
    if not theirs or theirs == probes.fingerprint() or (isinstance(written_n, int) and len(probes) < written_n):
        return  # the same probes, or a deliberate prefix (num_sequences below the file's)
    recorded = header.get("options")
    written: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    keys = ("max_tokens", "chat_template", "system_prompt")
    then = ", ".join(f"{k}={written.get(k)!r}" for k in keys if k in written)
    warn(
        f"{label}: these probe texts give fingerprint {probes.fingerprint()} here, but were written with "
        f"fingerprint {theirs} (tokenizer {header.get('tokenizer')!r}{', ' + then if then else ''}): use the same "
        "tokenizer and options, or the values will not compare with the runs measured on the written probes"
    )


def _encoder(tokenizer: Any, max_tokens: int, chat_template: bool, system_prompt: str | None):
    """A function mapping texts to ``(token ids, text length in tokens)`` pairs.

    The length is what ``min_tokens`` filters on: the whole sequence for plain probes (its
    special tokens included), the user text alone for chat probes (the template would
    otherwise let every text pass).
    """

    def plain(texts: list[str]) -> list[tuple[list[int], int]]:
        # Truncating before filtering is safe: max_tokens >= min_tokens.
        encoded = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]
        return [(list(ids), len(ids)) for ids in encoded]

    prefix = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []

    def render(text: str) -> list[int]:
        prompt = tokenizer.apply_chat_template(
            [*prefix, {"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        # The template writes its own BOS/role markers: adding special tokens would double the BOS.
        return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])

    if not chat_template:
        return plain
    budget = max_tokens - len(render(""))
    if budget < 1:
        raise ValueError(
            f"max_tokens={max_tokens} leaves no room for text inside the chat template "
            f"({len(render(''))} tokens); raise max_tokens"
        )

    def fit(text: str, content: list[int]) -> list[int]:
        """The rendered probe, its user text shortened until the whole prompt fits.

        Only the user text is ever cut: the template's suffix (the generation prompt, the
        token the probe is measured at) always ends the sequence. Decoding a prefix of the
        tokens and re-encoding it inside the template may give more tokens than before
        (byte-level BPE splits multi-byte characters differently), so shorten until it fits.
        """
        keep = min(len(content), budget)
        piece = text if len(content) <= budget else tokenizer.decode(content[:keep]).rstrip("\ufffd")
        while True:
            ids = render(piece)
            over = len(ids) - max_tokens
            if over <= 0:
                return ids
            keep -= over
            piece = tokenizer.decode(content[: max(keep, 0)]).rstrip("\ufffd")

    def chat(texts: list[str]) -> list[tuple[list[int], int]]:
        contents = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]
        return [(fit(text, list(content)), len(content)) for text, content in zip(texts, contents)]

    return chat


@dataclass(frozen=True)
class _Pool:
    texts: list[str]
    label: str
    chosen: dict[str, Any] | None = None  # the header of a written probe file: its texts are the probes


def _read_texts(source: Any, *, text_column: str, split: str, config_name: str | None, pool_size: int) -> _Pool:
    """The pool of a probe source (its first ``pool_size`` non-empty texts) and a short label."""
    if source is None:
        from geomtrace.tiny import embedded_corpus

        return _Pool(_first(embedded_corpus(), pool_size), "embedded:pydoc_data.topics")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            raise ProbeFileError(
                f"probe source {str(source)!r} is a folder; pass a file inside it (.txt, one text per line; "
                ".jsonl, one JSON object per line; or .json, a list of texts)"
            )
        if path.is_file():
            header = read_probe_file_header(path)
            if header is not None:
                return _Pool(_read_file(path, "text", skip_header=True), f"file:{path.name}", header)
            return _Pool(_first(_read_file(path, text_column), pool_size), f"file:{path.name}")
        if not isinstance(source, str) or _looks_like_path(source):
            raise FileNotFoundError(_missing_file_message(path))
        texts, label = _read_hub(source, text_column=text_column, split=split, config_name=config_name, limit=pool_size)
        return _Pool(texts, label)
    if isinstance(source, Sequence) and all(isinstance(t, str) for t in source):
        return _Pool(_first(source, pool_size), "texts")
    if _is_hf_dataset(source):
        return _Pool(_read_dataset(source, text_column=text_column, split=split, limit=pool_size), "dataset")
    raise TypeError(
        f"unsupported probe source of type {type(source).__name__}: pass None, a list of strings, a .txt/.jsonl "
        "path, a datasets.Dataset or a hub dataset name"
    )


def _first(texts: Iterable[Any], limit: int) -> list[str]:
    """The first ``limit`` non-empty texts, stripped (non-strings skipped); reads no further."""
    out: list[str] = []
    if limit < 1:
        return out
    for t in texts:
        if isinstance(t, str) and t.strip():
            out.append(t.strip())
            if len(out) >= limit:
                break
    return out


def _clean(texts: Iterable[Any]) -> list[str]:
    return [t.strip() for t in texts if isinstance(t, str) and t.strip()]


class ProbeFileError(ValueError):
    """A probe file that cannot be read as probes; the message names the file (and line)."""


# File name endings that mark a string as a local path rather than a hub dataset name.
_PATH_SUFFIXES = (".txt", ".jsonl", ".json", ".text", ".md", ".csv", ".tsv", ".parquet", ".arrow", ".gz")
# Formats a probe file cannot have: reading them as lines of text would silently misread them.
_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".arrow", ".gz", ".zip")


def _looks_like_path(name: str) -> bool:
    """Whether a string that names no existing file was meant as a local path (a typo)
    rather than a hub dataset (``wikitext``, ``HuggingFaceFW/fineweb``)."""
    if name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name:
        return True
    if Path(name).suffix.lower() in _PATH_SUFFIXES:
        return True
    parent = Path(name).expanduser().parent
    return str(parent) not in ("", ".") and parent.is_dir()  # "data/probs" with a local data/ folder


def _missing_file_message(path: Path) -> str:
    import difflib

    message = f"probe file {path} does not exist; check the path (--probe-file)"
    folder = path.parent if str(path.parent) else Path(".")
    if folder.is_dir():
        names = [p.name for p in folder.iterdir() if p.is_file()]
        close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.6)
        if close:
            message += f". Did you mean: {', '.join(str(folder / c) for c in close)}?"
    elif str(folder) not in ("", "."):
        message += f" (the folder {folder} does not exist either)"
    return message


def _decode_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ProbeFileError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "probe files must be UTF-8: re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _text_field(record: Any, where: str, text_column: str) -> str | None:
    """The text of one .jsonl line / .json element, or None to skip it (null or empty)."""
    if isinstance(record, str):
        return record  # a bare JSON string is a text
    if not isinstance(record, dict):
        raise ProbeFileError(
            f'{where}: a JSON {type(record).__name__} where an object such as {{"{text_column}": "..."}} is expected'
        )
    if text_column not in record:
        raise ProbeFileError(
            f"{where} has no field {text_column!r} (fields: {sorted(record)}); name the text field "
            "with --probe-column (text_column= in Python)"
        )
    value = record[text_column]
    if value is not None and not isinstance(value, str):
        raise ProbeFileError(f"{where}: field {text_column!r} is a {type(value).__name__}, not a string")
    return value


def _read_file(path: Path, text_column: str, *, skip_header: bool = False) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(_missing_file_message(path))
    suffix = path.suffix.lower()
    if suffix in _TABLE_SUFFIXES:
        raise ProbeFileError(
            f"{path}: {suffix} files are not read as probes; convert it to .jsonl (one JSON object per line) "
            "or load it with datasets.load_dataset(...) and pass the Dataset as the probe source"
        )
    text = _decode_utf8(path)
    if suffix == ".jsonl":
        texts = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or (skip_header and number == 1):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ProbeFileError(
                    f"{path}:{number}: not valid JSON ({err.msg}, column {err.colno}); each line of a .jsonl "
                    f'file is one JSON object such as {{"{text_column}": "..."}}'
                ) from None
            texts.append(_text_field(record, f"{path}:{number}", text_column))
        return _clean(texts)
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ProbeFileError(f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno})") from None
        if isinstance(data, dict) and isinstance(data.get(text_column), list):
            data = data[text_column]  # {"text": ["...", ...]}
        if not isinstance(data, list):
            raise ProbeFileError(
                f"{path}: a .json probe file holds a list of texts or of objects with a {text_column!r} field, "
                f"got a JSON {type(data).__name__}; for one object per line use .jsonl"
            )
        return _clean(_text_field(r, f"{path}: element {i}", text_column) for i, r in enumerate(data))
    # Any other existing file is read as plain text, one probe per line.
    return _clean(text.splitlines())


def _is_hf_dataset(source: Any) -> bool:
    return type(source).__module__.startswith("datasets") and hasattr(source, "__iter__")


def _read_dataset(dataset: Any, *, text_column: str, split: str, limit: int) -> list[str]:
    """The first ``limit`` non-empty texts of a dataset in its order: read in slices from a
    ``Dataset``, record by record from an ``IterableDataset`` (a stream is read no further)."""
    datasets = require("datasets", "probe sets from datasets")
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in dataset:
            raise _ColumnError(f"split {split!r} not in the dataset (splits: {sorted(dataset)}); pass split=")
        dataset = dataset[split]
    columns = getattr(dataset, "column_names", None)
    if columns is not None and text_column not in columns:
        raise _ColumnError(f"the dataset has no column {text_column!r} (columns: {columns}); pass text_column=")
    if isinstance(dataset, datasets.Dataset):
        return _first(_dataset_column(dataset, text_column), limit)

    def records() -> Iterator[Any]:
        for record in dataset:
            if text_column not in record:
                raise _ColumnError(
                    f"the dataset has no field {text_column!r} (fields: {sorted(record)}); pass text_column="
                )
            yield record[text_column]

    return _first(records(), limit)


def _dataset_column(dataset: Any, text_column: str) -> Iterator[Any]:
    """The values of one column of a map-style dataset, in row order, a slice of rows at a time."""
    for start in range(0, len(dataset), _DATASET_SLICE):
        yield from dataset[start : start + _DATASET_SLICE][text_column]


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE, HF_DATASETS_OFFLINE or TRANSFORMERS_OFFLINE is set."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on") for flag in flags)


def _read_hub(name: str, *, text_column: str, split: str, config_name: str | None, limit: int) -> tuple[list[str], str]:
    datasets = require("datasets", "probe sets from hub datasets")
    offline = hub_offline()
    label = f"hub:{name}" + (f"/{config_name}" if config_name else "") + f":{split}"
    try:
        # Streaming reads only the texts we need; offline only a cached (non-streamed) copy can work.
        dataset = datasets.load_dataset(name, config_name, split=split, streaming=not offline)
        texts = _read_dataset(dataset, text_column=text_column, split=split, limit=limit)
    except _ColumnError:
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many types for "not reachable"
        raise _hub_error(name, offline, err) from err
    return texts, label


def read_probe_file_header(path: str | os.PathLike) -> dict[str, Any] | None:
    """The header of a probe file written by :func:`write_probe_file` (its first line:
    fingerprint, options, tokenizer), or None for any other file."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return None
    with path.open("rb") as fh:
        first = fh.readline()
    try:
        record = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(record, dict) and isinstance(record.get(PROBE_FILE_KEY), int):
        return record
    return None


def write_probe_file(probes: ProbeSet, path: str | os.PathLike, *, tokenizer: str | None = None) -> Path:
    """Write the chosen texts of ``probes`` to a ``.jsonl`` file, atomically: a header line
    (fingerprint, description, the options that built them, ``tokenizer``) then one
    ``{"text": ...}`` per probe, in probe order. :func:`load_probes` reads such a file in its
    order, so loading it with the same tokenizer and ``max_tokens`` / chat options gives the
    same fingerprint, offline, without the original source. Returns the path.

    Raises:
        ValueError: ``probes`` holds no texts (a hand-made set), or ``path`` is not ``.jsonl``.
    """
    target = Path(path)
    if target.suffix.lower() != ".jsonl":
        raise ValueError(f"a probe file is written as .jsonl (one JSON object per line), got {target}")
    if probes.texts is None or len(probes.texts) != len(probes.sequences):
        raise ValueError(
            "this probe set holds no texts to write (a hand-made ProbeSet): build it with load_probes "
            "(ProbeOptions(...).build(tokenizer))"
        )
    options = probes.options.to_dict() if probes.options is not None else None
    header = {
        PROBE_FILE_KEY: 1,
        "fingerprint": probes.fingerprint(),
        "n_probes": len(probes),
        "description": probes.description,
        "tokenizer": tokenizer,
        "options": options,
    }
    lines = [dumps_line(header)] + [dumps_line({"text": text}) for text in probes.texts]
    return atomic_write_text(target, "\n".join(lines) + "\n")


def _hub_error(name: str, offline: bool, err: Exception) -> ProbeLoadError:
    why = (
        "the dataset isn't available offline (HF offline mode is on and it is not in the local cache)"
        if offline
        else "it could not be loaded from the Hugging Face Hub"
    )
    return ProbeLoadError(
        f"cannot load probe dataset {name!r}: {why} ({type(err).__name__}: {err}). If {name!r} is meant as a "
        f"local file, it does not exist in {Path.cwd()}. Use a local file instead "
        "(--probe-file probes.txt, one text per line, or .jsonl), a list of strings, or source=None for the "
        "embedded corpus."
    )
