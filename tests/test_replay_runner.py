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

from fakehub import build_tiny_model, make_fake_hub_model, tiny_config, tiny_tokenizer
from geomtrace.cli import main
from geomtrace.measure import MeasureConfig, measure_geometry
from geomtrace.replay import (
    ProbeOptions,
    ResultsStore,
    hub_checkpoints,
    load_checkpoint_model,
    local_checkpoints,
    run_replay,
)
from geomtrace.replay.runner import build_probes
from timeouts import SUBPROCESS_TIMEOUT

REPO = "EleutherAI/pythia-replay-fake"
REVS = ("step0", "step1", "step2", "step4", "step8", "step16")
OLMO = "allenai/OLMo-2-replay-fake"
OLMO_REVS = ("stage1-step0-tokens0B", "stage1-step1000-tokens4B", "stage1-step2000-tokens8B")
PROBES = ["--num-sequences", "24", "--max-tokens", "32"]
QUIET = ["--no-progress", "--quiet"]
FULL = [
    "replay",
    "--model",
    REPO,
    "--revisions",
    ",".join(REVS),
    "--layers",
    "all",
    "--tokens-per-step",
    "1000",
    *PROBES,
    *QUIET,
]
# Stops inside a phase (start-up, the loop, the exit handlers) and waits for the test's signal.
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
    info = json.loads((full_run / "run.json").read_text())
    assert info["provenance"]["n_probes"] == 24 and info["provenance"]["precision"] == "fp32"
    assert info["provenance"]["measure_config"]["layers"] == "all"
    assert info["provenance"]["probe_options"]["num_sequences"] == 24
    assert {r["precision"] for r in records} == {"fp32"} and {r["config_id"] for r in records} == {info["config_id"]}


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
    summary = run_replay(
        hub_checkpoints(REPO, list(REVS)),
        full_run,
        config=MeasureConfig(layers="all"),
        probe_options=ProbeOptions(num_sequences=24, max_tokens=32),
        progress=False,
        verbose=False,
    )
    assert summary.measured == [] and summary.skipped == list(REVS)


def test_rerun_with_other_options_refuses_and_keeps_the_output(hub, tmp_path, capsys):
    # A rerun that would measure differently into the same output measures nothing, says
    # what differs and leaves results and run.json as they were (issue 9 item 7).
    out = tmp_path / "out"
    args = ["replay", "--model", REPO, "--output", str(out), *PROBES, *QUIET]
    assert main([*args, "--revisions", "step0"]) == 0
    before = {name: (out / name).read_bytes() for name in ("run.json", "results.jsonl")}
    for change, named in [
        (["--num-sequences", "20"], "probe_fingerprint"),
        (["--max-components", "8"], "max_components"),
        (["--dtype", "bf16"], "dtype"),
        (["--autocast", "bf16"], "autocast"),
        (["--layers", "1"], "layers"),
    ]:
        capsys.readouterr()
        assert main([*args, "--revisions", "step0,step1", *change]) == 2, change
        err = capsys.readouterr().err
        assert named in err and "another --output" in err and len(err.strip().splitlines()) == 1, err
        assert {name: (out / name).read_bytes() for name in before} == before
    # options that only change speed continue the same output
    assert main([*args, "--revisions", "step0,step1", "--batch-size", "5"]) == 0
    assert ResultsStore(out).done_keys() == {"step0", "step1"}


def test_batch_size_does_not_change_values(hub, tmp_path):
    # Fit ranks 2..16: with N = 24 probes and d = 64 the default range 12..100 reaches the ~0
    # tail eigenvalues (rank <= N - 1, LayerNorm removes one direction), where round-off
    # differences between batchings blow up. d >= 128 and N > 100 avoid that in real use.
    results = {}
    for batch in ("1", "32"):
        out = tmp_path / batch
        assert (
            main(
                [
                    *FULL,
                    "--revisions",
                    "step2",
                    "--batch-size",
                    batch,
                    "--fit-range",
                    "2:16",
                    "--output",
                    str(out),
                    "--no-tensorboard",
                ]
            )
            == 0
        )
        results[batch] = values(out)
    assert all(math.isfinite(v[1]) for v in results["1"].values())
    assert_same(results["1"], results["32"], rel=1e-6)


