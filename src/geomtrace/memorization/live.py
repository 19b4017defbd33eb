"""Memorization probes measured beside geometry during training (the callbacks' hook).

:class:`LiveMemorization` is what :class:`~geomtrace.tracking.GeometryTracker` (and so both
callbacks) runs after each successful geometry measurement, on every rank:

* the ∞-gram side of each probe is computed once per run, at the first measurement (rank 0
  queries the index and broadcasts; a failure there disables the probe for the rest of the
  run with one warning, instead of retrying a slow or offline index at every step);
* the model side runs at every measurement, one forward per QA set (probes sharing a QA set,
  e.g. under both zero rules, share it); a failure skips that step's memorization values
  with a warning (the geometry values are still logged); ``strict=True`` raises instead.

Every rank takes the same branch: the ∞-gram outcome is broadcast and the model-side
failures are agreed on by all ranks inside :func:`~geomtrace.memorization.answer_logprobs`,
so the collectives stay on one schedule.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from torch import nn

from geomtrace._warnings import warn
from geomtrace.memorization.likelihood import AnswerLogprobs
from geomtrace.memorization.probe import MemorizationProbe
from geomtrace.memorization.qa import QAVocabularyError

__all__ = ["LIVE_KEYS", "LiveMemorization", "probe_list"]

#: Summary keys logged live, as ``memorization[/<probe name>]/<key>``.
LIVE_KEYS = ("spearman", "pearson", "answer_logprob", "n_scored")


class LiveMemorization:
    """One or more :class:`MemorizationProbe` run at the tracker's measurement steps.

    Args:
        probes: a probe or a sequence of probes with distinct logged keys (give each a
            ``name`` when there are several, e.g. ``"train"`` and ``"heldout"``).
        strict: raise errors instead of warning and training on.
    """

    def __init__(self, probes: MemorizationProbe | Sequence[MemorizationProbe], *, strict: bool = False) -> None:
        self.probes = probe_list(probes)
        self.strict = strict
        self.tokenizer: Any = None
        self._ready: dict[int, bool] = {}  # probe position -> ∞-gram side prepared (False: failed this run)

    def start_run(self, tokenizer: Any) -> None:
        """A new run: remember the tokenizer; a probe that failed to prepare is tried again once."""
        self.tokenizer = tokenizer
        self._ready = {i: True for i, ready in self._ready.items() if ready}

    def describe(self) -> list[dict[str, Any]]:
        """Provenance of each probe (QA set, index, zero rule, name)."""
        return [p.describe() for p in self.probes]

    def measure(self, model: nn.Module, step: int) -> tuple[dict[str, float], list[str]]:
        """Scalars ``{memorization[/name]/<key>: value}`` and notes for the user. All ranks call it."""
        scalars: dict[str, float] = {}
        notes: list[str] = []
        start = time.perf_counter()
        shared: dict[tuple[Any, ...], AnswerLogprobs] = {}  # one forward per QA set and options
        for i, probe in enumerate(self.probes):
            if not self._prepare(i, probe, notes):
                continue
            try:
                result = probe.measure_result(model, scores=shared.get(probe.model_side_key()))
            except Exception as err:
                if self.strict:
                    raise
                if isinstance(err, QAVocabularyError):  # the same at every step: off, said once
                    self._ready[i] = False
                    warn(f"geomtrace: {_label(probe)} is off for the rest of this run: {err}")
                    continue
                warn(f"geomtrace: {_label(probe)} at step {step} failed and was skipped: {err}")
                continue
            shared[probe.model_side_key()] = result.model
            scalars.update({probe.key(key): float(result.summary[key]) for key in LIVE_KEYS})
        if scalars:
            scalars["memorization/seconds"] = time.perf_counter() - start
        return scalars, notes

    def _prepare(self, i: int, probe: MemorizationProbe, notes: list[str]) -> bool:
        ready = self._ready.get(i)
        if ready is not None:
            return ready
        try:
            scores = probe.prepare(self.tokenizer)
        except Exception as err:
            if self.strict:
                raise
            self._ready[i] = False
            warn(
                f"geomtrace: {_label(probe)} could not compute its ∞-gram side ({type(err).__name__}: {err}); "
                "it is off for the rest of this run."
            )
            return False
        self._ready[i] = True
        notes.append(
            f"{_label(probe)}: {len(probe.qa)} pairs ({probe.qa.description}) against {scores.source}; "
            f"{scores.n_scored} scorable by the ∞-gram ({probe.zero_probability} zero rule), computed once"
        )
        return True


def probe_list(probes: MemorizationProbe | Sequence[MemorizationProbe]) -> list[MemorizationProbe]:
    """``probes`` as a checked list: MemorizationProbe objects with distinct logged keys."""
    listed = [probes] if isinstance(probes, MemorizationProbe) else list(probes) if isinstance(probes, Sequence) else []
    if not listed or not all(isinstance(p, MemorizationProbe) for p in listed):
        raise TypeError(
            "memorization must be a geomtrace.memorization.MemorizationProbe or a list of them, got "
            f"{type(probes).__name__}: build one with MemorizationProbe(QASet..., NgramIndex...)."
        )
    keys = [p.key("spearman") for p in listed]
    if len(set(keys)) != len(keys):
        raise ValueError(
            "several memorization probes log under the same keys; give each a distinct name= "
            "(e.g. MemorizationProbe(qa, index, name='train') and name='heldout')."
        )
    return listed


def _label(probe: MemorizationProbe) -> str:
    return f"memorization probe {probe.name!r}" if probe.name else "memorization probe"
