"""Test-wide settings and shared fixtures.

Settings: never touch the network, keep hub caches in a tmp dir, and let worker scripts that run
as subprocesses (tests/workers/) import the helper modules of tests/ by name (PYTHONPATH).
Fixtures: the tiny tokenizer, trained once per session (``tokenizer``, ``make_tokenizer``), a
``free_port`` for distributed subprocesses, and ``hub_stub``: a local stub of the hub
(``tests/hubstub.py``) that this process's huggingface_hub talks to, with a fresh cache.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

# Set before transformers / datasets / huggingface_hub are imported anywhere.
_HF_HOME = tempfile.mkdtemp(prefix="geomtrace-hf-home-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = _HF_HOME
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
# pyproject's `pythonpath` puts tests/ on this process's sys.path; subprocesses get it from here.
_TESTS = str(Path(__file__).resolve().parent)
os.environ["PYTHONPATH"] = os.pathsep.join([_TESTS, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def hf_home() -> str:
    """The tmp HF_HOME used for the whole test session (fake hub caches go under it)."""
    return _HF_HOME


@pytest.fixture(scope="session")
def make_tokenizer():
    """``make_tokenizer(texts=None, vocab_size=2048, **options)``: a fresh tiny BPE tokenizer.

    :func:`geomtrace.tiny.train_bpe_tokenizer` trains once per (texts, vocab size) and process and
    each call returns a new object: use this for another vocabulary, or for one to modify.
    """
    from geomtrace.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer


@pytest.fixture(scope="session")
def tokenizer(make_tokenizer):
    """The tiny tokenizer of the embedded corpus (vocab 2048), shared by the whole session: don't modify it."""
    return make_tokenizer()


def _pick_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now: the MASTER_PORT of a test's distributed subprocess."""
    return _pick_free_port()


@pytest.fixture(scope="session")
def pick_free_port():
    """``free_port`` as a function, for module-scoped fixtures that start one subprocess for many tests."""
    return _pick_free_port


@pytest.fixture
def hub_stub(monkeypatch, free_port, tmp_path):
    """A :class:`hubstub.HubStub` on ``127.0.0.1:free_port``, empty: add revisions with
    ``add_folder`` / ``add_revision``. huggingface_hub and transformers are online and pointed
    at it for the test (:func:`hubstub.point_hub_at`), with the hub cache ``stub.cache``
    (``tmp_path/"hub"``, read by huggingface_hub at each call)."""
    from huggingface_hub import constants

    from hubstub import HubStub, point_hub_at

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    stub = HubStub().start(free_port)
    stub.cache = cache
    point_hub_at(stub.url, monkeypatch)
    try:
        yield stub
    finally:
        stub.stop()
