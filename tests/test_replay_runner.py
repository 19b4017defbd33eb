"""Replay end to end, offline: fake hub revisions, local folders, Lightning files, resume, shards."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for `fakehub` under any import mode

from fakehub import build_tiny_model, make_fake_hub_model, tiny_config, tiny_tokenizer  # noqa: E402

from geomtrace.cli import main  # noqa: E402
from geomtrace.measure import MeasureConfig, measure_geometry  # noqa: E402
from geomtrace.replay import (  # noqa: E402
    ProbeOptions,
    ResultsStore,
    hub_checkpoints,
    load_checkpoint_model,
    local_checkpoints,
    run_replay,
)
from geomtrace.replay.runner import build_probes  # noqa: E402

REPO = "EleutherAI/pythia-replay-fake"
REVS = ("step0", "step1", "step2", "step4", "step8", "step16")
OLMO = "allenai/OLMo-2-replay-fake"
OLMO_REVS = ("stage1-step0-tokens0B", "stage1-step1000-tokens4B", "stage1-step2000-tokens8B")
PROBES = ["--num-sequences", "24", "--max-tokens", "32"]
QUIET = ["--no-progress", "--quiet"]
FULL = ["replay", "--model", REPO, "--revisions", ",".join(REVS), "--layers", "all",
        "--tokens-per-step", "1000", *PROBES, *QUIET]
WORKER = Path(__file__).parent / "workers" / "replay_kill.py"


def values(out: Path) -> dict[tuple[str, int], tuple[float, float, float]]:
    return {(r["key"], r["layer"]): (r["rankme"], r["alpha"], r["r2"]) for r in ResultsStore(out).records()}


def assert_same(a: dict, b: dict, rel: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=rel, nan_ok=True), k


@pytest.fixture(scope="module")
def hub() -> str:
    make_fake_hub_model(os.environ["HF_HOME"], REPO, REVS)
    make_fake_hub_model(os.environ["HF_HOME"], OLMO, OLMO_REVS, arch="olmo2")
    return REPO


@pytest.fixture(scope="module")
def full_run(hub, tmp_path_factory) -> Path:
    """The uninterrupted reference replay of all six revisions, every layer."""
    out = tmp_path_factory.mktemp("full")
    assert main([*FULL, "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory) -> Path:
    """checkpoint-N folders from save_pretrained; the tokenizer at the run root (HF Trainer)."""
    root = tmp_path_factory.mktemp("local")
    for i, step in enumerate((0, 10, 20)):
        build_tiny_model(seed=i).save_pretrained(root / f"checkpoint-{step}")
    tiny_tokenizer().save_pretrained(root)
    return root


def test_hub_replay_records(full_run):
    records = ResultsStore(full_run).records()
    assert len(records) == len(REVS) * 3  # layers 0 (embeddings), 1, 2
    last = [r for r in records if r["layer"] == 2]
    assert [r["step"] for r in last] == [0, 1, 2, 4, 8, 16]
    assert [r["tokens"] for r in last] == [0, 1000, 2000, 4000, 8000, 16000]
    n_params = sum(p.numel() for p in build_tiny_model().parameters())
    for r in last:
        assert r["model"] == REPO and r["n_samples"] == 24 and r["dim"] == 64
        assert r["n_params"] == n_params and r["num_layers"] == 2
        assert math.isfinite(r["rankme"]) and math.isfinite(r["alpha"])
        assert ResultsStore(full_run).spectrum(r["key"], 2).shape == (24,)
    # the revisions really differ, so their values do too
    assert len({r["rankme"] for r in last}) == len(REVS)
    assert json.loads((full_run / "run.json").read_text())["n_probes"] == 24


def test_replay_equals_direct_measure(full_run):
    ckpt = hub_checkpoints(REPO, "step4")[0]
    model, tok = load_checkpoint_model(ckpt)
    probes = build_probes(tok, ProbeOptions(num_sequences=24, max_tokens=32))
    result = measure_geometry(model, probes, MeasureConfig(layers="all"))
    stored = values(full_run)
    for layer, g in result.layers.items():
        assert stored[("step4", layer)] == (g.rankme, g.alpha, g.r2)  # identical, not just close


def test_rerun_skips_done(full_run, capsys):
    before = (full_run / "results.jsonl").read_bytes()
    assert main([*FULL, "--output", str(full_run)]) == 0
    assert (full_run / "results.jsonl").read_bytes() == before
    summary = run_replay(hub_checkpoints(REPO, list(REVS)), full_run, config=MeasureConfig(layers="all"),
                         probe_options=ProbeOptions(num_sequences=24, max_tokens=32), progress=False, verbose=False)
    assert summary.measured == [] and summary.skipped == list(REVS)


def test_other_probe_set_is_measured_again(full_run, tmp_path):
    out = tmp_path / "out"
    args = ["replay", "--model", REPO, "--revisions", "step0", "--output", str(out), *QUIET]
    assert main([*args, *PROBES]) == 0
    assert main([*args, "--num-sequences", "20", "--max-tokens", "32"]) == 0
    fingerprints = {r["probe_fingerprint"] for r in ResultsStore(out).records(dedupe=False)}
    assert len(fingerprints) == 2


def test_batch_size_does_not_change_values(hub, tmp_path):
    # Fit ranks 2..16: with N = 24 probes and d = 64 the default range 12..100 reaches the ~0
    # tail eigenvalues (rank <= N - 1, LayerNorm removes one direction), where round-off
    # differences between batchings blow up. d >= 128 and N > 100 avoid that in real use.
    results = {}
    for batch in ("1", "32"):
        out = tmp_path / batch
        assert main([*FULL, "--revisions", "step2", "--batch-size", batch, "--fit-range", "2:16",
                     "--output", str(out), "--no-tensorboard"]) == 0
        results[batch] = values(out)
    assert all(math.isfinite(v[1]) for v in results["1"].values())
    assert_same(results["1"], results["32"], rel=1e-6)


def test_tensorboard_tags_at_checkpoint_steps(full_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(full_run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"geometry/rankme", "geometry/alpha", "geometry/alpha_r2", "geometry/n_samples",
                "geometry/layer0/rankme", "geometry/layer1/alpha"}
    assert expected <= tags
    events = acc.Scalars("geometry/rankme")
    assert [e.step for e in events] == [0, 1, 2, 4, 8, 16]
    stored = values(full_run)
    for e, rev in zip(events, REVS):
        assert e.value == pytest.approx(stored[(rev, 2)][0], rel=1e-6)


def test_resume_after_sigkill(full_run, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(WORKER), "0.5", "--", *FULL, "--output", str(out), "--no-tensorboard"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 90
    try:
        while not (results.is_file() and results.stat().st_size > 0):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the worker wrote no record in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    interrupted = ResultsStore(out).done_keys()
    assert 1 <= len(interrupted) < len(REVS)  # killed mid-run

    assert main([*FULL, "--output", str(out), "--no-tensorboard"]) == 0
    raw = ResultsStore(out).records(dedupe=False)
    counts: dict[tuple[str, int], int] = {}
    for r in raw:
        counts[(r["key"], r["layer"])] = counts.get((r["key"], r["layer"]), 0) + 1
    assert counts == {(rev, layer): 1 for rev in REVS for layer in (0, 1, 2)}
    assert ResultsStore(out).done_keys() == set(REVS)
    assert_same(values(out), values(full_run), rel=1e-7)


def test_shards_together_give_the_full_set(full_run, tmp_path):
    out = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        assert main([*FULL, "--shard", shard, "--output", str(out), "--no-tensorboard"]) == 0
    assert_same(values(out), values(full_run))


def test_olmo2_stages_and_filters(hub, tmp_path):
    out = tmp_path / "olmo"
    rc = main(["replay", "--model", OLMO, "--revisions", ",".join(OLMO_REVS), "--stage", "stage1",
               "--log-spaced", "2", "--output", str(out), "--tensorboard-spectra", *PROBES, *QUIET])
    assert rc == 0
    records = ResultsStore(out).records()
    assert [(r["step"], r["tokens"], r["stage"]) for r in records] == [
        (0, 0, "stage1"), (2000, 8_000_000_000, "stage1")]
    assert all(r["dim"] == 64 and math.isfinite(r["rankme"]) for r in records)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Images("geometry/eigenspectrum")] == [0, 2000]


def test_local_folders_and_a_corrupt_checkpoint(local_dir, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    for name in ("checkpoint-0", "checkpoint-10", "checkpoint-20"):
        os.symlink(local_dir / name, tmp_path / "run" / name)
    (tmp_path / "run" / "tokenizer.json").symlink_to(local_dir / "tokenizer.json")
    (tmp_path / "run" / "tokenizer_config.json").symlink_to(local_dir / "tokenizer_config.json")
    broken = tmp_path / "run" / "checkpoint-5"
    broken.mkdir()
    (broken / "config.json").write_text("{ this is not json")
    out = tmp_path / "out"
    rc = main(["replay", "--checkpoints", str(tmp_path / "run"), "--output", str(out), *PROBES, "--no-progress"])
    assert rc == 1  # some checkpoints failed, the others ran
    assert "checkpoint-5: FAILED" in capsys.readouterr().out
    records = ResultsStore(out).records()
    assert [r["key"] for r in records] == ["checkpoint-0", "checkpoint-10", "checkpoint-20"]
    assert [r["step"] for r in records] == [0, 10, 20]
    failures = ResultsStore(out).failures()
    assert [f["key"] for f in failures] == ["checkpoint-5"] and "load failed" in failures[0]["error"]

    model = build_tiny_model(seed=1)  # what checkpoint-10 holds
    probes = build_probes(tiny_tokenizer(), ProbeOptions(num_sequences=24, max_tokens=32))
    direct = measure_geometry(model, probes).last
    assert records[1]["rankme"] == pytest.approx(direct.rankme, rel=1e-9)
    # the tokenizer comes from the run root, not an empty one built from config.json
    _, tok = load_checkpoint_model(local_checkpoints(local_dir)[0])
    assert len(tok("some text to encode")["input_ids"]) > 2


BUILDER = """
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig


