"""GeometryMonitor in real (tiny, CPU) Lightning fits."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from geomtrace import GeometryWarning
from geomtrace.callbacks import GeometryMonitor
from geomtrace.measure import MeasureConfig, measure_geometry
from geomtrace.probes import load_probes
from lightning_helpers import TinyLM, read_scalars, token_loader
from memorization_helpers import BruteForceSource, cloze_probe, repetitive_documents
from timeouts import SUBPROCESS_TIMEOUT

PROBES = 48


def trainer(tmp_path, callbacks, max_steps=6, loggers=None, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=loggers if loggers is not None else TensorBoardLogger(str(tmp_path), name="tb", version=""),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        log_every_n_steps=1,
        **kwargs,
    )


def test_fit_logs_geometry_to_tensorboard_at_exact_steps(tmp_path, tokenizer):
    monitor = GeometryMonitor(every_n_steps=2, num_sequences=PROBES, log_spectrum_every=2)
    tb = TensorBoardLogger(str(tmp_path), name="tb", version="")
    csv = CSVLogger(str(tmp_path), name="csv", version="")
    module = TinyLM(tokenizer)
    trainer(tmp_path, [monitor], max_steps=5, loggers=[tb, csv]).fit(module, token_loader(tokenizer))
    scalars = read_scalars(tmp_path / "tb")
    assert [step for step, _ in scalars["geometry/rankme"]] == [0, 2, 4, 5]
    assert [step for step, _ in scalars["geometry/n_samples"]] == [0, 2, 4, 5]
    assert all(value == PROBES for _, value in scalars["geometry/n_samples"])
    assert all(1.0 < value < 64.0 for _, value in scalars["geometry/rankme"])
    assert "geometry/alpha" in scalars and "geometry/alpha_r2" in scalars
    rows = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "geometry/rankme" in rows.splitlines()[0]
    # Figures for the eigenspectrum went to TensorBoard too (every 2nd measurement).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = next((tmp_path / "tb").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events), size_guidance={"images": 0})
    acc.Reload()
    # every 2nd measurement, and always the final one
    assert [e.step for e in acc.Images("geometry/eigenspectrum")] == [0, 4, 5]
    assert [r["step"] for r in monitor.history] == [0, 2, 4, 5]


def test_callback_value_equals_direct_measurement_and_restores_modes(tmp_path, tokenizer):
    module = TinyLM(tokenizer)
    module.model.gpt_neox.emb_dropout.eval()  # a module the user froze in eval mode
    probes = load_probes(tokenizer, num_sequences=PROBES)
    before = measure_geometry(module.model, probes, MeasureConfig()).last
    seen_modes = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen_modes.append((pl_module.model.training, pl_module.model.gpt_neox.emb_dropout.training))

    monitor = GeometryMonitor(tokenizer=tokenizer, every_n_steps=1, probes=probes, track_phases=False)
    trainer(tmp_path, [monitor, Spy()], max_steps=2).fit(module, token_loader(tokenizer))
    assert monitor.history[0]["geometry/rankme"] == pytest.approx(before.rankme, rel=1e-9)
    assert monitor.history[0]["geometry/alpha"] == pytest.approx(before.alpha, rel=1e-9) or math.isnan(before.alpha)
    assert seen_modes and all(mode == (True, False) for mode in seen_modes)


def test_multiple_layers_and_model_getter(tmp_path, tokenizer):
    module = TinyLM(tokenizer)
    monitor = GeometryMonitor(
        every_n_steps=0, num_sequences=PROBES, layers="all", model_getter=lambda m: m.model, measure_on_end=False
    )
    trainer(tmp_path, [monitor], max_steps=1).fit(module, token_loader(tokenizer))
    keys = set(monitor.history[0])
    assert {"geometry/rankme", "geometry/layer0/rankme", "geometry/layer1/rankme"} <= keys
    assert [r["step"] for r in monitor.history] == [0]


def test_extra_metrics_ride_along_per_layer_in_tensorboard_and_the_record(tmp_path, tokenizer):
    from feature_metrics import ParticipationRatio, RowStats

    path = tmp_path / "geometry.json"
    module = TinyLM(tokenizer)
    monitor = GeometryMonitor(
        every_n_steps=2,
        num_sequences=PROBES,
        layers="all",
        history_file=str(path),
        extra_metrics={"pr": ParticipationRatio(), "stats": RowStats()},
    )
    trainer(tmp_path, [monitor], max_steps=2).fit(module, token_loader(tokenizer))
    scalars = read_scalars(tmp_path / "tb")
    for tag in (
        "geometry/pr",
        "geometry/layer1/pr",
        "geometry/layer0/pr",
        "geometry/stats/mean_norm",
        "geometry/layer1/stats/rows",
    ):
        assert [step for step, _ in scalars[tag]] == [0, 2], tag  # same steps, same layer tags as the geometry
        assert [value for _, value in scalars[tag]] == pytest.approx([r[tag] for r in monitor.history], rel=1e-6)
    assert all(r["geometry/stats/rows"] == r["geometry/n_samples"] == PROBES for r in monitor.history)
    # The same features as the geometry: the final PR is that of the spectrum measured on the same model.
    final = measure_geometry(module.model, monitor.tracker.probes, MeasureConfig()).last
    expected = final.eigenvalues.sum() ** 2 / (final.eigenvalues**2).sum()
    assert monitor.history[-1]["geometry/pr"] == pytest.approx(expected, rel=1e-6)
    config = json.loads(path.read_text())["provenance"]["measure_config"]
    assert config["extra_metrics"] == {"pr": "feature_metrics.ParticipationRatio", "stats": "feature_metrics.RowStats"}
    with pytest.raises(MisconfigurationException, match="phase_transition"):
        GeometryMonitor(extra_metrics={"phase_transition": ParticipationRatio()})
    with pytest.raises(MisconfigurationException, match="torchmetrics.Metric"):
        GeometryMonitor(extra_metrics={"pr": lambda x: x})


def test_model_built_in_configure_model_is_found(tmp_path, tokenizer):
    """Large/sharded models are created in `configure_model`, after callbacks' `setup`."""

    class LazyLM(TinyLM):
        def __init__(self, tokenizer):
            L.LightningModule.__init__(self)
            self.tokenizer, self.lr, self.model = tokenizer, 1e-3, None

        def configure_model(self):
            if self.model is None:
                self.model = TinyLM(self.tokenizer).model

    monitor = GeometryMonitor(every_n_steps=2, num_sequences=PROBES, track_phases=False)
    trainer(tmp_path, [monitor], max_steps=2).fit(LazyLM(tokenizer), token_loader(tokenizer))
    assert [r["step"] for r in monitor.history] == [0, 2]
    assert all(r["geometry/n_samples"] == PROBES for r in monitor.history)


