"""The one TensorBoard writer (geomtrace._tensorboard): a live and a replayed run carry the same tags."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from geomtrace.callbacks import GeometryMonitor
from geomtrace.cli import main
from geomtrace.options import MeasureConfig, ProbeOptions, Schedule
from lightning_helpers import TinyLM, token_loader


def event_tags(log_dir) -> dict[str, set[str]]:
    """{"scalars": tags, "images": tags, "tensors": tags} of the event files under ``log_dir``."""
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, set[str]] = {"scalars": set(), "images": set(), "tensors": set()}
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
        acc.Reload()
        for kind, tags in out.items():
            tags.update(acc.Tags().get(kind, []))
    return out


def test_live_and_replayed_event_files_have_the_same_tags(tmp_path, tokenizer):
    module = TinyLM(tokenizer)
    run = tmp_path / "run"
    module.model.save_pretrained(run / "checkpoint-0")  # what the live step-0 measurement sees
    tokenizer.save_pretrained(run)
    monitor = GeometryMonitor(
        tokenizer=tokenizer,
        schedule=Schedule(every_n_steps=0, measure_on_end=False, log_spectrum_every=1),
        measure=MeasureConfig(layers="all"),
        probes=ProbeOptions(num_sequences=24, max_tokens=32),
    )
    L.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(tmp_path), name="tb", version=""),
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    ).fit(module, token_loader(tokenizer))
    out = tmp_path / "replayed"
    args = ["replay", "--checkpoints", str(run), "--output", str(out), "--layers", "all", "--tensorboard-spectra"]
    assert main([*args, "--num-sequences", "24", "--max-tokens", "32", "--no-progress", "--quiet"]) == 0

    live, replayed = event_tags(tmp_path / "tb"), event_tags(out / "tensorboard")
    geometry = {tag for tag in live["scalars"] if tag.startswith("geometry/")}
    # The tracker's own scalars are live only: phases are detected live (replay leaves them to
    # `geomtrace phases`) and `seconds` is the cost of watching a training.
    tracker = {tag for tag in geometry if tag.rsplit("/", 1)[-1] in ("phase", "phase_transition", "seconds")}
    assert "geometry/seconds" in tracker
    assert geometry - tracker == replayed["scalars"]
    assert {"geometry/rankme", "geometry/layer0/rankme", "geometry/layer1/alpha"} <= replayed["scalars"]
    figures = {"geometry/eigenspectrum", "geometry/layer0/eigenspectrum", "geometry/layer1/eigenspectrum"}
    assert live["images"] == replayed["images"] == figures
    assert not {tag for tag in replayed["tensors"] if tag.startswith("geometry/")}  # no phase text in replay
    # The same model and probes: the same numbers under those tags.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for log_dir in (tmp_path / "tb", out / "tensorboard"):
        acc = EventAccumulator(str(next(log_dir.rglob("events.out.tfevents.*"))))
        acc.Reload()
        values.append([(e.step, e.value) for e in acc.Scalars("geometry/rankme")])
    assert values[0][0][0] == values[1][0][0] == 0
    assert values[0][0][1] == pytest.approx(values[1][0][1], rel=1e-6)
