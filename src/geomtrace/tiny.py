"""Tiny offline models, tokenizers and text, for tests, recipes and the demo.

Everything here is built locally in well under a second: the text ships with
CPython (``pydoc_data.topics``), the tokenizer is a byte-level BPE trained on it
with the ``tokenizers`` library, and the models are built from a config with a
fixed seed. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from geomtrace._optional import require

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import GPTNeoXConfig, Olmo2Config, PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "build_tiny_model",
    "embedded_corpus",
    "pythia_14m_config",
    "tiny_olmo2_config",
    "tiny_pythia_config",
    "train_bpe_tokenizer",
]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# One message per block, closed by EOS. The generation prompt is exactly the opening of an
# assistant block, so "prompt + add_generation_prompt" is a prefix of "prompt + answer"
# (TRL's DPO/GRPO rely on that prefix property when they split prompt and completion).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|endoftext|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_BLANK_LINES = re.compile(r"\n\s*\n")
_WHITESPACE = re.compile(r"\s+")


@functools.lru_cache(maxsize=8)
def _corpus(min_chars: int) -> tuple[str, ...]:
    from pydoc_data.topics import topics

    paragraphs: dict[str, None] = {}  # ordered set: some paragraphs recur across topics
    for key in sorted(topics):
        for block in _BLANK_LINES.split(topics[key]):
            text = _WHITESPACE.sub(" ", block).strip()
            if len(text) >= min_chars:
                paragraphs.setdefault(text)
    return tuple(paragraphs)


def embedded_corpus(min_chars: int = 40) -> list[str]:
    """Paragraphs of CPython's ``pydoc_data.topics``: English text available offline.

    Each topic is split on blank lines, whitespace is collapsed to single spaces, and
    paragraphs shorter than ``min_chars`` characters and repeats are dropped (about 1,600
    remain). The order is fixed (sorted topic keys, then paragraph order), so the corpus is the same on every machine
    running the same CPython minor version.
    """
    if min_chars < 0:
        raise ValueError(f"min_chars must be >= 0, got {min_chars}")
    return list(_corpus(min_chars))


@functools.lru_cache(maxsize=4)
def _trained_bpe_json(texts: tuple[str, ...], vocab_size: int, min_frequency: int) -> str:
    tokenizers = require("tokenizers", "training a tiny tokenizer")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


def train_bpe_tokenizer(
    texts: Iterable[str] | None = None,
    vocab_size: int = 2048,
    *,
    min_frequency: int = 2,
    padding_side: str = "right",
    model_max_length: int = 2048,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer locally and wrap it for transformers/TRL.

    Args:
        texts: training text; defaults to :func:`embedded_corpus`.
        vocab_size: target vocabulary size (special tokens included; 256 byte symbols
            + 5 special tokens is the minimum).
        min_frequency: minimum pair count for a merge.
        padding_side: ``"right"`` (default) or ``"left"``.
        model_max_length: the tokenizer's ``model_max_length``.

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as BOS/EOS, a separate
        ``<|pad|>`` pad token, role tokens ``<|system|>``/``<|user|>``/``<|assistant|>``
        and a chat template (:data:`CHAT_TEMPLATE`) supporting ``add_generation_prompt``.
        No special tokens are added when encoding (like Pythia's tokenizer). The trained
        tokenizer is cached per (texts, vocab_size), so repeated calls are cheap; each call
        returns a fresh object.
    """
    transformers = require("transformers", "training a tiny tokenizer")
    tokenizers = require("tokenizers", "training a tiny tokenizer")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    minimum = 256 + 2 + len(ROLE_TOKENS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (bytes + special tokens), got {vocab_size}")
    corpus = tuple(embedded_corpus() if texts is None else (str(t) for t in texts))
    if not corpus:
        raise ValueError("train_bpe_tokenizer needs at least one text; pass texts=None for the embedded corpus")
    backend = tokenizers.Tokenizer.from_str(_trained_bpe_json(corpus, vocab_size, min_frequency))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side=padding_side,
        model_max_length=model_max_length,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_pythia_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 256,
    **overrides: Any,
) -> GPTNeoXConfig:
    """A small GPT-NeoX (Pythia-style) config: parallel residual, 25% rotary, untied head."""
    transformers = require("transformers", "building tiny models")
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    kwargs.update(overrides)
    return transformers.GPTNeoXConfig(**kwargs)


def pythia_14m_config(vocab_size: int, max_position_embeddings: int = 2048, **overrides: Any) -> GPTNeoXConfig:
    """A config shaped like EleutherAI/pythia-14m (hidden 128, 6 layers, 4 heads, MLP 512)."""
    kwargs: dict[str, Any] = dict(intermediate_size=512)
    kwargs.update(overrides)
    return tiny_pythia_config(
        vocab_size,
        hidden_size=128,
        num_layers=6,
        num_heads=4,
        max_position_embeddings=max_position_embeddings,
        **kwargs,
    )


def tiny_olmo2_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 256,
    **overrides: Any,
) -> Olmo2Config:
    """A small OLMo-2 config (post-norm blocks with QK-norm, RMSNorm, SwiGLU MLP)."""
    transformers = require("transformers", "building tiny models")
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
    )
    kwargs.update(overrides)
    return transformers.Olmo2Config(**kwargs)


_ARCHS = {
    "gpt_neox": ("GPTNeoXForCausalLM", tiny_pythia_config),
    "olmo2": ("Olmo2ForCausalLM", tiny_olmo2_config),
}


def build_tiny_model(
    arch: str = "gpt_neox",
    vocab_size: int | None = None,
    hidden_size: int = 64,
    seed: int = 0,
    tokenizer: Any = None,
    **config_kwargs: Any,
) -> PreTrainedModel:
    """Build a tiny causal LM from config with fixed initial weights.

    Args:
        arch: ``"gpt_neox"`` (Pythia-style) or ``"olmo2"``.
        vocab_size: vocabulary size; defaults to ``len(tokenizer)``.
        hidden_size: model width (use >= 128 when you need alpha-ReQ's rank-100 fit).
        seed: weights depend only on this seed; the global RNG state is left untouched.
        tokenizer: if given, its eos/pad/bos ids are written into the model config.
        **config_kwargs: forwarded to the config function (``num_layers``, ``num_heads``,
            ``max_position_embeddings`` or any config field).
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(_ARCHS)}")
    transformers = require("transformers", "building tiny models")
    if vocab_size is None:
        if tokenizer is None:
            raise ValueError("build_tiny_model needs vocab_size= or tokenizer=")
        vocab_size = len(tokenizer)
    if tokenizer is not None:
        # Special-token ids must match the tokenizer or generation/TRL padding goes wrong.
        for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                config_kwargs.setdefault(name, value)
    class_name, make_config = _ARCHS[arch]
    config = make_config(vocab_size, hidden_size=hidden_size, **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, class_name)(config)
    return model
