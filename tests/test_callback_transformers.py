"""GeometryCallback on transformers.Trainer and the TRL trainers (tiny CPU models, offline)."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("trl")
pytest.importorskip("tensorboard")

from datasets import Dataset  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments  # noqa: E402

from geomtrace._warnings import GeometryWarning  # noqa: E402
from geomtrace.callbacks.transformers import GeometryCallback  # noqa: E402
from geomtrace.measure import MeasureConfig, measure_geometry  # noqa: E402
from geomtrace.probes import load_probes  # noqa: E402
from geomtrace.tiny import build_tiny_model, embedded_corpus, tiny_pythia_config  # noqa: E402
from timeouts import SUBPROCESS_TIMEOUT

WORKER = Path(__file__).parent / "workers" / "hf_ddp.py"
KEYS = ("geometry/rankme", "geometry/alpha", "geometry/n_samples")
N_PROBES = 96  # > hidden size 64, so the covariance has full rank and the alpha fit no round-off tail


@pytest.fixture
def tb_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(path))
    return path


def lm(tokenizer):
    return build_tiny_model("gpt_neox", hidden_size=64, tokenizer=tokenizer)


def lm_dataset(tokenizer) -> Dataset:
    texts = embedded_corpus()[:48]
    return Dataset.from_dict(dict(tokenizer(texts, truncation=True, max_length=48)))


def hf_args(tmp_path, **overrides) -> dict:
    args = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=5,
        per_device_train_batch_size=4,
        report_to=["tensorboard"],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    args.update(overrides)
    return args


def hf_trainer(tokenizer, tmp_path, callback, processing_class="tokenizer", **overrides) -> Trainer:
    return Trainer(
        model=lm(tokenizer),
        args=TrainingArguments(**hf_args(tmp_path, **overrides)),
        train_dataset=lm_dataset(tokenizer),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer if processing_class == "tokenizer" else processing_class,
        callbacks=[callback],
    )


def arithmetic(n: int = 32) -> list[tuple[str, str]]:
    return [(f"What is {a}+{b}?", str(a + b)) for a in range(8) for b in range(8)][:n]


def preference_dataset() -> Dataset:
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": a}],
                "rejected": [{"role": "assistant", "content": str(int(a) + 1)}],
            }
            for q, a in arithmetic()
        ]
    )


def scalars(tb_dir: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {event.step: event.value for event in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def assert_logged(tb_dir: Path, callback: GeometryCallback, steps: list[int]) -> dict:
    assert [record["step"] for record in callback.history] == steps
    board = scalars(tb_dir)
    for key in KEYS:
        assert sorted(board[key]) == steps, key
        for record in callback.history:
            assert board[key][record["step"]] == pytest.approx(record[key], rel=1e-6)
    assert all(value == N_PROBES for value in board["geometry/n_samples"].values())
    assert not any(tag.startswith("train/geometry") for tag in board), "geometry must not be duplicated under train/"
    return board


# ------------------------------------------------------------------ trainers
def test_trainer_logs_to_tensorboard_at_exact_steps(tokenizer, tmp_path, tb_dir, capsys):
    callback = GeometryCallback(every_n_steps=2, extra_steps=(1,), num_sequences=N_PROBES)
    trainer = hf_trainer(tokenizer, tmp_path, callback)
    trainer.train()
    # The cost of watching, printed once at the end: measurements, share, probe tokens.
    cost = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[geomtrace] cost: ")]
    tokens = callback.tracker.probes.num_tokens()
    assert (
        len(cost) == 1 and "5 measurement(s)" in cost[0] and f"{tokens:,} probe tokens ({N_PROBES} probes)" in cost[0]
    )
    assert 0 < callback.record()["cost"]["share"] < 1
    board = assert_logged(tb_dir, callback, [0, 1, 2, 4, 5])
    # Logging through the trainer must not swallow its own loss logs at measured steps.
    assert sorted(board["train/loss"]) == [1, 2, 3, 4, 5]
    logged = [entry for entry in trainer.state.log_history if "geometry/rankme" in entry]
    assert [entry["step"] for entry in logged] == [0, 1, 2, 4, 5]
    assert trainer.model.training  # train mode restored after the last measurement
    assert sorted(board["geometry/seconds"]) == [0, 1, 2, 4, 5]
    assert callback.tracker.from_pretrained is False  # a plain Trainer on a model built from a config
    pytest.importorskip("matplotlib")
    acc = EventAccumulator(str(tb_dir), size_guidance={"images": 0})
    acc.Reload()
    # log_spectrum_every=5: the first measurement, and always the final one.
    assert [event.step for event in acc.Images("geometry/eigenspectrum")] == [0, 5]


def test_sft_trainer(tokenizer, tmp_path, tb_dir, capsys):
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list(
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in arithmetic()]
    )
    path = tmp_path / "geometry.json"
    from feature_metrics import ParticipationRatio, RowStats

    callback = GeometryCallback(
        every_n_steps=2,
        num_sequences=N_PROBES,
        chat_template=True,
        history_file=str(path),
        extra_metrics={"pr": ParticipationRatio(), "stats": RowStats()},
    )
    trainer = SFTTrainer(
        model=lm(tokenizer),
        args=SFTConfig(max_length=48, **hf_args(tmp_path, max_steps=4)),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    assert trainer.args.bf16  # TRL's default, on CPU too (use_cpu=True)
    trainer.train()
    board = assert_logged(tb_dir, callback, [0, 2, 4])
    # Post-training (a TRL trainer): a falling RankMe is never called warmup.
    assert callback.tracker.from_pretrained is True
    # The probes ran in the trainer's bf16: recorded with the history and said on the console.
    provenance = json.loads(path.read_text())["provenance"]
    assert provenance["precision"] == "bf16" and provenance["probe_options"]["chat_template"] is True
    # Users' feature metrics ride along on the same (bf16) probe forward, logged like the geometry.
    assert provenance["measure_config"]["extra_metrics"] == {
        "pr": "feature_metrics.ParticipationRatio",
        "stats": "feature_metrics.RowStats",
    }
    for tag in ("geometry/pr", "geometry/stats/mean_norm"):
        assert sorted(board[tag]) == [0, 2, 4]
        assert [board[tag][r["step"]] for r in callback.history] == pytest.approx([r[tag] for r in callback.history])
    assert all(1 < r["geometry/pr"] < 64 and r["geometry/stats/rows"] == N_PROBES for r in callback.history)
    logged = [entry for entry in trainer.state.log_history if "geometry/pr" in entry]
    assert [entry["step"] for entry in logged] == [0, 2, 4]
    assert "forward in bf16" in capsys.readouterr().err
    # TRL's own metrics keep their per-step logging (we call the base Trainer.log, not SFTTrainer.log).
    assert sorted(board["train/mean_token_accuracy"]) == [1, 2, 3, 4]


def test_sft_trainer_logs_memorization_beside_geometry(tokenizer, tmp_path, tb_dir):
    from trl import SFTConfig, SFTTrainer

    from memorization_helpers import cloze_probe, repetitive_documents

    data = Dataset.from_list(
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in arithmetic()]
    )
    probe = cloze_probe(repetitive_documents())
    callback = GeometryCallback(every_n_steps=2, num_sequences=N_PROBES, chat_template=True, memorization=probe)
    trainer = SFTTrainer(
        model=lm(tokenizer),
        args=SFTConfig(max_length=48, **hf_args(tmp_path, max_steps=4)),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    board = assert_logged(tb_dir, callback, [0, 2, 4])
    for key in (
        "memorization/spearman",
        "memorization/pearson",
        "memorization/answer_logprob",
        "memorization/n_scored",
    ):
        assert sorted(board[key]) == [0, 2, 4], key
        for record in callback.history:
            assert board[key][record["step"]] == pytest.approx(record[key], rel=1e-6, nan_ok=True)
    assert set(board["memorization/n_scored"].values()) == {16.0}
    assert not any(tag.startswith("train/memorization") for tag in board)
    assert probe.index.queries == 16 * 3  # the ∞-gram side once per run
    logged = [entry["step"] for entry in trainer.state.log_history if "memorization/answer_logprob" in entry]
    assert logged == [0, 2, 4]


def test_dpo_trainer(tokenizer, tmp_path, tb_dir):
    from trl import DPOConfig, DPOTrainer

    model = lm(tokenizer)
    callback = GeometryCallback(every_n_steps=2, num_sequences=N_PROBES, chat_template=True)
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=DPOConfig(max_length=48, **hf_args(tmp_path, max_steps=4)),
        train_dataset=preference_dataset(),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    board = assert_logged(tb_dir, callback, [0, 2, 4])
    assert sorted(board["train/rewards/accuracies"]) == [1, 2, 3, 4]


def test_dpo_with_peft_measures_the_adapted_model_only(tokenizer, tmp_path, tb_dir):
    """PEFT with ref_model=None: DPO's reference passes run the same modules, adapters off."""
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    callback = GeometryCallback(every_n_steps=2, num_sequences=N_PROBES, chat_template=True, batch_size=16)
    trainer = DPOTrainer(
        model=lm(tokenizer),
        ref_model=None,
        args=DPOConfig(max_length=48, **hf_args(tmp_path, max_steps=2, learning_rate=5e-3)),
        train_dataset=preference_dataset(),
        processing_class=tokenizer,
        callbacks=[callback],
        peft_config=LoraConfig(r=4, lora_alpha=64, target_modules=["query_key_value"]),
    )
    trainer.train()
    assert [r["step"] for r in callback.history] == [0, 2]
    # The last value equals a measurement of the trained PEFT model, in the trainer's precision:
    # nothing of the reference passes leaked into it.
    probes = load_probes(tokenizer, num_sequences=N_PROBES, chat_template=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        direct = measure_geometry(trainer.model, probes, MeasureConfig(batch_size=16)).last
        with trainer.model.disable_adapter():
            base = measure_geometry(trainer.model, probes, MeasureConfig(batch_size=16)).last
    assert callback.history[-1]["geometry/rankme"] == pytest.approx(direct.rankme, rel=1e-6)
    assert abs(base.rankme - direct.rankme) > 1e-3 * direct.rankme  # the adapters did move the geometry
    assert callback.record()["provenance"]["precision"] == "bf16"


def test_grpo_trainer(tokenizer, tmp_path, tb_dir):
    from trl import GRPOConfig, GRPOTrainer

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in arithmetic(16)])

    def exact_answer(completions, answer, **_):
        return [1.0 if a in c[0]["content"] else 0.0 for c, a in zip(completions, answer)]

    callback = GeometryCallback(every_n_steps=2, num_sequences=N_PROBES, chat_template=True)
    config = GRPOConfig(num_generations=2, max_completion_length=4, **hf_args(tmp_path, max_steps=3))
    trainer = GRPOTrainer(
        model=lm(tokenizer),
        reward_funcs=exact_answer,
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    assert_logged(tb_dir, callback, [0, 2, 3])


def test_reward_trainer_sequence_classifier(tokenizer, tmp_path, tb_dir):
    from transformers import GPTNeoXForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    config = tiny_pythia_config(
        len(tokenizer), num_labels=1, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    torch.manual_seed(0)
    model = GPTNeoXForSequenceClassification(config)
    callback = GeometryCallback(every_n_steps=2, num_sequences=N_PROBES, chat_template=True)
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(max_length=48, **hf_args(tmp_path, max_steps=4)),
        train_dataset=preference_dataset(),
        processing_class=tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    assert_logged(tb_dir, callback, [0, 2, 4])


# ------------------------------------------------------------------- resume
def test_resume_keeps_history_across_a_schedule_change(tokenizer, tmp_path, tb_dir):
    first = GeometryCallback(every_n_steps=2, num_sequences=N_PROBES, tokenizer=tokenizer)
    hf_trainer(tokenizer, tmp_path, first, max_steps=6, save_strategy="steps", save_steps=4).train()
    assert [r["step"] for r in first.history] == [0, 2, 4, 6]
    saved = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    state = saved["stateful_callbacks"]["GeometryCallback"]["attributes"]["tracker_state"]
    assert [r["step"] for r in state["history"]] == [0, 2, 4]
    assert state["provenance"]["precision"] == "fp32" and state["provenance"]["n_probes"] == N_PROBES

    # A fresh callback with another schedule, as in a new process; transformers replaces it by an
    # instance built from the checkpoint; the user's object must still see the whole history.
    # It also adds an extra metric: not saved in state() (not JSON), so it must survive the swap.
    from feature_metrics import ParticipationRatio

    second = GeometryCallback(
        every_n_steps=3, num_sequences=N_PROBES, tokenizer=tokenizer, extra_metrics={"pr": ParticipationRatio()}
    )
    trainer = hf_trainer(tokenizer, tmp_path, second, max_steps=7, restore_callback_states_from_checkpoint=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)  # comparable (an extra metric changes no value)
        trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))
    running = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, GeometryCallback)]
    assert len(running) == 1 and running[0].history is second.history
    assert [r["step"] for r in second.history] == [0, 2, 4, 6, 7]
    assert ["geometry/pr" in r for r in second.history] == [False, False, False, True, True]
    for before, after in zip(first.history[:3], second.history[:3]):
        assert after["geometry/rankme"] == pytest.approx(before["geometry/rankme"], rel=1e-12)
    # Step 6 is re-measured, not compared: transformers 5.23 does not restore GPT-NeoX's lm_head
    # from a Trainer checkpoint (saved as embed_out.weight), so the resumed run trains differently.
    assert second.history[3]["geometry/n_samples"] == N_PROBES
    assert sorted(scalars(tb_dir)["geometry/rankme"]) == [0, 2, 4, 6, 7]


