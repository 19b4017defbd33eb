"""Retrying hub calls that failed for a passing reason (a timeout, a dropped connection, HTTP
429 or 5xx), with exponential backoff; everything else (404, a missing revision or file, a gated
repo, a bad file) fails at once. Imports neither huggingface_hub nor transformers: errors are
recognised by their HTTP status and their class names, through the ``raise ... from`` chain
(transformers wraps the hub's errors in ``OSError``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["BACKOFF_S", "MAX_BACKOFF_S", "is_transient", "retry_transient"]

T = TypeVar("T")

#: The first wait before a retry, in seconds; it doubles at each further retry.
BACKOFF_S = 1.0
#: The longest single wait, in seconds.
MAX_BACKOFF_S = 30.0

logger = logging.getLogger("geomtrace.replay")

#: Errors that say the resource is not there or not ours: never retried.
_PERMANENT = frozenset(
    {
        "RepositoryNotFoundError",
        "RevisionNotFoundError",
        "EntryNotFoundError",
        "RemoteEntryNotFoundError",
        "GatedRepoError",
        "DisabledRepoError",
        "OfflineModeIsEnabled",
        "FileNotFoundError",
        "PermissionError",
    }
)
#: Network errors of httpx / requests / the standard library that a later try may not meet.
_TRANSIENT = frozenset(
    {
        "TimeoutException",  # httpx: connect/read/write/pool timeouts
        "NetworkError",  # httpx: connect/read/write errors
        "RemoteProtocolError",  # httpx: the server dropped the connection mid-answer
        "Timeout",  # requests
        "ConnectionError",  # requests and the standard library (reset, refused, aborted)
        "TimeoutError",
        "IncompleteRead",
        "ChunkedEncodingError",
    }
)
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) is worth another try: a timeout or
    connection error, or an HTTP answer 408, 429 or 5xx. A not-found, gated or offline-mode
    error anywhere in the chain makes it permanent."""
    transient = False
    for e in _chain(err):
        names = {cls.__name__ for cls in type(e).__mro__}
        if "LocalEntryNotFoundError" in names:  # "not cached, and the hub did not answer": why is below
            continue
        if names & _PERMANENT:
            return False
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int):
            if 400 <= status < 500 and status not in _TRANSIENT_STATUS:
                return False
            transient = transient or status in _TRANSIENT_STATUS
        transient = transient or bool(names & _TRANSIENT)
    return transient


def retry_transient(
    call: Callable[[], T],
    *,
    retries: int,
    what: str,
    backoff: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, tried again up to ``retries`` times while it raises a transient error
    (:func:`is_transient`), waiting ``backoff`` (default :data:`BACKOFF_S`), then twice as long
    each time (at most :data:`MAX_BACKOFF_S`). The last error, or any permanent one, is raised.
    Each retry is logged (``geomtrace.replay``, WARNING) naming ``what``."""
    wait = BACKOFF_S if backoff is None else backoff
    for attempt in range(max(0, int(retries)) + 1):
        try:
            return call()
        except Exception as err:
            if attempt >= retries or not is_transient(err):
                raise
            logger.warning(
                f"[geomtrace] {what}: {type(err).__name__}: {err}; retrying in {wait:g} s ({attempt + 1}/{retries})"
            )
            sleep(wait)
            wait = min(wait * 2, MAX_BACKOFF_S)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