def test_tensorboard_tags_at_checkpoint_steps(full_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(full_run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {
        "geometry/rankme",
        "geometry/alpha",
        "geometry/alpha_r2",
        "geometry/n_samples",
        "geometry/layer0/rankme",
        "geometry/layer1/alpha",
    }
    assert expected <= tags
    events = acc.Scalars("geometry/rankme")
    assert [e.step for e in events] == [0, 1, 2, 4, 8, 16]
    stored = values(full_run)
    for e, rev in zip(events, REVS):
        assert e.value == pytest.approx(stored[(rev, 2)][0], rel=1e-6)


class Worker:
    """tests/workers/replay_kill.py in a subprocess, stopped inside one phase (see its doc)."""

    def __init__(self, phase: str, tmp_path: Path, args: list[str], env: dict | None = None) -> None:
        self.marker = tmp_path / f"inside-{phase}"
        cmd = [sys.executable, str(WORKER), phase, str(self.marker), "--", *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )

    def wait_inside(self, marker: Path | None = None, timeout: float = 90) -> int:
        """Block until the worker is inside its phase; its pid."""
        marker = marker or self.marker
        deadline = time.monotonic() + timeout
        while not marker.is_file():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                out, err = self.proc.communicate()
                pytest.fail(f"the worker never got inside its phase (rc {self.proc.returncode}): {err[-3000:]}")
            time.sleep(0.02)
        return int(marker.read_text())

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
            pytest.fail(f"the worker did not exit: {err[-3000:]}")
        return self.proc.returncode, out, err


INTERRUPTED = "interrupted (rerun the same command to resume)"
TWO_REVS = [*FULL, "--revisions", "step0,step1", "--no-tensorboard"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_in_the_loop_exits_128_plus_signal_and_the_rerun_resumes(full_run, tmp_path, sig):
    # (This replaces a SIGKILL test: a killed process leaves the same files, whole appends.)
    out = tmp_path / "interrupted"
    worker = Worker("loop", tmp_path, [*TWO_REVS, "--output", str(out)])
    worker.wait_inside()  # step0 recorded, step1 loading
    worker.proc.send_signal(sig)
    rc, _, err = worker.finish()
    assert rc == 128 + sig and err.strip().splitlines()[-1] == f"geomtrace replay: {INTERRUPTED}", err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err
    assert ResultsStore(out).done_keys() == {"step0"}
    raw = (out / "results.jsonl").read_text()
    assert raw.endswith("\n") and all(json.loads(line) for line in raw.splitlines())  # whole lines only
    if sig == signal.SIGTERM:  # the rerun measures only what is missing, to the same values
        assert main([*TWO_REVS, "--output", str(out)]) == 0
        counts: dict[tuple[str, int], int] = {}
        for r in ResultsStore(out).records(dedupe=False):
            counts[(r["key"], r["layer"])] = counts.get((r["key"], r["layer"]), 0) + 1
        assert counts == {(rev, layer): 1 for rev in ("step0", "step1") for layer in (0, 1, 2)}
        full = {k: v for k, v in values(full_run).items() if k[0] in ("step0", "step1")}
        assert_same(values(out), full, rel=1e-7)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1], ids=["ctrl-c", "sigterm", "sigusr1"])
def test_a_signal_during_start_up_exits_128_plus_signal_in_one_line(tmp_path, sig):
    worker = Worker("startup", tmp_path, [*TWO_REVS, "--output", str(tmp_path / "out")])
    worker.wait_inside()  # inside `import torch`
    worker.proc.send_signal(sig)
    rc, _, err = worker.finish()
    assert rc == 128 + sig and err.strip() == f"geomtrace replay: {INTERRUPTED}"


def test_ctrl_c_in_the_exit_handlers_still_exits_130(hub, tmp_path):
    out = tmp_path / "done"
    worker = Worker("exit", tmp_path, [*TWO_REVS, "--revisions", "step0", "--output", str(out)])
    worker.wait_inside()  # the summary line is out, the interpreter is running its exit handlers
    worker.proc.send_signal(signal.SIGINT)
    (tmp_path / "inside-exit.release").touch()
    rc, _, err = worker.finish()
    assert rc == 130 and err.strip().splitlines()[-1] == f"geomtrace: {INTERRUPTED}", err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err
    assert ResultsStore(out).done_keys() == {"step0"}


def test_shards_together_give_the_full_set(full_run, tmp_path):
    out = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        assert main([*FULL, "--shard", shard, "--output", str(out), "--no-tensorboard"]) == 0
    assert_same(values(out), values(full_run))


def test_olmo2_stages_and_filters(hub, tmp_path):
    out = tmp_path / "olmo"
    rc = main(
        [
            "replay",
            "--model",
            OLMO,
            "--revisions",
            ",".join(OLMO_REVS),
            "--stage",
            "stage1",
            "--log-spaced",
            "2",
            "--output",
            str(out),
            "--tensorboard-spectra",
            *PROBES,
            *QUIET,
        ]
    )
    assert rc == 0
    records = ResultsStore(out).records()
    assert [(r["step"], r["tokens"], r["stage"]) for r in records] == [
        (0, 0, "stage1"),
        (2000, 8_000_000_000, "stage1"),
    ]
    assert all(r["dim"] == 64 and math.isfinite(r["rankme"]) for r in records)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Images("geometry/eigenspectrum")] == [0, 2000]