def test_resume_keeps_history_across_a_schedule_change_with_the_final_step(tmp_path, tokenizer):
    ckpt_dir = tmp_path / "ckpt"
    first = GeometryMonitor(every_n_steps=2, num_sequences=PROBES)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=5, save_top_k=-1)
    trainer(tmp_path, [first, checkpoint], max_steps=5, enable_checkpointing=True).fit(
        TinyLM(tokenizer), token_loader(tokenizer)
    )
    assert [r["step"] for r in first.history] == [0, 2, 4, 5]
    ckpt = next(ckpt_dir.glob("*step=5.ckpt"))
    # The final measurement (step 5) happened before ModelCheckpoint saved: it is in the checkpoint.
    # Plain data only: the checkpoint loads with weights_only=True.
    state = torch.load(ckpt, weights_only=True)["callbacks"]["GeometryMonitor{'prefix': 'geometry'}"]
    assert [r["step"] for r in state["history"]] == [0, 2, 4, 5]
    assert state["provenance"]["precision"] == "fp32" and state["provenance"]["n_probes"] == PROBES

    # Resumed with another schedule: the history survives, and nothing warns (values stay comparable).
    second = GeometryMonitor(every_n_steps=3, num_sequences=PROBES, measure_on_end=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        trainer(tmp_path, [second], max_steps=7).fit(TinyLM(tokenizer), token_loader(tokenizer), ckpt_path=str(ckpt))
    assert [r["step"] for r in second.history] == [0, 2, 4, 5, 6]
    assert second.history[1]["geometry/rankme"] == pytest.approx(first.history[1]["geometry/rankme"])
    assert second.tracker.from_pretrained is False  # restored: the run began at initialisation


def _nan_hook(module, args, output):
    return output.clone().fill_(float("nan"))


def test_nan_model_does_not_stop_training_and_strict_raises(tmp_path, tokenizer):
    module = TinyLM(tokenizer)
    # Final-norm output becomes NaN for the probe forward only (training loss stays finite).
    handle = module.model.gpt_neox.final_layer_norm.register_forward_hook(
        lambda m, a, out: out.clone().fill_(float("nan")) if not m.training else out
    )
    monitor = GeometryMonitor(every_n_steps=1, num_sequences=PROBES)
    with pytest.warns(GeometryWarning):
        fitted = trainer(tmp_path, [monitor], max_steps=3)
        fitted.fit(module, token_loader(tokenizer))
    assert fitted.global_step == 3
    assert all(math.isnan(r["geometry/rankme"]) for r in monitor.history)
    handle.remove()

    broken = TinyLM(tokenizer)
    broken.model.gpt_neox.final_layer_norm.register_forward_hook(
        lambda m, a, out: (_ for _ in ()).throw(RuntimeError("boom")) if not m.training else out
    )
    # Gradient accumulation: 2 micro-batches see each global step; the final step is seen
    # again at train end. One attempt per step all the same: steps 0, 1, 2.
    with pytest.warns(GeometryWarning) as caught:
        ok = trainer(
            tmp_path, [GeometryMonitor(every_n_steps=1, num_sequences=PROBES)], max_steps=2, accumulate_grad_batches=2
        )
        ok.fit(broken, token_loader(tokenizer))
    assert ok.global_step == 2
    failures = [str(w.message) for w in caught if "failed and was skipped" in str(w.message)]
    assert len(failures) == 3 and [f"at step {s} " in f for s, f in zip(range(3), failures)] == [True] * 3
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, [GeometryMonitor(every_n_steps=1, num_sequences=PROBES, strict=True)], max_steps=2).fit(
            broken, token_loader(tokenizer)
        )


