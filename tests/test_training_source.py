"""``MeasureConfig(source="training")``: geometry of the training batches' own forward (issue 18).

The reference everywhere is the definition: ``Geometry`` on ``hidden_states[-1][:, -1]`` of the
very batches a window saw, with a frozen model (lr 0), so that the hook's rows and the reference's
rows come from the same weights. d = 128 and 128 rows per window keep alpha's fit range (ranks
12..100) clear of the round-off tail: the two routes agree to about 1e-7 here, and the tests ask
for 1e-4.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from geomtrace.features import FeatureSpec, extract_features
from geomtrace.metrics import Geometry
from geomtrace.options import MeasureConfig, Schedule
from geomtrace.tiny import build_tiny_model
from geomtrace.tracking import GeometryTracker
from geomtrace.training_features import TrainingFeatures
from timeouts import SUBPROCESS_TIMEOUT

HIDDEN = 128
BATCH = 32
SEQ = 16
VOCAB = 300
REL = 1e-4
WORKER = Path(__file__).parent / "workers" / "training_source_ddp.py"


def blocks(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (n, SEQ), generator=gen)


def tiny(**kwargs):
    return build_tiny_model("gpt_neox", vocab_size=VOCAB, hidden_size=HIDDEN, **kwargs)


def reference(model, batches, layer: int = -1) -> dict[str, float]:
    """The definition: Geometry on ``hidden_states[layer][:, -1]`` of ``batches``."""
    geometry = Geometry()
    with torch.no_grad():
        for ids in batches:
            geometry.update(model(input_ids=ids, output_hidden_states=True).hidden_states[layer][:, -1])
    out = geometry.compute()
    return {"rankme": float(out["rankme"]), "alpha": float(out["alpha"]), "n": int(geometry.n_samples)}


def train_forward(model, ids, **kwargs) -> None:
    model.train()
    loss = model(input_ids=ids, labels=ids, **kwargs).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def assert_same(layer_geometry, expected: dict[str, float]) -> None:
    assert layer_geometry.n_samples == expected["n"]
    assert layer_geometry.rankme == pytest.approx(expected["rankme"], rel=REL)
    assert layer_geometry.alpha == pytest.approx(expected["alpha"], rel=REL)


# ----------------------------------------------------------------------------- the hook itself
def test_one_window_equals_geometry_of_the_same_rows_and_starts_a_new_window():
    model = tiny()
    features = TrainingFeatures(MeasureConfig(layers="all"))
    features.attach(model)
    first, second = blocks(4 * BATCH, seed=1).split(BATCH), blocks(4 * BATCH, seed=2).split(BATCH)
    for ids in first:
        train_forward(model, ids)
    result = features.measure_window((1, 4))
    assert result is not None and result.window == {
        "steps": [1, 4],
        "rows": 4 * BATCH,
        "sequences": 4 * BATCH,
        "forwards": 4,
        "hook_seconds": result.window["hook_seconds"],
    }
    assert result.provenance()["source"] == "training" and result.provenance()["window"]["rows"] == 4 * BATCH
    for layer in (0, 1, 2):
        assert_same(result.layers[layer], reference(model, first, layer))
    for ids in second:  # the next window holds only its own rows
        train_forward(model, ids)
    assert_same(features.measure_window((5, 8)).last, reference(model, second))
    assert features.measure_window((9, 9)) is None  # nothing seen: no result
    features.detach()
    train_forward(model, first[0])
    assert features.forwards == 0  # detached: not counted


def test_eval_no_grad_and_paused_forwards_are_not_counted():
    model = tiny()
    features = TrainingFeatures(MeasureConfig())
    features.attach(model)
    batches = blocks(4 * BATCH).split(BATCH)
    for ids in batches:
        train_forward(model, ids)
        model.eval()
        with torch.no_grad():
            model(input_ids=ids[:5])  # validation
        model.train()
        with torch.no_grad():
            model(input_ids=ids[:7])  # generation / a reference model's pass: train mode, no grad
        with torch.inference_mode():
            model(input_ids=ids[:3])
        features.enabled = False
        model(input_ids=ids[:2]).logits.sum().backward()  # the tracker's own forwards
        features.enabled = True
    assert features.forwards == 4 and features.rows == 4 * BATCH
    assert_same(features.measure_window((1, 4)).last, reference(model, batches))


def test_a_failing_hook_never_stops_training(monkeypatch):
    import geomtrace.training_features as module
    from geomtrace._warnings import GeometryWarning

    def boom(*_args, **_kwargs):
        raise RuntimeError("boom")

    model = tiny()
    features = TrainingFeatures(MeasureConfig())
    features.attach(model)
    monkeypatch.setattr(module, "select_tokens", boom)
    with pytest.warns(GeometryWarning, match="boom"):
        for ids in blocks(2 * BATCH).split(BATCH):
            train_forward(model, ids)  # trains on
    assert features.forwards == 0 and features.measure_window((1, 2)) is None


@pytest.mark.parametrize("mode", ["hf-reentrant", "hf-non-reentrant", "checkpointed-base"])
def test_gradient_checkpointing_recompute_is_not_counted_twice(mode):
    from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

    model = tiny()
    if mode.startswith("hf"):
        kwargs = {"use_reentrant": mode == "hf-reentrant"}
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5.x
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    features = TrainingFeatures(MeasureConfig(layers="all"))
    features.attach(model)
    batches = blocks(4 * BATCH).split(BATCH)
    for ids in batches:
        if mode == "checkpointed-base":
            # The whole base model under a non-reentrant checkpoint: its forward (hooks included)
            # runs again, to the end, inside the backward pass.
            model.train()
            with set_checkpoint_early_stop(False):
                hidden = checkpoint(model.gpt_neox, ids, use_reentrant=False).last_hidden_state
                model.get_output_embeddings()(hidden).logsumexp(-1).mean().backward()
        else:
            train_forward(model, ids)
    assert features.forwards == 4 and features.rows == 4 * BATCH
    result = features.measure_window((1, 4))
    model.train(False)
    for layer in (0, 1, 2):
        assert_same(result.layers[layer], reference(model, batches, layer))


def test_padded_batches_select_the_rows_the_probe_path_selects():
    # Right padding (the training forward's positions are HF's default arange, as the probe
    # path's mask-derived ones are for right padding): the last *real* token, the masked mean.
    model = tiny()
    ids = blocks(2 * BATCH)
    gen = torch.Generator().manual_seed(5)
    lengths = torch.randint(4, SEQ + 1, (ids.shape[0],), generator=gen)
    mask = (torch.arange(SEQ) < lengths[:, None]).long()
    for tokens in ("last", "mean"):
        config = MeasureConfig(layers=(1, -1), tokens=tokens)
        features = TrainingFeatures(config)
        features.attach(model)
        expected = {layer: Geometry() for layer in (1, 2)}
        for batch, batch_mask in zip(ids.split(BATCH), mask.split(BATCH)):
            train_forward(model, batch, attention_mask=batch_mask)
            model.eval()
            rows = extract_features(model, batch, batch_mask, FeatureSpec(layers=(1, -1), tokens=tokens))
            for layer, value in rows.items():
                expected[layer].update(value)
        result = features.measure_window((1, 2))
        features.detach()
        for layer in (1, 2):
            out = expected[layer].compute()
            assert result.layers[layer].rankme == pytest.approx(float(out["rankme"]), rel=REL), tokens
            assert result.layers[layer].alpha == pytest.approx(float(out["alpha"]), rel=REL), tokens


def test_the_tracker_needs_no_tokenizer_and_records_the_window(tmp_path):
    model = tiny()
    tracker = GeometryTracker(
        schedule=Schedule(every_n_steps=2, measure_on_start=True),
        measure=MeasureConfig(source="training"),
        history_file=tmp_path / "geometry.json",
    )
    assert tracker.prepare(None) is None and tracker.probes is None and tracker.ready
    tracker.attach(model)
    tracker.begin(object(), 0)
    assert not tracker.due(0, "start")  # no training forward before the first step
    batches = blocks(4 * BATCH).split(BATCH)
    train_forward(model, batches[0])
    train_forward(model, batches[1])
    measurement = tracker.measure(model, 2)
    assert measurement is not None
    assert_same(measurement.result.last, reference(model, batches[:2]))
    assert {"geometry/rankme", "geometry/alpha", "geometry/alpha_r2", "geometry/n_samples"} <= set(measurement.scalars)
    assert measurement.notes and "training batches" in measurement.notes[0]
    train_forward(model, batches[2])
    train_forward(model, batches[3])
    tracker.measure(model, 4)
    tracker.autosave()
    record = json.loads((tmp_path / "geometry.json").read_text())
    provenance = record["provenance"]
    assert provenance["source"] == "training" and provenance["measure_config"]["source"] == "training"
    assert provenance["window"]["steps"] == [3, 4] and provenance["window"]["rows"] == 2 * BATCH
    assert [row["step"] for row in record["history"]] == [2, 4]
    assert record["cost"]["source"] == "training"
    assert not record.get("provenance_changes")  # windows of other rows are one way of measuring
    tracker.detach()


# ----------------------------------------------------------------------------- Lightning
def _lightning():
    return pytest.importorskip("lightning")


def _frozen_module(train_ids: torch.Tensor, batch_size: int, val: bool = False):
    L = _lightning()

    class Frozen(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = tiny()

        def training_step(self, batch, batch_idx):
            (ids,) = batch
            return self.model(input_ids=ids, labels=ids).loss

        def validation_step(self, batch, batch_idx):
            (ids,) = batch
            self.model(input_ids=ids, labels=ids)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)  # frozen: every window sees the same weights

        def train_dataloader(self):
            return DataLoader(TensorDataset(train_ids), batch_size=batch_size, shuffle=False)

    if val:
        Frozen.val_dataloader = lambda self: DataLoader(TensorDataset(blocks(16, seed=9)), batch_size=8)  # type: ignore[attr-defined]
    return Frozen()


def _fit(tmp_path, module, monitor, **trainer_kwargs):
    L = _lightning()
    from lightning.pytorch.loggers import TensorBoardLogger

    trainer = L.Trainer(
        logger=TensorBoardLogger(str(tmp_path), name="tb", version=""),
        callbacks=[monitor],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        **trainer_kwargs,
    )
    trainer.fit(module)
    return trainer


def test_lightning_logs_each_window_at_its_step_and_skips_validation(tmp_path):
    _lightning()
    from feature_metrics import ParticipationRatio
    from geomtrace.callbacks import GeometryMonitor
    from lightning_helpers import read_scalars

    ids = blocks(8 * BATCH, seed=3)
    module = _frozen_module(ids, BATCH, val=True)
    monitor = GeometryMonitor(
        schedule=Schedule(every_n_steps=4, log_spectrum_every=1),
        measure=MeasureConfig(source="training"),
        extra_metrics={"pr": ParticipationRatio()},
        history_file=str(tmp_path / "geometry.json"),
    )
    _fit(tmp_path, module, monitor, max_steps=8, val_check_interval=2, num_sanity_val_steps=1)
    assert [row["step"] for row in monitor.history] == [4, 8]
    board = read_scalars(tmp_path / "tb")
    for key in ("geometry/rankme", "geometry/alpha", "geometry/alpha_r2", "geometry/n_samples", "geometry/pr"):
        assert [step for step, _ in board[key]] == [4, 8], key
    assert [value for _, value in board["geometry/n_samples"]] == [4 * BATCH, 4 * BATCH]  # no validation rows
    windows = ids.split(4 * BATCH)
    for row, window in zip(monitor.history, windows):
        expected = reference(module.model, window.split(BATCH))
        assert row["geometry/rankme"] == pytest.approx(expected["rankme"], rel=REL)
        assert row["geometry/alpha"] == pytest.approx(expected["alpha"], rel=REL)
        pr = ParticipationRatio()
        with torch.no_grad():
            pr.update(module.model(input_ids=window, output_hidden_states=True).hidden_states[-1][:, -1])
        assert row["geometry/pr"] == pytest.approx(float(pr.compute()), rel=REL)
    record = json.loads((tmp_path / "geometry.json").read_text())
    assert record["provenance"]["source"] == "training" and record["provenance"]["window"]["steps"] == [5, 8]
    assert not monitor.tracker.training_features.attached  # hooks removed at the end
    pytest.importorskip("matplotlib")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert [event.step for event in acc.Images("geometry/eigenspectrum")] == [4, 8]


def test_lightning_gradient_accumulation_counts_every_micro_batch(tmp_path):
    _lightning()
    from geomtrace.callbacks import GeometryMonitor

    micro = BATCH // 2
    ids = blocks(8 * micro, seed=4)  # 4 optimizer steps of 2 micro-batches
    module = _frozen_module(ids, micro)
    monitor = GeometryMonitor(schedule=Schedule(every_n_steps=2), measure=MeasureConfig(source="training"))
    _fit(tmp_path, module, monitor, max_steps=4, accumulate_grad_batches=2)
    assert [row["step"] for row in monitor.history] == [2, 4]
    for row, window in zip(monitor.history, ids.split(4 * micro)):
        assert row["geometry/n_samples"] == 4 * micro
        expected = reference(module.model, window.split(micro))
        assert row["geometry/rankme"] == pytest.approx(expected["rankme"], rel=REL)
        assert row["geometry/alpha"] == pytest.approx(expected["alpha"], rel=REL)


def test_lightning_logs_at_every_step(tmp_path):
    _lightning()
    from geomtrace.callbacks import GeometryMonitor

    module = _frozen_module(blocks(3 * BATCH, seed=6), BATCH)
    monitor = GeometryMonitor(schedule=Schedule(every_n_steps=1), measure=MeasureConfig(source="training"))
    _fit(tmp_path, module, monitor, max_steps=3)
    assert [row["step"] for row in monitor.history] == [1, 2, 3]
    assert all(row["geometry/n_samples"] == BATCH for row in monitor.history)


# ----------------------------------------------------------------------------- transformers
def test_hf_trainer_logs_each_window_with_the_padded_batches_rows(tmp_path, tokenizer, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("tensorboard")
    from datasets import Dataset
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from geomtrace.callbacks import GeometryCallback
    from geomtrace.tiny import embedded_corpus

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    texts = embedded_corpus()[:64]
    dataset = Dataset.from_dict(dict(tokenizer(texts, truncation=True, max_length=24)))
    model = build_tiny_model("gpt_neox", hidden_size=64, tokenizer=tokenizer)
    callback = GeometryCallback(Schedule(every_n_steps=2), measure=MeasureConfig(source="training"))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # the training forwards' inputs, as the model got them
    model.gpt_neox.register_forward_pre_hook(
        lambda m, a, k: (
            seen.append((a[0] if a else k["input_ids"], k["attention_mask"]))
            if m.training and torch.is_grad_enabled()
            else None
        ),
        with_kwargs=True,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        learning_rate=0.0,  # frozen: the reference below sees the same weights
        report_to=["tensorboard"],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[callback],
    )
    trainer.train()
    assert [row["step"] for row in callback.history] == [2, 4]
    assert len(seen) == 8 and any(int(mask.sum()) < mask.numel() for _, mask in seen)  # padded batches
    # Every micro-batch counts: 2 steps x 2 micro-batches x 8 sequences per window.
    assert [row["geometry/n_samples"] for row in callback.history] == [32, 32]
    model.eval()
    for row, window in zip(callback.history, (seen[:4], seen[4:])):
        expected = Geometry()
        for ids, mask in window:  # the probe path's rows (last real token) of the same batches
            expected.update(extract_features(model, ids, mask)[2])
        assert row["geometry/rankme"] == pytest.approx(float(expected.compute()["rankme"]), rel=REL)
        assert row["geometry/alpha"] == pytest.approx(float(expected.compute()["alpha"]), rel=REL)
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    for key in ("geometry/rankme", "geometry/alpha", "geometry/n_samples"):
        assert [event.step for event in acc.Scalars(key)] == [2, 4], key
    assert not any(tag.startswith("train/geometry") for tag in acc.Tags()["scalars"])
    provenance = callback.record()["provenance"]
    assert provenance["source"] == "training" and provenance["window"]["steps"] == [3, 4]
    assert provenance["window"]["forwards"] == 4


# ----------------------------------------------------------------------------- two gloo ranks
def _has_fsdp2() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def gloo_windows(tmp_path_factory, pick_free_port) -> dict[str, list[dict]]:
    """Every split's windows on both ranks, from one 2-rank worker run (one start-up for all splits)."""
    splits = ["even", "rank1-empty"] + (["fsdp"] if _has_fsdp2() else [])
    out = tmp_path_factory.mktemp("gloo") / "result.json"
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), str(pick_free_port()), ",".join(splits)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {f"rank{rank}": json.loads(Path(f"{out}.rank{rank}").read_text()) for rank in (0, 1)}


@pytest.mark.parametrize("split", ["even", "rank1-empty", "fsdp"])
def test_two_gloo_ranks_equal_one_process(gloo_windows, split):
    """DDP-style ranks (each its own batches), one rank empty in a window, and FSDP2-sharded ranks."""
    from training_source_ddp import WINDOWS, batches_of

    if split == "fsdp" and not _has_fsdp2():
        pytest.skip("this torch has no FSDP2 fully_shard")
    model = tiny()
    for rank in (0, 1):
        got = gloo_windows[f"rank{rank}"][split]
        assert len(got) == len(WINDOWS)
        for window, values in zip(WINDOWS, got):
            expected = reference(model, batches_of(window))
            assert values["n"] == expected["n"] and values["rows"] == expected["n"]
            assert values["rankme"] == pytest.approx(expected["rankme"], rel=1e-6)
            assert values["alpha"] == pytest.approx(expected["alpha"], rel=1e-6)