def test_state_round_trip_without_trainer():
    callback = GeometryCallback(
        every_n_steps=3, extra_steps=(1, 2), fit_range=(5, 50), layers=[1, 2], autocast="bf16", from_pretrained=True
    )
    callback.tracker.history.append({"step": 3, "geometry/rankme": 4.0})
    state = json.loads(json.dumps(callback.state()))
    restored = GeometryCallback.from_state(state)
    assert restored.history == callback.history and restored.tracker.every_n_steps == 3
    assert tuple(restored.tracker.extra_steps) == (1, 2)
    assert restored.tracker.config.fit_range == (5, 50) and restored.tracker.config.layers == (1, 2)
    assert restored.tracker.config.autocast == "bf16" and restored.tracker.from_pretrained_option is True
    # A checkpoint of the earlier format (history, phase, num_measurements as attributes).
    old = GeometryCallback.from_state(
        {"args": {}, "attributes": {"history": [{"step": 5}], "phase": "stable", "num_measurements": 1}}
    )
    assert old.history == [{"step": 5}] and old.phase == "stable"


# ------------------------------------------------------------------ failures
def _sabotage_probe_forwards(model, mode: str):
    """Break only eval-mode (probe) forwards: training is untouched."""

    def hook(module, _args, output):
        if module.training:
            return None
        if mode == "raise":
            raise RuntimeError("boom")
        output = output.clone()
        output[0] = float("nan")  # one probe row per batch
        return output

    return model.gpt_neox.final_layer_norm.register_forward_hook(hook)


