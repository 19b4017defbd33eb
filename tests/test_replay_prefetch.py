"""Replay loads checkpoint k + 1 in the background while k is measured (issue 12 item 5)."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

import geomtrace.replay.prefetch as prefetch
from fakehub import build_tiny_model, tiny_tokenizer
from geomtrace.replay import ProbeOptions, ResultsStore, local_checkpoints, run_replay
from geomtrace.replay.sources import Checkpoint


class _Model:
    """Stands in for a loaded model; tracks how many are alive."""

    def to(self, device):
        return self


def _ckpts(n: int) -> list[Checkpoint]:
    return [Checkpoint(i, None, f"/x/step{i}", "/x", None, None, "hf_folder") for i in range(n)]


@pytest.fixture
def fake_load(monkeypatch):
    """A load_checkpoint_model that records which thread loaded what and keeps weakrefs."""
    calls: list[tuple[str, str]] = []
    alive: list[weakref.ref] = []

    def load(ckpt, **kwargs):
        calls.append((ckpt.key, threading.current_thread().name))
        if ckpt.key == "step2":
            raise OSError("disk on fire")
        model = _Model()
        alive.append(weakref.ref(model))
        return model, None

    monkeypatch.setattr(prefetch, "load_checkpoint_model", load)
    monkeypatch.setattr(prefetch, "fetch_checkpoint", lambda ckpt, **kw: calls.append((ckpt.key, "fetch")))
    return calls, alive


def _describe(err: BaseException) -> str:
    return f"load failed: {type(err).__name__}: {err}"


def test_next_checkpoint_loads_in_the_background_one_ahead(fake_load):
    calls, alive = fake_load
    ckpts = _ckpts(5)
    most_alive = 0
    # an accelerator device: whole loads run in the background (the fake model's .to() is a no-op)
    with prefetch.CheckpointLoader(
        ckpts, {"dtype": "float32", "device": "cuda"}, prefetch=True, describe_error=_describe
    ) as loader:
        assert loader.build_in_background
        for index, ckpt in enumerate(ckpts):
            loaded = loader.take(index)
            model, error = loaded.model, loaded.error
            loaded = None
            # while k is "measured", k + 1 is loading: never more than one extra model
            assert list(loader._pending) == ([index + 1] if index + 1 < len(ckpts) else [])
            if index + 1 < len(ckpts):
                loader._pending[index + 1].result()  # let it finish: the worst case for memory
            gc.collect()
            most_alive = max(most_alive, sum(r() is not None for r in alive))
            if ckpt.key == "step2":  # a failed prefetch is a failed checkpoint, with the usual message
                assert model is None and error == "load failed: OSError: disk on fire"
            else:
                assert isinstance(model, _Model) and error is None
            model = None
    assert most_alive == 2
    threads = dict(calls)
    assert threads["step0"] == "MainThread"  # nothing to overlap with yet
    assert all(threads[f"step{i}"].startswith("geomtrace-prefetch") for i in range(1, 5))


def test_no_prefetch_loads_everything_in_the_loop(fake_load):
    calls, _ = fake_load
    with prefetch.CheckpointLoader(_ckpts(3), {"dtype": "float32"}, prefetch=False, describe_error=_describe) as loader:
        for index in range(3):
            loader.take(index)
            assert not loader._pending
    assert {thread for _, thread in calls} == {"MainThread"}


@pytest.mark.parametrize(
    "load",
    [
        {"dtype": "bf16", "device": "cuda"},
        {"dtype": "auto", "device": "cuda"},
        {"dtype": "float32", "device": "cuda", "device_map": "auto"},
        {"dtype": "float32", "device": "cpu"},
        {"dtype": "float32"},
    ],
)
def test_other_settings_only_fetch_in_the_background(fake_load, load):
    # transformers builds models under a process-wide default dtype: only a build in the
    # default dtype may run beside a measurement; a CPU measurement uses every core, so a
    # build beside it only competes. Otherwise the background only fetches.
    calls, _ = fake_load
    with prefetch.CheckpointLoader(_ckpts(3), load, prefetch=True, describe_error=_describe) as loader:
        assert not loader.build_in_background
        for index in range(2):
            loader.take(index)
    builds = [(key, thread) for key, thread in calls if thread != "fetch"]
    assert builds == [("step0", "MainThread"), ("step1", "MainThread")]
    assert ("step1", "fetch") in calls


@pytest.mark.parametrize("build_in_background", [False, True])
def test_prefetched_replay_equals_sequential(tmp_path, monkeypatch, build_in_background):
    # on the CPU the background only fetches; force whole background builds too (the GPU route)
    monkeypatch.setattr(prefetch, "background_build_is_safe", lambda load: build_in_background)
    root = tmp_path / "run"
    for i, step in enumerate((0, 10, 20)):
        build_tiny_model(seed=i).save_pretrained(root / f"checkpoint-{step}")
    tiny_tokenizer().save_pretrained(root)
    (root / "checkpoint-5").mkdir()
    (root / "checkpoint-5" / "config.json").write_text("{ broken")
    results = {}
    for mode in (False, True):
        out = tmp_path / f"prefetch-{mode}"
        summary = run_replay(
            local_checkpoints(root),
            out,
            probe_options=ProbeOptions(num_sequences=24, max_tokens=32),
            prefetch=mode,
            progress=False,
            verbose=False,
        )
        assert list(summary.failed) == ["checkpoint-5"] and "load failed" in summary.failed["checkpoint-5"]
        records = ResultsStore(out).records()
        results[mode] = [(r["key"], r["rankme"], r["alpha"]) for r in records]
        assert all(0 <= r["load_wait_seconds"] and 0 < r["load_seconds"] for r in records)
        failures = ResultsStore(out).failures()
        assert [f["key"] for f in failures] == ["checkpoint-5"]
    assert results[True] == results[False]  # identical, not just close
