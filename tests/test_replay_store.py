"""The replay results store: units, resume, truncation, NaN, concurrency, exports."""

from __future__ import annotations

import csv
import json
import math
import multiprocessing as mp
import os
import warnings

import numpy as np
import pytest

from geomtrace.replay.store import (
    ResultsStore,
    atomic_write_bytes,
    atomic_write_text,
    export_csv,
    export_seed_npy,
    import_seed_npy,
    safe_key,
)


def _unit(key: str, step: int | None, layers=(0, 1), **extra) -> list[dict]:
    return [
        {
            "key": key,
            "step": step,
            "revision": key,
            "tokens": None,
            "stage": None,
            "layer": layer,
            "rankme": 10.0 + layer + (step or 0) / 1000,
            "alpha": 0.5 + layer,
            "r2": 0.99,
            "n_samples": 256,
            "dim": 64,
            "model": "org/tiny",
            "probe": "default",
            "probe_fingerprint": "fp1",
            "seconds": 0.1,
            **extra,
        }
        for layer in layers
    ]


def _spectra(layers=(0, 1), seed=0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {layer: np.sort(rng.random(64))[::-1] for layer in layers}


def test_append_done_keys_records_spectra(tmp_path):
    store = ResultsStore(tmp_path / "out")
    assert store.done_keys() == set() and store.records() == []
    spec = _spectra(seed=1)
    store.append(_unit("step0", 0), spec)
    store.append(_unit("step1000", 1000), _spectra(seed=2))
    assert store.done_keys() == {"step0", "step1000"}
    recs = store.records()
    assert len(recs) == 4
    assert recs[0]["key"] == "step0" and recs[0]["layer"] == 0 and recs[0]["n_layers"] == 2
    np.testing.assert_array_equal(store.spectrum("step0", 1), spec[1])
    assert store.spectrum("step0", 7) is None
    assert store.spectrum("nope", 0) is None
    assert store.done_keys(probe_fingerprint="fp1") == {"step0", "step1000"}
    assert store.done_keys(probe_fingerprint="other") == set()
    # every line is strict JSON terminated by '\n'
    text = store.records_path.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 4
    # a re-measured checkpoint replaces the old records (dedupe) but raw keeps both
    store.append(_unit("step0", 0, rankme_note="again"))
    assert len(store.records()) == 4 and len(store.records(dedupe=False)) == 6
    assert store.records()[-1]["rankme_note"] == "again"


def test_append_validates(tmp_path):
    store = ResultsStore(tmp_path)
    with pytest.raises(ValueError):
        store.append([])
    with pytest.raises(ValueError):
        store.append(_unit("a", 1) + _unit("b", 2))
    with pytest.raises(ValueError):
        store.append([{"key": "a"}])


def test_truncated_last_line(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(_unit("step0", 0, layers=(0, 1, 2)))
    # a process killed mid-write: the first line of its unit and half of the second
    lines = [json.dumps(r) for r in _unit("step1000", 1000, layers=(0, 1, 2))]
    partial = (json.dumps({**json.loads(lines[0]), "n_layers": 3}) + "\n" + lines[1][:40]).encode()
    with open(store.records_path, "ab") as fh:
        fh.write(partial)
    assert store.done_keys() == {"step0"}
    assert len(store.records()) == 4  # 3 + the one complete line of the cut unit
    # the next append starts on a fresh line and the cut checkpoint can be redone
    store.append(_unit("step2000", 2000, layers=(0, 1, 2)))
    store.append(_unit("step1000", 1000, layers=(0, 1, 2)))
    assert store.done_keys() == {"step0", "step1000", "step2000"}
    assert len(store.records()) == 9
    bad = [ln for ln in store.records_path.read_text().splitlines() if ln.strip()]
    assert sum(1 for ln in bad if not ln.startswith("{") or not ln.endswith("}")) == 1


def test_failures_are_not_done(tmp_path):
    store = ResultsStore(tmp_path)
    store.record_failure("step5", "OSError: revision not found", model="org/tiny", attempt=1, seconds=float("nan"))
    store.record_failure("step6", "CUDA OOM")
    fails = store.failures()
    assert [f["key"] for f in fails] == ["step5", "step6"]
    assert fails[0]["model"] == "org/tiny" and fails[0]["seconds"] is None and "time" in fails[0]
    assert store.done_keys() == set()


def test_nan_round_trip_strict_json(tmp_path):
    store = ResultsStore(tmp_path)
    rec = _unit("step0", 0, layers=(0,))
    rec[0].update(
        alpha=float("nan"), r2=np.float32("nan"), rankme=np.float64(3.5), dim=np.int64(64), extra_inf=float("inf")
    )
    store.append(rec)
    raw = store.records_path.read_text()

    def reject(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    parsed = json.loads(raw.splitlines()[0], parse_constant=reject)
    assert parsed["alpha"] is None and parsed["r2"] is None and parsed["extra_inf"] is None
    (back,) = store.records()
    assert math.isnan(back["alpha"]) and math.isnan(back["r2"])
    assert back["rankme"] == 3.5 and back["dim"] == 64 and isinstance(back["dim"], int)


def _writer(out_dir: str, worker: int, n: int) -> None:
    store = ResultsStore(out_dir)
    for i in range(n):
        store.append(_unit(f"w{worker}-{i}", i, layers=(0, 1, 2), pad="x" * 3000))


def test_concurrent_appends_two_processes(tmp_path):
    try:
        ctx = mp.get_context("fork")
    except ValueError:  # pragma: no cover - no fork on this platform
        ctx = mp.get_context("spawn")
    n = 150
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, n)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = ResultsStore(tmp_path).records_path.read_text().splitlines()
    assert len(lines) == 2 * n * 3
    for ln in lines:
        json.loads(ln)
    store = ResultsStore(tmp_path)
    assert len(store.done_keys()) == 2 * n
    # units are contiguous: the 3 layers of a checkpoint are never interleaved
    keys = [json.loads(ln)["key"] for ln in lines]
    for j in range(0, len(keys), 3):
        assert keys[j] == keys[j + 1] == keys[j + 2]


def test_seed_npy_round_trip(tmp_path):
    store = ResultsStore(tmp_path / "out")
    specs = {}
    for step in (0, 512, 1000):
        specs[step] = _spectra(seed=step)
        store.append(_unit(f"step{step}", step), specs[step])
    path = tmp_path / "results_pythia-tiny.npy"
    export_seed_npy(store, path)
    raw = np.load(path, allow_pickle=True).item()
    assert sorted(raw) == [0, 512, 1000]
    assert set(raw[0]) >= {"rankme", "alpha", "eigenspectrum", "r2"}
    assert raw[512]["alpha"] == 1.5  # default layer: the highest (1)
    np.testing.assert_array_equal(raw[1000]["eigenspectrum"], specs[1000][1])

    back = import_seed_npy(path)
    assert [r["step"] for r in back] == [0, 512, 1000]
    assert [r["key"] for r in back] == ["step0", "step512", "step1000"]
    assert back[1]["rankme"] == pytest.approx(10.0 + 1 + 0.512)
    np.testing.assert_array_equal(back[0]["eigenspectrum"], specs[0][1])

    export_seed_npy(store.records(), tmp_path / "l0.npy", layer=0, spectra=False)
    l0 = np.load(tmp_path / "l0.npy", allow_pickle=True).item()
    assert l0[0]["alpha"] == 0.5 and "eigenspectrum" not in l0[0]
    with pytest.raises(ValueError):
        export_seed_npy(store, tmp_path / "x.npy", layer=5)


def test_seed_npy_paper_style_file(tmp_path):
    # a file as written by the paper's scripts (no 'checkpoint', extra fields, no rankme)
    p = tmp_path / "paper.npy"
    np.save(
        p,
        {
            8: {"alpha": 0.7, "r2": 0.9, "eigenspectrum": np.arange(5.0)[::-1], "r2_100": 0.8, "ypred": np.ones(3)},
            0: {"alpha": 0.5, "r2": 0.95, "eigenspectrum": np.arange(4.0)},
        },
        allow_pickle=True,
    )
    back = import_seed_npy(p)
    assert [r["step"] for r in back] == [0, 8]
    assert math.isnan(back[0]["rankme"]) and back[1]["r2_100"] == 0.8 and "ypred" not in back[1]


def test_seed_npy_repeated_steps_use_keys(tmp_path):
    recs = _unit("stage1-step1000-tokens5B", 1000, layers=(0,)) + _unit(
        "stage2-ingredient1-step1000-tokens5B", 1000, layers=(0,)
    )
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        export_seed_npy(recs, tmp_path / "o.npy", spectra=False)
    assert any("repeated" in str(x.message) for x in w)
    data = np.load(tmp_path / "o.npy", allow_pickle=True).item()
    assert set(data) == {"stage1-step1000-tokens5B", "stage2-ingredient1-step1000-tokens5B"}
    back = import_seed_npy(tmp_path / "o.npy")
    assert {r["key"] for r in back} == set(data) and all(r["step"] == 1000 for r in back)


def test_export_csv(tmp_path):
    store = ResultsStore(tmp_path)
    rec = _unit("step0", 0, extra_metric=1.25)
    rec[0]["alpha"] = float("nan")
    store.append(rec)
    path = export_csv(store, tmp_path / "r.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    assert rows[0]["key"] == "step0" and rows[0]["alpha"] == "nan" and rows[0]["tokens"] == ""
    assert rows[1]["extra_metric"] == "1.25" and "n_layers" in rows[0]
    assert list(rows[0])[:3] == ["key", "step", "revision"]


def test_atomic_writes_and_safe_keys(tmp_path):
    p = atomic_write_text(tmp_path / "sub" / "a.txt", "one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert os.listdir(p.parent) == ["a.txt"]  # no tmp files left behind
    assert safe_key("step1000") == "step1000"
    a, b = safe_key("runs/a:b"), safe_key("runs_a_b")
    assert "/" not in a and ":" not in a and a != b
    store = ResultsStore(tmp_path / "s")
    key = "lightning_logs/version_0/checkpoints/epoch=0-step=7.ckpt"
    store.append(_unit(key, 7, layers=(3,)), {3: np.arange(4.0)})
    np.testing.assert_array_equal(store.spectrum(key, 3), np.arange(4.0))
    assert store.spectrum_path(key, 3).parent == store.spectra_dir