def test_misconfiguration_fails_at_setup_with_clear_message(tmp_path, tokenizer):
    class NoHF(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 4)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0].float()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(MisconfigurationException, match="model_getter"):
        trainer(tmp_path, [GeometryMonitor(tokenizer=tokenizer)], max_steps=1).fit(NoHF(), token_loader(tokenizer))
    module = TinyLM(tokenizer)
    module.tokenizer = None
    with pytest.raises(MisconfigurationException, match="tokenizer"):
        trainer(tmp_path, [GeometryMonitor()], max_steps=1).fit(module, token_loader(tokenizer))
    with pytest.raises(MisconfigurationException, match="tokens"):
        GeometryMonitor(tokens="first")
    with pytest.raises(MisconfigurationException, match="every_n_steps"):
        GeometryMonitor(every_n_steps=-1)
    with pytest.raises(MisconfigurationException, match="autocast"):
        GeometryMonitor(autocast="fp8")


def test_state_key_ignores_options_and_old_keys_still_load(tokenizer):
    monitor = GeometryMonitor(every_n_steps=3)
    monitor.tracker.history = [{"step": 0, "geometry/rankme": 5.0}]
    other = GeometryMonitor(every_n_steps=7, layers="all")
    assert other.state_key == monitor.state_key == "GeometryMonitor{'prefix': 'geometry'}"
    other.load_state_dict(monitor.state_dict())
    assert other.history == monitor.history
    assert GeometryMonitor(prefix="geo2").state_key != monitor.state_key  # two monitors can coexist
    # A checkpoint written when the key held the options as well.
    legacy = "GeometryMonitor{'every_n_steps': 3, 'layers': 'last', 'tokens': 'last', 'prefix': 'geometry'}"
    fresh = GeometryMonitor(every_n_steps=5)
    fresh.on_load_checkpoint(None, None, {"callbacks": {legacy: {"history": [{"step": 4}], "phase": None}}})
    assert fresh.history == [{"step": 4}]


def test_second_trainer_starts_a_stage_and_records_provenance(tmp_path, tokenizer, capsys):
    path = tmp_path / "geometry.json"
    monitor = GeometryMonitor(every_n_steps=2, num_sequences=PROBES, history_file=str(path))
    module = TinyLM(tokenizer)
    trainer(tmp_path, [monitor], max_steps=2).fit(module, token_loader(tokenizer))
    out = capsys.readouterr().err
    lines = out.splitlines()
    summaries = [line for line in lines if line.startswith("[geomtrace] RankMe ")]
    assert len(summaries) == 1 and sum("cost: 2 measurement(s)" in line for line in lines) == 1  # once each
    assert f"{monitor.tracker.probes.num_tokens():,} probe tokens ({PROBES} probes) per measurement" in out
    assert "training from scratch" in out
    scalars = read_scalars(tmp_path / "tb")
    assert [step for step, _ in scalars["geometry/seconds"]] == [0, 2]
    module.model.name_or_path = "org/pretrained"  # as if loaded with from_pretrained
    trainer(tmp_path / "b", [monitor], max_steps=2).fit(module, token_loader(tokenizer))
    assert [r["step"] for r in monitor.stages[0]["history"]] == [0, 2]
    assert [r["step"] for r in monitor.history] == [0, 2]
    assert monitor.tracker.from_pretrained is True and "stage 2" in capsys.readouterr().err
    payload = json.loads(path.read_text())
    assert [r["step"] for r in payload["stages"][0]["history"]] == [0, 2]
    assert payload["provenance"]["precision"] == "fp32" and payload["provenance"]["n_probes"] == PROBES
    assert payload["provenance"]["measure_config"]["layers"] == "last"


