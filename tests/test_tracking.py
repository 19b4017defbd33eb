"""GeometryTracker: schedule, failures, phases and state, without a training framework."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from geomtrace import GeometryWarning, tracking
from geomtrace.measure import GeometryResult, LayerGeometry, MeasureConfig
from geomtrace.probes import ProbeSet, load_probes
from geomtrace.tiny import build_tiny_model
from geomtrace.tracking import GeometryTracker, ProbeOptions


def test_schedule_start_periodic_extra_and_end():
    tracker = GeometryTracker(every_n_steps=10, extra_steps=(1, 2, 4))
    assert tracker.due(0, "start") and not tracker.due(3, "start")
    assert [s for s in range(1, 31) if tracker.due(s, "step")] == [1, 2, 4, 10, 20, 30]
    assert tracker.due(33, "end")
    tracker.history.append({"step": 33})
    assert not tracker.due(33, "end")  # never twice at one step
    off = GeometryTracker(every_n_steps=0, measure_on_start=False, measure_on_end=False)
    assert not off.due(0, "start") and not off.due(10, "step") and not off.due(10, "end")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": -1}, "every_n_steps"),
        ({"extra_steps": (0,)}, "extra_steps"),
        ({"log_spectrum_every": -2}, "log_spectrum_every"),
        ({"config": MeasureConfig(batch_size=0)}, "batch_size"),
        ({"from_pretrained": "yes"}, "from_pretrained"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeometryTracker(**kwargs)


def test_probes_must_be_a_probe_set_and_tokenizer_is_required():
    with pytest.raises(TypeError, match=r"ProbeOptions\(source="):
        GeometryTracker(probes=["a text"])
    with pytest.raises(ValueError, match="tokenizer"):
        GeometryTracker().prepare(None)


def test_measure_records_history_phase_and_state(tokenizer):
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer)
    tracker = GeometryTracker(every_n_steps=1, probe_options=ProbeOptions(num_sequences=24), log_spectrum_every=2)
    tracker.prepare(tokenizer)
    outcomes = [tracker.measure(model, step) for step in range(6)]
    assert [m.step for m in outcomes] == list(range(6))
    assert [m.log_spectrum for m in outcomes] == [True, False, True, False, True, False]
    assert all(m.scalars["geometry/n_samples"] == 24 for m in outcomes)
    # The weights never change, so the geometry is flat: once enough history exists, "stable".
    assert outcomes[-1].phase == "stable" and outcomes[-1].scalars["geometry/phase"] == 0.0
    restored = GeometryTracker()
    restored.load_state_dict(tracker.state_dict())
    assert restored.history == tracker.history and restored.phase == "stable"
    assert "RankMe" in tracker.summary()


def test_a_rewound_run_replaces_its_future_records(tokenizer):
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer)
    tracker = GeometryTracker(
        every_n_steps=1, probe_options=ProbeOptions(num_sequences=24)
    )  # N - 1 >= 16: alpha defined
    tracker.prepare(tokenizer)
    for step in (0, 10, 20, 30):
        tracker.measure(model, step)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)  # phase detection must not fail on it
        tracker.measure(model, 20)  # e.g. resumed from the step-20 checkpoint
    assert [r["step"] for r in tracker.history] == [0, 10, 20]


def test_failure_warns_and_strict_raises(tokenizer):
    probes = load_probes(tokenizer, num_sequences=8)
    tracker = GeometryTracker(probes=probes)
    broken = torch.nn.Linear(2, 2)  # not a language model: measurement fails
    with pytest.warns(GeometryWarning, match="failed and was skipped"):
        assert tracker.measure(broken, 3) is None
    assert tracker.history == []
    with pytest.raises(ValueError, match="no Hugging Face PreTrainedModel"):
        GeometryTracker(probes=probes, strict=True).measure(broken, 3)


def test_summary_without_history():
    assert "no geometry" in GeometryTracker().summary()


# ------------------------------------------------------------------ synthetic measurements
def fake_result(
    rankme: float,
    alpha: float,
    *,
    layers=(2,),
    num_layers: int = 2,
    precision: str = "fp32",
    fingerprint: str = "f" * 16,
    config: MeasureConfig | None = None,
) -> GeometryResult:
    """A GeometryResult as measure_geometry would return it, with chosen values (no model)."""
    geometry = {
        layer: LayerGeometry(layer=layer, rankme=rankme, alpha=alpha, r2=0.9, n_samples=64, dim=32) for layer in layers
    }
    return GeometryResult(
        layers=geometry,
        num_layers=num_layers,
        probe_description="test probes",
        probe_fingerprint=fingerprint,
        n_probes=64,
        seconds=0.0,
        config=config or MeasureConfig(),
        precision=precision,
    )


class Owner:
    """Stands for a trainer (begin() tells trainers apart by identity)."""


def scripted(monkeypatch, results):
    """Make tracking.measure_geometry return ``results`` one after the other."""
    queue = list(results)
    monkeypatch.setattr(tracking, "measure_geometry", lambda model, probes, config, **options: queue.pop(0))


def falling(n: int = 8, **kwargs) -> list[GeometryResult]:
    """RankMe falls by 20% per measurement while alpha rises: a collapse."""
    return [fake_result(30 * 0.8**i, 1 + 0.1 * i, **kwargs) for i in range(n)]


PROBES = ProbeSet([[1, 2, 3], [4, 5, 6]], "two probes", 0)


@pytest.mark.parametrize(("from_pretrained", "expected"), [(False, "warmup"), (True, "compression-seeking")])
def test_post_training_is_never_warmup(monkeypatch, from_pretrained, expected):
    scripted(monkeypatch, falling())
    tracker = GeometryTracker(probes=PROBES, from_pretrained=from_pretrained)
    tracker.begin(Owner(), 0)
    phases = [tracker.measure(None, 10 * i).phase for i in range(8)]
    assert phases[-1] == expected
    assert "warmup" not in phases or not from_pretrained


def test_from_pretrained_automatic_rules():
    owner = Owner()
    tracker = GeometryTracker(probes=PROBES)
    assert tracker.begin(owner, 0) and tracker.from_pretrained is False  # says what it assumed
    tracker = GeometryTracker(probes=PROBES)
    tracker.begin(owner, 0, pretrained_hint=(True, "a TRL SFTTrainer"))
    assert tracker.from_pretrained is True and "TRL" in tracker.from_pretrained_reason
    tracker = GeometryTracker(probes=PROBES)
    tracker.begin(owner, 500)  # resumed without the earlier history: no initialisation to see
    assert tracker.from_pretrained is True
    tracker = GeometryTracker(probes=PROBES, from_pretrained=False)  # the option always wins
    assert tracker.begin(owner, 500, pretrained_hint=(True, "x")) == [] and tracker.from_pretrained is False


def test_trajectory_is_the_deepest_tracked_layer(monkeypatch):
    """layers=[0, 1] of a 2-layer model: summary, phases and tags follow layer 1."""
    scripted(monkeypatch, falling(6, layers=(0, 1), num_layers=2))
    tracker = GeometryTracker(probes=PROBES, config=MeasureConfig(layers=(0, 1)))
    tracker.begin(Owner(), 0)
    outcomes = [tracker.measure(None, step) for step in range(0, 60, 10)]
    assert "geometry/rankme" not in outcomes[0].scalars  # no final layer tracked
    assert outcomes[-1].phase is not None
    assert "geometry/layer1/phase" in outcomes[-1].scalars and "geometry/phase" not in outcomes[-1].scalars
    texts = [m.text for m in outcomes if m.text]
    assert texts and all(set(text) == {"geometry/layer1/phase"} for text in texts)
    assert tracker.summary().startswith("layer 1 RankMe 30.0 (step 0)")
    assert tracker.record()["provenance"]["trajectory"]["rankme"] == "geometry/layer1/rankme"


def test_one_attempt_per_step_and_final_spectrum(monkeypatch):
    calls = []

    def failing(model, probes, config, **options):
        calls.append(1)
        raise RuntimeError("boom")

    monkeypatch.setattr(tracking, "measure_geometry", failing)
    tracker = GeometryTracker(probes=PROBES, every_n_steps=2)
    tracker.begin(Owner(), 0)
    with pytest.warns(GeometryWarning, match="failed and was skipped"):
        for step, event in [(2, "step"), (2, "step"), (2, "end")]:  # micro-batches, then train end
            if tracker.due(step, event):
                tracker.measure(None, step)
    assert len(calls) == 1
    scripted(monkeypatch, falling(3))
    tracker = GeometryTracker(probes=PROBES, every_n_steps=1, log_spectrum_every=5)
    tracker.begin(Owner(), 0)
    assert [tracker.measure(None, s, final=s == 2).log_spectrum for s in range(3)] == [True, False, True]


def test_resume_keeps_history_and_names_what_changed(monkeypatch):
    scripted(monkeypatch, falling(3))
    first = GeometryTracker(probes=PROBES, every_n_steps=10)
    first.begin(Owner(), 0)
    for step in (0, 10, 20):
        first.measure(None, step)
    saved = json.loads(json.dumps(first.state_dict()))

    # Another schedule: the history is kept and nothing is said.
    scripted(monkeypatch, [fake_result(5.0, 2.0)])
    second = GeometryTracker(probes=PROBES, every_n_steps=7)
    second.load_state_dict(saved)
    second.begin(Owner(), 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        second.measure(None, 21)
    assert [r["step"] for r in second.history] == [0, 10, 20, 21] and not second.stages

    # Other layers and another precision: kept, but warned about by name; phases restart.
    changed = MeasureConfig(layers=(1, 2))
    scripted(monkeypatch, [fake_result(5.0, 2.0, layers=(1, 2), precision="bf16", config=changed)])
    third = GeometryTracker(probes=PROBES, config=changed)
    third.load_state_dict(saved)
    third.begin(Owner(), 20)
    with pytest.warns(GeometryWarning, match=r"precision 'fp32' -> 'bf16'.*layers 'last' -> \[1, 2\]"):
        third.measure(None, 30)
    assert [r["step"] for r in third.history] == [0, 10, 20, 30]
    record = third.record()
    assert record["provenance_changes"][0]["step"] == 30 and third.comparable_from == 30
    assert record["provenance"]["precision"] == "bf16"


def test_a_reused_tracker_keeps_earlier_stages(monkeypatch):
    scripted(monkeypatch, falling(4))
    tracker = GeometryTracker(probes=PROBES)
    pretraining, sft = Owner(), Owner()
    tracker.begin(pretraining, 0)
    tracker.measure(None, 0)
    tracker.measure(None, 10)
    assert tracker.begin(pretraining, 10) == []  # the same trainer going on: same stage
    messages = tracker.begin(sft, 0)
    assert any("stage 2" in m for m in messages)
    assert [r["step"] for r in tracker.stages[0]["history"]] == [0, 10] and tracker.history == []
    assert tracker.from_pretrained is True  # a later stage starts from the trained model
    tracker.measure(None, 0)
    restored = GeometryTracker(probes=PROBES)
    restored.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert len(restored.stages) == 1 and [r["step"] for r in restored.history] == [0]


def test_record_is_self_contained_json(tmp_path, monkeypatch):
    scripted(monkeypatch, [fake_result(5.0, 2.0, precision="bf16")])
    path = tmp_path / "run" / "geometry.json"
    tracker = GeometryTracker(every_n_steps=3, history_file=path, probe_options=ProbeOptions(num_sequences=2))
    tracker.probes = PROBES
    tracker.begin(Owner(), 0)
    measurement = tracker.measure(None, 0)
    assert any("bf16" in note for note in measurement.notes)  # the precision is said, not only recorded
    assert measurement.scalars["geometry/seconds"] >= 0
    tracker.save(tokens_per_step=4096)
    payload = json.loads(path.read_text())
    provenance = payload["provenance"]
    assert provenance["precision"] == "bf16" and provenance["probe_fingerprint"] == "f" * 16
    assert provenance["measure_config"]["fit_range"] == [12, 100]
    assert provenance["probe_options"]["num_sequences"] == 2 and provenance["probe_options"]["source"] is None
    assert payload["tokens_per_step"] == 4096 and payload["schedule"]["every_n_steps"] == 3
    assert payload["history"][0]["step"] == 0 and payload["cost"]["measurements"] == 1
    assert list(path.parent.iterdir()) == [path]  # written atomically: no temporary file left
    with pytest.raises(ValueError, match="directory"):
        GeometryTracker(history_file=tmp_path)


def test_check_model_fails_once_with_a_clear_message(tokenizer):
    tracker = GeometryTracker(config=MeasureConfig(layers=(7,)))
    with pytest.raises(ValueError, match="PreTrainedModel"):
        tracker.check_model(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="7"):
        tracker.check_model(build_tiny_model("gpt_neox", tokenizer=tokenizer))


def test_unwritable_history_file_warns_once_and_strict_raises(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    scripted(monkeypatch, falling(2))
    tracker = GeometryTracker(probes=PROBES, history_file=blocker / "geometry.json")
    tracker.begin(Owner(), 0)
    with pytest.warns(GeometryWarning, match="writing the history") as caught:
        for step in (0, 10):
            tracker.measure(None, step)
            tracker.autosave()
    assert len([w for w in caught if "writing the history" in str(w.message)]) == 1
    assert len(tracker.history) == 2  # measuring went on
    with pytest.raises(OSError):
        GeometryTracker(probes=PROBES, history_file=blocker / "geometry.json", strict=True).autosave()


# ------------------------------------------------------------- option types (issue 15)
def _gpt2(tokenizer, n_positions: int = 32):
    import transformers

    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=n_positions,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_numpy_scalar_options_are_plain_python_and_the_record_is_json(tokenizer, tmp_path):
    import numpy as np

    path = tmp_path / "geometry.json"
    tracker = GeometryTracker.from_options(
        num_sequences=np.int64(24),
        min_tokens=np.int32(11),
        max_tokens=np.int64(64),
        seed=np.int64(3),
        eps=np.float32(1e-7),
        fit_range=(np.int64(2), np.int64(20)),
        max_components=np.int64(50),
        batch_size=np.int64(8),
        layers=[np.int64(1), np.int64(2)],
        every_n_steps=np.int64(5),
        extra_steps=np.array([1, 2]),
        log_spectrum_every=np.int64(2),
        measure_on_start=np.bool_(True),
        strict=np.bool_(False),
        history_file=path,
    )
    config, options = tracker.config, tracker.probe_options
    assert type(tracker.every_n_steps) is int and tracker.extra_steps == {1, 2}
    assert type(tracker.measure_on_start) is bool and type(tracker.strict) is bool
    assert config.eps == 1e-7 and type(config.eps) is float and config.fit_range == (2, 20)
    assert all(type(v) is int for v in (*config.fit_range, *config.layers, config.max_components, config.batch_size))
    assert all(type(getattr(options, n)) is int for n in ("num_sequences", "min_tokens", "max_tokens", "seed"))
    tracker.prepare(tokenizer)
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer)
    assert tracker.measure(model, 0) is not None
    tracker.autosave()  # crashed: Object of type int64 is not JSON serializable
    record = json.loads(path.read_text())
    assert record["provenance"]["probe_options"]["num_sequences"] == 24
    assert record["provenance"]["measure_config"]["fit_range"] == [2, 20]
    json.dumps(tracker.state_dict(), allow_nan=True)  # what transformers writes into trainer_state.json


def test_history_json_never_raises_on_numpy_values(tmp_path):
    import numpy as np

    path = tmp_path / "geometry.json"
    tracker = GeometryTracker(history_file=path)
    tracker.history.append({"step": np.int64(3), "geometry/rankme": np.float32(4.5), "geometry/eig": np.ones(2)})
    tracker.provenance = {"n_probes": np.int64(8), "trajectory": {}, "odd": object()}
    tracker.autosave()
    saved = json.loads(path.read_text())
    assert saved["history"] == [{"step": 3, "geometry/rankme": 4.5, "geometry/eig": [1.0, 1.0]}]
    assert saved["provenance"]["n_probes"] == 8 and saved["provenance"]["odd"].startswith("<object")
    state = json.loads(json.dumps({k: v for k, v in tracker.state_dict().items() if k != "provenance"}))
    assert state["history"][0]["step"] == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_steps": True}, TypeError, "every_n_steps must be an int >= 0.*got True.*not True/False"),
        ({"log_spectrum_every": 2.5}, TypeError, "log_spectrum_every.*whole number"),
        ({"extra_steps": 5}, TypeError, "extra_steps must be a sequence of ints"),
        ({"extra_steps": (True,)}, TypeError, "extra_steps"),
        ({"measure_on_start": "no"}, TypeError, "measure_on_start must be True or False.*'no'.*not a flag"),
        ({"measure_on_end": 1}, TypeError, "measure_on_end must be True or False"),
        ({"track_phases": "false"}, TypeError, "track_phases"),
        ({"strict": "yes"}, TypeError, "strict"),
        ({"from_pretrained": "yes"}, TypeError, "from_pretrained must be True, False or None"),
        ({"fit_range": (1.5, 10)}, TypeError, r"fit_range\[0\] must be an int, got 1.5.*whole number"),
        ({"fit_range": 12}, TypeError, "fit_range must be two ints"),
        ({"fit_range": (20, 10)}, ValueError, "fit_range must be two ints.*first <= last"),
        ({"batch_size": True}, TypeError, "batch_size"),
        ({"skip_first_token": "no"}, TypeError, "skip_first_token"),
        ({"layers": [True]}, TypeError, "layers"),
        ({"eps": "1e-7"}, TypeError, "eps must be a finite number"),
        ({"prefix": ""}, ValueError, "prefix must be a non-empty string"),
        ({"prefix": "geo/"}, ValueError, "prefix must be a tag"),
        ({"prefix": 3}, TypeError, "prefix"),
        ({"num_sequences": 0}, ValueError, "num_sequences must be an int >= 2"),
        ({"num_sequences": 1}, ValueError, "num_sequences must be an int >= 2"),
        ({"num_sequences": 16.5}, TypeError, "num_sequences.*whole number"),
        ({"min_tokens": 0}, ValueError, "min_tokens must be an int >= 1"),
        ({"min_tokens": 20, "max_tokens": 10}, ValueError, "need min_tokens <= max_tokens"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0"),
        ({"chat_template": "no"}, TypeError, "chat_template must be True or False"),
        ({"history_file": 5}, TypeError, "history_file must be a file path"),
    ],
)
def test_options_of_the_wrong_type_or_range_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match) as caught:
        GeometryTracker.from_options(**kwargs)
    assert isinstance(caught.value, ValueError)  # every option error is also a ValueError
    assert "tokenizer" not in str(caught.value)  # not the old, wrong hint at train()


def test_integral_floats_and_numpy_bools_are_taken():
    import numpy as np

    tracker = GeometryTracker.from_options(every_n_steps=10.0, num_sequences=np.float64(32), track_phases=np.bool_(0))
    assert tracker.every_n_steps == 10 and type(tracker.every_n_steps) is int
    assert tracker.probe_options.num_sequences == 32 and tracker.track_phases is False


def test_probes_longer_than_the_model_positions_are_rebuilt_with_one_warning(tokenizer):
    from geomtrace.tracking import ProbeLengthError

    model = _gpt2(tokenizer, n_positions=32)
    tracker = GeometryTracker(every_n_steps=1, probe_options=ProbeOptions(num_sequences=24, max_tokens=128))
    tracker.prepare(tokenizer)
    assert tracker.probes.longest() > 32
    with pytest.warns(GeometryWarning, match=r"longer than the model's 32 positions.*rebuilt with max_tokens=32"):
        tracker.check_model(model)
        tracker.fit_probes(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        outcomes = [tracker.measure(model, step) for step in (0, 1)]  # was IndexError at every step
    assert all(m is not None and m.scalars["geometry/n_samples"] == 24 for m in outcomes)
    assert tracker.probes.longest() == 32 and tracker.probe_options.max_tokens == 32
    assert tracker.provenance["probe_options"]["max_tokens"] == 32  # replay --like rebuilds the same probes
    assert tracker.probes.fingerprint() == ProbeOptions(num_sequences=24, max_tokens=32).build(tokenizer).fingerprint()

    # A ready probe set is cut (with the warning), at the first measurement when nothing checked before.
    ready = GeometryTracker(probes=load_probes(tokenizer, num_sequences=24, max_tokens=64))
    with pytest.warns(GeometryWarning, match="cut to their first 32 tokens"):
        assert ready.measure(model, 0) is not None
    assert ready.probes.longest() == 32 and ready.probes.description.endswith("cut=32")

    short = GeometryTracker(probe_options=ProbeOptions(num_sequences=8, min_tokens=40, max_tokens=64))
    short.prepare(tokenizer)
    with pytest.raises(ProbeLengthError, match="at most 32 positions.*min_tokens=40"):
        short.fit_probes(model)


def test_resume_under_another_prefix_keeps_the_history_renamed(tokenizer):
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer)
    first = GeometryTracker(
        every_n_steps=1, probe_options=ProbeOptions(num_sequences=24), config=MeasureConfig(layers=(1, 2))
    )
    first.prepare(tokenizer)
    for step in (0, 1, 2):
        first.measure(model, step)
    state = first.state_dict()
    resumed = GeometryTracker(
        every_n_steps=1, probe_options=ProbeOptions(num_sequences=24), config=MeasureConfig(layers=(1, 2)), prefix="geo"
    )
    with pytest.warns(GeometryWarning, match="logged under prefix 'geometry'; it continues under prefix 'geo'"):
        resumed.load_state_dict(state)
    assert len(resumed.history) == 3
    assert all("geo/rankme" in r and "geo/layer1/rankme" in r and "geometry/rankme" not in r for r in resumed.history)
    assert resumed.trajectory_keys()["rankme"] == "geo/rankme"
    resumed.prepare(tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)  # the same measurement: nothing else to say
        resumed.measure(model, 3)
    assert [r["step"] for r in resumed.history] == [0, 1, 2, 3] and "RankMe" in resumed.summary()
    same = GeometryTracker()
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        same.load_state_dict(state)  # the same prefix: no warning
    assert same.history == first.history


def test_a_ready_probe_set_records_the_options_that_rebuild_it(tmp_path, tokenizer, monkeypatch):
    # A ProbeSet passed to a callback recorded probe_options: null, so --like could not rebuild
    # it. One built by load_probes keeps its options; a file is recorded by its absolute path.
    texts = tmp_path / "probes.txt"
    texts.write_text("\n".join(f"probe text number {i} with a few more words" for i in range(12)))
    monkeypatch.chdir(tmp_path)
    probes = load_probes(tokenizer, "probes.txt", num_sequences=6, min_tokens=2, max_tokens=12, seed=3)
    recorded = GeometryTracker(probes=probes).recorded_probe_options()
    assert recorded is not None and recorded["source"] == str(texts.resolve())
    assert (recorded["num_sequences"], recorded["max_tokens"], recorded["seed"]) == (6, 12, 3)
    rebuilt = ProbeOptions.from_dict(recorded).build(tokenizer)
    assert rebuilt.fingerprint() == probes.fingerprint()
    assert GeometryTracker(probes=PROBES).recorded_probe_options() is None  # a hand-made set: nothing to say


@pytest.mark.parametrize("spectrum", ["covariance", "singular"])
def test_a_live_history_says_whether_its_values_were_centred(tmp_path, spectrum):
    """`geomtrace phases history.json` reads the spectrum from the history's provenance, so its
    phase table can say centred (covariance) or uncentred (singular)."""
    from geomtrace.replay.results import load_trajectory

    model = build_tiny_model("gpt_neox", vocab_size=300, hidden_size=32)
    probes = ProbeSet([[i % 290 + 3 for i in range(k, k + 9)] for k in range(12)], "twelve probes", 0)
    path = tmp_path / "geometry.json"
    tracker = GeometryTracker(probes=probes, measure=MeasureConfig(spectrum=spectrum), history_file=path)
    for step in (0, 1):
        tracker.measure(model, step)
    tracker.autosave()
    assert load_trajectory(path).spectrum == spectrum
