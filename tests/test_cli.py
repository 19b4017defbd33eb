"""The geomtrace command line: options, config files, presets, errors, plot/export/phases."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from geomtrace.cli import build_parser, main, measure_config, parse_args, probe_options, replay_checkpoints
from geomtrace.measure import MeasureConfig
from geomtrace.replay.hub import PYTHIA_PAPER_REVISIONS
from geomtrace.replay.store import ResultsStore, import_seed_npy
from timeouts import SUBPROCESS_TIMEOUT

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000, 16000, 32000, 64000]


def _trajectory(step: int) -> tuple[float, float]:
    """A made-up RankMe / alpha path: fall (warmup), rise (entropy), fall (compression)."""
    x = math.log1p(step)
    if x < 3:
        rankme = 200 - 40 * x
    elif x < 8:
        rankme = 80 + 60 * (x - 3)
    else:
        rankme = 380 - 70 * (x - 8)
    return rankme, 1.0 + 0.001 * (400 - rankme)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A replay output folder with two layers written through the real store."""
    store = ResultsStore(tmp_path / "run")
    for step in STEPS:
        rankme, alpha = _trajectory(step)
        records = [
            {
                "key": f"step{step}",
                "step": step,
                "revision": f"step{step}",
                "tokens": step * 1000,
                "stage": None,
                "layer": layer,
                "rankme": rankme / (3 - layer),
                "alpha": alpha,
                "r2": 0.9,
                "n_samples": 512,
                "dim": 64,
                "model": "org/model",
                "probe": "p",
                "probe_fingerprint": "abc",
                "seconds": 0.1,
                "n_params": 10_000,
            }
            for layer in (1, 2)
        ]
        spectra = {layer: np.linspace(1.0, 0.01, 16) * (step + 1) for layer in (1, 2)}
        store.append(records, spectra)
    return store.output_dir


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as err:  # argparse errors
        return int(err.code)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("command", ["replay", "plot", "export", "phases", "probes"])
