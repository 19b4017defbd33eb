"""The checkpoint-naming registry: every entry is honoured by discovery, --step-range and the seed import.

Parametrized over ``NAMING_SCHEMES``, so a new entry is tested by these tests without editing them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from geomtrace.cli import UsageError, main, parse_args, replay_checkpoints
from geomtrace.replay.naming import FOLDER_KINDS, NAMING_SCHEMES, CheckpointKind, NamingScheme, parse_name
from geomtrace.replay.sources import Checkpoint, filter_checkpoints, hub_checkpoints, local_checkpoints
from geomtrace.replay.store import import_seed_npy

REPO = "org/model"
CASES = [(scheme, kind) for scheme in NAMING_SCHEMES for kind in scheme.kinds]


def _case_id(case: tuple[NamingScheme, CheckpointKind]) -> str:
    return f"{case[0].name}-{case[1].value}"


def _checkpoints_of(scheme: NamingScheme, kind: CheckpointKind, tmp_path) -> tuple[list[str], list[Checkpoint]]:
    """``(replay arguments, discovered checkpoints)`` for one checkpoint named ``scheme.example``."""
    if kind is CheckpointKind.HUB:
        return ["--model", REPO, "--revisions", scheme.example], hub_checkpoints(REPO, [scheme.example])
    run = tmp_path / "run"
    path = run / scheme.example
    if kind in FOLDER_KINDS:
        path.mkdir(parents=True)
        marker = "config.json" if kind is CheckpointKind.HF_FOLDER else "adapter_config.json"
        (path / marker).write_text(json.dumps({"base_model_name_or_path": "base"}))
    else:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not read by discovery")
    return ["--checkpoints", str(run)], local_checkpoints(run)


def test_the_registry_is_well_formed():
    names = [s.name for s in NAMING_SCHEMES]
    assert len(names) == len(set(names))
    assert all(s.kinds and all(isinstance(k, CheckpointKind) for k in s.kinds) for s in NAMING_SCHEMES)
    assert {k for s in NAMING_SCHEMES for k in s.kinds} == set(CheckpointKind)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_each_example_is_read_by_its_own_entry(case):
    scheme, kind = case
    parsed = parse_name(scheme.example, kind)
    assert parsed is not None and parsed.scheme is scheme  # no earlier entry shadows it
    assert parse_name(scheme.example) == parsed  # the seed import's kind-free lookup agrees


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_every_entry_is_honoured_by_discovery_and_step_range(case, tmp_path, capsys):
    scheme, kind = case
    expected = scheme.match(scheme.example)
    assert expected is not None
    source, found = _checkpoints_of(scheme, kind, tmp_path)
    assert [(c.kind, c.step, c.stage) for c in found] == [(kind, expected.step, expected.stage)]
    if kind is CheckpointKind.HUB:
        assert found[0].tokens == expected.tokens

    if expected.step is not None:
        step = expected.step
        kept, total = replay_checkpoints(parse_args(["replay", *source, "--step-range", f"{step}:{step}"]))
        assert [c.key for c in kept] == [found[0].key] and total == 1
        assert filter_checkpoints(found, log_spaced=2) == found
        with pytest.raises(UsageError, match="no checkpoints left"):
            replay_checkpoints(parse_args(["replay", *source, "--step-range", f"{step + 1}:"]))
        assert "no step" not in capsys.readouterr().err
    else:  # no step to select by: left out, and said so (never silently)
        with pytest.raises(UsageError, match="no checkpoints left"):
            replay_checkpoints(parse_args(["replay", *source, "--step-range", "0:"]))
        err = capsys.readouterr().err
        assert found[0].key in err and "gives no step" in err
        left_out: list[str] = []
        assert filter_checkpoints(found, step_range="0:", left_out=left_out) == []
        assert len(left_out) == 1


@pytest.mark.parametrize("scheme", NAMING_SCHEMES, ids=lambda s: s.name)
def test_every_entry_is_honoured_by_the_seed_import(scheme, tmp_path):
    expected = scheme.match(scheme.example)
    assert expected is not None
    keys = [scheme.example]
    if CheckpointKind.HUB not in scheme.kinds:  # local checkpoint keys are paths under the run folder
        keys.append(f"lightning_logs/version_0/{scheme.example}")
    for key in keys:
        path = tmp_path / "seed.npy"
        np.save(path, {key: {"alpha": 0.5, "rankme": 3.0}}, allow_pickle=True)
        (rec,) = import_seed_npy(path)
        assert (rec["key"], rec["step"], rec["alpha"]) == (key, expected.step, 0.5)
        np.save(path, {key: {"alpha": 0.5, "checkpoint": key}}, allow_pickle=True)
        assert import_seed_npy(path)[0]["step"] == expected.step
    np.save(path, {7: {"alpha": 0.5, "checkpoint": scheme.example}}, allow_pickle=True)
    assert import_seed_npy(path)[0]["step"] == 7  # a step the file gives wins over the name


def test_last_ckpt_beside_others_is_reported_not_dropped_silently(tmp_path, capsys):
    ck = tmp_path / "run" / "checkpoints"
    ck.mkdir(parents=True)
    for name in ("epoch=0-step=10.ckpt", "epoch=1-step=20.ckpt", "last.ckpt"):
        (ck / name).write_bytes(b"x")
    skipped: list[str] = []
    found = local_checkpoints(tmp_path / "run", skipped=skipped)
    assert [c.step for c in found] == [10, 20]
    assert len(skipped) == 1 and "last.ckpt" in skipped[0] and "save_last" in skipped[0]
    # --dry-run lists it with the checkpoints
    assert main(["replay", "--checkpoints", str(tmp_path / "run"), "-o", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "last.ckpt" in out and "epoch=1-step=20.ckpt" in out
    # alone, it is the checkpoint (without a step)
    (only,) = local_checkpoints(ck / "last.ckpt")
    assert only.step is None and only.kind == "lightning_ckpt"


def test_kind_is_an_enum_that_reads_and_writes_as_its_value():
    ck = Checkpoint(5, None, "/x/step5", "/x", None, None, "hf_folder")
    assert ck.kind is CheckpointKind.HF_FOLDER and ck.kind == "hf_folder"
    assert f"{ck.kind}" == str(ck.kind) == "hf_folder" and json.dumps(ck.kind) == '"hf_folder"'
    with pytest.raises(ValueError, match="unknown checkpoint kind 'folder'"):
        Checkpoint(5, None, "/x/step5", "/x", None, None, "folder")
