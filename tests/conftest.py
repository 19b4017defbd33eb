"""Test-wide settings: never touch the network, keep hub caches in a tmp dir."""

from __future__ import annotations

import os
import tempfile

# Set before transformers / datasets / huggingface_hub are imported anywhere.
_HF_HOME = tempfile.mkdtemp(prefix="geomtrace-hf-home-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = _HF_HOME
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def hf_home() -> str:
    """The tmp HF_HOME used for the whole test session (fake hub caches go under it)."""
    return _HF_HOME