def test_no_training_steps_measure_nothing_and_do_not_fail(tmp_path, tokenizer):
    class WithValidation(TinyLM):
        def validation_step(self, batch, batch_idx):
            return self.model(input_ids=batch[0], labels=batch[0]).loss

    monitor = GeometryMonitor(num_sequences=PROBES)
    trainer(tmp_path, [monitor], max_steps=2).validate(WithValidation(tokenizer), token_loader(tokenizer))
    trainer(tmp_path, [monitor], max_steps=0).fit(TinyLM(tokenizer), token_loader(tokenizer))
    assert monitor.history == [] and monitor.stages == []


def test_model_without_hf_lm_or_bad_layers_fails_before_training(tmp_path, tokenizer):
    with pytest.raises(MisconfigurationException, match="layers that exist"):
        trainer(tmp_path, [GeometryMonitor(num_sequences=PROBES, layers=[9])], max_steps=1).fit(
            TinyLM(tokenizer), token_loader(tokenizer)
        )


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path, tokenizer, free_port):
    worker = Path(__file__).parent / "workers" / "lightning_ddp.py"
    out = tmp_path / "ddp.json"
    env = {**os.environ, "MASTER_PORT": str(free_port), "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(
        [sys.executable, str(worker), str(out)], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp = json.loads(out.read_text())
    module = TinyLM(tokenizer)
    probes = load_probes(tokenizer, num_sequences=PROBES)
    single = measure_geometry(module.model, probes, MeasureConfig()).last
    assert ddp["history"][0]["step"] == 0
    assert ddp["history"][0]["geometry/rankme"] == pytest.approx(single.rankme, rel=1e-6)
    assert ddp["history"][0]["geometry/n_samples"] == PROBES
    assert [r["step"] for r in ddp["history"]] == [0, 3, 4]
    # Memorization at the same steps, sharded over the ranks: the single-process values.
    direct = cloze_probe(repetitive_documents()).measure(module.model)
    assert ddp["history"][0]["memorization/answer_logprob"] == pytest.approx(direct["answer_logprob"], abs=1e-5)
    assert [r["memorization/n_scored"] for r in ddp["history"]] == [16, 16, 16]
    assert ddp["infgram_queries"] == 16 * 3  # rank 0's queries, once per run
    record = json.loads(out.with_suffix(".history.json").read_text())  # written by rank 0
    assert record["history"] == ddp["history"] and record["provenance"]["n_probes"] == PROBES


# ------------------------------------------------------------------ memorization
MEMORIZATION_KEYS = (
    "memorization/spearman",
    "memorization/pearson",
    "memorization/answer_logprob",
    "memorization/n_scored",
)


def test_memorization_is_logged_beside_geometry_and_the_infgram_side_computed_once(tmp_path, tokenizer, capsys):
    documents = repetitive_documents()
    probe = cloze_probe(documents)
    path = tmp_path / "geometry.json"
    monitor = GeometryMonitor(every_n_steps=2, num_sequences=PROBES, memorization=probe, history_file=str(path))
    trainer(tmp_path, [monitor], max_steps=5).fit(TinyLM(tokenizer), token_loader(tokenizer))
    scalars = read_scalars(tmp_path / "tb")
    for key in MEMORIZATION_KEYS:
        assert [step for step, _ in scalars[key]] == [0, 2, 4, 5], key
    assert [value for _, value in scalars["memorization/n_scored"]] == [16.0] * 4  # cloze answers occur in the corpus
    assert all(-1.0 <= value <= 1.0 for _, value in scalars["memorization/spearman"])
    # One ∞-gram query per answer token for the whole run, not per measurement.
    assert probe.index.queries == 16 * 3
    assert sum("computed once" in line for line in capsys.readouterr().err.splitlines()) == 1
    # Step 0 is the initial model: the same values as a direct measurement of it.
    direct = cloze_probe(documents).measure(TinyLM(tokenizer).model)
    first = monitor.history[0]
    assert first["memorization/answer_logprob"] == pytest.approx(direct["answer_logprob"], abs=1e-5)
    assert first["memorization/spearman"] == pytest.approx(direct["spearman"], abs=1e-2)
    record = json.loads(path.read_text())
    assert record["history"][-1]["memorization/n_scored"] == 16
    assert record["memorization"][0]["qa"].startswith("cloze:corpus n=16")


class FailingSource(BruteForceSource):
    def prob(self, context_ids, next_id):
        raise ConnectionError("index offline")


def test_memorization_errors_warn_keep_geometry_and_strict_raises(tmp_path, tokenizer):
    documents = repetitive_documents()
    bad = [[len(tokenizer) + 5] * 20 for _ in range(3)]  # token ids beyond the vocabulary
    probes = [
        cloze_probe(documents, FailingSource([]), name="offline"),  # the ∞-gram side fails: once, for the run
        cloze_probe(bad, name="bad"),  # the model side fails: skipped at each step
        cloze_probe(documents, name="good"),
    ]
    monitor = GeometryMonitor(every_n_steps=1, num_sequences=PROBES, memorization=probes)
    with pytest.warns(GeometryWarning) as caught:
        trainer(tmp_path / "a", [monitor], max_steps=2).fit(TinyLM(tokenizer), token_loader(tokenizer))
    messages = [str(w.message) for w in caught]
    assert sum("'offline' could not compute its ∞-gram side" in m and "index offline" in m for m in messages) == 1
    # Ids beyond the model's vocabulary are found before the first forward: the probe is off for
    # the run, with one warning naming the id and the vocabulary (issue 15), not one per step.
    bad_lines = [m for m in messages if "'bad' is off for the rest of this run" in m]
    assert len(bad_lines) == 1 and f"token id {len(tokenizer) + 5:,}" in bad_lines[0]
    assert [r["step"] for r in monitor.history] == [0, 1, 2]
    for row in monitor.history:  # geometry and the working probe still logged
        assert "geometry/rankme" in row and row["memorization/good/n_scored"] == 16
        assert not any(key.startswith(("memorization/offline/", "memorization/bad/")) for key in row)
    strict = GeometryMonitor(every_n_steps=1, num_sequences=PROBES, memorization=cloze_probe(bad), strict=True)
    with pytest.raises(Exception, match="vocabulary has"):
        trainer(tmp_path / "b", [strict], max_steps=2).fit(TinyLM(tokenizer), token_loader(tokenizer))


def test_memorization_option_is_checked_up_front():
    documents = repetitive_documents()
    with pytest.raises(MisconfigurationException, match="MemorizationProbe"):
        GeometryMonitor(memorization="trivia_qa")
    with pytest.raises(MisconfigurationException, match="distinct name"):
        GeometryMonitor(memorization=[cloze_probe(documents), cloze_probe(documents)])
    named = [cloze_probe(documents, name="train"), cloze_probe(documents, name="heldout")]
    assert len(GeometryMonitor(memorization=named).tracker.memorization.probes) == 2


# ------------------------------------------------------------- option types (issue 15)
def test_numpy_options_with_a_history_file_do_not_crash_the_fit(tmp_path, tokenizer):
    import numpy as np

    path = tmp_path / "geometry.json"
    monitor = GeometryMonitor(
        every_n_steps=np.int64(2),
        num_sequences=np.int64(PROBES),
        seed=np.int64(1),
        eps=np.float32(1e-7),
        fit_range=(np.int64(2), np.int64(20)),
        measure_on_start=np.bool_(True),
        history_file=path,
    )
    trainer(tmp_path, [monitor], max_steps=2).fit(TinyLM(tokenizer), token_loader(tokenizer))  # was TypeError at step 0
    record = json.loads(path.read_text())
    assert [r["step"] for r in record["history"]] == [0, 2]
    assert record["provenance"]["probe_options"]["seed"] == 1 and record["schedule"]["every_n_steps"] == 2


def test_probe_and_flag_options_fail_at_construction_with_the_right_message():
    for kwargs, match in [
        ({"num_sequences": 0}, "num_sequences must be an int >= 2"),
        ({"min_tokens": 50, "max_tokens": 20}, "min_tokens <= max_tokens"),
        ({"every_n_steps": True}, "every_n_steps must be an int"),
        ({"measure_on_start": "no"}, "measure_on_start must be True or False"),
        ({"fit_range": (1.5, 10)}, r"fit_range\[0\] must be an int"),
        ({"prefix": ""}, "prefix must be a non-empty string"),
    ]:
        with pytest.raises(MisconfigurationException, match=match) as caught:
            GeometryMonitor(**kwargs)
        assert "tokenizer" not in str(caught.value)  # was: "could not build its probe set ... Pass tokenizer"


def test_probes_longer_than_the_model_positions_are_fitted_before_the_first_step(tmp_path, tokenizer):
    from geomtrace.tiny import build_tiny_model

    module = TinyLM(tokenizer)
    module.model = build_tiny_model("gpt_neox", tokenizer=tokenizer, max_position_embeddings=32)
    monitor = GeometryMonitor(every_n_steps=2, num_sequences=PROBES)
    with pytest.warns(GeometryWarning, match="longer than the model's 32 positions") as caught:
        trainer(tmp_path, [monitor], max_steps=2).fit(module, token_loader(tokenizer))
    assert sum("positions" in str(w.message) for w in caught) == 1
    assert monitor.tracker.probes.longest() == 32 and [r["step"] for r in monitor.history] == [0, 2]
    assert monitor.record()["provenance"]["probe_options"]["max_tokens"] == 32


def test_resume_with_another_prefix_keeps_the_history(tmp_path, tokenizer):
    ckpt_dir = tmp_path / "ckpt"
    first = GeometryMonitor(every_n_steps=2, num_sequences=PROBES)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=4, save_top_k=-1)
    trainer(tmp_path, [first, checkpoint], max_steps=4, enable_checkpointing=True).fit(
        TinyLM(tokenizer), token_loader(tokenizer)
    )
    ckpt = next(ckpt_dir.glob("*step=4.ckpt"))
    second = GeometryMonitor(every_n_steps=2, num_sequences=PROBES, prefix="geo")
    with pytest.warns(GeometryWarning, match="under prefix 'geometry'; it continues under prefix 'geo'"):
        trainer(tmp_path, [second], max_steps=6).fit(TinyLM(tokenizer), token_loader(tokenizer), ckpt_path=str(ckpt))
    assert [r["step"] for r in second.history] == [0, 2, 4, 6]  # was [6]: the history silently dropped
    assert all("geo/rankme" in r and not any(k.startswith("geometry/") for k in r) for r in second.history)
    assert second.history[1]["geo/rankme"] == pytest.approx(first.history[1]["geometry/rankme"])

    # Two orphaned histories: which one is meant cannot be told; say so and start afresh.
    states = {
        "GeometryMonitor{'prefix': 'a'}": first.state_dict(),
        "GeometryMonitor{'prefix': 'b'}": first.state_dict(),
    }
    third = GeometryMonitor(prefix="c")
    with pytest.warns(GeometryWarning, match=r"prefixes \['a', 'b'\] but none under this monitor's prefix 'c'"):
        third.on_load_checkpoint(None, None, {"callbacks": states})
    assert third.history == []


