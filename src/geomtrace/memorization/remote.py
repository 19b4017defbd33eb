"""The seed's remote route: ∞-gram probabilities from the public infini-gram API.

The seed sends one ``infgram_prob`` query per answer token to ``https://api.infini-gram.io/``
(index ``v4_piletrain_llama``: the Pile's training set, Llama-2 tokenizer). This client does
the same with the standard library only, and adds what a long run needs:

* bounded retries with exponential back-off on what is worth retrying (no connection,
  time-outs, HTTP 429 and 5xx, the gateway's ``{"message": ...}`` time-out replies);
* a clear error when the service cannot be reached (offline, or down), which names the cache
  so the user knows what is kept;
* an on-disk cache, so a rerun sends no query twice: one JSON line per answered query,
  appended and flushed as soon as the answer arrives (a kill loses at most the query in
  flight; a torn last line is ignored on reading).

Token ids must come from the index's tokenizer (Llama-2 for the ``*_llama`` indexes).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from geomtrace._jsonio import append_jsonl, read_jsonl
from geomtrace.memorization.index import InfgramProb

__all__ = ["DEFAULT_API_URL", "InfiniGramAPI", "InfiniGramAPIError", "default_cache_dir"]

DEFAULT_API_URL = "https://api.infini-gram.io/"
_INDEX_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class InfiniGramAPIError(RuntimeError):
    """The infini-gram API could not answer (offline, down, or it rejected the query)."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/geomtrace/infini-gram-api`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "geomtrace" / "infini-gram-api"


class _Retryable(Exception):
    def __init__(self, reason: str, reached: bool) -> None:
        super().__init__(reason)
        self.reached = reached  # False: no connection at all (offline / DNS / refused)


class InfiniGramAPI:
    """Client of the public infini-gram API for ``infgram_prob`` queries, with a disk cache.

    Args:
        index: the API's index name, e.g. ``"v4_piletrain_llama"`` (the seed's).
        cache_dir: folder of the query cache (one ``<index>.jsonl`` file); default
            :func:`default_cache_dir`. ``None`` keeps the default; pass a path per project.
        url: the endpoint (tests point it at a local stub).
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts).
        backoff_s: first back-off; doubled after each failed attempt, capped at ``max_backoff_s``.
        timeout_s: per-request time-out.
    """

    def __init__(
        self,
        index: str = "v4_piletrain_llama",
        *,
        cache_dir: str | os.PathLike | None = None,
        url: str = DEFAULT_API_URL,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not _INDEX_NAME.match(index):
            raise ValueError(f"index name {index!r} may only hold letters, digits, '_', '-' and '.'")
        if max_retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise ValueError("need max_retries >= 0, backoff_s >= 0 and timeout_s > 0")
        self.index = index
        self.url = url
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self._sleep = sleep
        self.cache_path = Path(cache_dir or default_cache_dir()) / f"{index}.jsonl"
        self._cache: dict[tuple[int, ...], InfgramProb] = self._read_cache()
        self.requests_sent = 0

    def describe(self) -> str:
        """One line of provenance."""
        return f"infini-gram API {self.url} index={self.index}"

    fingerprint = None  # the remote corpus is named, not hashed

    # ------------------------------------------------------------------ cache

    def _read_cache(self) -> dict[tuple[int, ...], InfgramProb]:
        cache: dict[tuple[int, ...], InfgramProb] = {}
        for record in read_jsonl(self.cache_path):  # a line torn by a kill mid-write is skipped
            try:
                key = tuple(int(t) for t in record["q"])
                cache[key] = InfgramProb(
                    float(record["prob"]),
                    int(record["suffix_len"]),
                    int(record["prompt_cnt"]),
                    int(record["cont_cnt"]),
                )
            except (ValueError, KeyError, TypeError):
                continue  # that query is simply asked again
        return cache

    def _remember(self, key: tuple[int, ...], answer: InfgramProb) -> None:
        self._cache[key] = answer
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "q": list(key),
            "prob": answer.prob,
            "suffix_len": answer.suffix_len,
            "prompt_cnt": answer.prompt_cnt,
            "cont_cnt": answer.cont_cnt,
        }
        # One locked write() of a whole line, flushed to disk before the answer is used: a rerun
        # (or another process sharing the cache) finds every answered query.
        append_jsonl(self.cache_path, [record], strict=False)

    # ------------------------------------------------------------------ queries

    def prob(self, context_ids: Sequence[int], next_id: int) -> InfgramProb:
        """∞-gram ``P(next_id | longest suffix of context_ids in the corpus)``, cached."""
        key = tuple(int(t) for t in (*context_ids, next_id))
        if any(t < 0 for t in key):
            raise ValueError("token ids must be >= 0")
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        result = self._post({"index": self.index, "query_type": "infgram_prob", "query_ids": list(key)})
        try:
            answer = InfgramProb(
                prob=max(0.0, float(result["prob"])),  # the API reports -1 when nothing matches
                suffix_len=int(result.get("suffix_len", -1)),
                prompt_cnt=int(result["prompt_cnt"]),
                cont_cnt=int(result["cont_cnt"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InfiniGramAPIError(f"unexpected reply from {self.url}: {str(result)[:300]}") from err
        self._remember(key, answer)
        return answer

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(payload).encode()
        failures: list[str] = []
        reached_once = False
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
            try:
                return self._attempt(body)
            except _Retryable as err:
                failures.append(str(err))
                reached_once = reached_once or err.reached
        attempts = self.max_retries + 1
        if not reached_once:
            raise InfiniGramAPIError(
                f"cannot reach the infini-gram API at {self.url} ({attempts} attempts; last: {failures[-1]}). "
                "Are you offline? Build a local index of your corpus instead (NgramIndex.build), or rerun when "
                f"online: answered queries are cached in {self.cache_path} and are not sent again."
            )
        raise InfiniGramAPIError(
            f"the infini-gram API at {self.url} kept failing ({attempts} attempts; last: {failures[-1]}). "
            f"Rerun later: answered queries are cached in {self.cache_path} and are not sent again."
        )

    def _attempt(self, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        self.requests_sent += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", errors="replace")[:300]
            if err.code in _RETRY_STATUS:
                raise _Retryable(f"HTTP {err.code}: {detail}", reached=True) from err
            raise InfiniGramAPIError(f"the infini-gram API refused the query (HTTP {err.code}): {detail}") from err
        except urllib.error.URLError as err:
            raise _Retryable(f"{type(err.reason).__name__}: {err.reason}", reached=False) from err
        except (TimeoutError, ConnectionError) as err:
            raise _Retryable(f"{type(err).__name__}: {err}", reached=False) from err
        try:
            result = json.loads(text)
        except json.JSONDecodeError as err:
            raise _Retryable(f"reply is not JSON: {text[:200]!r}", reached=True) from err
        if not isinstance(result, dict):
            raise _Retryable(f"reply is not a JSON object: {text[:200]!r}", reached=True)
        if "error" in result:
            raise InfiniGramAPIError(f"the infini-gram API rejected the query: {result['error']}")
        if "message" in result:  # the gateway's time-out reply (what the seed retries on)
            raise _Retryable(f"service message: {result['message']}", reached=True)
        return result
