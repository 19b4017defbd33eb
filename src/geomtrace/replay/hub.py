"""Hub revisions: the revision presets (declared in :mod:`geomtrace.revision_presets`), listing a
repo's branches, revision files, hub checkpoints."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from geomtrace._optional import require
from geomtrace.options import LoadOptions
from geomtrace.replay.checkpoint import Checkpoint, CheckpointKind
from geomtrace.replay.naming import parse_revision, revision_sort_key
from geomtrace.replay.retry import retry_transient
from geomtrace.revision_presets import (
    PYTHIA_COARSE_REVISIONS,
    PYTHIA_PAPER_REVISIONS,
    PYTHIA_REVISIONS,
    REVISION_PRESETS,
    RevisionPreset,
)

__all__ = [
    "PYTHIA_COARSE_REVISIONS",
    "PYTHIA_PAPER_REVISIONS",
    "PYTHIA_PAPER_SUBSET",
    "PYTHIA_REVISIONS",
    "REVISION_PRESETS",
    "RevisionPreset",
    "expand_preset",
    "hub_checkpoints",
    "list_hub_revisions",
    "read_revisions_file",
]

#: The paper's exact Pythia grid under the name the 30-step grid had before (that one is now
#: :data:`PYTHIA_COARSE_REVISIONS`, ``--revisions pythia-coarse``).
PYTHIA_PAPER_SUBSET: list[str] = PYTHIA_PAPER_REVISIONS


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
            f"a fixed preset (--revisions {' | '.join(p.name for p in REVISION_PRESETS.values() if not p.listed)}) "
            "or a file with one revision per line "
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


def expand_preset(model_id: str, preset: RevisionPreset) -> list[str]:
    """The revisions of ``preset`` for ``model_id``: its fixed list, or the repo's branches
    (:func:`list_hub_revisions`, needs network) whose step ``preset.keep`` keeps (without
    ``keep``: every branch that names a step, or all of them when none does)."""
    if not preset.listed:
        return list(preset.revisions)
    names = list_hub_revisions(model_id)
    if preset.keep is None:
        with_step = [n for n in names if parse_revision(n)[0] is not None]
        return with_step or names
    keep = preset.keep
    return [n for n in names if keep(parse_revision(n)[0])]


def _expand_revisions(model_id: str, revisions: Sequence[str] | str) -> list[str]:
    if isinstance(revisions, str):
        spec = revisions.strip()
        if spec in REVISION_PRESETS:
            return expand_preset(model_id, REVISION_PRESETS[spec])
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

    ``revisions`` is an explicit list, a comma string (``"step0,step1000"``) or the name of a
    preset of :data:`~geomtrace.revision_presets.REVISION_PRESETS` (``"pythia-paper"``: the
    paper's 151 Pythia steps; ``"pythia-coarse"``: 30; ``"pythia"``: all 154; ``"olmo-paper"``
    and ``"all"`` list the repo's branches, via :func:`list_hub_revisions`: need network).
    Explicit lists keep their order (duplicates dropped).
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