def test_sigterm_and_ctrl_c_mid_measurement_keep_completed_measurements_and_resume(tmp_path):
    # One subprocess, two fits (tests/workers/live_signal.py): SIGTERM inside the measurement of
    # step 3 (Lightning notes it, the measurement completes, Lightning stops at the next batch);
    # then a resume from the step-2 checkpoint and Ctrl-C inside the measurement of step 4.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).parent / "workers" / "live_signal.py"
    proc = subprocess.Popen(
        [sys.executable, str(worker), "lightning", str(tmp_path)], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        for n, sig in enumerate((signal.SIGTERM, signal.SIGINT), 1):
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT
            while not (tmp_path / f"inside-{n}").is_file():
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
                time.sleep(0.02)
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    sigterm, sigint = result["sigterm"], result["sigint"]
    assert sigterm["ended"] == "SIGTERMException(None)" and sigterm["status"] == "TrainerStatus.INTERRUPTED"
    assert sigterm["file"] == sigterm["memory"] == [0, 1, 2, 3]  # the one in progress completed
    assert sigterm["checkpoints"] == ["epoch=0-step=2.ckpt"]
    # Resumed at step 2: the history continues; step 4, cut short by Ctrl-C, left no trace.
    assert sigint["ended"] == "SystemExit(1)" and sigint["memory"] == sigint["file"] == [0, 1, 2, 3]
    records = json.loads((tmp_path / "geometry.json").read_text())["history"]
    assert all("geometry/rankme" in r and "geometry/seconds" in r for r in records)
    assert not list(tmp_path.glob(".geometry.json.*"))  # no temporary file left behind
