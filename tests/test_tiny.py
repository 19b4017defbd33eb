"""Tiny offline models, tokenizer and corpus."""

from __future__ import annotations

import time

import pytest
import torch

from geomtrace.tiny import (
    CHAT_TEMPLATE,
    EOS_TOKEN,
    PAD_TOKEN,
    build_tiny_model,
    embedded_corpus,
    pythia_14m_config,
    tiny_olmo2_config,
    tiny_pythia_config,
    train_bpe_tokenizer,
)


def test_embedded_corpus_is_deterministic_clean_paragraphs():
    corpus = embedded_corpus()
    assert 1500 <= len(corpus) <= 3000
    assert corpus == embedded_corpus()
    assert len(set(corpus)) == len(corpus)
    assert all(len(p) >= 40 for p in corpus)
    assert all("\n" not in p and "  " not in p and p == p.strip() for p in corpus)
    assert len(embedded_corpus(min_chars=200)) < len(corpus) < len(embedded_corpus(min_chars=1))
    corpus.clear()  # callers get a copy: the cache is not mutated
    assert len(embedded_corpus()) > 1500


def test_embedded_corpus_rejects_negative_min_chars():
    with pytest.raises(ValueError, match="min_chars"):
        embedded_corpus(min_chars=-1)


def test_tokenizer_special_tokens_and_round_trip(tokenizer):
    assert len(tokenizer) == 2048
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.bos_token == EOS_TOKEN
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"
    text = "The for statement iterates over the items of any sequence: ünïcode too."
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2  # BPE merges learned something
    assert tokenizer.eos_token_id not in ids  # no special tokens added when encoding


def test_tokenizer_on_custom_texts_and_left_padding():
    tokenizer = train_bpe_tokenizer(["aaa bbb ccc"] * 20 + ["abc"], vocab_size=300, padding_side="left")
    assert len(tokenizer) <= 300
    batch = tokenizer(["aaa", "aaa bbb ccc"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(vocab_size=100)
    with pytest.raises(ValueError, match="padding_side"):
        train_bpe_tokenizer(padding_side="middle")


def test_chat_template_generation_prompt_is_a_prefix(tokenizer):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    full = prompt + [{"role": "assistant", "content": "Hello."}]
    with_prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(prompt, tokenize=False)
    whole = tokenizer.apply_chat_template(full, tokenize=False)
    assert with_prompt == without + "<|assistant|>\n"
    assert whole.startswith(with_prompt)  # TRL splits prompt/completion on this
    assert whole.endswith("Hello." + EOS_TOKEN + "\n")
    # Role markers are single special tokens.
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") in range(5)  # trained as a special token
    assert len(tokenizer("<|user|>", add_special_tokens=False)["input_ids"]) == 1


def test_tokenizer_save_and_load(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer.save_pretrained(tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "Assignment statements are used to (re)bind names to values."
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.pad_token_id == tokenizer.pad_token_id and loaded.eos_token_id == tokenizer.eos_token_id
    assert loaded.chat_template == CHAT_TEMPLATE


def test_configs_have_expected_shapes():
    cfg = pythia_14m_config(2048)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (128, 6, 4, 512)
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.25
    small = tiny_pythia_config(500, hidden_size=32, num_layers=3, max_position_embeddings=64, layer_norm_eps=1e-6)
    assert (small.vocab_size, small.hidden_size, small.num_hidden_layers, small.max_position_embeddings) == (
        500,
        32,
        3,
        64,
    )
    assert small.layer_norm_eps == 1e-6 and small.use_parallel_residual
    olmo = tiny_olmo2_config(500)
    assert type(olmo).__name__ == "Olmo2Config"
    assert (olmo.hidden_size, olmo.num_hidden_layers, olmo.num_attention_heads) == (64, 2, 4)


@pytest.mark.parametrize("arch", ["gpt_neox", "olmo2"])
def test_build_tiny_model_is_seeded_fast_and_uses_tokenizer_ids(arch, tokenizer):
    build_tiny_model(arch, tokenizer=tokenizer)  # warm up lazy imports
    rng_before = torch.random.get_rng_state()
    start = time.perf_counter()
    a = build_tiny_model(arch, tokenizer=tokenizer, seed=3)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    b = build_tiny_model(arch, tokenizer=tokenizer, seed=3)
    c = build_tiny_model(arch, tokenizer=tokenizer, seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert a.config.vocab_size == len(tokenizer) and a.config.hidden_size == 64
    assert a.config.pad_token_id == tokenizer.pad_token_id and a.config.eos_token_id == tokenizer.eos_token_id
    ids = torch.tensor([tokenizer("Hello world")["input_ids"]])
    assert a(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_build_tiny_model_errors():
    with pytest.raises(ValueError, match="unknown arch"):
        build_tiny_model("bert", vocab_size=10)
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_model("gpt_neox")
