"""Revision presets say what they are: the paper's exact grids, the coarse one under its own
name, one declaration each, the help and docs derived from it, the grid used recorded."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest

from geomtrace.cli import main
from geomtrace.replay.hub import PYTHIA_PAPER_SUBSET, hub_checkpoints
from geomtrace.replay.naming import parse_revision
from geomtrace.revision_presets import (
    PYTHIA_COARSE_REVISIONS,
    PYTHIA_PAPER_REVISIONS,
    PYTHIA_REVISIONS,
    REVISION_PRESETS,
    olmo_paper_step,
    presets_help,
    presets_markdown,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _steps(revisions):
    return [parse_revision(r)[0] for r in revisions]


def test_pythia_paper_is_exactly_what_the_papers_script_runs():
    # compute_alpha_pythia.py: step_nums = [0,8,16,32,64,128,256,512] + list(np.arange(1000,143000+1,1000))
    script = [0, 8, 16, 32, 64, 128, 256, 512] + list(range(1000, 143000 + 1, 1000))
    assert _steps(PYTHIA_PAPER_REVISIONS) == script and len(script) == 151
    assert [c.revision for c in hub_checkpoints("EleutherAI/pythia-160m", "pythia-paper")] == PYTHIA_PAPER_REVISIONS
    assert PYTHIA_PAPER_SUBSET == PYTHIA_PAPER_REVISIONS  # the old constant's name: the paper's grid now


def test_the_coarse_grid_has_its_own_name():
    steps = _steps(PYTHIA_COARSE_REVISIONS)
    commented_out = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, *range(1000, 143001, 10000)]
    assert steps == sorted({*commented_out, 2000, 4000, 8000, 143000}) and len(steps) == 30
    assert [c.revision for c in hub_checkpoints("EleutherAI/pythia-160m", "pythia-coarse")] == PYTHIA_COARSE_REVISIONS
    assert set(PYTHIA_COARSE_REVISIONS) <= set(PYTHIA_REVISIONS) and len(PYTHIA_REVISIONS) == 154
    assert set(PYTHIA_PAPER_REVISIONS) <= set(PYTHIA_REVISIONS)


def test_every_preset_says_what_differs_from_the_paper():
    for preset in REVISION_PRESETS.values():
        assert preset.summary and preset.name
        assert preset.differs or preset.name == "pythia-paper", preset.name  # only the exact grid differs in nothing
        assert all(parse_revision(r)[0] is not None for r in preset.revisions), preset.name
    assert "pythia-coarse" in REVISION_PRESETS["pythia-paper"].changed  # the changed meaning is announced


def test_olmo_paper_grid_lists_the_repo(monkeypatch):
    import huggingface_hub

    # OLMo-1 branch names: stepN-tokensMB (the -hf repos carry the same names).
    steps = [0, 20, 1000, 9990, 10000, 10010, 15000, 20000, 443000, 738020]
    names = ["main"] + [f"step{s}-tokens{s * 4}B" for s in steps]
    refs = types.SimpleNamespace(branches=[types.SimpleNamespace(name=n) for n in names])
    monkeypatch.setattr(huggingface_hub, "list_repo_refs", lambda repo_id, **kw: refs)
    got = [c.step for c in hub_checkpoints("allenai/OLMo-1B-hf", "olmo-paper")]
    assert got == [0, 20, 1000, 9990, 10000, 20000]  # every step <= 10000, then every multiple of 10000
    assert not olmo_paper_step(None) and olmo_paper_step(440000) and not olmo_paper_step(10010)
    assert [c.step for c in hub_checkpoints("allenai/OLMo-1B-hf", "all")] == steps


def test_revisions_help_and_docs_are_derived_from_the_presets(capsys):
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    for preset in REVISION_PRESETS.values():
        assert " ".join(f"{preset.name} ({preset.size}): {preset.summary}".split()) in helptext, preset.name
    assert presets_help().count(";") == len(REVISION_PRESETS) - 1
    page = (DOCS / "replay.md").read_text(encoding="utf-8")
    assert presets_markdown() in page, "paste revision_presets.presets_markdown() in docs/replay.md's Presets"


def test_a_changed_name_is_announced_and_the_grid_recorded(tmp_path, caplog, monkeypatch):
    import geomtrace.replay.runner as runner

    seen = {}

    def fake_run_replay(ckpts, output, **kwargs):
        seen["revisions"] = [c.revision for c in ckpts]
        return types.SimpleNamespace(failed=[], __str__=lambda self: "ok")

    monkeypatch.setattr(runner, "run_replay", fake_run_replay)
    out = tmp_path / "out"
    argv = ["replay", "--model", "EleutherAI/pythia-160m", "--revisions", "pythia-paper", "--quiet", "-o", str(out)]
    with caplog.at_level("INFO", logger="geomtrace"):
        assert main([*argv, "--step-range", "0:512"]) == 0
    assert seen["revisions"] == ["step0", "step8", "step16", "step32", "step64", "step128", "step256", "step512"]
    assert any("pythia-coarse" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    lines = [json.loads(line) for line in (out / "revision_presets.jsonl").read_text().splitlines()]
    assert lines[-1]["preset"] == "pythia-paper" and lines[-1]["revisions"] == PYTHIA_PAPER_REVISIONS
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", lines[-1]["geomtrace"])
    # An explicit list names no preset: nothing recorded, nothing announced.
    caplog.clear()
    assert main(["replay", "--model", "EleutherAI/pythia-160m", "--revisions", "step0", "--quiet", "-o", str(out)]) == 0
    assert len((out / "revision_presets.jsonl").read_text().splitlines()) == 1
    assert not any("pythia-coarse" in r.getMessage() for r in caplog.records)


def test_the_olmo1_paper_recipe_is_the_papers_set_up(capsys):
    from geomtrace.cli import load_options, measure_config, parse_args, probe_options

    path = str(RECIPES / "replay_olmo1_paper.yaml")
    args = parse_args(["replay", "--config", path])
    assert (args.model, args.revisions) == ("allenai/OLMo-1B", "olmo-paper")
    load = load_options(args)
    assert (load.dtype, load.trust_remote_code) == ("fp16", True)
    probes = probe_options(args)
    assert (probes.min_tokens, probes.max_tokens, probes.source) == (33, 512, "HuggingFaceFW/fineweb")
    assert measure_config(args).layers == "last"
    assert main(["replay", "--config", path, "--dry-run"]) == 2  # listing the branches needs the hub
    assert "--revisions-file" in capsys.readouterr().err
    for recipe in ("replay_olmo.yaml", "replay_pythia.yaml", "replay_olmo1_paper.yaml"):
        assert (
            "differs from the paper" in (RECIPES / recipe).read_text()
            or "NOT the paper" in (RECIPES / recipe).read_text()
        ), recipe
