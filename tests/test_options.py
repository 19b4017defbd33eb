"""Every field of every option object reaches every surface (issue 16).

The callbacks, the tracker, ``run_replay`` and ``geomtrace replay`` take the option objects of
:mod:`geomtrace.options`; the record and the transformers checkpoint state keep them. These tests
walk :func:`dataclasses.fields`, so a field added to an option set is checked everywhere at once:
one without a sample value below fails here, telling what to add.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import pytest

from geomtrace.options import DetectorOptions, LoadOptions, MeasureConfig, ProbeOptions, Schedule
from timeouts import SUBPROCESS_TIMEOUT

#: A value other than the default for every field (probes' source: a path JSON can hold).
SAMPLES: dict[type, dict[str, object]] = {
    Schedule: {
        "every_n_steps": 7,
        "extra_steps": (1, 3),
        "measure_on_start": False,
        "measure_on_end": False,
        "log_spectrum_every": 2,
    },
    MeasureConfig: {
        "layers": (0, 1),
        "tokens": "mean",
        "skip_first_token": True,
        "batch_size": 5,
        "spectrum": "singular",
        "eps": 1e-6,
        "fit_range": (2, 20),
        "max_components": 64,
        "rows_per_update": 100,
        "padding_side": "left",
        "autocast": "off",
        "source": "training",
        "uncertainty": "jackknife",
        "uncertainty_groups": 10,
    },
    ProbeOptions: {
        "source": "probes.txt",
        "num_sequences": 24,
        "min_tokens": 5,
        "max_tokens": 40,
        "seed": 3,
        "pool_size": 500,
        "chat_template": True,
        "text_column": "content",
        "split": "validation",
        "config_name": "wikitext-2-raw-v1",
        "system_prompt": "Be brief.",
    },
    DetectorOptions: {
        "smoothing": 5,
        "enter_threshold": 5.0,
        "exit_threshold": 1.0,
        "min_segment_length": 4,
        "noise_floor": 1e-2,
        "min_points": 6,
        "allow_warmup": False,
        "outlier_threshold": None,
        "flat_rankme_change": 0.2,
        "min_rankme_change": 0.1,
        "min_alpha_change": 0.1,
        "noise_factor": 3.0,
        "warmup_steps": 200,
        "warmup_fraction": 0.1,
        "transient_points": 4,
        "require_signature": False,
    },
    LoadOptions: {
        "dtype": "bf16",
        "device": "cpu",
        "device_map": "auto",
        "trust_remote_code": True,
        "model_builder": "my_module:build",
        "base_model": "org/base",
        "retries": 0,
        "keep_downloads": True,
    },
}
#: Fields that only apply together with another one.
REQUIRES: dict[tuple[type, str], dict[str, object]] = {
    (ProbeOptions, "system_prompt"): {"chat_template": True},
    (MeasureConfig, "skip_first_token"): {"tokens": "mean"},
    (MeasureConfig, "uncertainty_groups"): {"uncertainty": "jackknife"},
}
LIVE = {"schedule": Schedule, "measure": MeasureConfig, "probes": ProbeOptions, "detector": DetectorOptions}
CASES = [(cls, name) for cls in SAMPLES for name in cls.field_names()]


def _ids(case: tuple[type, str]) -> str:
    return f"{case[0].__name__}.{case[1]}"


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_every_field_has_a_sample_value(cls):
    missing = set(cls.field_names()) - set(SAMPLES[cls])
    assert not missing, f"add a non-default sample value for {cls.__name__}.{sorted(missing)} to SAMPLES"
    for name, value in SAMPLES[cls].items():
        assert value != getattr(cls(), name), f"the sample of {cls.__name__}.{name} is its default"


def _one(cls: type, name: str):
    value = SAMPLES[cls][name]
    return cls(**{name: value, **REQUIRES.get((cls, name), {})}), value


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_a_field_survives_the_dict_round_trip(case):
    cls, name = case
    options, _ = _one(cls, name)
    if cls is ProbeOptions and name == "source":
        assert options.to_dict()["source"] == "probes.txt"  # no such file: recorded as given
    assert cls.from_dict(options.to_dict()) == options


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in LIVE.values()], ids=_ids)
@pytest.mark.parametrize("owner", ["GeometryMonitor", "GeometryCallback", "GeometryTracker"])
def test_a_field_reaches_the_live_tracker(case, owner):
    cls, name = case
    group = next(g for g, c in LIVE.items() if c is cls)
    options, value = _one(cls, name)
    if owner == "GeometryMonitor":
        from geomtrace.callbacks import GeometryMonitor as make
    elif owner == "GeometryCallback":
        from geomtrace.callbacks import GeometryCallback as make
    else:
        from geomtrace.tracking import GeometryTracker as make
    tracker = getattr(make(**{group: options}), "tracker", None) or make(**{group: options})
    held = {"schedule": tracker.schedule, "measure": tracker.config, "probes": tracker.probe_options}
    held["detector"] = tracker.detector
    assert held[group] == options
    # ... and a dict of the fields (a config file, a checkpoint's saved arguments) does the same.
    again = getattr(make(**{group: options.to_dict()}), "tracker", None) or make(**{group: options.to_dict()})
    assert {"schedule": again.schedule, "measure": again.config, "probes": again.probe_options}.get(
        group, again.detector
    ) == options


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in LIVE.values()], ids=_ids)
def test_a_field_survives_the_transformers_checkpoint_state(case):
    from geomtrace.callbacks import GeometryCallback

    cls, name = case
    group = next(g for g, c in LIVE.items() if c is cls)
    options, _ = _one(cls, name)
    callback = GeometryCallback(**{group: options})
    restored = GeometryCallback(**callback.state()["args"])  # what transformers does on resume
    tracker = restored.tracker
    held = {"schedule": tracker.schedule, "measure": tracker.config, "probes": tracker.probe_options}
    assert {**held, "detector": tracker.detector}[group] == options


@pytest.mark.parametrize(
    "case", [c for c in CASES if c[0] in (Schedule, MeasureConfig, ProbeOptions) and c != (ProbeOptions, "source")]
)
def test_a_flat_keyword_of_0_1_still_works_with_one_deprecation_warning(case):
    from geomtrace.callbacks import GeometryMonitor

    cls, name = case
    group = {Schedule: "schedule", MeasureConfig: "measure", ProbeOptions: "probes"}[cls]
    options, value = _one(cls, name)
    flat = {name: value, **REQUIRES.get((cls, name), {})}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = GeometryMonitor(**flat)
    deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1 and f"{group}={cls.__name__}({name}=...)" in str(deprecations[0].message)
    tracker = monitor.tracker
    assert {"schedule": tracker.schedule, "measure": tracker.config, "probes": tracker.probe_options}[group] == options


def test_an_unknown_keyword_is_a_type_error_with_a_suggestion():
    from geomtrace.callbacks import GeometryMonitor

    with pytest.raises(Exception, match="unexpected keyword argument 'num_sequence'; did you mean 'num_sequences'"):
        GeometryMonitor(num_sequence=8)


def test_the_callbacks_take_at_most_15_parameters():
    from geomtrace.callbacks import GeometryCallback, GeometryMonitor

    for cls in (GeometryMonitor, GeometryCallback):
        parameters = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        assert len(parameters) <= 15, (cls.__name__, parameters)


def test_run_replay_refuses_the_training_source(tmp_path):
    from geomtrace.replay import run_replay

    with pytest.raises(ValueError, match="replay has no training forward"):
        run_replay([], tmp_path / "out", measure=MeasureConfig(source="training"))


def test_run_replay_takes_the_option_objects():
    from geomtrace.replay import run_replay

    hints = inspect.signature(run_replay).parameters
    for group, cls in {"measure": MeasureConfig, "probes": ProbeOptions, "load": LoadOptions}.items():
        assert cls.__name__ in str(hints[group].annotation), group


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c[0] in (MeasureConfig, ProbeOptions, LoadOptions) and c != (ProbeOptions, "source")],
    ids=_ids,
)
def test_a_field_reaches_geomtrace_replay_as_a_group_option(case):
    from geomtrace import cli

    cls, name = case
    group = {MeasureConfig: "measure", ProbeOptions: "probes", LoadOptions: "load"}[cls]
    options, value = _one(cls, name)
    text = {
        tuple: lambda v: ",".join(map(str, v)) if name == "layers" else ":".join(map(str, v)),
        bool: lambda v: str(v).lower(),
    }.get(type(value), str)(value)
    argv = ["replay", f"--{group}.{name}", text]
    for other, needed in REQUIRES.get((cls, name), {}).items():
        argv += [f"--{group}.{other}", str(needed).lower()]
    args = cli.parse_args(argv)
    build = {"measure": cli.measure_config, "probes": cli.probe_options, "load": cli.load_options}[group]
    if group == "load" and name == "model_builder":
        with pytest.raises(cli.UsageError, match="my_module"):  # resolved before any load: not importable here
            build(args)
        return
    if group == "measure" and name == "source":
        # Replay has no training forward to hook: refused, saying what to do.
        with pytest.raises(cli.UsageError, match="--measure.source training: .*replay has no training forward"):
            build(args)
        return
    assert getattr(build(args), name) == getattr(options, name)


def test_the_option_module_imports_neither_torch_nor_numpy():
    import subprocess
    import sys

    code = "import sys, geomtrace.options; print([m for m in ('torch', 'numpy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_each_option_set_is_declared_once():
    # The classes the other modules name are these very objects (no second copy to drift).
    from geomtrace import measure, phases, probes, replay, tracking

    assert tracking.ProbeOptions is probes.ProbeOptions is replay.ProbeOptions is ProbeOptions
    assert measure.MeasureConfig is MeasureConfig and phases.DetectorOptions is DetectorOptions
    assert replay.LoadOptions is LoadOptions
    assert all(dataclasses.is_dataclass(cls) for cls in SAMPLES)


def test_the_deprecation_warning_points_at_the_users_line():
    # Python shows a DeprecationWarning by default only when it is attributed to __main__: the
    # warning must name the caller's line, not a geomtrace frame, whatever the layers between.
    from geomtrace.callbacks import GeometryCallback, GeometryMonitor
    from geomtrace.tracking import GeometryTracker

    for make in (GeometryMonitor, GeometryCallback, GeometryTracker):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make(every_n_steps=3)
        (warning,) = [w for w in caught if issubclass(w.category, DeprecationWarning)]
        assert warning.filename == __file__, (make.__name__, warning.filename)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in (MeasureConfig, ProbeOptions, LoadOptions)], ids=_ids)
def test_a_field_reaches_run_replay(case):
    # run_replay resolves its options in the plan; what it holds is what it measures with.
    from geomtrace.replay.plan import resolve_options

    cls, name = case
    group = {MeasureConfig: "measure", ProbeOptions: "probes", LoadOptions: "load"}[cls]
    options, _ = _one(cls, name)
    given = {"measure": None, "probes": None, "load": None, group: options}
    if (cls, name) == (LoadOptions, "model_builder"):
        given["load"] = LoadOptions(model_builder=print)  # a callable: checked without importing anything
        options = given["load"]
    if (cls, name) == (MeasureConfig, "source"):  # replay has no training forward: refused, with the fix
        with pytest.raises(ValueError, match="replay has no training forward"):
            resolve_options(given["measure"], given["probes"], given["load"], None, {})
        return
    resolved = resolve_options(given["measure"], given["probes"], given["load"], None, {})
    held = {"measure": resolved.measure, "probes": resolved.probe_options, "load": resolved.load}[group]
    assert getattr(held, name) == getattr(options, name)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in (MeasureConfig, ProbeOptions)], ids=_ids)
def test_a_field_survives_the_provenance_round_trip(case):
    # What a run records is what `geomtrace replay --like RUN` measures with: the probe options and
    # the value-changing measurement options (the speed options are the replay's own choice).
    from geomtrace._provenance import probe_set_provenance
    from geomtrace.probes import ProbeSet
    from geomtrace.replay.provenance import like_settings

    cls, name = case
    options, _ = _one(cls, name)
    measure = options if cls is MeasureConfig else MeasureConfig()
    probe_options = options if cls is ProbeOptions else ProbeOptions()
    probes = ProbeSet([[1, 2, 3], [4, 5, 6]], "two probes", 0, options=probe_options)
    provenance = probe_set_provenance(probes, measure, "fp32", probe_options)
    settings = like_settings(provenance)
    if (cls, name) == (ProbeOptions, "source"):  # no such file here: named, for --probe-file
        assert "probes.txt" in str(settings.missing_source)
    elif cls is ProbeOptions:
        assert ProbeOptions(**settings.probe_options) == options
    elif name in MeasureConfig.identity_fields():
        assert getattr(MeasureConfig(**settings.measure), name) == getattr(options, name)
    else:  # speed and precision options are the replay's; precision follows the recorded forward
        assert name not in settings.measure