@pytest.mark.parametrize("mode", ["nan", "raise"])
def test_bad_measurements_do_not_stop_training(tokenizer, tmp_path, tb_dir, mode):
    callback = GeometryCallback(every_n_steps=2, num_sequences=N_PROBES, batch_size=32)
    trainer = hf_trainer(tokenizer, tmp_path, callback, max_steps=2)
    _sabotage_probe_forwards(trainer.model, mode)
    with pytest.warns(GeometryWarning) as caught:
        trainer.train()
    assert trainer.state.global_step == 2
    if mode == "nan":  # the NaN rows (one per probe batch) are dropped and counted
        assert [r["geometry/n_samples"] for r in callback.history] == [N_PROBES - 3] * 2
    else:
        assert callback.history == []
        # One attempt per step: the final step is not retried in on_train_end.
        assert sum("failed and was skipped" in str(w.message) for w in caught) == 2


@pytest.mark.parametrize("mode", ["nan", "raise"])
def test_strict_raises(tokenizer, tmp_path, tb_dir, mode):
    callback = GeometryCallback(every_n_steps=2, num_sequences=N_PROBES, strict=True)
    trainer = hf_trainer(tokenizer, tmp_path, callback, max_steps=2)
    _sabotage_probe_forwards(trainer.model, mode)
    with pytest.raises((FloatingPointError, RuntimeError)):
        trainer.train()


