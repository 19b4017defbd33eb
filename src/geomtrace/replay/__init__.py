"""Checkpoint replay: measure geometry over released or saved checkpoints.

* :mod:`~geomtrace.replay.sources` - where checkpoints live (hub revisions, local folders,
  Lightning files) and how to load them.
* :mod:`~geomtrace.replay.runner` - :func:`run_replay`, the resumable measuring loop.
* :mod:`~geomtrace.replay.store` - the results folder (JSON lines + spectra), exports.
* :mod:`~geomtrace.replay.results` - one run's trajectory for plots and phase detection.
* :mod:`~geomtrace.replay.tensorboard` - TensorBoard logging with the live callbacks' tags.

Nothing here imports transformers at import time.
"""

from geomtrace.options import LoadOptions
from geomtrace.probes import ProbeOptions
from geomtrace.replay.results import Trajectory, load_trajectory
from geomtrace.replay.runner import ReplaySummary, build_records, run_replay
from geomtrace.replay.sources import (
    Checkpoint,
    CheckpointLoadError,
    filter_revisions,
    hub_checkpoints,
    load_checkpoint_model,
    local_checkpoints,
    parse_revision,
    read_revisions_file,
    shard_checkpoints,
)
from geomtrace.replay.store import ResultsStore, export_csv, export_seed_npy, import_seed_npy

__all__ = [
    "Checkpoint",
    "CheckpointLoadError",
    "LoadOptions",
    "ProbeOptions",
    "ReplaySummary",
    "ResultsStore",
    "Trajectory",
    "build_records",
    "export_csv",
    "export_seed_npy",
    "filter_revisions",
    "hub_checkpoints",
    "import_seed_npy",
    "load_checkpoint_model",
    "load_trajectory",
    "local_checkpoints",
    "parse_revision",
    "read_revisions_file",
    "run_replay",
    "shard_checkpoints",
]
