"""``geomtrace probes export``: the chosen probe texts to a file that a later (offline) replay
reuses exactly (same fingerprint, same output, nothing measured twice)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geomtrace.cli import main
from geomtrace.probes import load_probes, read_probe_file_header
from geomtrace.replay.store import ResultsStore
from geomtrace.tiny import build_tiny_model


def _corpus(n: int = 120) -> list[str]:
    rows = []
    for i in range(n):
        rows.append("" if i % 4 == 0 else f"Line {i} says " + "a probe is a text measured at every step " * (1 + i % 3))
    return rows


@pytest.fixture
def checkpoints(tmp_path, tokenizer) -> Path:
    """Two tiny local checkpoints (step0, step5) with their tokenizer."""
    root = tmp_path / "ckpts"
    for step in (0, 5):
        folder = root / f"step{step}"
        build_tiny_model(tokenizer=tokenizer, hidden_size=32, seed=step).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return root


def test_export_then_replay_offline_reuses_exactly_the_probes(checkpoints, tmp_path, tokenizer, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_corpus()), encoding="utf-8")
    out = tmp_path / "out"
    probe_flags = ["--num-sequences", "8", "--pool-size", "30", "--seed", "2"]
    common = [
        "--checkpoints",
        str(checkpoints),
        "--fit-range",
        "2:6",
        "--no-tensorboard",
        "--quiet",
        "--no-prefetch",
        "-o",
        str(out),
    ]
    assert main(["replay", *common, "--probe-file", str(corpus), *probe_flags]) == 0
    measured = ResultsStore(out).records()
    fingerprint = {r["probe_fingerprint"] for r in measured}
    assert len(fingerprint) == 1 and len({r["key"] for r in measured}) == 2

    # Export with the run's recorded options (--like), as a later offline user would.
    exported = tmp_path / "probes.jsonl"
    capsys.readouterr()
    assert (
        main(["probes", "export", "--like", str(out), "--tokenizer", str(checkpoints / "step0"), "-o", str(exported)])
        == 0
    )
    printed = capsys.readouterr().out
    header = read_probe_file_header(exported)
    assert header is not None and {header["fingerprint"]} == fingerprint and header["n_probes"] == 8
    assert header["options"]["pool_size"] == 30 and header["options"]["seed"] == 2
    assert header["fingerprint"] in printed and str(exported) in printed
    texts = [json.loads(line)["text"] for line in exported.read_text(encoding="utf-8").splitlines()[1:]]
    assert len(texts) == 8 and set(texts) <= {t.strip() for t in _corpus() if t.strip()}

    # The file alone (the corpus gone) gives the same probes: a rerun into the same output is no
    # conflict, and measures nothing again.
    corpus.unlink()
    assert load_probes(tokenizer, exported).fingerprint() in fingerprint
    assert main(["replay", *common, "--probe-file", str(exported)]) == 0
    assert len(ResultsStore(out).records()) == len(measured)


def test_probes_export_from_options_and_its_usage_errors(tmp_path, tokenizer, capsys):
    tok = tmp_path / "tok"
    tokenizer.save_pretrained(tok)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"body": t}) for t in _corpus()), encoding="utf-8")
    target = tmp_path / "sub" / "chosen.jsonl"
    argv = ["probes", "export", "--probe-file", str(corpus), "--probe-column", "body", "--num-sequences", "6"]
    assert main([*argv, "--tokenizer", str(tok), "-o", str(target)]) == 0
    chosen = load_probes(tokenizer, target)
    direct = load_probes(tokenizer, corpus, text_column="body", num_sequences=6)
    assert chosen.fingerprint() == direct.fingerprint() and chosen.texts == direct.texts
    capsys.readouterr()
    for bad, message in (
        ([*argv, "-o", str(target)], "--tokenizer"),
        ([*argv, "--tokenizer", str(tok), "-o", str(tmp_path / "p.txt")], ".jsonl"),
        (["probes", "--tokenizer", str(tok), "-o", str(target)], "needs an action"),
        (["probes", "import", "--tokenizer", str(tok), "-o", str(target)], "needs an action"),
    ):
        assert main(bad) == 2, bad
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