def test_misconfiguration_is_loud(tokenizer, tmp_path, tb_dir):
    with pytest.raises(ValueError, match="batch_size"):
        GeometryCallback(batch_size=0)
    with pytest.raises(ValueError, match="tokens"):
        GeometryCallback(tokens="first")
    with pytest.raises(ValueError, match="autocast"):
        GeometryCallback(autocast="half")
    with pytest.raises(ValueError, match="taken by geomtrace"):
        GeometryCallback(extra_metrics={"rankme": _metric()})
    with pytest.raises(ValueError, match="torchmetrics.Metric"):
        GeometryCallback(extra_metrics={"pr": torch.nn.Identity()})
    trainer = hf_trainer(
        tokenizer, tmp_path, GeometryCallback(num_sequences=N_PROBES), processing_class=None, max_steps=1
    )
    with pytest.raises(ValueError, match="tokenizer"):
        trainer.train()


def _metric():
    from feature_metrics import ParticipationRatio

    return ParticipationRatio()


class NotAnHFModel(torch.nn.Module):
    """A trainable model with no Hugging Face LM inside."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, input_ids=None, labels=None, attention_mask=None):
        return {"loss": self.scale * input_ids.float().mean() / 1000}


def test_model_without_hf_lm_fails_once_and_model_getter_fixes_it(tokenizer, tmp_path, tb_dir):
    def trainer_for(callback):
        args = TrainingArguments(**hf_args(tmp_path, max_steps=2))
        return Trainer(
            model=NotAnHFModel(),
            args=args,
            train_dataset=lm_dataset(tokenizer),
            processing_class=tokenizer,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            callbacks=[callback],
        )

    with pytest.raises(ValueError, match="model_getter"):
        trainer_for(GeometryCallback(num_sequences=N_PROBES)).train()  # at train begin, before any step
    probed = lm(tokenizer)
    callback = GeometryCallback(every_n_steps=2, num_sequences=N_PROBES, model_getter=lambda model: probed)
    trainer_for(callback).train()
    assert [r["step"] for r in callback.history] == [0, 2]

    # The same callback object in a second trainer: a new stage, the first one kept.
    trainer_for(callback).train()
    assert [r["step"] for r in callback.stages[0]["history"]] == [0, 2] and len(callback.history) == 2
    assert callback.tracker.from_pretrained is True
    with pytest.raises(ValueError, match="model_getter"):
        GeometryCallback(model_getter="probed")


# -------------------------------------------------------------------- DDP
def test_torchrun_ddp_matches_single_process(tokenizer, tmp_path, free_port):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "TENSORBOARD_LOGGING_DIR": str(tmp_path / "tb"), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port),
            str(WORKER),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        env=env,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [json.loads((tmp_path / f"history.rank{rank}.json").read_text()) for rank in (0, 1)]
    # The moments are summed over ranks: every rank has the same values (its own wall time aside).
    values = [[{k: v for k, v in r.items() if k != "geometry/seconds"} for r in rank] for rank in ranks]
    assert values[0] == values[1]
    assert [r["step"] for r in ranks[0]] == [0, 2]

    from hf_ddp import MEASURE, model_for  # tests/workers/ is on sys.path (pyproject's pythonpath)

    probes = load_probes(tokenizer, num_sequences=N_PROBES)
    reference = measure_geometry(model_for(tokenizer), probes, MeasureConfig(**MEASURE), distributed=False)
    expected = reference.scalars()
    step0 = ranks[0][0]
    for key in ("geometry/rankme", "geometry/alpha", "geometry/alpha_r2"):
        assert step0[key] == pytest.approx(expected[key], rel=1e-6), key
    assert step0["geometry/n_samples"] == N_PROBES
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1  # rank 0 writes, rank 1 does not
    board = scalars(tmp_path / "tb")
    assert sorted(board["geometry/rankme"]) == [0, 2]


def test_readme_trl_quick_start_runs_on_cpu(tokenizer, tmp_path, tb_dir, monkeypatch):
    """The README's TRL snippet as written (TRL's bf16=True default used to fail on a CPU)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    snippet = next(block for block in blocks if "SFTTrainer(" in block)
    assert "GeometryCallback(Schedule(every_n_steps=100), probes=ProbeOptions(chat_template=True))" in snippet
    # fewer probes: fast
    snippet = snippet.replace(
        "ProbeOptions(chat_template=True)", f"ProbeOptions(chat_template=True, num_sequences={N_PROBES})"
    )
    dataset = Dataset.from_list(
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in arithmetic(8)]
    )
    monkeypatch.chdir(tmp_path)
    namespace = {"model": lm(tokenizer), "dataset": dataset, "tokenizer": tokenizer}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    callback = next(cb for cb in namespace["trainer"].callback_handler.callbacks if isinstance(cb, GeometryCallback))
    assert callback.history[0]["step"] == 0 and callback.history[-1]["step"] == namespace["trainer"].state.global_step
    assert callback.tracker.from_pretrained is True  # a TRL trainer: post-training