def test_local_folders_and_a_corrupt_checkpoint(local_dir, tmp_path, capsys, caplog):
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
    # the lines are INFO records of the logger geomtrace.replay, printed on stdout as before
    assert any(r.name == "geomtrace.replay" and "checkpoint-5: FAILED" in r.getMessage() for r in caplog.records)
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
        torch.save(
            {"state_dict": state, "hyper_parameters": hparams, "global_step": step}, ckpts / f"epoch=0-step={step}.ckpt"
        )
    (tmp_path / "mybuilder.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    rc = main(
        [
            "replay",
            "--checkpoints",
            str(ckpts),
            "--model-builder",
            "mybuilder:build",
            "--tokenizer",
            str(local_dir),
            "--output",
            str(out),
            *PROBES,
            *QUIET,
        ]
    )
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
    summary = run_replay(
        local_checkpoints(ckpts),
        tmp_path / "out",
        tokenizer=str(local_dir),
        probe_options=ProbeOptions(num_sequences=8),
        progress=False,
        verbose=False,
    )
    assert list(summary.failed) == ["epoch=0-step=1.ckpt"] and "model_builder" in summary.failed["epoch=0-step=1.ckpt"]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="torchrun needs POSIX")
def test_torchrun_two_ranks_equal_single_process(hub, tmp_path):
    # ~15 s: two processes each import torch + transformers. Fit ranks 2..16 for the reason
    # given in test_batch_size_does_not_change_values.
    args = [*FULL, "--revisions", "step0,step4", "--fit-range", "2:16", "--no-tensorboard"]
    assert main([*args, "--output", str(tmp_path / "single")]) == 0
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "geomtrace.cli",
    ]
    proc = subprocess.run(
        [*torchrun, *args, "--output", str(tmp_path / "ddp")],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(values(tmp_path / "ddp"), values(tmp_path / "single"), rel=1e-6)
    assert len(ResultsStore(tmp_path / "ddp").records(dedupe=False)) == 6  # only rank 0 wrote


# ----------------------------------------------------------------------------- issue 9: replay hardening


def test_missing_first_revision_is_a_failed_checkpoint(hub, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "replay",
            "--model",
            REPO,
            "--revisions",
            "step3,step0",
            "--output",
            str(out),
            *PROBES,
            *QUIET,
            "--no-tensorboard",
        ]
    )
    assert rc == 1  # not "no tokenizer": the tokenizer comes from the next checkpoint
    assert ResultsStore(out).done_keys() == {"step0"}
    (failure,) = ResultsStore(out).failures()
    assert failure["key"] == "step3" and "step3" in failure["error"]


