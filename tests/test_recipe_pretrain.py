"""The main job's recipe, shrunk: it trains, logs geometry, saves the model and a plot."""

from __future__ import annotations

import json
import runpy
import shlex
from pathlib import Path

import pytest

from geomtrace.cli import main
from geomtrace.memorization import QASet
from geomtrace.replay.memorization import MemorizationStore
from geomtrace.replay.sources import local_checkpoints
from lightning_helpers import read_scalars

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain.py"


def run_recipe(argv: list[str]) -> dict:
    module = runpy.run_path(str(RECIPE), run_name="pretrain_recipe")
    return module["run"](module["parse_args"](argv))


def test_pretrain_recipe_small_run(tmp_path, capsys):
    out = tmp_path / "pretrain"
    argv = [
        "--max-steps",
        "4",
        "--every-n-steps",
        "2",
        "--extra-steps",
        "",
        "--num-probes",
        "32",
        "--hidden-size",
        "64",
        "--num-layers",
        "2",
        "--vocab-size",
        "512",
        "--batch-size",
        "4",
        "--output",
        str(out),
        "--quiet",
        "--memorization-pairs",
        "24",
        "--checkpoint-steps",
        "0,1",
        "--checkpoint-every",
        "3",
    ]
    summary = run_recipe(argv)
    assert [r["step"] for r in summary["history"]] == [0, 2, 4]
    printed = _printed(capsys)
    assert sum(line.startswith("[geomtrace] RankMe ") for line in printed.splitlines()) == 1  # the summary, once
    assert "cost: 3 measurement(s)" in printed
    payload = json.loads((out / "geometry.json").read_text())
    assert payload["history"] == summary["history"]
    assert payload["tokens_per_step"] == 4 * 128 and payload["provenance"]["precision"] == "fp32"
    assert payload["provenance"]["n_probes"] == 32 and payload["from_pretrained"] is False
    assert (out / "geometry.png").stat().st_size > 1000
    assert (out / "final" / "config.json").exists() and (out / "final" / "tokenizer.json").exists()
    scalars = read_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["geometry/rankme"]] == [0, 2, 4]
    # The checkpoint series that `geomtrace replay --checkpoints OUT/checkpoints` reads.
    found = local_checkpoints(out / "checkpoints")
    assert [c.step for c in found] == [0, 1, 3, 4] and all(c.kind == "hf_folder" for c in found)
    assert all((Path(c.path) / "tokenizer.json").exists() for c in found)
    # Memorization beside geometry: training-text and held-out cloze pairs against the index
    # of the training text, at the geometry steps.
    pytest.importorskip("infini_gram")
    for name in ("train", "heldout", "heldout_seedrule"):
        for key in ("spearman", "answer_logprob", "n_scored"):
            assert [s for s, _ in scalars[f"memorization/{name}/{key}"]] == [0, 2, 4], (name, key)
    last = summary["history"][-1]
    assert last["memorization/train/n_scored"] == 24  # a training-text answer always occurs in the index
    assert last["memorization/heldout/n_scored"] <= last["memorization/heldout_seedrule/n_scored"]
    assert [p["name"] for p in payload["memorization"]] == ["train", "heldout", "heldout_seedrule"]
    assert "held out of training" in printed and (out / "ngram").is_dir()
    # The QA sets are saved, and the replay command the demo prints, run on the step-4
    # checkpoint, gives the live values (same pairs, same index, same batch size).
    saved = {name: QASet.from_jsonl(out / "memorization" / f"{name}.jsonl") for name in ("train", "heldout")}
    assert [len(qa) for qa in saved.values()] == [24, 24] and all(qa.is_tokenized for qa in saved.values())
    command = next(line for line in printed.splitlines() if "replay one with: geomtrace replay" in line)
    command = command.split("replay one with: geomtrace ", 1)[1].split("  (heldout_seedrule", 1)[0]
    argv_replay = shlex.split(command) + [
        "--step-range",
        "4:4",
        "--device",
        "cpu",
        "--quiet",
        "--no-progress",
        "--no-tensorboard",
        "--zero-probability",
        "as_one",
        "--memorization-name",
        "heldout_seedrule",
    ]
    assert main(argv_replay) == 0
    (record,) = MemorizationStore(out / "replay-heldout").records()
    assert record["probe"] == "heldout_seedrule" and record["step"] == 4
    for key in ("spearman", "answer_logprob", "n_scored"):
        assert record[key] == pytest.approx(last[f"memorization/heldout_seedrule/{key}"], abs=1e-6), key

    # Run again into the same folder with another series: no stale checkpoint or curve is left.
    run_recipe([*argv[:-4], "--checkpoint-steps", "2", "--checkpoint-every", "0"])
    assert [c.step for c in local_checkpoints(out / "checkpoints")] == [2]
    assert [s for s, _ in read_scalars(out / "tensorboard")["geometry/rankme"]] == [0, 2, 4]


def test_pretrain_recipe_zipf_corpus_and_no_geometry(tmp_path):
    summary = run_recipe(
        [
            "--corpus",
            "zipf",
            "--corpus-tokens",
            "20000",
            "--max-steps",
            "2",
            "--no-geometry",
            "--hidden-size",
            "64",
            "--num-layers",
            "2",
            "--vocab-size",
            "512",
            "--batch-size",
            "4",
            "--output",
            str(tmp_path),
            "--quiet",
            "--no-save",
        ]
    )
    assert summary["history"] == []
    assert not (tmp_path / "final").exists()


def test_pretrain_recipe_help():
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(RECIPE), run_name="pretrain_recipe")["parse_args"](["--help"])
    assert exit_info.value.code == 0


def _printed(capsys) -> str:
    """What the run printed: the recipe's own lines (stdout) and geomtrace's (logging, stderr)."""
    captured = capsys.readouterr()
    return captured.out + captured.err
