"""Correlations, the zero rule, the probe (∞-gram side once per run) and the seed's result files."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest

from geomtrace.memorization import (
    MemorizationProbe,
    QASet,
    QAVocabularyError,
    answer_logprob,
    infgram_scores,
    pearson,
    read_pickled_npy,
    read_seed_infgram,
    read_seed_llm_likelihood,
    spearman,
    summarize,
    write_seed_infgram,
    write_seed_llm_likelihood,
)
from geomtrace.memorization.seed_format import UntrustedPickleError, aligned
from geomtrace.memorization.stats import rankdata
from geomtrace.tiny import build_tiny_model
from memorization_helpers import BruteForceSource, random_docs

# ------------------------------------------------------------------------------ statistics


def test_rankdata_averages_ties():
    assert rankdata(np.array([10.0, 30.0, 20.0, 20.0, 5.0])).tolist() == [2.0, 5.0, 3.5, 3.5, 1.0]


def test_spearman_without_ties_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=25), rng.normal(size=25)
    d = rankdata(x) - rankdata(y)
    textbook = 1 - 6 * np.sum(d**2) / (25 * (25**2 - 1))
    assert spearman(x, y) == pytest.approx(textbook, abs=1e-12)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0) and spearman(x, -(x**3)) == pytest.approx(-1.0)


def test_spearman_with_ties_is_pearson_of_average_ranks():
    x = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    y = np.array([1.0, 3.0, 2.0, 2.0, 5.0])
    # ranks: x -> 1, 2.5, 2.5, 4, 5; y -> 1, 4, 2.5, 2.5, 5 (worked by hand)
    rx, ry = np.array([1, 2.5, 2.5, 4, 5]), np.array([1, 4, 2.5, 2.5, 5])
    expected = np.sum((rx - 3) * (ry - 3)) / np.sqrt(np.sum((rx - 3) ** 2) * np.sum((ry - 3) ** 2))
    assert spearman(x, y) == pytest.approx(expected, abs=1e-12)


def test_pearson_matches_corrcoef_and_is_nan_when_undefined():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=40), rng.normal(size=40)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert math.isnan(pearson([1.0, 2.0], [3.0, 4.0]))
    assert math.isnan(spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="same length"):
        pearson([1.0, 2.0, 3.0], [1.0, 2.0])


# ------------------------------------------------------------------------------ zero rule


def test_zero_probability_rules():
    assert math.isnan(answer_logprob([0.5, 0.0]))  # default: unscorable
    assert answer_logprob([0.5, 0.0], "as_one") == pytest.approx(math.log(0.5))  # seed: the zero is dropped
    assert math.isnan(answer_logprob([0.0, 0.0], "as_one"))  # the seed stores NaN when all are zero
    assert answer_logprob([0.5, 0.25]) == pytest.approx(math.log(0.125))
    assert answer_logprob([-1.0, 0.5], "as_one") == pytest.approx(math.log(0.5))  # API's -1 counts as 0
    with pytest.raises(ValueError, match="zero_probability"):
        answer_logprob([0.5], "drop")


def test_summarize_leaves_unscorable_pairs_out_of_correlations_only():
    model = np.array([-1.0, -2.0, -3.0, -4.0, -9.0])
    infgram = np.array([-0.5, -1.0, -2.0, -2.5, np.nan])
    out = summarize(model, infgram)
    assert out["spearman"] == pytest.approx(1.0) and out["pearson"] == pytest.approx(pearson(model[:4], infgram[:4]))
    assert out["n_scored"] == 4 and out["n_unscorable"] == 1 and out["n_pairs"] == 5
    assert out["answer_logprob"] == pytest.approx(model.mean())  # over all pairs
    assert out["infgram_logprob"] == pytest.approx(infgram[:4].mean())  # over the scorable ones


# ------------------------------------------------------------------------------ probe

DOCS = random_docs(21, n_docs=30, alphabet=8)


@pytest.fixture(scope="module")
def model():
    return build_tiny_model("gpt_neox", vocab_size=16, seed=2).eval()


def held_out_cloze(n=20):
    return QASet.cloze(
        random_docs(99, n_docs=10, alphabet=8), n=n, answer_tokens=3, question_tokens=6, min_question_tokens=2, seed=0
    )


def test_infgram_side_is_computed_once_per_run(model):
    source = BruteForceSource(DOCS)
    qa = QASet.cloze(DOCS, n=15, answer_tokens=3, question_tokens=6, min_question_tokens=2, seed=4)
    probe = MemorizationProbe(qa, source)
    first = probe.measure(model)
    sent = source.queries
    assert 0 < sent <= 15 * 3
    second = probe.measure(model)
    probe.prepare()
    assert source.queries == sent
    assert first == second
    assert set(first) >= {"spearman", "pearson", "answer_logprob", "n_scored", "n_unscorable"}
    # Training-text cloze answers occur in the corpus after their question: always scorable.
    assert first["n_scored"] == 15 and first["n_unscorable"] == 0
    expected = infgram_scores(BruteForceSource(DOCS), qa.tokenize())
    np.testing.assert_array_equal(probe.infgram.logprob, expected.logprob)


def test_zero_rule_option_changes_what_is_scorable(model):
    qa = held_out_cloze()
    strict = MemorizationProbe(qa, BruteForceSource(DOCS)).measure(model)
    seed_rule = MemorizationProbe(qa, BruteForceSource(DOCS), zero_probability="as_one").measure(model)
    scores = infgram_scores(BruteForceSource(DOCS), qa.tokenize())
    has_zero = sum(bool(np.any(p == 0)) for p in scores.token_probs)
    all_zero = sum(bool(np.all(p == 0)) for p in scores.token_probs)
    assert has_zero > all_zero  # the corpus makes both cases happen
    assert strict["n_unscorable"] == has_zero
    assert seed_rule["n_unscorable"] == all_zero
    assert strict["answer_logprob"] == pytest.approx(seed_rule["answer_logprob"])  # the model side is the same


def test_live_probes_on_one_qa_set_share_one_forward(model, monkeypatch):
    import geomtrace.memorization.probe as probe_module
    from geomtrace.memorization.live import LiveMemorization

    qa = held_out_cloze()
    live = LiveMemorization(
        [
            MemorizationProbe(qa, BruteForceSource(DOCS), name="strict"),
            MemorizationProbe(qa, BruteForceSource(DOCS), name="seed", zero_probability="as_one"),
            MemorizationProbe(held_out_cloze(5), BruteForceSource(DOCS), name="other"),
        ]
    )
    calls = []
    real = probe_module.answer_logprobs
    monkeypatch.setattr(probe_module, "answer_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    scalars, notes = live.measure(model, step=3)
    assert len(calls) == 2  # one forward for the shared QA set, one for the other
    assert len(notes) == 3 and all("computed once" in note for note in notes)
    seed_rule = MemorizationProbe(qa, BruteForceSource(DOCS), zero_probability="as_one").measure(model)
    assert scalars["memorization/seed/spearman"] == pytest.approx(seed_rule["spearman"], nan_ok=True)
    assert scalars["memorization/seed/n_scored"] == seed_rule["n_scored"]
    assert scalars["memorization/strict/answer_logprob"] == scalars["memorization/seed/answer_logprob"]
    assert live.measure(model, step=4)[1] == []  # prepared once: no second note


def test_probe_keys_and_arguments():
    qa = held_out_cloze(3)
    assert MemorizationProbe(qa, BruteForceSource(DOCS)).key("spearman") == "memorization/spearman"
    assert (
        MemorizationProbe(qa, BruteForceSource(DOCS), name="heldout").key("spearman") == "memorization/heldout/spearman"
    )
    with pytest.raises(ValueError, match="index_tokenizer"):
        MemorizationProbe(qa, BruteForceSource(DOCS), index_tokenizer=object())
    with pytest.raises(ValueError, match="name"):
        MemorizationProbe(qa, BruteForceSource(DOCS), name="a/b")


def test_result_record_is_json_ready(model):
    import json

    probe = MemorizationProbe(held_out_cloze(4), BruteForceSource(DOCS))
    result = probe.measure_result(model)
    record = json.loads(json.dumps(result.to_record()))
    assert len(record["pairs"]["answer_token_logprobs"]) == 4 and record["summary"]["n_pairs"] == 4
    assert record["pairs"]["answer_logprob"] == pytest.approx(result.model.total.tolist())
    assert record["summary"]["answer_logprob"] == pytest.approx(float(np.mean(result.model.total)))


# ------------------------------------------------------------------------------ seed formats


def test_seed_files_round_trip_and_read_like_the_seeds(tmp_path, model):
    qa = held_out_cloze(8)
    probe = MemorizationProbe(qa, BruteForceSource(DOCS))
    result = probe.measure_result(model)
    infgram_path = write_seed_infgram(tmp_path / "infgram" / "triviaqa_8samples.npy", qa, result.infgram)
    llm_path = write_seed_llm_likelihood(tmp_path / "llm" / "triviaqa_step_0.npy", qa, result.model)

    # What the seed's own scripts would do with them:
    raw = np.load(infgram_path, allow_pickle=True).item()
    assert sorted(raw) == list(range(8))
    for key, probs in enumerate(result.infgram.token_probs):
        entry = raw[key]
        assert set(entry) == {"Question", "Answer", "infgram_prob", "logprob_result", "prob_result"}
        assert entry["infgram_prob"] == pytest.approx(probs.tolist())
        seed_value = answer_logprob(probs, "as_one")  # the file follows the seed's rule
        assert entry["logprob_result"] == pytest.approx(seed_value, nan_ok=True)
        assert entry["prob_result"] == pytest.approx(0.0 if math.isnan(seed_value) else math.exp(seed_value))
    raw_llm = np.load(llm_path, allow_pickle=True).item()
    assert set(raw_llm[0]) == {"Question", "Answer", "llm_prob", "llm_logprob", "logprob_result"}
    assert raw_llm[3]["llm_prob"] == pytest.approx(np.exp(result.model.per_token[3]).tolist())

    infgram = read_seed_infgram(infgram_path)
    llm = read_seed_llm_likelihood(llm_path)
    np.testing.assert_array_equal(infgram.logprob, result.infgram.logprob)  # default rule reapplied
    np.testing.assert_allclose(llm.total, result.model.total, rtol=1e-12)
    keys, model_lp, infgram_lp = aligned(infgram, llm)
    assert summarize(model_lp, infgram_lp)["spearman"] == pytest.approx(result.summary["spearman"], nan_ok=True)
    assert keys.tolist() == list(range(8))


def test_files_from_the_seed_with_numpy_scalars_and_missing_rows(tmp_path):
    # As the seed writes them: np.float64 sums, lists, a row skipped after API errors.
    data = {
        0: {
            "Question": "q0",
            "Answer": "a0",
            "infgram_prob": [0.5, 0.0],
            "logprob_result": np.sum(np.log([0.5])),
            "prob_result": np.float64(0.5),
        },
        2: {
            "Question": "q2",
            "Answer": "a2",
            "infgram_prob": [-1, 0.25],
            "logprob_result": np.float64(math.log(0.25)),
            "prob_result": np.float64(0.25),
        },
    }
    path = tmp_path / "triviaqa_3samples.npy"
    np.save(path, data, allow_pickle=True)
    got = read_seed_infgram(path)
    assert got.keys.tolist() == [0, 2]
    assert np.isnan(got.logprob).all()  # both hold a zero (the API's -1 counts as 0)
    assert read_seed_infgram(path, zero_probability="as_one").logprob == pytest.approx([math.log(0.5), math.log(0.25)])
    assert got.seed_logprob == pytest.approx([math.log(0.5), math.log(0.25)])


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_untrusted_pickles_are_refused_unless_trusted(tmp_path, capsys):
    path = tmp_path / "evil.npy"
    np.save(path, np.array({0: _Payload()}, dtype=object), allow_pickle=True)
    with pytest.raises(UntrustedPickleError, match="builtins.print.*trusted=True"):
        read_pickled_npy(path)
    assert "must never run" not in capsys.readouterr().out
    read_pickled_npy(path, trusted=True)  # the caller vouched for it: it runs
    assert "must never run" in capsys.readouterr().out
    np.save(tmp_path / "plain.npy", np.arange(3))
    with pytest.raises(ValueError, match="plain int64 array"):
        read_pickled_npy(tmp_path / "plain.npy")
    buffer = io.BytesIO()
    pickle.dump([1], buffer)
    (tmp_path / "not.npy").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError):
        read_pickled_npy(tmp_path / "not.npy")


# ------------------------------------------------------------------- ids outside the model's vocabulary


def _qa_file_with_an_id_above(tmp_path, bad_id):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"question_ids": [1, 2, 3], "answer_ids": [4]}\n'
        f'{{"key": 7, "question_ids": [1, 2], "answer_ids": [3, {bad_id}]}}\n'
        '{"question_ids": [5, 6], "answer_ids": [7]}\n'
    )
    return path


def test_token_ids_outside_the_models_vocabulary_name_the_file_record_and_id(tmp_path, model):
    # The model has 16 embeddings; id 40 used to fail deep in the forward with a bare IndexError.
    path = _qa_file_with_an_id_above(tmp_path, 40)
    probe = MemorizationProbe(QASet.from_jsonl(path), BruteForceSource(DOCS))
    message = rf"QA file {path}, pair key=7 \(line 2\): field 'answer_ids' holds token id 40, but .* 16 ids.*regenerate"
    with pytest.raises(QAVocabularyError, match=message):
        probe.measure(model)
    assert issubclass(QAVocabularyError, ValueError)
    probe_in_range = MemorizationProbe(
        QASet.from_jsonl(_qa_file_with_an_id_above(tmp_path, 15)), BruteForceSource(DOCS)
    )
    assert probe_in_range.measure(model)["n_pairs"] == 3


def test_a_live_probe_with_ids_outside_the_vocabulary_is_turned_off_once(tmp_path, model):
    import warnings

    from geomtrace import GeometryWarning
    from geomtrace.memorization.live import LiveMemorization

    live = LiveMemorization(
        MemorizationProbe(QASet.from_jsonl(_qa_file_with_an_id_above(tmp_path, 40)), BruteForceSource(DOCS))
    )
    with pytest.warns(GeometryWarning, match="off for the rest of this run.*token id 40"):
        assert live.measure(model, step=1)[0] == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert live.measure(model, step=2)[0] == {}


def test_a_tokenizer_larger_than_the_models_vocabulary_is_named(model):
    from geomtrace.tiny import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["the cat sat on the mat", "a dog and a cat"] * 5, vocab_size=300)
    qa = QASet.from_pairs([("what sat on the mat", "the cat"), ("who is a dog", "a cat")], description="pets")
    with pytest.raises(
        QAVocabularyError, match=r"QA set 'pets', pair key=0: the tokenizer gives token id .* own tokenizer"
    ):
        MemorizationProbe(qa, BruteForceSource(DOCS)).measure(model, tokenizer)
