"""Checkpoint sources for replay: the public face of the modules that do the work.

* :mod:`~geomtrace.replay.naming` - the checkpoint-naming registry (:data:`NAMING_SCHEMES`),
  :class:`CheckpointKind`, :func:`parse_revision`;
* :mod:`~geomtrace.replay.checkpoint` - :class:`Checkpoint` (where one model state lives);
* :mod:`~geomtrace.replay.hub` - hub revisions and the Pythia presets;
* :mod:`~geomtrace.replay.local` - discovering checkpoints in a folder;
* :mod:`~geomtrace.replay.selection` - ``--stage`` / ``--step-range`` / ``--log-spaced``, shards;
* :mod:`~geomtrace.replay.loading` (and :mod:`~geomtrace.replay.lightning_ckpt`) - turning a
  checkpoint into ``(model, tokenizer_or_None)``.

Everything importable from here before the split still is. Nothing here imports transformers or
huggingface_hub at module import time.
"""

from __future__ import annotations

from geomtrace.replay.checkpoint import Checkpoint, CheckpointLoadError
from geomtrace.replay.hub import (
    PYTHIA_PAPER_SUBSET,
    PYTHIA_REVISIONS,
    REVISION_PRESETS,
    hub_checkpoints,
    list_hub_revisions,
    read_revisions_file,
)
from geomtrace.replay.lightning_ckpt import resolve_builder
from geomtrace.replay.loading import (
    fetch_checkpoint,
    load_checkpoint_model,
    load_checkpoint_tokenizer,
    resolve_device,
    resolve_dtype,
)
from geomtrace.replay.local import local_checkpoints
from geomtrace.replay.naming import (
    NAMING_SCHEMES,
    CheckpointKind,
    NamingScheme,
    ParsedName,
    parse_name,
    parse_revision,
    revision_sort_key,
)
from geomtrace.replay.selection import filter_checkpoints, filter_revisions, shard_checkpoints

# the name cli.py imports today (the CLI's rewrite should import resolve_builder)
_resolve_builder = resolve_builder

__all__ = [
    "Checkpoint",
    "CheckpointKind",
    "CheckpointLoadError",
    "NAMING_SCHEMES",
    "NamingScheme",
    "ParsedName",
    "PYTHIA_REVISIONS",
    "PYTHIA_PAPER_SUBSET",
    "REVISION_PRESETS",
    "parse_name",
    "parse_revision",
    "revision_sort_key",
    "list_hub_revisions",
    "read_revisions_file",
    "filter_checkpoints",
    "filter_revisions",
    "hub_checkpoints",
    "local_checkpoints",
    "shard_checkpoints",
    "fetch_checkpoint",
    "load_checkpoint_model",
    "load_checkpoint_tokenizer",
    "resolve_builder",
    "resolve_dtype",
    "resolve_device",
]
