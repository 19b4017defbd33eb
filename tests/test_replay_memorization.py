"""Memorization in replay: records in the resumable store, no duplicates on resume, conflicts,
the seed's result formats out and back in, the memorization panel of `geomtrace plot`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fakehub import build_tiny_model, tiny_tokenizer
from geomtrace.measure import MeasureConfig
from geomtrace.memorization import MemorizationProbe, QASet
from geomtrace.replay import ProbeOptions, ResultsStore, local_checkpoints, run_replay
from geomtrace.replay.memorization import MemorizationStore
from geomtrace.replay.store import OutputConflictError
from memorization_helpers import BruteForceSource, cloze_probe, repetitive_documents

PROBE_OPTIONS = ProbeOptions(num_sequences=12, max_tokens=24)
STEPS = (0, 10, 20)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpts")
    for i, step in enumerate(STEPS):
        build_tiny_model(seed=i).save_pretrained(root / f"checkpoint-{step}")
    tiny_tokenizer().save_pretrained(root)
    return root


def probes() -> list[MemorizationProbe]:
    documents = repetitive_documents()
    return [cloze_probe(documents, name="train"), cloze_probe(documents, name="seedrule", zero_probability="as_one")]


def replay(checkpoints: Path, out: Path, memorization=None, keep=None, **kwargs):
    found = local_checkpoints(checkpoints)
    if keep is not None:
        found = [c for c in found if c.step in keep]
    return run_replay(
        found,
        out,
        probe_options=PROBE_OPTIONS,
        config=MeasureConfig(fit_range=(2, 10)),
        device="cpu",
        progress=False,
        verbose=False,
        memorization=memorization,
        tokens_per_step=100,
        **kwargs,
    )


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_replay_writes_one_record_per_checkpoint_and_probe(checkpoints, tmp_path):
    out = tmp_path / "out"
    summary = replay(checkpoints, out, probes(), tensorboard_dir=tmp_path / "tb")
    assert summary.measured == ["checkpoint-0", "checkpoint-10", "checkpoint-20"] and not summary.failed
    store = MemorizationStore(out)
    records = store.records()
    assert [(r["key"], r["probe"]) for r in records] == [
        (f"checkpoint-{s}", name) for s in STEPS for name in ("train", "seedrule")
    ]
    assert [r["tokens"] for r in records[::2]] == [0, 1000, 2000]
    # The values equal a direct measurement of the checkpoint's model.
    direct = cloze_probe(repetitive_documents(), name="train").measure(build_tiny_model(seed=1))
    middle = records[2]
    for key in ("spearman", "answer_logprob", "n_scored", "infgram_logprob"):
        assert middle[key] == pytest.approx(direct[key], abs=1e-5, nan_ok=True), key
    assert len(middle["answer_token_logprobs"]) == 16 and len(middle["answer_token_logprobs"][0]) == 3
    # The ∞-gram side is kept once per probe, with the pairs' text.
    info = store.probes()["seedrule"]
    assert info["identity"]["zero_probability"] == "as_one" and len(info["infgram"]["token_probs"]) == 16
    assert len(info["pairs"]["question"]) == 16
    # TensorBoard gets the live callbacks' tags at the checkpoint steps.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("memorization/train/spearman")] == list(STEPS)
    assert [e.step for e in acc.Scalars("geometry/rankme")] == list(STEPS)


def test_resume_never_duplicates_memorization_records(checkpoints, tmp_path):
    out = tmp_path / "out"
    # Geometry alone first, then memorization added: only the memorization is measured.
    replay(checkpoints, out)
    geometry_lines = lines(out / "results.jsonl")
    summary = replay(checkpoints, out, probes(), keep=(0, 10))  # stopped after two checkpoints
    assert summary.measured == ["checkpoint-0", "checkpoint-10"]
    assert lines(out / "results.jsonl") == geometry_lines  # geometry was not measured again
    assert lines(out / "memorization.jsonl") == 4
    # The resumed run measures only what is missing; a further rerun measures nothing.
    summary = replay(checkpoints, out, probes())
    assert summary.measured == ["checkpoint-20"] and summary.skipped == ["checkpoint-0", "checkpoint-10"]
    summary = replay(checkpoints, out, probes())
    assert summary.measured == [] and len(summary.skipped) == 3
    raw = [json.loads(line) for line in (out / "memorization.jsonl").read_text().splitlines()]
    assert sorted((r["key"], r["probe"]) for r in raw) == sorted(
        (f"checkpoint-{s}", name) for s in STEPS for name in ("train", "seedrule")
    )
    assert lines(out / "results.jsonl") == geometry_lines
    # A killed writer's truncated line is ignored and that record measured again, once.
    with open(out / "memorization.jsonl", "ab") as handle:
        handle.write(b'{"key": "checkpoint-20", "probe": "tr')
    assert len(MemorizationStore(out).records()) == 6


def test_a_probe_measured_otherwise_is_refused(checkpoints, tmp_path):
    out = tmp_path / "out"
    replay(checkpoints, out, probes(), keep=(0,))
    documents = repetitive_documents()
    other = [cloze_probe(documents, name="train", zero_probability="as_one")]
    with pytest.raises(OutputConflictError, match="zero_probability"):
        replay(checkpoints, out, other)
    assert lines(out / "memorization.jsonl") == 2
    with pytest.raises(TypeError, match="MemorizationProbe"):
        replay(checkpoints, tmp_path / "other", "trivia_qa")


def test_a_failing_memorization_is_a_failed_checkpoint_retried_later(checkpoints, tmp_path):
    out = tmp_path / "out"
    bad = [[600] * 20 for _ in range(3)]  # token ids beyond the 512-token vocabulary
    qa = QASet.cloze(bad, n=4, answer_tokens=3, question_tokens=4, min_question_tokens=2)
    summary = replay(checkpoints, out, [MemorizationProbe(qa, BruteForceSource(bad))], keep=(0,))
    assert "memorization failed" in summary.failed["checkpoint-0"]
    assert ResultsStore(out).done_keys() == {"checkpoint-0"}  # the geometry is kept
    assert "memorization failed" in ResultsStore(out).failures()[0]["error"]


def test_cli_replay_plot_and_export_with_memorization(checkpoints, tmp_path, capsys, monkeypatch):
    from geomtrace.cli import main
    from geomtrace.memorization import read_seed_run

    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "".join(
            json.dumps({"question": f"What is {a} plus {b}?", "answer": str(a + b)}) + "\n"
            for a in range(4)
            for b in range(3)
        )
    )
    out = tmp_path / "out"
    argv = [
        "replay",
        "--checkpoints",
        str(checkpoints),
        "--output",
        str(out),
        "--num-sequences",
        "12",
        "--max-tokens",
        "24",
        "--fit-range",
        "2:10",
        "--no-progress",
        "--quiet",
        "--no-tensorboard",
        "--qa",
        str(qa),
        "--index",
        str(tmp_path / "no-index"),
    ]
    assert main(argv) == 2 and "no-index" in capsys.readouterr().err  # a clear one-line error
    assert main(argv[:-2] + ["--memorization-name", "x"]) == 2
    assert "need --qa" not in capsys.readouterr().err  # --qa is there: it asks for an index
    # A stand-in for the public API, answering from a brute-force count over the QA texts.
    from geomtrace.memorization import InfiniGramAPI

    documents = [
        tiny_tokenizer()(f"Question: {d['question']} Answer: {d['answer']}")["input_ids"]
        for d in map(json.loads, qa.read_text().splitlines())
    ]
    counted = BruteForceSource(documents)
    monkeypatch.setattr(InfiniGramAPI, "prob", lambda self, context, token: counted.prob(context, token))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(argv[:-2] + ["--infini-gram-api", "v4_test", "--memorization-name", "arith"]) == 0
    records = MemorizationStore(out).records()
    assert [(r["key"], r["probe"], r["n_pairs"]) for r in records] == [(f"checkpoint-{s}", "arith", 12) for s in STEPS]
    assert all(r["n_scored"] == 12 for r in records)  # every answer occurs in the counted texts

    assert (
        main(
            [
                "plot",
                str(out),
                "--phases",
                "--memorization",
                "spearman,answer_logprob",
                "--output",
                str(tmp_path / "p.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert main(["plot", str(out), "--memorization", "bogus", "--output", str(tmp_path / "q.png")]) == 2

    capsys.readouterr()
    assert main(["export", str(out), "--output", str(tmp_path / "export" / "geometry.npy")]) == 0
    written = capsys.readouterr().out.split()
    assert str(tmp_path / "export" / "infgram" / "arith" / "triviaqa_12samples.npy") in written
    # The import reads the seed's formats back: the same per-checkpoint summary as the store.
    curve = read_seed_run(
        tmp_path / "export" / "infgram" / "arith" / "triviaqa_12samples.npy",
        tmp_path / "export" / "llm_likelihood" / "arith",
    )
    assert [row["step"] for row in curve] == list(STEPS)
    for row, record in zip(curve, records):
        for key in ("spearman", "answer_logprob", "n_scored", "infgram_logprob"):
            assert row[key] == pytest.approx(record[key], abs=1e-9, nan_ok=True), key


def test_a_cloze_set_saved_as_jsonl_replays_to_the_live_values(checkpoints, tmp_path):
    # What recipes/pretrain.py does: the live probe's cloze set goes to a JSONL file, and
    # replay scores a checkpoint on the set read back; the values are the live probe's.
    documents = repetitive_documents()
    live = cloze_probe(documents, name="train")
    saved = QASet.from_jsonl(live.qa.to_jsonl(tmp_path / "qa" / "train.jsonl"))
    assert saved.pairs == live.qa.pairs
    probe = MemorizationProbe(saved, BruteForceSource(documents), name="train", batch_size=8)
    out = tmp_path / "out"
    assert replay(checkpoints, out, [probe], keep={10}).measured == ["checkpoint-10"]
    (record,) = MemorizationStore(out).records()
    direct = live.measure(build_tiny_model(seed=1))
    for key in ("spearman", "pearson", "answer_logprob", "infgram_logprob", "n_scored"):
        assert record[key] == pytest.approx(direct[key], abs=1e-6), key
