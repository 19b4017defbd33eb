"""recipes/experiments/posttrain_noise.py and the post-training recipes' --uncertainty flag."""

from __future__ import annotations

import argparse
import json
import runpy
from pathlib import Path

import pytest

from geomtrace.tiny import build_tiny_model

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def noise_script():
    return runpy.run_path(str(RECIPES / "experiments" / "posttrain_noise.py"), run_name="posttrain_noise")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, make_tokenizer):
    root = tmp_path_factory.mktemp("posttrain")
    tokenizer = make_tokenizer()
    paths = []
    for seed in (0, 1):
        path = root / f"model{seed}"
        model = build_tiny_model("gpt_neox", hidden_size=32, num_layers=2, num_heads=2, seed=seed, tokenizer=tokenizer)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(str(path))
    return paths


def test_a_model_against_itself_has_no_change_and_no_paired_noise(noise_script, two_models, tmp_path):
    out = tmp_path / "noise.json"
    same = two_models[0]
    assert noise_script["main"]([f"same={same}:{same}", "--num-probes", "40", "--groups", "8", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["pairs"]["same"]["rankme"]
    assert row["se_independent"] > 0.0  # the independent combination charges both samples' noise
    # the same rows on both sides: every replicate moves by nothing (bar a kernel's round-off)
    assert abs(row["change"]) <= 1e-6 * row["before"]
    assert row["se_paired"] <= 1e-6 * row["se_independent"]


def test_two_models_give_both_errors_and_a_shift_verdict(noise_script, two_models, tmp_path):
    out = tmp_path / "noise.json"
    before, after = two_models
    assert (
        noise_script["main"]([f"pair={before}:{after}", "--num-probes", "40", "--groups", "8", "--json", str(out)]) == 0
    )
    pair = json.loads(out.read_text())["pairs"]["pair"]
    for quantity in ("rankme", "alpha"):
        row = pair[quantity]
        assert row["change"] == pytest.approx(row["after"] - row["before"])
        assert row["se_independent"] == pytest.approx((row["before_se"] ** 2 + row["after_se"] ** 2) ** 0.5)
        assert row["se_paired"] > 0.0
    assert pair["shift"]["direction"]  # shift() named a direction or "within-noise"


def test_bad_pair_is_refused(noise_script):
    with pytest.raises(SystemExit):
        noise_script["main"](["no-separator"])


def test_recipes_uncertainty_flag_reaches_the_callback(monkeypatch):
    monkeypatch.syspath_prepend(str(RECIPES))
    common = runpy.run_path(str(RECIPES / "_common.py"), run_name="recipes_common")
    parser = common["build_parser"]("doc", output="out", max_steps=1, lr=1e-3, batch_size=1)
    args = parser.parse_args(["--uncertainty", "jackknife", "--uncertainty-groups", "10", "--output", "x"])
    callback = common["geometry_callback"](args, from_pretrained=True)
    assert callback.tracker.config.uncertainty == "jackknife"
    assert callback.tracker.config.uncertainty_groups == 10
    plain = common["geometry_callback"](parser.parse_args(["--output", "x"]), from_pretrained=True)
    assert plain.tracker.config.uncertainty is None
    with pytest.raises(SystemExit, match="needs --uncertainty jackknife"):
        common["uncertainty_options"](argparse.Namespace(uncertainty="none", uncertainty_groups=5))
