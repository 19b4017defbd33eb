"""Memorization in replay: probe records in the replay output, resumable like the geometry.

Layout, beside the geometry results of :mod:`geomtrace.replay.store`::

    memorization/<probe>.json     the probe's fixed side, written once: identity (QA set,
                                  pairs fingerprint, index, zero rule), the pairs' text and
                                  the ∞-gram side per pair
    memorization.jsonl            one record per (checkpoint, probe): the summary (spearman,
                                  pearson, answer_logprob, n_scored, ...) and the model's
                                  per-token answer log-probabilities

Guarantees (the store's): a checkpoint's records are appended as one unit (one ``write()``
under a lock), a truncated last line is skipped, NaN is written as ``null``; a probe file is
created exclusively and a later run with the same probe name but another identity raises
:class:`~geomtrace.replay.store.OutputConflictError` instead of mixing two measurements.
A checkpoint whose record for a probe exists (same ``memorization_id``) is not measured again
for that probe, so a resumed replay never duplicates records.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from geomtrace._jsonio import append_jsonl, plain, read_jsonl
from geomtrace.memorization.likelihood import AnswerLogprobs
from geomtrace.memorization.live import LIVE_KEYS, probe_list
from geomtrace.memorization.probe import SUMMARY_KEYS, MemorizationProbe
from geomtrace.memorization.seed_format import (
    infgram_file_name,
    llm_likelihood_file_name,
    write_seed_infgram_rows,
    write_seed_llm_likelihood_rows,
)
from geomtrace.replay.store import (
    OutputConflictError,
    differences,
    exclusive_write_text,
    safe_key,
)

__all__ = ["MemorizationStore", "ReplayMemorization", "export_seed_memorization", "probe_label"]

RECORDS_FILE = "memorization.jsonl"
PROBES_DIR = "memorization"


def probe_label(probe: MemorizationProbe) -> str:
    """The probe's name in a replay output (``"memorization"`` for an unnamed probe)."""
    return probe.name or "memorization"