def test_help_documents_every_option(command, capsys):
    with pytest.raises(SystemExit) as err:
        main([command, "--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    options = [s for a in sub._actions for s in a.option_strings if s.startswith("--")]
    assert len(options) > 3
    for option in options:
        assert option in text
        action = next(a for a in sub._actions if option in a.option_strings)
        assert action.help, f"{command} {option} has no help text"


def test_config_file_then_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model: org/model\nrevisions: [step0, step1]\nmeasure:\n  batch_size: 8\n  layers: [1, 2]\n"
        "  fit_range: [5, 50]\nprobes:\n  num_sequences: 100\noutput: out\nno-tensorboard: true\n"
    )
    # The config file nests like a run's record; the flat flags are aliases of the group options.
    args = parse_args(["replay", "--config", str(cfg), "--batch-size", "4", "--measure.autocast", "bf16"])
    assert args.measure["batch_size"] == 4 and args.probes["num_sequences"] == 100 and args.no_tensorboard is True
    config = measure_config(args)
    assert config == MeasureConfig(layers=(1, 2), batch_size=4, fit_range=(5, 50), autocast="bf16")
    ckpts, total = replay_checkpoints(args)
    assert [c.revision for c in ckpts] == ["step0", "step1"] and total == 2


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: org/model\nbatchsize: 8\n")
    assert exit_code(["replay", "--config", str(cfg)]) == 2
    assert "does not accept option 'batchsize'" in capsys.readouterr().err


def test_pythia_preset_resolves():
    args = parse_args(["replay", "--config", str(RECIPES / "replay_pythia.yaml")])
    assert args.model == "EleutherAI/pythia-160m" and args.tokens_per_step == 2097152
    ckpts, _ = replay_checkpoints(args)
    assert [c.revision for c in ckpts] == PYTHIA_PAPER_REVISIONS
    assert probe_options(args).pool_size == 10_000
    assert measure_config(args) == MeasureConfig(layers="last", tokens="last", batch_size=32, max_components=2048)
    probes = probe_options(args)
    assert (probes.source, probes.config_name, probes.split) == ("wikitext", "wikitext-103-raw-v1", "train")
    assert (probes.num_sequences, probes.min_tokens, probes.max_tokens) == (1024, 11, 128)


def test_olmo_preset_resolves(capsys):
    path = str(RECIPES / "replay_olmo.yaml")
    args = parse_args(["replay", "--config", path])
    assert args.model == "allenai/OLMo-2-0425-1B" and args.revisions == "all"
    assert (args.stage, args.log_spaced, args.load["dtype"]) == ("stage1", 40, "bf16")
    assert measure_config(args) == MeasureConfig(layers="last", tokens="last", batch_size=32, max_components=2048)
    assert probe_options(args).source == "HuggingFaceFW/fineweb"
    # listing the hub branches needs network: offline it is a clear one-line error
    assert main(["replay", "--config", path, "--dry-run"]) == 2
    assert "--revisions-file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["replay", "--model", "a/b", "--checkpoints", ".", "--revisions", "step0", "-o", "x"], "exactly one of"),
        (["replay", "--model", "a/b", "--revisions", "step0"], "--output"),
        (["replay", "--model", "a/b", "-o", "x"], "--revisions"),
        (["replay", "--model", "a/b", "--revisions", "step0", "--layers", "top", "-o", "x"], "--layers"),
        (["replay", "--model", "a/b", "--revisions", "step0", "--fit-range", "12", "-o", "x"], "--fit-range"),
        (["replay", "--model", "a/b", "--revisions", "step0", "--shard", "2/2", "-o", "x"], "shard"),
        (["replay", "--model", "a/b", "--revisions", "step0", "--probe-file", "nope.txt", "-o", "x"], "nope.txt"),
        (["replay", "--model", "a/b", "--revisions", "step0", "--batch-size", "0", "-o", "x"], "batch_size"),
        (["replay", "--checkpoints", "/does/not/exist", "-o", "x"], "not found"),
        (["plot", "/does/not/exist"], "not a replay output"),
        (["export"], "replay output folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert exit_code(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_the_parser_rejects_bad_choices(capsys):
    assert exit_code(["replay", "--model", "a/b", "--tokens", "first"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "geomtrace replay: error: --measure.tokens (config key measure.tokens, environment "
        "GEOMTRACE_REPLAY__MEASURE__TOKENS) expects one of last, mean, all, got 'first'\n"
    )


def test_dry_run_filters_and_shards(capsys):
    base = [
        "replay",
        "--model",
        "EleutherAI/pythia-160m",
        "--revisions",
        "pythia-coarse",
        "--step-range",
        "0:1000",
        "-o",
        "unused",
        "--dry-run",
    ]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert out.startswith("[geomtrace] --revisions pythia-coarse (30): ")  # the listing says which grid
    lines = [line for line in out.strip().splitlines() if not line.startswith("[geomtrace]")]
    assert [line.split("\t")[0] for line in lines[:-1]] == [
        f"step{s}" for s in (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
    ]
    assert main([*base, "--shard", "1/2"]) == 0
    lines = [line for line in capsys.readouterr().out.strip().splitlines() if not line.startswith("[geomtrace]")]
    assert [line.split("\t")[0] for line in lines[:-1]] == ["step1", "step4", "step16", "step64", "step256", "step1000"]


# ----------------------------------------------------------------------------- plot / export / phases


@pytest.mark.parametrize("x", ["step", "tokens", "flops"])
def test_plot_writes_png(run_dir, tmp_path, x):
    out = tmp_path / f"fig_{x}.png"
    assert (
        main(["plot", str(run_dir), str(run_dir), "--labels", "a,b", "--x", x, "--output", str(out), "--phases"]) == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_plot_default_output_and_missing_tokens(run_dir, tmp_path, capsys):
    assert main(["plot", str(run_dir), "--layer", "1"]) == 0
    assert (run_dir / "trajectory.png").stat().st_size > 0
    history = tmp_path / "live.json"
    history.write_text(json.dumps([{"step": s, "geometry/rankme": _trajectory(s)[0]} for s in STEPS]))
    assert main(["plot", str(history), "--x", "tokens", "-o", str(tmp_path / "f.png")]) == 2
    assert "--tokens-per-step" in capsys.readouterr().err


def test_export_seed_npy_round_trip(run_dir, tmp_path):
    out = tmp_path / "geometry.npy"
    assert main(["export", str(run_dir), "--format", "seed-npy", "--output", str(out), "--layer", "1"]) == 0
    back = import_seed_npy(out)
    stored = [r for r in ResultsStore(run_dir).records() if r["layer"] == 1]
    assert [r["step"] for r in back] == STEPS
    for a, b in zip(back, stored):
        assert (a["rankme"], a["alpha"], a["r2"], a["tokens"]) == (b["rankme"], b["alpha"], b["r2"], b["tokens"])
        np.testing.assert_array_equal(a["eigenspectrum"], ResultsStore(run_dir).spectrum(b["key"], 1))
    assert main(["export", str(run_dir)]) == 0  # defaults: deepest layer, next to the results
    assert {r["layer"] for r in import_seed_npy(run_dir / "geometry_layer2.npy")} == {2}


def test_export_csv(run_dir, tmp_path):
    out = tmp_path / "r.csv"
    assert main(["export", str(run_dir), "--format", "csv", "-o", str(out), "--layer", "2"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("key,step,revision") and len(lines) == len(STEPS) + 1


def test_phases_prints_a_table(run_dir, tmp_path, capsys):
    assert main(["phases", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert f"{len(STEPS)} measurements, layer 2" in text
    table = text.splitlines()[1:]
    assert table[0].split()[:3] == ["phase", "start", "step"] and set(table[1]) == {"-", " "}
    names = [row.split()[0] for row in table[2:-1]]
    assert names and set(names) <= {"warmup", "entropy-seeking", "compression-seeking", "stable"}
    # The last line says how the values were measured (here the records say no spectrum) and
    # that there were no error bars.
    assert table[-1].startswith("measured centring unknown") and "no error bars" in table[-1]

    # a live history JSON (GeometryTracker.state_dict()) gives the same segments
    assert main(["phases", str(run_dir), "--json"]) == 0
    from_store = json.loads(capsys.readouterr().out)
    history = tmp_path / "history.json"
    rows = [{"step": s, "geometry/rankme": _trajectory(s)[0], "geometry/alpha": _trajectory(s)[1]} for s in STEPS]
    history.write_text(json.dumps({"history": rows, "phase": None}))
    assert main(["phases", str(history), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == from_store


def test_only_the_latest_probe_set_is_used(run_dir, tmp_path):
    stale = {"key": "step128000", "step": 128000, "layer": 2, "rankme": 1.0, "alpha": 1.0, "probe_fingerprint": "old"}
    fresh = {**stale, "key": "step256000", "step": 256000, "probe_fingerprint": "abc"}
    store = ResultsStore(run_dir)
    store.append([stale], {2: np.ones(3)})
    store.append([fresh], {2: np.ones(3)})
    out = tmp_path / "g.npy"
    with pytest.warns(UserWarning, match="different probe sets"):
        assert main(["export", str(run_dir), "-o", str(out)]) == 0
    assert [r["step"] for r in import_seed_npy(out)] == [*STEPS, 256000]


@pytest.mark.parametrize(
    "line, message",
    [
        (
            "load:\n  dtype: int8",
            "--load.dtype (config key load.dtype, environment GEOMTRACE_REPLAY__LOAD__DTYPE) expects one of fp32",
        ),
        ("load:\n  device: gpu", "--device must be cpu, cuda, cuda:N or auto, got 'gpu'"),
        (
            "measure:\n  batch_size: many",
            "--measure.batch_size (config key measure.batch_size, environment GEOMTRACE_REPLAY__MEASURE__BATCH_SIZE) "
            "expects int, got 'many'",
        ),
    ],
)
def test_config_values_are_checked_before_loading(tmp_path, capsys, line, message):
    # typed options: a config file's values are checked like the command line's
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: a/b\nrevisions: step0\noutput: {tmp_path / 'out'}\n{line}\n")
    assert exit_code(["replay", "--config", str(cfg)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was loaded or written


# ----------------------------------------------------------------------------- issue 9: the command line, hardened


def test_help_and_version_import_nothing_heavy():
    # --help / --version answer before torch, transformers or matplotlib are imported (issue 9
    # item 13: they took ~10 s). Checked by what is imported, not by a timing.
    import subprocess
    import sys

    code = (
        "import sys; from geomtrace.cli import main\n"
        "for argv in (['--version'], ['replay', '--help'], ['plot', '--help']):\n"
        "    try: main(argv)\n"
        "    except SystemExit as e: assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "geomtrace 0." in proc.stdout and "HEAVY []" in proc.stdout


def test_exit_codes_are_documented():
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert "0: success" in text and "1: `replay` ran but some checkpoints failed" in text and "2: bad input" in text


@pytest.fixture
def junk(tmp_path) -> Path:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "results.jsonl").write_text("")
    (tmp_path / "no_provenance.json").write_text(json.dumps({"history": []}))
    (tmp_path / "latin1.txt").write_bytes(b"step0\ncaf\xe9\n")
    (tmp_path / "broken.json").write_text("{")
    store = ResultsStore(tmp_path / "stepless")
    store.append([{"key": "final", "step": None, "layer": 2, "rankme": 3.0, "alpha": 1.0}], {2: np.ones(2)})
    return tmp_path


@pytest.mark.parametrize(
    "argv, message",
    [
        (["replay", "--model", "a/b", "--revisions", "step0", "-o", "{tmp}/a_file"], "is a file"),
        (["replay", "--model", "a/b", "--revisions", "step0", "-o", "{tmp}/a_file/sub"], "which is a file"),
        (["replay", "--model", "a/b", "--revisions", "step0", "--num-sequences", "1", "-o", "x"], "--num-sequences"),
        (["replay", "--model", "a/b", "--revisions", "step0", "--system-prompt", "hi", "-o", "x"], "--chat-template"),
        (["replay", "--model", "a/b", "--revisions", "step0", "--like", "{tmp}/nope.json", "-o", "x"], "no such file"),
        (
            ["replay", "--model", "a/b", "--revisions", "step0", "--like", "{tmp}/no_provenance.json", "-o", "x"],
            "records no 'provenance'",
        ),
        (["replay", "--model", "a/b", "--revisions", "step0", "--like", "{tmp}/empty_run", "-o", "x"], "no run.json"),
        (["plot", "{tmp}/empty_run"], "no results yet"),
        (["plot", "{tmp}/stepless"], "no measurement with a training step"),
        (["phases", "{tmp}/stepless"], "no measurement with a training step"),
        (["plot", "{tmp}/stepless", "{tmp}/stepless"], "distinct --labels"),
        # found trying to break it beyond the list
        (["replay", "--model", "a/b", "--revisions-file", "{tmp}/latin1.txt", "-o", "x"], "latin1.txt:2: not UTF-8"),
        (
            ["replay", "--model", "a/b", "--revisions", "step0", "--min-tokens", "20", "--max-tokens", "10", "-o", "x"],
            "--min-tokens <= --max-tokens",
        ),
        (
            ["replay", "--model", "a/b", "--revisions", "step0", "--tokens-per-step", "-5", "-o", "x"],
            "--tokens-per-step must be a positive",
        ),
        (
            ["replay", "--model", "a/b", "--revisions", "step0", "--model-builder", "no_such_module:build", "-o", "x"],
            "No module named 'no_such_module'",
        ),
        (
            [
                "replay",
                "--model",
                "a/b",
                "--revisions",
                "step0",
                "--tokenizer",
                "/no/such/tokenizer",
                "-o",
                "{tmp}/o",
                "--no-progress",
            ],
            "tokenizer folder /no/such/tokenizer does not exist",
        ),
        (["phases", "{tmp}/broken.json"], "broken.json: not a JSON history"),
    ],
)
def test_bad_input_is_named_in_one_line(junk, argv, message, capsys):
    argv = [a.replace("{tmp}", str(junk)) for a in argv]
    assert exit_code(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not list(junk.glob("*.png")) and not (junk / "stepless" / "trajectory.png").exists()


def test_a_shard_with_nothing_to_do_is_not_an_error(tmp_path, capsys):
    assert (
        main(["replay", "--model", "a/b", "--revisions", "step0,step1", "--shard", "3/4", "-o", str(tmp_path / "o")])
        == 0
    )
    assert "nothing to do" in capsys.readouterr().out


def test_export_names_missing_and_corrupt_spectra(run_dir, tmp_path, capsys):
    store = ResultsStore(run_dir)
    store.spectrum_path("step64", 2).unlink()
    assert main(["export", str(run_dir), "-o", str(tmp_path / "a.npy")]) == 2
    err = capsys.readouterr().err
    assert "step64__layer2.npz" in err and "--no-spectra" in err
    assert main(["export", str(run_dir), "-o", str(tmp_path / "a.npy"), "--no-spectra"]) == 0
    store.spectrum_path("step128", 2).write_bytes(b"not a zip file")
    store.spectrum_path("step64", 2).write_bytes(b"x")
    assert main(["export", str(run_dir), "-o", str(tmp_path / "b.npy")]) == 2
    err = capsys.readouterr().err
    assert "__layer2.npz: not a readable eigenspectrum file" in err and "allow_pickle" not in err
    assert not (tmp_path / "b.npy").exists()


def test_live_history_with_tokens_per_step_and_inner_layers(tmp_path, capsys):
    # The pretrain recipe's geometry.json carries tokens_per_step and n_params (issue 9 item
    # 13); a run tracking only inner layers logs geometry/layer<L>/... (item 12).
    rows = [
        {
            "step": s,
            "geometry/layer1/rankme": _trajectory(s)[0],
            "geometry/layer1/alpha": _trajectory(s)[1],
            "geometry/layer0/rankme": 1.0,
        }
        for s in STEPS
    ]
    history = tmp_path / "geometry.json"
    history.write_text(json.dumps({"history": rows, "tokens_per_step": 512, "n_params": 1000}))
    for x in ("tokens", "flops"):
        assert main(["plot", str(history), "--x", x, "-o", str(tmp_path / f"{x}.png")]) == 0
    assert main(["phases", str(history)]) == 0
    assert f"{len(STEPS)} measurements, layer 1" in capsys.readouterr().out
    assert main(["phases", str(history), "--layer", "0", "--json"]) == 0
    capsys.readouterr()
    assert main(["phases", str(history), "--layer", "5"]) == 2
    assert "layers present: 0, 1" in capsys.readouterr().err


def test_device_cuda_without_cuda_is_a_usage_error(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["replay", "--model", "a/b", "--revisions", "step0", "--device", "cuda", "-o", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_repeated_live_steps_keep_the_last_value(tmp_path, capsys):
    history = tmp_path / "h.json"
    rows = [{"step": s, "geometry/rankme": _trajectory(s)[0]} for s in STEPS]
    history.write_text(json.dumps(rows + [{"step": STEPS[-1], "geometry/rankme": 1.0}]))
    with pytest.warns(UserWarning, match="1 measurement.s. repeat an earlier step"):
        assert main(["phases", str(history), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[-1]["end_step"] == STEPS[-1]


# ----------------------------------------------------------------------------- issue 12 item 6: jsonargparse


def test_print_config_round_trips_through_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(
            [
                "replay",
                "--model",
                "org/m",
                "--revisions",
                "step0,step1",
                "--batch-size",
                "8",
                "--layers",
                "1,2",
                "--dry-run",
                "-o",
                "out",
                "--print_config",
            ]
        )
    assert err.value.code == 0
    printed = capsys.readouterr().out
    assert "batch_size: 8" in printed and "dry_run: true" in printed and "output: out" in printed
    cfg = tmp_path / "printed.yaml"
    cfg.write_text(printed)
    again = parse_args(["replay", "--config", str(cfg)])
    first = parse_args(
        [
            "replay",
            "--model",
            "org/m",
            "--revisions",
            "step0,step1",
            "--batch-size",
            "8",
            "--layers",
            "1,2",
            "--dry-run",
            "-o",
            "out",
        ]
    )
    assert vars(again) == vars(first)


def test_environment_variables_and_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMTRACE_REPLAY__MEASURE__BATCH_SIZE", "7")
    monkeypatch.setenv("GEOMTRACE_REPLAY__DRY_RUN", "true")
    assert parse_args(["replay"]).measure["batch_size"] == 7 and parse_args(["replay"]).dry_run is True
    assert parse_args(["replay", "--batch-size", "3"]).measure["batch_size"] == 3  # the command line wins
    cfg = tmp_path / "c.yaml"
    cfg.write_text("measure:\n  batch_size: 5\n")
    assert parse_args(["replay", "--config", str(cfg)]).measure["batch_size"] == 5
    assert parse_args(["replay", "--config", str(cfg), "--measure.batch_size", "4"]).measure["batch_size"] == 4


def test_option_names_with_dashes_or_underscores():
    dashed = parse_args(["replay", "--num-sequences", "9", "--no-tensorboard", "--output", "o"])
    under = parse_args(["replay", "--num_sequences", "9", "--no_tensorboard", "-o", "o"])
    nested = parse_args(["replay", "--probes.num_sequences", "9", "--no-tensorboard", "-o", "o"])
    assert vars(dashed) == vars(under) == vars(nested)
    assert dashed.probes["num_sequences"] == 9 and dashed.no_tensorboard is True
    assert parse_args(["plot", "a", "b", "--linear-x"]).runs == ["a", "b"]
    assert parse_args(["export", "out", "--format", "csv"]).run == "out"


def test_missing_cli_extra_is_one_line_with_the_install_hint(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jsonargparse", None)  # import fails as if not installed
    assert main(["replay", "--help"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "geomtrace[cli]"' in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- detector options offline


def _sft_history(tmp_path: Path, monkeypatch, name: str = "sft") -> tuple[Path, str]:
    """A live history recorded by GeometryTracker for a post-training run whose RankMe falls by
    77 %: compression-seeking live. Returns (the history file, the live phase)."""
    from geomtrace import tracking
    from geomtrace.measure import GeometryResult, LayerGeometry
    from geomtrace.phases import DetectorOptions
    from geomtrace.probes import ProbeSet

    def result(i: int) -> GeometryResult:
        layer = LayerGeometry(layer=2, rankme=40 * 0.83**i, alpha=1 + 0.05 * i, r2=0.9, n_samples=64, dim=32)
        return GeometryResult(
            layers={2: layer},
            num_layers=2,
            probe_description="test probes",
            probe_fingerprint="f" * 16,
            n_probes=64,
            seconds=0.0,
            config=MeasureConfig(),
            precision="fp32",
        )

    queue = [result(i) for i in range(8)]
    monkeypatch.setattr(tracking, "measure_geometry", lambda model, probes, config, **kw: queue.pop(0))
    path = tmp_path / name / "geometry.json"
    path.parent.mkdir(parents=True)
    tracker = tracking.GeometryTracker(
        probes=ProbeSet([[1, 2, 3], [4, 5, 6]], "two probes", 0),
        from_pretrained=True,
        detector=DetectorOptions(min_points=4),
    )
    tracker.begin(object(), 0)
    phases = [tracker.measure(None, 10 * i).phase for i in range(8)]
    assert phases[3] is not None  # min_points=4 was used live
    assert tracker.record()["detector"] == DetectorOptions(min_points=4).to_dict()
    tracker.save(path)
    return path, phases[-1]


def test_offline_phases_follow_the_recorded_stage_and_detector(tmp_path, monkeypatch, capsys):
    # Issue: an SFT history records from_pretrained: true and is compression-seeking live, but
    # `geomtrace phases` and `plot --phases` called it "warmup" (-77 %).
    history, live = _sft_history(tmp_path, monkeypatch)
    assert live == "compression-seeking"
    assert main(["phases", str(history), "--json"]) == 0
    segments = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in segments] == ["compression-seeking"]
    assert main(["phases", str(history)]) == 0
    out = capsys.readouterr().out
    assert "post-training" in out.splitlines()[0] and "warmup" not in out.split("\n", 1)[1]

    # plot --phases shades the same segments (and says why).
    import geomtrace.plots

    seen = {}
    real = geomtrace.plots.trajectory_figure
    monkeypatch.setattr(geomtrace.plots, "trajectory_figure", lambda runs, **kw: seen.update(kw) or real(runs, **kw))
    assert main(["plot", str(history), "--phases", "-o", str(tmp_path / "f.png")]) == 0
    assert [s.to_dict() for s in seen["phases"]] == segments
    assert "post-training" in capsys.readouterr().err

    # Explicit options override the record.
    assert main(["phases", str(history), "--json", "--detector.allow_warmup", "true"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "warmup"
    assert (
        main(["plot", str(history), "--phases", "--detector.allow-warmup", "true", "-o", str(tmp_path / "g.png")]) == 0
    )
    assert seen["phases"][0].name == "warmup"


def test_recorded_min_points_and_overrides(tmp_path, capsys, monkeypatch):
    rows = [{"step": s, "geometry/rankme": _trajectory(s)[0], "geometry/alpha": _trajectory(s)[1]} for s in STEPS]
    history = tmp_path / "h.json"
    history.write_text(json.dumps({"history": rows, "from_pretrained": False, "detector": {"min_points": 30}}))
    assert main(["phases", str(history)]) == 0
    out = capsys.readouterr().out
    assert "min_points=30" in out and f"too few measurements for phases: {len(STEPS)} of min_points 30" in out
    assert main(["phases", str(history), "--detector.min_points", "5"]) == 0
    assert "warmup" in capsys.readouterr().out
    # from a config file and the environment too
    cfg = tmp_path / "p.yaml"
    cfg.write_text("detector:\n  min_points: 5\n  outlier_threshold: none\n")
    assert main(["phases", "--config", str(cfg), str(history)]) == 0
    assert "warmup" in capsys.readouterr().out
    monkeypatch.setenv("GEOMTRACE_PHASES__DETECTOR__MIN_POINTS", "5")
    assert main(["phases", str(history)]) == 0
    assert "warmup" in capsys.readouterr().out


def test_plot_takes_no_warmup_and_detector_options(run_dir, tmp_path, monkeypatch):
    import geomtrace.plots

    seen = {}
    monkeypatch.setattr(geomtrace.plots, "trajectory_figure", lambda runs, **kw: seen.update(kw) or object())
    monkeypatch.setattr(geomtrace.plots, "save_figure", lambda fig, out: out)
    assert main(["plot", str(run_dir), "--phases"]) == 0
    assert seen["phases"][0].name == "warmup"  # a replay output records no stage: as before
    assert main(["plot", str(run_dir), "--phases", "--no-warmup"]) == 0
    assert seen["phases"][0].name == "compression-seeking"
    assert main(["plot", str(run_dir), "--phases", "--detector.min_points", "100"]) == 0
    assert [s.name for s in seen["phases"]] == ["stable"] and seen["phases"][0].confidence == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--detector.min_points", "2"], "min_points must be an integer >= 3"),
        (["--detector.min_points", "x"], ""),
        (["--no-warmup", "--detector.allow_warmup", "true"], "--no-warmup contradicts"),
    ],
)
def test_bad_detector_options_exit_2(run_dir, argv, message, capsys):
    assert exit_code(["phases", str(run_dir), *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_recorded_detector_options_exit_2(tmp_path, capsys):
    rows = [{"step": s, "geometry/rankme": _trajectory(s)[0]} for s in STEPS]
    history = tmp_path / "h.json"
    history.write_text(json.dumps({"history": rows, "detector": {"min_point": 4}}))
    assert exit_code(["phases", str(history)]) == 2
    err = capsys.readouterr().err
    assert "h.json: recorded detector options not valid (unknown detector option(s) min_point" in err
    assert exit_code(["phases", str(history), "--detector.min_points", "4"]) == 2  # the record is still wrong


def test_too_few_measurements_say_so(tmp_path, capsys):
    # Issue: with fewer than 5 points the table printed "stable +0.0 %" while RankMe fell 75 %.
    history = tmp_path / "short.json"
    rows = [{"step": s, "geometry/rankme": r} for s, r in zip([0, 10, 20, 30], [40.0, 30.0, 20.0, 10.0])]
    history.write_text(json.dumps(rows))
    assert main(["phases", str(history)]) == 0
    out = capsys.readouterr().out
    assert "too few measurements for phases: 4 of min_points 5" in out and "RankMe -75.0%" in out
    assert "stable" not in out and "+0.0%" not in out


def test_plot_derives_distinct_labels_for_runs_of_the_same_name(tmp_path, monkeypatch):
    # Issue: two runs both named geometry.json exited 2 without --labels.
    from geomtrace.cli import _default_labels

    rows = [{"step": s, "geometry/rankme": _trajectory(s)[0], "geometry/alpha": _trajectory(s)[1]} for s in STEPS]
    for name in ("sft", "dpo"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "geometry.json").write_text(json.dumps(rows))
    paths = [str(tmp_path / "runs" / n / "geometry.json") for n in ("sft", "dpo")]
    assert _default_labels(paths) == ["sft/geometry.json", "dpo/geometry.json"]
    assert _default_labels([*paths, str(tmp_path / "other.json")])[-1] == "other.json"
    assert _default_labels(["a/x/run", "b/x/run"]) == ["a/x/run", "b/x/run"]
    assert _default_labels(["x/run", "x/run/"]) == ["run", "run"]  # the same run twice: still an error
    import geomtrace.plots

    seen = {}
    monkeypatch.setattr(geomtrace.plots, "trajectory_figure", lambda runs, **kw: seen.update(runs=runs) or object())
    monkeypatch.setattr(geomtrace.plots, "save_figure", lambda fig, out: out)
    assert main(["plot", *paths, "-o", str(tmp_path / "f.png")]) == 0
    assert list(seen["runs"]) == ["sft/geometry.json", "dpo/geometry.json"]


def test_plot_warns_when_measure_options_differ(tmp_path, monkeypatch):
    # Issue: plot overlaid last-token and mean-pooled runs on the same probes silently.
    import warnings

    import geomtrace.plots
    from geomtrace.cli import _check_measure_configs

    monkeypatch.setattr(geomtrace.plots, "save_figure", lambda fig, out: out)
    monkeypatch.setattr(geomtrace.plots, "trajectory_figure", lambda runs, **kw: object())
    rows = [{"step": s, "geometry/rankme": _trajectory(s)[0]} for s in STEPS]
    paths = {}
    for name, config in (
        ("last", MeasureConfig()),
        ("mean", MeasureConfig(tokens="mean")),
        ("bigger_batch", MeasureConfig(batch_size=64, autocast="off")),
    ):
        provenance = {"probe": "p", "probe_fingerprint": "abc", "precision": "fp32", "measure_config": config.to_dict()}
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps({"history": rows, "provenance": provenance}))
    with pytest.warns(UserWarning, match=r"different options \(tokens: last.json 'last', mean.json 'mean'\)"):
        assert main(["plot", str(paths["last"]), str(paths["mean"]), "-o", str(tmp_path / "f.png")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # batch size and autocast change no value: no warning
        assert main(["plot", str(paths["last"]), str(paths["bigger_batch"]), "-o", str(tmp_path / "g.png")]) == 0
        assert _check_measure_configs({"a": str(paths["last"]), "b": str(tmp_path)}) == []  # no provenance: skipped


def test_every_measure_field_says_what_it_changes():
    # One declaration: each MeasureConfig field's metadata; the comparisons derive from it.
    from dataclasses import fields

    from geomtrace.measure import value_fields

    changes = {f.name: f.metadata.get("changes") for f in fields(MeasureConfig)}
    assert set(changes.values()) == {"values", "speed", "precision", "outputs"}, changes
    assert value_fields() == MeasureConfig.identity_fields()
    assert {"layers", "tokens", "fit_range", "eps"} <= set(MeasureConfig.identity_fields())
    assert set(MeasureConfig.speed_fields()) == {"batch_size", "rows_per_update", "padding_side"}
    assert set(MeasureConfig.output_fields()) == {"uncertainty", "uncertainty_groups"}


# ----------------------------------------------------------------------------- issue 15: messages


def test_wrong_types_from_a_config_file_or_the_environment_are_one_line(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: org/model\nmeasure:\n  batch_size: abc\n")
    expected = (
        "geomtrace replay: error: --measure.batch_size (config key measure.batch_size, environment "
        "GEOMTRACE_REPLAY__MEASURE__BATCH_SIZE) expects int, got 'abc'\n"
    )
    assert exit_code(["replay", "--config", str(cfg)]) == 2
    assert capsys.readouterr().err == expected
    monkeypatch.setenv("GEOMTRACE_REPLAY__MEASURE__BATCH_SIZE", "abc")
    assert exit_code(["replay", "--model", "org/model"]) == 2
    assert capsys.readouterr().err == expected


def test_like_with_a_malformed_provenance_is_a_usage_error(tmp_path, capsys):
    bad = tmp_path / "geometry.json"
    bad.write_text(json.dumps({"provenance": {"measure_config": "x"}}))
    assert (
        main(["replay", "--like", str(bad), "--model", "a/b", "--revisions", "step0", "-o", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"geomtrace replay: error: --like {bad}: malformed provenance: 'measure_config' is str")
    assert err.count("\n") == 1 and "Traceback" not in err


def test_checkpoint_folders_without_config_are_named(tmp_path, capsys):
    from fakehub import build_tiny_model

    build_tiny_model(seed=0).save_pretrained(tmp_path / "run" / "checkpoint-10")
    (tmp_path / "run" / "checkpoint-20").mkdir()
    (tmp_path / "run" / "checkpoint-20" / "optimizer.pt").write_bytes(b"")
    assert main(["replay", "--checkpoints", str(tmp_path / "run"), "--dry-run", "-o", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'run' / 'checkpoint-20'}: no config.json" in out and "1 checkpoint(s) of 1" in out


def test_plot_of_an_all_nan_history_is_an_error(tmp_path, capsys):
    history = tmp_path / "geometry.json"
    history.write_text(json.dumps({"history": [{"step": s, "geometry/rankme": None} for s in (0, 1, 2)]}))
    assert main(["plot", str(history), "-o", str(tmp_path / "t.png")]) == 2
    assert "every RankMe and alpha-ReQ value is NaN, nothing to plot" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists()


def test_unwritable_outputs_are_named_in_user_terms(run_dir, tmp_path, capsys, monkeypatch):
    assert main(["export", str(run_dir), "--format", "csv", "-o", str(tmp_path)]) == 2  # an existing folder
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path}: it is a folder; give a file path" in err and ".tmp" not in err
    from geomtrace._atomic import write_error

    message = str(write_error(PermissionError(13, "Permission denied", str(tmp_path / ".x.tmp")), tmp_path / "x" / "y"))
    target = tmp_path / "x" / "y"
    assert message == f"cannot write {target}: {tmp_path} is not writable (change its permissions or write elsewhere)"
    # A read-only folder, as the OS reports it to any user but root (CI runs as root, which
    # writes anywhere): the tmp file cannot be created there.
    import tempfile

    locked = tmp_path / "locked"
    locked.mkdir()
    real_mkstemp = tempfile.mkstemp

    def refuse_in_locked(*args, **kwargs):
        if Path(kwargs.get("dir", "")) == locked:
            raise PermissionError(13, "Permission denied", str(locked / ".t.png.x.tmp"))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse_in_locked)
    assert main(["plot", str(run_dir), "-o", str(locked / "t.png")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {locked / 't.png'}: {locked} is not writable" in err and ".tmp" not in err
    assert main(["export", str(run_dir), "-o", str(locked / "g.npy"), "--no-spectra"]) == 2
    assert f"cannot write {locked / 'g.npy'}: {locked} is not writable" in capsys.readouterr().err


def test_like_finds_a_relative_probe_file_beside_the_record_and_names_a_missing_one(tmp_path, monkeypatch, capsys):
    # Records written before probe paths were made absolute hold them as given: relative to where
    # that run started. --like looks beside the record; a file found nowhere is named, and the
    # message asks for --probe-file instead of blaming it (it was not passed).
    from geomtrace.replay.provenance import like_settings, read_provenance

    run = tmp_path / "run"
    run.mkdir()
    (run / "probes.txt").write_text("one probe text\nanother probe text\n")
    record = {"provenance": {"probe": "file:probes.txt n=2 len=1..8 seed=0", "probe_options": {"source": "probes.txt"}}}
    (run / "geometry.json").write_text(json.dumps(record))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = like_settings(read_provenance(run / "geometry.json"))
    assert settings.probe_options["source"] == str((run / "probes.txt").resolve())
    assert settings.missing_source is None
    (run / "probes.txt").unlink()
    argv = ["replay", "--like", str(run / "geometry.json"), "--model", "a/b", "--revisions", "step0"]
    assert main([*argv, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "the probe file probes.txt, which is not there (recorded in" in err and "--probe-file" in err


@pytest.mark.parametrize("flags", [["--no-progress", "-q"], ["-q"]])
def test_piped_replay_output_carries_no_progress_bars(tmp_path, capsys, flags):
    """``geomtrace replay ... --no-progress -q | cat``: no bars on stderr, transformers' "Loading
    weights" included; without --no-progress too, since stderr is not a terminal here."""
    from transformers.utils import logging as transformers_logging

    from fakehub import build_tiny_model, tiny_tokenizer

    for step in (0, 10):
        build_tiny_model(seed=step).save_pretrained(tmp_path / "run" / f"checkpoint-{step}")
    tiny_tokenizer().save_pretrained(tmp_path / "run")
    capsys.readouterr()  # save_pretrained's own "Writing model shards" bars
    bars_before = transformers_logging.is_progress_bar_enabled()
    argv = ["replay", "--checkpoints", str(tmp_path / "run"), "--output", str(tmp_path / "out")]
    assert main([*argv, "--num-sequences", "8", "--max-tokens", "16", "--no-tensorboard", *flags]) == 0
    err = capsys.readouterr().err
    assert "%|" not in err and "Loading weights" not in err, err
    assert len(ResultsStore(tmp_path / "out").records()) == 2
    assert transformers_logging.is_progress_bar_enabled() == bars_before  # as it was after the command