# ------------------------------------------------------------- option types (issue 15)
def test_numpy_options_survive_the_history_file_and_checkpoint_saves(tokenizer, tmp_path, tb_dir):
    import numpy as np

    path = tmp_path / "geometry.json"
    callback = GeometryCallback(
        every_n_steps=np.int64(2),
        num_sequences=np.int64(N_PROBES),
        seed=np.int64(1),
        eps=np.float32(1e-7),
        fit_range=(np.int64(2), np.int64(20)),
        measure_on_end=np.bool_(True),
        history_file=path,
        tokenizer=tokenizer,
    )
    # Was TypeError "Object of type int64 is not JSON serializable": at step 0 (history file),
    # else at the first checkpoint save (transformers writes state() into trainer_state.json).
    hf_trainer(tokenizer, tmp_path, callback, max_steps=2, save_strategy="steps", save_steps=2).train()
    assert [r["step"] for r in json.loads(path.read_text())["history"]] == [0, 2]
    saved = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    args = saved["stateful_callbacks"]["GeometryCallback"]["args"]
    # The option objects are saved as dicts of their fields (the shape the callback takes back).
    assert args["probes"]["num_sequences"] == N_PROBES and args["probes"]["seed"] == 1
    assert args["measure"]["fit_range"] == [2, 20] and args["schedule"]["every_n_steps"] == 2
    restored = GeometryCallback.from_state(saved["stateful_callbacks"]["GeometryCallback"])
    assert restored.tracker.probe_options == callback.tracker.probe_options
    assert [r["step"] for r in restored.history] == [0, 2]


