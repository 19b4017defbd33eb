"""Local checkpoints: discovering HF Trainer folders, ``stepN/`` folders, PEFT adapters and
Lightning ``.ckpt`` files under a folder. Names are read by :mod:`~geomtrace.replay.naming`."""

from __future__ import annotations

import os
from pathlib import Path

from geomtrace.replay.checkpoint import Checkpoint, CheckpointKind
from geomtrace.replay.naming import natural_key, parse_name

__all__ = ["local_checkpoints"]


def _folder_kind(folder: Path) -> CheckpointKind | None:
    """``hf_folder`` for a saved model, ``peft_adapter`` for a folder holding only a PEFT
    adapter (the HF Trainer saves just the adapter when training one), else None."""
    if (folder / "config.json").is_file():
        return CheckpointKind.HF_FOLDER
    if (folder / "adapter_config.json").is_file():
        return CheckpointKind.PEFT_ADAPTER
    return None


def _local_sort_key(c: Checkpoint) -> tuple:
    return (0 if c.step is not None else 1, c.step or 0, natural_key(c.key))


def _ckpt_step(name: str) -> int | None:
    parsed = parse_name(name, CheckpointKind.LIGHTNING_CKPT)
    return None if parsed is None else parsed.step


def local_checkpoints(directory: str | os.PathLike, skipped: list[str] | None = None) -> list[Checkpoint]:
    """Discover checkpoints under a local folder, sorted by step (unknown steps last).

    Looked for (the names are those of :data:`~geomtrace.replay.naming.NAMING_SCHEMES`):

    * ``checkpoint-N/`` folders (HF Trainer) and ``stepN/`` (or ``stepN-tokens…``,
      ``stageK-stepN…``) folders directly under ``directory`` that contain a ``config.json`` ->
      ``hf_folder``, or only a PEFT adapter (``adapter_config.json``) -> ``peft_adapter``;
    * ``*.ckpt`` files anywhere below ``directory`` (Lightning) -> ``lightning_ckpt``, step
      from ``step=N`` in the file name (``epoch=0-step=100.ckpt``), else None. ``last*.ckpt``
      (Lightning's copy of the newest checkpoint) is left out when other ``.ckpt`` files
      exist, and said so in ``skipped``.

    ``directory`` may also be a single ``.ckpt`` file or a single HF model folder.
    Raises FileNotFoundError when nothing is found, saying what was looked for. ``skipped``
    receives one line per checkpoint-named entry left out: a ``checkpoint-N/`` / ``stepN/``
    folder with no ``config.json`` nor adapter (e.g. a save still being written, or only
    optimizer state), or a ``last.ckpt`` beside other ``.ckpt`` files.
    """
    root = Path(directory).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"checkpoint directory not found: {root}")
    if root.is_file():
        if root.suffix == ".ckpt":
            return [
                Checkpoint(
                    step=_ckpt_step(root.name),
                    revision=None,
                    path=str(root),
                    model=str(root.parent),
                    tokens=None,
                    stage=None,
                    kind=CheckpointKind.LIGHTNING_CKPT,
                )
            ]
        raise FileNotFoundError(f"{root} is a file but not a Lightning .ckpt file")

    found: list[Checkpoint] = []
    for child in sorted(root.iterdir()):
        kind = _folder_kind(child) if child.is_dir() else None
        if kind is None:
            if skipped is not None and child.is_dir() and parse_name(child.name, CheckpointKind.HF_FOLDER):
                skipped.append(f"{child}: no config.json (nor adapter_config.json): not a model folder, skipped")
            continue
        parsed = parse_name(child.name, kind)
        if parsed is None:
            continue
        found.append(
            Checkpoint(
                step=parsed.step,
                revision=None,
                path=str(child),
                model=str(root),
                tokens=parsed.tokens,
                stage=parsed.stage,
                kind=kind,
            )
        )

    ckpts = sorted(p for p in root.rglob("*.ckpt") if p.is_file())
    names = {p: parse_name(p.name, CheckpointKind.LIGHTNING_CKPT) for p in ckpts}
    copies = {p: n.scheme for p, n in names.items() if n is not None and n.scheme.copy_of_latest}
    if len(copies) < len(ckpts):  # other files hold the same states, with their steps
        if skipped is not None:
            skipped.extend(f"{p}: {scheme.note}: skipped" for p, scheme in copies.items())
        ckpts = [p for p in ckpts if p not in copies]
    for p in ckpts:
        parsed = names[p]
        found.append(
            Checkpoint(
                step=None if parsed is None else parsed.step,
                revision=None,
                path=str(p),
                model=str(root),
                tokens=None,
                stage=None,
                kind=CheckpointKind.LIGHTNING_CKPT,
            )
        )

    if not found and (kind := _folder_kind(root)) is not None:
        # a single model folder: any revision-like name (a snapshot named after its branch) gives the step
        parsed = parse_name(root.name, kind) or parse_name(root.name.strip(), CheckpointKind.HUB)
        return [
            Checkpoint(
                step=None if parsed is None else parsed.step,
                revision=None,
                path=str(root),
                model=str(root.parent),
                tokens=None,
                stage=None,
                kind=kind,
            )
        ]
    if not found:
        raise FileNotFoundError(
            f"no checkpoints found under {root}. Looked for: 'checkpoint-N/' or 'stepN/' folders "
            "containing config.json (HF Trainer / save_pretrained) or adapter_config.json (PEFT), "
            "and '*.ckpt' files at any depth (Lightning, step read from 'step=N' in the name). For "
            "hub models use hub_checkpoints(model_id, revisions) instead."
        )
    return sorted(found, key=_local_sort_key)
