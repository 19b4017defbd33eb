"""Build a fake Hugging Face hub cache so that hub loading works fully offline in tests.

The layout written is the one ``huggingface_hub`` itself uses for its cache::

    $HF_HOME/hub/models--ORG--NAME/
        refs/<revision>                 # a text file holding the commit sha
        snapshots/<sha>/config.json     # plain files (the real cache uses symlinks to blobs/)
        snapshots/<sha>/model.safetensors   # or pytorch_model.bin (weights="bin"), as Pythia's stepN
        snapshots/<sha>/tokenizer.json, tokenizer_config.json, special_tokens_map.json

With ``HF_HUB_OFFLINE=1`` (set by ``tests/conftest.py``),
``AutoModelForCausalLM.from_pretrained("ORG/NAME", revision="step1000")`` resolves the
revision through ``refs/step1000`` and loads from the snapshot, never touching the network.

Usage in a test::

    from fakehub import make_fake_hub_model

    def test_x(hf_home):
        shas = make_fake_hub_model(hf_home, "EleutherAI/pythia-tiny", revisions=("step0", "step1000"))
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "make_fake_hub_model",
    "revision_seed",
    "save_revision",
    "tiny_tokenizer",
    "tiny_config",
    "build_tiny_model",
    "hub_repo_dir",
]


def hub_repo_dir(hf_home: str | os.PathLike, repo_id: str) -> Path:
    """The cache folder of ``repo_id`` under ``$HF_HOME/hub``."""
    return Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))


def _corpus_lines(n: int = 400) -> list[str]:
    """A few hundred lines of English text from CPython's bundled docs (no download)."""
    try:
        from pydoc_data.topics import topics

        text = "\n".join(topics[k] for k in sorted(topics))
        lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) > 20]
        if len(lines) >= 50:
            return lines[:n]
    except Exception:  # pragma: no cover - pydoc_data missing on exotic builds
        pass
    base = "the quick brown fox jumps over the lazy dog while models learn representations"
    return [f"{base} {i} {base[::-1]}" for i in range(n)]


def tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A hub-style ``PreTrainedTokenizerFast`` (byte-level BPE, eos/bos/unk/pad set, no chat template).

    The vocabulary fits the fake hub's models (512); the training is
    :func:`geomtrace.tiny.train_bpe_tokenizer`'s (once per process, on a few hundred pydoc lines).
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from geomtrace.tiny import train_bpe_tokenizer

    trained = train_bpe_tokenizer(_corpus_lines(), vocab_size=vocab_size)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(trained.backend_tokenizer.to_str()),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
    )


def tiny_config(arch: str = "gpt_neox", hidden_size: int = 64, vocab_size: int = 512) -> Any:
    """A tiny transformers config for ``arch`` ("gpt_neox" -> Pythia-like, "olmo2" -> OLMo-2-like)."""
    if arch in ("gpt_neox", "pythia"):
        from transformers import GPTNeoXConfig

        return GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=hidden_size * 2,
            max_position_embeddings=128,
            eos_token_id=0,
            bos_token_id=0,
            pad_token_id=1,
        )
    if arch in ("olmo2", "olmo"):
        from transformers import Olmo2Config

        return Olmo2Config(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            intermediate_size=hidden_size * 2,
            max_position_embeddings=128,
            eos_token_id=0,
            bos_token_id=0,
            pad_token_id=1,
        )
    raise ValueError(f"unknown arch {arch!r}; use 'gpt_neox' or 'olmo2'")


def build_tiny_model(arch: str = "gpt_neox", hidden_size: int = 64, seed: int = 0, vocab_size: int = 512) -> Any:
    """A randomly initialised tiny causal LM (deterministic for a given seed)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, hidden_size, vocab_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model


def _fake_sha(repo_id: str, revision: str) -> str:
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


def revision_seed(revision: str, index: int) -> int:
    """The weight seed of the ``index``-th revision ``revision`` (the same for twin repos)."""
    return int(hashlib.sha1(revision.encode()).hexdigest()[:8], 16) % (2**31) + index


def save_revision(model: Any, folder: str | os.PathLike, weights: str = "safetensors", tokenizer: Any = None) -> None:
    """Write ``model`` into ``folder`` as a hub revision holds it: ``config.json`` plus
    ``model.safetensors`` (``weights="safetensors"``) or only ``pytorch_model.bin``
    (``weights="bin"``: ``torch.save`` of the state dict, like Pythia's ``stepN`` branches), and
    the tokenizer files when ``tokenizer`` is given."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if weights == "safetensors":
        model.save_pretrained(folder, safe_serialization=True)
    elif weights == "bin":
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        raise ValueError(f"weights must be 'safetensors' or 'bin', got {weights!r}")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def make_fake_hub_model(
    hf_home: str | os.PathLike,
    repo_id: str = "EleutherAI/pythia-tiny",
    revisions: Sequence[str] = ("step0", "step1000"),
    arch: str = "gpt_neox",
    hidden_size: int = 64,
    with_tokenizer: bool = True,
    weights: str = "safetensors",
) -> dict[str, str]:
    """Write tiny models for ``revisions`` of ``repo_id`` into the hub cache under ``hf_home``.

    Each revision gets its own snapshot (a fake 40-hex commit sha) and weights drawn with a
    different seed, so the revisions really differ. ``refs/main`` points at the last revision.
    Returns ``{revision: sha}``. Calling it again for the same repo adds/overwrites revisions.
    ``weights="bin"`` writes only ``pytorch_model.bin`` (see :func:`save_revision`); two repos
    made with the same ``revisions`` hold the same weights, whatever their format.
    """
    repo_dir = hub_repo_dir(hf_home, repo_id)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    tok = tiny_tokenizer() if with_tokenizer else None
    shas: dict[str, str] = {}
    for i, revision in enumerate(revisions):
        sha = _fake_sha(repo_id, revision)
        snap = repo_dir / "snapshots" / sha
        snap.mkdir(parents=True, exist_ok=True)
        model = build_tiny_model(arch, hidden_size, seed=revision_seed(revision, i))
        save_revision(model, snap, weights, tok)
        (repo_dir / "refs" / revision).write_text(sha)
        shas[revision] = sha
    if revisions:
        (repo_dir / "refs" / "main").write_text(shas[revisions[-1]])
    return shas