def test_bad_probe_options_fail_at_construction_not_at_train():
    for kwargs, match in [
        ({"num_sequences": 0}, "num_sequences must be an int >= 2"),
        ({"min_tokens": 50, "max_tokens": 20}, "min_tokens <= max_tokens"),
        ({"every_n_steps": True}, "every_n_steps must be an int"),
        ({"measure_on_start": "no"}, "measure_on_start must be True or False"),
        ({"chat_template": "yes"}, "chat_template must be True or False"),
    ]:
        with pytest.raises(ValueError, match=match) as caught:
            GeometryCallback(**kwargs)
        assert "tokenizer" not in str(caught.value)


def test_resume_with_another_prefix_keeps_the_history(tokenizer, tmp_path, tb_dir):
    first = GeometryCallback(every_n_steps=2, num_sequences=N_PROBES, tokenizer=tokenizer)
    hf_trainer(tokenizer, tmp_path, first, max_steps=4, save_strategy="steps", save_steps=4).train()
    second = GeometryCallback(every_n_steps=2, num_sequences=N_PROBES, tokenizer=tokenizer, prefix="geo")
    trainer = hf_trainer(tokenizer, tmp_path, second, max_steps=6, restore_callback_states_from_checkpoint=True)
    with pytest.warns(GeometryWarning, match="under prefix 'geometry'; it continues under prefix 'geo'"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))
    assert [r["step"] for r in second.history] == [0, 2, 4, 6]
    assert all("geo/rankme" in r and not any(k.startswith("geometry/") for k in r) for r in second.history)
    assert second.tracker.prefix == "geo"


def test_sigterm_mid_measurement_keeps_completed_measurements_and_resume_continues(tokenizer, tmp_path, tb_dir):
    # tests/workers/live_signal.py: SIGTERM (the default action kills the process) inside the
    # measurement of step 3 of an 8-step run that checkpoints every 2 steps.
    worker = Path(__file__).parent / "workers" / "live_signal.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(worker), "hf", str(tmp_path)], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while not (tmp_path / "inside-1").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM
    history = json.loads((tmp_path / "geometry.json").read_text())["history"]
    assert [r["step"] for r in history] == [0, 1, 2]  # every completed measurement, none half
    assert all("geometry/rankme" in r and "geometry/seconds" in r for r in history)
    assert not list(tmp_path.glob(".geometry.json.*"))

    callback = GeometryCallback(
        every_n_steps=1, num_sequences=24, tokenizer=tokenizer, history_file=tmp_path / "geometry.json"
    )
    trainer = hf_trainer(
        tokenizer,
        tmp_path,
        callback,
        max_steps=3,
        output_dir=str(tmp_path / "run"),
        restore_callback_states_from_checkpoint=True,
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    resumed = json.loads((tmp_path / "geometry.json").read_text())["history"]
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]
    assert resumed[1]["geometry/rankme"] == history[1]["geometry/rankme"]