def test_nonexistent_model_is_a_load_error(tmp_path, capsys):
    rc = main(
        [
            "replay",
            "--model",
            "nobody/no-such-model",
            "--revisions",
            "step0",
            "--output",
            str(tmp_path / "o"),
            *PROBES,
            *QUIET,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "could not load 'nobody/no-such-model' at revision 'step0'" in err and "no tokenizer" not in err


def test_layers_without_the_final_one_use_the_one_tag_rule(hub, tmp_path, capsys):
    # --layers 1 of a 2-layer model: the trajectory is layer 1, tagged geometry/layer1/<name>
    # (GeometryResult.trajectory_key), and plot / phases / export follow it (issue 9 item 12).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "inner"
    assert main([*FULL, "--layers", "0,1", "--output", str(out)]) == 0
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert "geometry/layer1/rankme" in tags and "geometry/rankme" not in tags
    assert main(["phases", str(out)]) == 0
    assert f"{len(REVS)} measurements, layer 1" in capsys.readouterr().out
    assert main(["plot", str(out), "-o", str(tmp_path / "p.png")]) == 0


# 24 probes: N - 1 = 23 >= 16 ranks can be non-zero, so alpha (ranks 12...) is defined;
# with 16 the fit would have 4 points and alpha would be NaN (round-off rule, concepts.md).
LIVE_CHAT = dict(chat_template=True, system_prompt="Be brief.", num_sequences=24, max_tokens=48)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, tokenizer):
    """A post-training-like run: checkpoints of a model with a chat template, measured "live"
    with chat probes in bf16 autocast, and its history JSON with the provenance record."""
    from geomtrace.tiny import build_tiny_model as build

    root = tmp_path_factory.mktemp("chat")
    tokenizer.save_pretrained(root / "run")
    probes = build_probes(tokenizer, ProbeOptions(**LIVE_CHAT))
    config = MeasureConfig(autocast="bf16")
    history, provenance = [], None
    for i, step in enumerate((10, 20)):
        model = build("gpt_neox", tokenizer=tokenizer, seed=i)
        model.save_pretrained(root / "run" / f"step{step}")
        result = measure_geometry(model, probes, config)
        history.append({"step": step, **result.scalars()})
        provenance = {**result.provenance(), "probe_options": ProbeOptions(**LIVE_CHAT).to_dict()}
    assert provenance["precision"] == "bf16"
    live = root / "geometry.json"
    live.write_text(json.dumps({"history": history, "provenance": provenance, "tokens_per_step": 1000}))
    return root, history


def test_like_replays_a_live_chat_run_exactly(chat_run, tmp_path, recwarn):
    root, history = chat_run
    out = tmp_path / "like"
    assert (
        main(
            [
                "replay",
                "--checkpoints",
                str(root / "run"),
                "--like",
                str(root / "geometry.json"),
                "--output",
                str(out),
                *QUIET,
                "--no-tensorboard",
            ]
        )
        == 0
    )
    records = ResultsStore(out).records()
    assert [r["rankme"] for r in records] == [row["geometry/rankme"] for row in history]  # identical
    assert all(math.isfinite(row["geometry/alpha"]) for row in history)
    assert [r["alpha"] for r in records] == [row["geometry/alpha"] for row in history]
    assert {r["precision"] for r in records} == {"bf16"}
    assert [r["tokens"] for r in records] == [10_000, 20_000]  # the live run's tokens_per_step
    assert not [w for w in recwarn if "differ" in str(w.message)]
    # The same with explicit options (issue 9 item 10: the CLI has the chat options).
    explicit = tmp_path / "explicit"
    assert (
        main(
            [
                "replay",
                "--checkpoints",
                str(root / "run"),
                "--chat-template",
                "--system-prompt",
                "Be brief.",
                "--num-sequences",
                "24",
                "--max-tokens",
                "48",
                "--autocast",
                "bf16",
                "--output",
                str(explicit),
                *QUIET,
                "--no-tensorboard",
            ]
        )
        == 0
    )
    assert values(explicit) == values(out)
    # A plain replay measures other probes in fp32: shown together, that is said.
    plain = tmp_path / "plain"
    assert (
        main(
            [
                "replay",
                "--checkpoints",
                str(root / "run"),
                "--output",
                str(plain),
                *PROBES,
                *QUIET,
                "--no-tensorboard",
                "--tokens-per-step",
                "1000",
            ]
        )
        == 0
    )
    with pytest.warns(UserWarning) as caught:
        assert (
            main(["plot", str(root / "geometry.json"), str(plain), "--x", "tokens", "-o", str(tmp_path / "p.png")]) == 0
        )
    said = " ".join(str(w.message) for w in caught)
    assert "different probe sets" in said and "different precisions" in said


def test_like_warns_when_the_probes_cannot_match(chat_run, tmp_path):
    root, _ = chat_run
    with pytest.warns(UserWarning, match="differs from the reference run"):
        assert (
            main(
                [
                    "replay",
                    "--checkpoints",
                    str(root / "run"),
                    "--like",
                    str(root / "geometry.json"),
                    "--num-sequences",
                    "20",
                    "--output",
                    str(tmp_path / "o"),
                    *QUIET,
                    "--no-tensorboard",
                ]
            )
            == 0
        )


def test_peft_adapter_run_replays_from_the_cli(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    build_tiny_model(seed=3).save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "run")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["query_key_value"]))
    model.save_pretrained(tmp_path / "run" / "checkpoint-5")
    out = tmp_path / "out"
    assert (
        main(
            [
                "replay",
                "--checkpoints",
                str(tmp_path / "run"),
                "--output",
                str(out),
                *PROBES,
                *QUIET,
                "--no-tensorboard",
            ]
        )
        == 0
    )
    (record,) = ResultsStore(out).records()
    assert record["kind"] == "peft_adapter" and record["step"] == 5
    direct = measure_geometry(model, build_probes(tiny_tokenizer(), ProbeOptions(num_sequences=24, max_tokens=32)))
    assert record["rankme"] == pytest.approx(direct.last.rankme, rel=1e-9)