def _fingerprint(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


class MemorizationStore:
    """The memorization part of a replay output folder (see the module doc)."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.output_dir = Path(output_dir)
        self.records_path = self.output_dir / RECORDS_FILE
        self.probes_dir = self.output_dir / PROBES_DIR

    def probe_path(self, name: str) -> Path:
        return self.probes_dir / f"{safe_key(name)}.json"

    def exists(self) -> bool:
        """Whether this output holds any memorization probe."""
        return self.probes_dir.is_dir() and any(self.probes_dir.glob("*.json"))

    # -- probes ----------------------------------------------------------------------------

    def bind_probe(self, info: dict[str, Any]) -> dict[str, Any]:
        """Write a probe file once; later runs must present the same ``identity``."""
        self.probes_dir.mkdir(parents=True, exist_ok=True)
        path = self.probe_path(info["identity"]["name"])
        text = json.dumps(plain(info, strict=True), allow_nan=False, ensure_ascii=False) + "\n"
        if exclusive_write_text(path, text):
            return info
        stored = self.probe_info(path)
        old, new = stored.get("identity"), plain(info["identity"], strict=True)
        if old != new:
            changes = differences(old, new) if isinstance(old, dict) else [f"{path} has no identity"]
            raise OutputConflictError(
                f"{self.output_dir}: memorization probe {info['identity']['name']!r} was measured otherwise "
                f"({'; '.join(changes)}). Give this probe another name, replay into another --output, or delete "
                f"{path} and its records to start it over."
            )
        return stored

    def probe_info(self, path: str | os.PathLike) -> dict[str, Any]:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} is not a readable memorization probe file ({err})") from err
        if not isinstance(data, dict) or "identity" not in data:
            raise ValueError(f"{path}: not a memorization probe file (no 'identity')")
        return data

    def probes(self) -> dict[str, dict[str, Any]]:
        """``{probe name: probe file content}`` of every probe in this output."""
        if not self.probes_dir.is_dir():
            return {}
        infos = (self.probe_info(p) for p in sorted(self.probes_dir.glob("*.json")))
        return {info["identity"]["name"]: info for info in infos}

    # -- records ---------------------------------------------------------------------------

    def records(self, *, dedupe: bool = True) -> list[dict[str, Any]]:
        """Complete records in file order (the last one of each (key, probe) with ``dedupe``);
        ``null`` summary values read back as NaN."""
        raw = read_jsonl(self.records_path)
        if dedupe:
            last = {(r.get("key"), r.get("probe")): i for i, r in enumerate(raw)}
            raw = [r for i, r in enumerate(raw) if last[(r.get("key"), r.get("probe"))] == i]
        for r in raw:
            for name in SUMMARY_KEYS:
                if name in r and r[name] is None:
                    r[name] = math.nan
        return raw

    def done_keys(self, memorization_id: str) -> set[str]:
        """Checkpoint keys that have a record of the probe with this ``memorization_id``."""
        return {
            r["key"]
            for r in self.records(dedupe=False)
            if r.get("memorization_id") == memorization_id and isinstance(r.get("key"), str)
        }

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append one checkpoint's records (one per probe) in one write."""
        if not records:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        append_jsonl(self.records_path, records)

    def series(self, key: str = "spearman") -> dict[str, dict[str, list[float]]]:
        """``{probe: {"step": [...], "tokens": [...], key: [...]}}`` sorted by step (for plots)."""
        out: dict[str, dict[str, list[float]]] = {}
        rows = sorted(
            (r for r in self.records() if r.get("step") is not None and key in r),
            key=lambda r: (str(r["probe"]), r["step"]),
        )
        for r in rows:
            series = out.setdefault(str(r["probe"]), {"step": [], "tokens": [], key: []})
            series["step"].append(float(r["step"]))
            series["tokens"].append(math.nan if r.get("tokens") is None else float(r["tokens"]))
            series[key].append(float(r[key]))
        return out


class ReplayMemorization:
    """The memorization probes of one replay (what :func:`~geomtrace.replay.run_replay` runs).

    Args:
        probes: a :class:`MemorizationProbe` or several with distinct names.
        output: the replay output folder.
        config_id: the geometry measurement's id (``run.json``): records of another
            configuration (another dtype, say) are measured again, not reused.
    """

    def __init__(
        self, probes: MemorizationProbe | Sequence[MemorizationProbe], output: str | os.PathLike, config_id: str = ""
    ) -> None:
        self.probes = probe_list(probes)
        self.store = MemorizationStore(output)
        self.config_id = config_id
        self.ids: dict[str, str] = {}
        self.done: dict[str, set[str]] = {}  # probe name -> checkpoint keys with a record

    def prepare(self, tokenizer: Any = None) -> None:
        """The ∞-gram side of every probe (once; rank 0 queries, all ranks call it together)
        and the probe files. Raises on a bad QA set, an unreachable index or a conflict."""
        for probe in self.probes:
            scores = probe.prepare(tokenizer)
            pairs = probe.qa.tokenize(tokenizer)
            name = probe_label(probe)
            identity: dict[str, Any] = {
                "name": name,
                "qa": probe.qa.description,
                "n_pairs": len(pairs),
                "pairs_fingerprint": _fingerprint([[list(p.context_ids), list(p.answer_ids)] for p in pairs]),
                "index": probe.index.describe(),
                "zero_probability": probe.zero_probability,
            }
            texts = probe.qa.texts(tokenizer)
            memorization_id = _fingerprint({"probe": identity, "config_id": self.config_id})
            info: dict[str, Any] = {
                "identity": identity,
                "memorization_id": memorization_id,
                "pairs": {
                    "key": [int(p.key) for p in probe.qa.pairs],
                    "question": [q for q, _ in texts],
                    "answer": [a for _, a in texts],
                },
                "infgram": {
                    "token_probs": scores.token_probs,
                    "suffix_lens": scores.suffix_lens,
                    "logprob": scores.logprob,
                    "source": scores.source,
                },
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            self.store.bind_probe(info)
            self.ids[name] = memorization_id
            self.done[name] = self.store.done_keys(memorization_id)

    def pending(self, keys: Sequence[str]) -> set[str]:
        """The checkpoint keys some probe has no record for yet."""
        return {k for k in keys if any(k not in done for done in self.done.values())}

    def measure(self, model: nn.Module, ckpt: Any, tokens: int | None, *, write: bool) -> dict[str, float]:
        """Measure the probes still missing for ``ckpt`` (one forward per QA set) and, with
        ``write`` (rank 0), append their records. Returns the scalars for TensorBoard.
        Every rank calls it together; errors are raised on every rank."""
        start = time.perf_counter()
        shared: dict[tuple[Any, ...], AnswerLogprobs] = {}
        records, scalars = [], {}
        for probe in self.probes:
            name = probe_label(probe)
            if ckpt.key in self.done[name]:
                continue
            result = probe.measure_result(model, scores=shared.get(probe.model_side_key()))
            shared[probe.model_side_key()] = result.model
            records.append(
                {
                    "key": ckpt.key,
                    "step": ckpt.step,
                    "revision": ckpt.revision,
                    "tokens": tokens,
                    "stage": ckpt.stage,
                    "probe": name,
                    "memorization_id": self.ids[name],
                    **result.summary,
                    "precision": result.model.precision,
                    "answer_token_logprobs": [np.asarray(t, dtype=np.float64) for t in result.model.per_token],
                }
            )
            scalars.update({probe.key(key): float(result.summary[key]) for key in LIVE_KEYS})
        seconds = time.perf_counter() - start
        for record in records:
            record["seconds"] = seconds
        if write:
            self.store.append(records)
        for record in records:
            self.done[record["probe"]].add(ckpt.key)
        return scalars


def export_seed_memorization(output_dir: str | os.PathLike, target: str | os.PathLike) -> list[Path]:
    """Write a replay output's memorization in the seed's two formats, per probe::

        TARGET/infgram/<probe>/triviaqa_{N}samples.npy
        TARGET/llm_likelihood/<probe>/triviaqa_step_{step}.npy   (one per checkpoint with a step)

    :func:`geomtrace.memorization.read_seed_run` reads them back (``infgram`` file and
    ``llm_likelihood/<probe>`` folder). Returns the written paths; none without probes.
    """
    store, target = MemorizationStore(output_dir), Path(target)
    written: list[Path] = []
    records = store.records()
    for name, info in store.probes().items():
        pairs = info["pairs"]
        keys, texts = pairs["key"], list(zip(pairs["question"], pairs["answer"]))
        folder = safe_key(name)
        written.append(
            write_seed_infgram_rows(
                target / "infgram" / folder / infgram_file_name(len(keys)), keys, texts, info["infgram"]["token_probs"]
            )
        )
        for record in records:
            if record.get("probe") != name or record.get("step") is None:
                continue
            path = target / "llm_likelihood" / folder / llm_likelihood_file_name(record["step"])
            written.append(write_seed_llm_likelihood_rows(path, keys, texts, record["answer_token_logprobs"]))
    return written
