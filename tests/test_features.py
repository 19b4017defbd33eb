"""Hidden-state extraction: layers, tokens, padding, wrappers, precision, fresh processes."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from geomtrace.features import (
    FeatureSpec,
    extract_features,
    find_causal_lm,
    last_token_index,
    num_hidden_layers,
    resolve_layers,
    select_tokens,
    unwrap_model,
)
from geomtrace.tiny import build_tiny_model
from timeouts import SUBPROCESS_TIMEOUT

transformers = pytest.importorskip("transformers")

VOCAB = 97
LAYERS = 3
ARCHS = ["gpt_neox", "olmo2"]


def _model(arch: str = "gpt_neox", **kw):
    return build_tiny_model(arch, vocab_size=VOCAB, num_layers=LAYERS, seed=1, **kw).eval()


def _padded(lengths: list[int], side: str, seed: int = 0, pad: int = 5):
    """The same random sequences padded on ``side``."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        seq = torch.randint(0, VOCAB, (n,), generator=gen)
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, cols], mask[row, cols] = seq, 1
    return ids, mask


# --- spec and index helpers ---------------------------------------------------------------


def test_feature_spec_validation_messages():
    FeatureSpec().validate()
    FeatureSpec(layers=[0, -1], tokens="all", skip_first_token=True).validate()
    for bad, match in [
        (FeatureSpec(layers="first"), "layers"),
        (FeatureSpec(layers=[]), "empty"),
        (FeatureSpec(layers=[1.5]), "ints"),
        (FeatureSpec(layers=True), "layers"),
        (FeatureSpec(tokens="first"), "tokens"),
        (FeatureSpec(tokens="last", skip_first_token=True), "skip_first_token"),
    ]:
        with pytest.raises(ValueError, match=match):
            bad.validate()
    assert hash(FeatureSpec(layers=[1, 2])) == hash(FeatureSpec(layers=(1, 2)))  # lists stored as tuples


def test_resolve_layers():
    assert resolve_layers("last", 6) == [6]
    assert resolve_layers("all", 2) == [0, 1, 2]
    assert resolve_layers(-1, 6) == [6]
    assert resolve_layers([-7, 3, 3, 6], 6) == [0, 3, 6]
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers(7, 6)
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers([-8], 6)


def test_last_token_index_left_right_and_empty():
    right = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert last_token_index(right).tolist() == [2, 0, 3]
    assert last_token_index(left).tolist() == [3, 3, 0]
    assert (right.sum(1) - 1).tolist() == [2, 0, 3]  # the naive formula agrees only for right padding
    assert (left.sum(1) - 1).tolist() != last_token_index(left).tolist()


def test_select_tokens_last_mean_all_and_skip_first():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])  # mixed padding is fine
    assert torch.equal(select_tokens(hidden, mask, "last"), torch.stack([hidden[0, 3], hidden[1, 1]]))
    assert torch.allclose(
        select_tokens(hidden, mask, "mean"), torch.stack([hidden[0, 1:].mean(0), hidden[1, :2].mean(0)])
    )
    assert torch.equal(select_tokens(hidden, mask, "all"), torch.cat([hidden[0, 1:], hidden[1, :2]]))
    assert torch.equal(
        select_tokens(hidden, mask, "all", skip_first_token=True), torch.cat([hidden[0, 2:], hidden[1, 1:2]])
    )
    assert torch.allclose(
        select_tokens(hidden, mask, "mean", skip_first_token=True),
        torch.stack([hidden[0, 2:].mean(0), hidden[1, 1]]),
    )
    # A sequence without tokens gives no row; bf16 stays bf16.
    empty = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    for mode in ("last", "mean", "all"):
        rows = select_tokens(hidden.bfloat16(), empty, mode)
        assert rows.dtype == torch.bfloat16 and rows.shape[0] == (2 if mode == "all" else 1)
    with pytest.raises(ValueError, match="expected hidden"):
        select_tokens(hidden, mask[:, :3], "last")


# --- extraction on real (tiny) models -----------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_left_and_right_padding_give_the_same_features(arch):
    model = _model(arch)
    lengths = [9, 4, 1, 7]
    for tokens in ("last", "mean", "all"):
        spec = FeatureSpec(layers="all", tokens=tokens)
        right = extract_features(model, *_padded(lengths, "right"), spec)
        left = extract_features(model, *_padded(lengths, "left"), spec)
        assert sorted(right) == list(range(LAYERS + 1))
        for layer in right:
            expected_rows = sum(lengths) if tokens == "all" else len(lengths)
            assert right[layer].shape == (expected_rows, 64)
            torch.testing.assert_close(left[layer], right[layer], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS + ["llama", "gpt2"])
def test_features_equal_hf_hidden_states(arch):
    if arch == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=LAYERS,
            num_attention_heads=4,
            intermediate_size=128,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = transformers.LlamaForCausalLM(cfg).eval()
    elif arch == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=LAYERS, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        )
        model = transformers.GPT2LMHeadModel(cfg).eval()
    else:
        model = _model(arch)
    ids, mask = _padded([8, 8], "right")
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    base = model.base_model(input_ids=ids, attention_mask=mask)
    assert len(out.hidden_states) == LAYERS + 1
    # HF's last hidden state is the post-final-norm one.
    torch.testing.assert_close(out.hidden_states[-1], base.last_hidden_state, rtol=0, atol=0)
    feats = extract_features(model, ids, mask, FeatureSpec(layers="all", tokens="all"))
    for layer, rows in feats.items():
        torch.testing.assert_close(rows, out.hidden_states[layer].reshape(-1, 64), rtol=1e-6, atol=1e-6)


