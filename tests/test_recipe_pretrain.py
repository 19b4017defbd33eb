"""The main job's recipe, shrunk: it trains, logs geometry, saves the model and a plot."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lightning_helpers import read_scalars  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain.py"


def run_recipe(argv: list[str]) -> dict:
    module = runpy.run_path(str(RECIPE), run_name="pretrain_recipe")
    return module["run"](module["parse_args"](argv))


def test_pretrain_recipe_small_run(tmp_path):
    out = tmp_path / "pretrain"
    summary = run_recipe([
        "--max-steps", "4", "--every-n-steps", "2", "--extra-steps", "", "--num-probes", "32", "--hidden-size", "64",
        "--num-layers", "2", "--vocab-size", "512", "--batch-size", "4", "--output", str(out), "--quiet",
    ])
    assert [r["step"] for r in summary["history"]] == [0, 2, 4]
    payload = json.loads((out / "geometry.json").read_text())
    assert payload["history"] == summary["history"]
    assert (out / "geometry.png").stat().st_size > 1000
    assert (out / "final" / "config.json").exists() and (out / "final" / "tokenizer.json").exists()
    scalars = read_scalars(out / "tensorboard")
    assert [s for s, _ in scalars["geometry/rankme"]] == [0, 2, 4]


def test_pretrain_recipe_zipf_corpus_and_no_geometry(tmp_path):
    summary = run_recipe([
        "--corpus", "zipf", "--corpus-tokens", "20000", "--max-steps", "2", "--no-geometry", "--hidden-size", "64",
        "--num-layers", "2", "--vocab-size", "512", "--batch-size", "4", "--output", str(tmp_path), "--quiet",
        "--no-save",
    ])
    assert summary["history"] == []
    assert not (tmp_path / "final").exists()


def test_pretrain_recipe_help():
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(RECIPE), run_name="pretrain_recipe")["parse_args"](["--help"])
    assert exit_info.value.code == 0
