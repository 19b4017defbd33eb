"""Model answer log-likelihood: batched (left/right padding) equals the batch-size-1 loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geomtrace.memorization import QASet, answer_logprobs
from geomtrace.memorization import likelihood as likelihood_module
from geomtrace.tiny import build_tiny_model
from timeouts import SUBPROCESS_TIMEOUT

WORKER = Path(__file__).parent / "workers" / "memorization_ddp.py"
VOCAB = 300


def make_pairs(n: int, seed: int = 0):
    """Cloze pairs of varied context and answer lengths over a random corpus."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, VOCAB, size=int(rng.integers(8, 60))).tolist() for _ in range(40)]
    short = QASet.cloze(docs, n=n // 2, answer_tokens=2, question_tokens=6, min_question_tokens=1, seed=seed)
    long = QASet.cloze(docs, n=n - n // 2, answer_tokens=5, question_tokens=40, min_question_tokens=3, seed=seed + 1)
    return short.tokenize() + long.tokenize()


def batch_size_one_loop(model, pairs):
    """The seed's route: one pair per forward, full logits, softmax, log of each answer token."""
    out = []
    with torch.no_grad():
        for pair in pairs:
            ids = torch.tensor([list(pair.context_ids) + list(pair.answer_ids)])
            logprobs = model(ids).logits[0].float().log_softmax(-1)
            start = len(pair.context_ids) - 1
            out.append(np.array([logprobs[start + j, token].item() for j, token in enumerate(pair.answer_ids)]))
    return out


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("gpt_neox", vocab_size=VOCAB, seed=3).eval()


@pytest.fixture(scope="module")
def pairs_and_reference(model):
    pairs = make_pairs(30)
    return pairs, batch_size_one_loop(model, pairs)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [4, 32])
def test_batched_equals_batch_size_one_loop(model, pairs_and_reference, padding_side, batch_size):
    pairs, reference = pairs_and_reference
    got = answer_logprobs(model, pairs, batch_size=batch_size, padding_side=padding_side)
    assert got.precision == "fp32" and len(got.per_token) == len(pairs)
    for tokens, expected in zip(got.per_token, reference):
        np.testing.assert_allclose(tokens, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.total, [r.sum() for r in reference], rtol=0, atol=1e-5 * 5)


def test_only_answer_positions_reach_the_lm_head(model, pairs_and_reference):
    pairs, reference = pairs_and_reference
    widths = []
    handle = model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: widths.append(args[0].shape[1]))
    try:
        got = answer_logprobs(model, pairs, batch_size=32, padding_side="left")
    finally:
        handle.remove()
    longest = max(len(p.context_ids) + len(p.answer_ids) for p in pairs)
    assert widths == [5]  # left padding aligns the answers: the longest answer's 5 positions only
    assert widths[0] < longest
    np.testing.assert_allclose(got.total, [r.sum() for r in reference], rtol=0, atol=5e-5)


def test_models_without_logits_to_keep_use_full_logits(model, pairs_and_reference, monkeypatch):
    pairs, reference = pairs_and_reference
    monkeypatch.setattr(likelihood_module, "_keep_argument", lambda lm: None)
    got = answer_logprobs(model, pairs, batch_size=8, padding_side="right")
    for tokens, expected in zip(got.per_token, reference):
        np.testing.assert_allclose(tokens, expected, rtol=0, atol=1e-5)


def test_mode_is_restored_and_long_pairs_keep_the_context_end(model):
    pairs = make_pairs(6)
    model.train()
    try:
        full = answer_logprobs(model, pairs, batch_size=3)
        assert model.training  # restored
    finally:
        model.eval()
    # Truncating to 12 tokens scores each answer after the last 12 - len(answer) context tokens.
    truncated = answer_logprobs(model, pairs, max_length=12)
    from geomtrace.memorization import TokenizedPair

    cut = [TokenizedPair(p.context_ids[-(12 - len(p.answer_ids)) :], p.answer_ids) for p in pairs]
    np.testing.assert_allclose(truncated.total, answer_logprobs(model, cut).total, rtol=0, atol=1e-5)
    assert np.isfinite(full.total).all()


def test_bad_arguments(model):
    pairs = make_pairs(2)
    with pytest.raises(ValueError, match="padding_side"):
        answer_logprobs(model, pairs, padding_side="middle")
    with pytest.raises(ValueError, match="no pairs"):
        answer_logprobs(model, [])
    from geomtrace.memorization import TokenizedPair

    with pytest.raises(ValueError, match="at least one context token"):
        answer_logprobs(model, [TokenizedPair((), (1, 2))])


def test_two_gloo_ranks_match_single_process(tmp_path, free_port):
    # 7 pairs: uneven shards (3 and 4); 1 pair: rank 1 has nothing and still joins every collective.
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), str(free_port), "7,1"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from memorization_ddp import worker_model, worker_pairs  # tests/workers/ is on sys.path (pyproject's pythonpath)

    for n in (7, 1):
        reference = answer_logprobs(worker_model(), worker_pairs(n), batch_size=2)
        for rank in (0, 1):
            got = json.loads(Path(f"{out}.rank{rank}").read_text())[str(n)]
            np.testing.assert_allclose(got["total"], reference.total, rtol=0, atol=1e-5)
            for key in ("spearman", "infgram_logprob", "n_scored", "answer_logprob"):
                assert got["measured"][key] == pytest.approx(got["expected"][key], nan_ok=True, abs=1e-9)
            # Only rank 0 queries the index; the others receive its scores.
            assert (got["queries_sent"] > 0) == (rank == 0)
