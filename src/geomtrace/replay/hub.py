"""Hub revisions: the Pythia presets, listing a repo's branches, revision files, hub checkpoints."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from geomtrace._optional import require
from geomtrace.options import LoadOptions
from geomtrace.replay.checkpoint import Checkpoint, CheckpointKind
from geomtrace.replay.naming import parse_revision, revision_sort_key
from geomtrace.replay.retry import retry_transient

__all__ = [
    "PYTHIA_PAPER_SUBSET",
    "PYTHIA_REVISIONS",
    "REVISION_PRESETS",
    "hub_checkpoints",
    "list_hub_revisions",
    "read_revisions_file",
]

#: All 154 Pythia checkpoints: step0, step1, 2, 4, …, 512 (log-spaced), then every 1000 steps
#: from step1000 to step143000 (the final one, also on ``main``).
PYTHIA_REVISIONS: list[str] = (
    ["step0"] + [f"step{2**i}" for i in range(10)] + [f"step{s}" for s in range(1000, 143001, 1000)]
)

#: A roughly log-spaced subset of 30 Pythia checkpoints covering warmup, entropy-seeking and
#: compression-seeking phases. Our choice: the coarse grid found (commented out) in the
#: paper's released script, ``[0, 1, 2, 4, …, 512] + range(1000, 143001, 10000)``, plus
#: step2000, step4000, step8000 for the early phases and the final step143000.
PYTHIA_PAPER_SUBSET: list[str] = [
    f"step{s}" for s in sorted({0, *(2**i for i in range(10)), *range(1000, 143001, 10000), 2000, 4000, 8000, 143000})
]


def list_hub_revisions(model_id: str) -> list[str]:
    """All branch names of a hub model repo (e.g. the 154 ``stepN`` branches of Pythia),
    sorted by (stage, step). Needs network access."""
    hub = require("huggingface_hub", "listing hub revisions")
    try:
        refs = retry_transient(  # a passing hub error (timeout, 429, 5xx) is tried again
            lambda: hub.list_repo_refs(model_id), retries=LoadOptions.retries, what=f"listing {model_id!r}"
        )
    except Exception as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else f"{type(err).__name__}: {err}"
        raise RuntimeError(
            f"Could not list the revisions of {model_id!r} on the Hugging Face hub ({why}). "
            "Pass the revisions explicitly instead: a comma list (--revisions step0,step1000), "
            "a preset (--revisions pythia | pythia-paper) or a file with one revision per line "
            "(--revisions-file revisions.txt)."
        ) from err
    names = [b.name for b in refs.branches]
    return sorted(names, key=revision_sort_key)


def read_revisions_file(path: str | os.PathLike) -> list[str]:
    """Read revision names, one per line. Blank lines and ``#`` comments are skipped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"revisions file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        number = p.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(f"{p}:{number}: not UTF-8 text; revision names are plain UTF-8 text, one per line") from None
    out: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


#: Names accepted by :func:`hub_checkpoints` instead of an explicit list.
REVISION_PRESETS = ("pythia", "pythia-paper", "all")


def _expand_revisions(model_id: str, revisions: Sequence[str] | str) -> list[str]:
    if isinstance(revisions, str):
        spec = revisions.strip()
        if spec == "pythia":
            return list(PYTHIA_REVISIONS)
        if spec == "pythia-paper":
            return list(PYTHIA_PAPER_SUBSET)
        if spec == "all":
            names = list_hub_revisions(model_id)
            with_step = [n for n in names if parse_revision(n)[0] is not None]
            return with_step or names
        items = [s.strip() for s in spec.split(",")]
    else:
        items = [str(s).strip() for s in revisions]
    out: list[str] = []
    for s in items:
        if s and s not in out:
            out.append(s)
    if not out:
        raise ValueError(
            f"no revisions given for {model_id!r}: pass a comma list, a file, or a preset "
            f"({', '.join(REVISION_PRESETS)})"
        )
    return out


def hub_checkpoints(model_id: str, revisions: Sequence[str] | str) -> list[Checkpoint]:
    """Checkpoints for ``model_id`` on the hub.

    ``revisions`` is an explicit list, a comma string (``"step0,step1000"``) or a preset:
    ``"pythia"`` (all 154), ``"pythia-paper"`` (:data:`PYTHIA_PAPER_SUBSET`), ``"all"``
    (every branch of the repo that names a step, via :func:`list_hub_revisions`; needs
    network). Explicit lists keep their order (duplicates dropped).
    """
    out = []
    for rev in _expand_revisions(model_id, revisions):
        step, tokens, stage = parse_revision(rev)
        out.append(
            Checkpoint(
                step=step, revision=rev, path=None, model=model_id, tokens=tokens, stage=stage, kind=CheckpointKind.HUB
            )
        )
    return out