def test_one_forward_for_all_layers_no_logits_and_hooks_removed():
    model = _model()
    calls = {"base": 0, "head": 0, "first_layer": 0}
    model.base_model.register_forward_hook(lambda *_: calls.__setitem__("base", calls["base"] + 1))
    model.lm_head.register_forward_hook(lambda *_: calls.__setitem__("head", calls["head"] + 1))
    first = model.base_model.layers[0]
    first.register_forward_hook(lambda *_: calls.__setitem__("first_layer", calls["first_layer"] + 1))
    hooks_before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    feats = extract_features(model, *_padded([5, 3], "right"), FeatureSpec(layers="all"))
    assert len(feats) == LAYERS + 1
    assert calls == {"base": 1, "head": 0, "first_layer": 1}
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks_before


def test_default_spec_is_last_layer_last_token_and_layer_subsets():
    model = _model("olmo2")
    ids, mask = _padded([6, 2, 4], "left")
    feats = extract_features(model, ids, mask, FeatureSpec())
    assert list(feats) == [LAYERS] and feats[LAYERS].shape == (3, 64)
    hidden = model.base_model(
        input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)
    ).last_hidden_state
    torch.testing.assert_close(feats[LAYERS], hidden[:, -1])  # left padding: last column
    subset = extract_features(model, ids, mask, FeatureSpec(layers=[1, -1], tokens="mean"))
    assert list(subset) == [1, LAYERS]
    assert not torch.allclose(subset[1], subset[LAYERS])
    skip = extract_features(model, ids, mask, FeatureSpec(layers=0, tokens="all", skip_first_token=True))
    assert skip[0].shape == (6 + 2 + 4 - 3, 64)


def test_unwrap_and_find_in_wrappers():
    model = _model()
    assert unwrap_model(model) is model
    assert unwrap_model(nn.DataParallel(model)) is model

    class Holder(nn.Module):  # stands in for a LightningModule
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(2, 2)
            self.net = nn.Sequential(nn.Identity(), nn.DataParallel(model))

    holder = Holder()
    assert find_causal_lm(holder) is model
    assert num_hidden_layers(holder) == LAYERS
    ids, mask = _padded([4, 6], "right")
    torch.testing.assert_close(extract_features(holder, ids, mask)[LAYERS], extract_features(model, ids, mask)[LAYERS])
    with pytest.raises(ValueError, match="model_getter"):
        find_causal_lm(nn.Sequential(nn.Linear(2, 2)))


def test_torch_compile_wrapper_is_unwrapped():
    model = _model()
    compiled = torch.compile(model)  # never run: features go through the original modules
    assert unwrap_model(compiled) is model
    ids, mask = _padded([5, 5], "right")
    torch.testing.assert_close(
        extract_features(compiled, ids, mask)[LAYERS], extract_features(model, ids, mask)[LAYERS]
    )


def test_peft_lora_model_keeps_adapters_active():
    peft = pytest.importorskip("peft")
    plain = _model()
    wrapped = peft.get_peft_model(_model(), peft.LoraConfig(r=4, target_modules=["query_key_value"], lora_alpha=8))
    inner = wrapped.get_base_model()
    assert unwrap_model(wrapped) is inner and find_causal_lm(wrapped) is inner
    ids, mask = _padded([6, 3], "left")
    spec = FeatureSpec(layers="all", tokens="mean")
    # LoRA B starts at zero: same features as the plain model ...
    before = extract_features(wrapped, ids, mask, spec)
    for layer, rows in extract_features(plain, ids, mask, spec).items():
        torch.testing.assert_close(before[layer], rows)
    # ... and a trained adapter changes them: the adapters are in the probed forward.
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.fill_(0.05)
    after = extract_features(wrapped, ids, mask, spec)
    assert not torch.allclose(after[LAYERS], before[LAYERS])


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_autocast(arch):
    model = _model(arch)
    ids, mask = _padded([7, 5, 3], "right")
    spec = FeatureSpec(layers="all", tokens="mean")
    reference = extract_features(model, ids, mask, spec)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = extract_features(model, ids, mask, spec)
    for layer, rows in low.items():
        assert rows.dtype in (torch.bfloat16, torch.float32)
        assert torch.isfinite(rows.float()).all()
        torch.testing.assert_close(rows.float(), reference[layer], rtol=0.1, atol=0.1)
    # Residual streams stay fp32 under autocast, but the bf16 matmuls did run:
    assert any(not torch.equal(low[layer].float(), reference[layer]) for layer in low)


def test_model_unpickled_in_a_fresh_process(tmp_path):
    # transformers 5: an unpickled model can return hidden_states=None in a fresh process;
    # extraction must not depend on output_hidden_states.
    model = _model("olmo2")
    ids, mask = _padded([6, 4], "left")
    spec = FeatureSpec(layers="all", tokens="last")
    expected = extract_features(model, ids, mask, spec)
    (tmp_path / "model.pkl").write_bytes(pickle.dumps((model, ids, mask)))
    script = textwrap.dedent(
        f"""
        import pickle, torch
        from geomtrace.features import FeatureSpec, extract_features
        model, ids, mask = pickle.loads(open({str(tmp_path / "model.pkl")!r}, 'rb').read())
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        print('hidden_states_none', hs is None)
        feats = extract_features(model, ids, mask, FeatureSpec(layers='all', tokens='last'))
        torch.save(feats, {str(tmp_path / "feats.pt")!r})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    got = torch.load(tmp_path / "feats.pt")
    assert sorted(got) == sorted(expected)
    for layer in expected:
        torch.testing.assert_close(got[layer], expected[layer], rtol=0, atol=0)
