"""What one checkpoint is: :class:`Checkpoint` (where a model state lives) and the error of loading one."""

from __future__ import annotations

import os
from dataclasses import dataclass

from geomtrace.replay.naming import CheckpointKind

__all__ = ["Checkpoint", "CheckpointKind", "CheckpointLoadError"]


@dataclass(frozen=True)
class Checkpoint:
    """One model state to measure.

    Attributes:
        step: training step, when known.
        revision: hub revision (branch) name, e.g. ``"step1000"`` or
            ``"stage1-step1000-tokens4B"``; None for local checkpoints.
        path: local folder (``hf_folder``, ``peft_adapter``) or ``.ckpt`` file
            (``lightning_ckpt``); None for hub.
        model: hub id (``"EleutherAI/pythia-160m"``) or the local root folder; this is the
            ``model`` field of result records.
        tokens: tokens seen (integer count), when known from the revision name.
        stage: training stage, e.g. ``"stage1"`` or ``"stage2-ingredient3"``; None for Pythia.
        kind: a :class:`~geomtrace.replay.naming.CheckpointKind` (a ``str``): ``"hub"``,
            ``"hf_folder"``, ``"peft_adapter"`` (a folder holding only a PEFT adapter, replayed
            on its base model) or ``"lightning_ckpt"``; a plain string is converted.
    """

    step: int | None
    revision: str | None
    path: str | None
    model: str
    tokens: int | None
    stage: str | None
    kind: CheckpointKind

    def __post_init__(self) -> None:
        if not isinstance(self.kind, CheckpointKind):
            try:
                kind = CheckpointKind(self.kind)
            except ValueError:
                expected = ", ".join(repr(k.value) for k in CheckpointKind)
                raise ValueError(f"unknown checkpoint kind {self.kind!r}; expected {expected}") from None
            object.__setattr__(self, "kind", kind)

    @property
    def key(self) -> str:
        """Stable unique id used for resuming: the revision for hub checkpoints, else the
        path relative to ``model`` (the discovery root) with ``/`` separators."""
        if self.revision:
            return self.revision
        if self.path is None:
            return self.model
        try:
            rel = os.path.relpath(self.path, self.model)
        except ValueError:  # different drives on Windows
            rel = self.path
        if rel.startswith("..") or rel == ".":
            rel = os.path.basename(os.path.normpath(self.path))
        return rel.replace(os.sep, "/")


class CheckpointLoadError(RuntimeError):
    """A checkpoint could not be loaded (missing revision, offline cache miss, bad file)."""