class Wrapper(torch.nn.Module):  # stands in for a LightningModule holding the HF model
    def __init__(self, config):
        super().__init__()
        self.model = AutoModelForCausalLM.from_config(config)


def build(hparams):
    return Wrapper(GPTNeoXConfig(**hparams["config"]))
"""


def test_lightning_ckpt_with_model_builder(local_dir, tmp_path, monkeypatch):
    model = build_tiny_model(seed=7)
    hparams = {"config": {k: v for k, v in tiny_config().to_dict().items() if not k.startswith("_")}}
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    ckpts = tmp_path / "lightning"
    ckpts.mkdir()
    for step in (5, 15):
        torch.save({"state_dict": state, "hyper_parameters": hparams, "global_step": step},
                   ckpts / f"epoch=0-step={step}.ckpt")
    (tmp_path / "mybuilder.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    rc = main(["replay", "--checkpoints", str(ckpts), "--model-builder", "mybuilder:build",
               "--tokenizer", str(local_dir), "--output", str(out), *PROBES, *QUIET])
    assert rc == 0
    records = ResultsStore(out).records()
    assert [r["step"] for r in records] == [5, 15]
    probes = build_probes(tiny_tokenizer(), ProbeOptions(num_sequences=24, max_tokens=32))
    direct = measure_geometry(model, probes).last
    assert records[0]["rankme"] == direct.rankme and records[0]["alpha"] == direct.alpha


def test_lightning_ckpt_without_builder_is_recorded(local_dir, tmp_path):
    ckpts = tmp_path / "lightning"
    ckpts.mkdir()
    torch.save({"state_dict": {}}, ckpts / "epoch=0-step=1.ckpt")
    summary = run_replay(local_checkpoints(ckpts), tmp_path / "out", tokenizer=str(local_dir),
                         probe_options=ProbeOptions(num_sequences=8), progress=False, verbose=False)
    assert list(summary.failed) == ["epoch=0-step=1.ckpt"] and "model_builder" in summary.failed["epoch=0-step=1.ckpt"]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs POSIX")
def test_torchrun_two_ranks_equal_single_process(hub, tmp_path):
    # ~15 s: two processes each import torch + transformers. Fit ranks 2..16 for the reason
    # given in test_batch_size_does_not_change_values.
    args = [*FULL, "--revisions", "step0,step4", "--fit-range", "2:16", "--no-tensorboard"]
    assert main([*args, "--output", str(tmp_path / "single")]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "geomtrace.cli"]
    proc = subprocess.run([*torchrun, *args, "--output", str(tmp_path / "ddp")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(values(tmp_path / "ddp"), values(tmp_path / "single"), rel=1e-6)
    assert len(ResultsStore(tmp_path / "ddp").records(dedupe=False)) == 6  # only rank 0 wrote
