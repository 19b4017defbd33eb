"""``geomtrace`` command line: ``replay``, ``plot``, ``export``, ``phases``.

Every subcommand takes ``--config FILE.yaml``: a mapping whose keys are the long option
names (``batch-size`` or ``batch_size``); options given on the command line override it.
Exit codes: 0 done, 1 some checkpoints failed (replay), 2 usage or input error (one line).
See ``docs/cli.md``. Only the standard library is imported before a command runs, so
``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["build_parser", "main", "parse_args", "replay_checkpoints", "measure_config", "probe_options"]

_EPILOG_CONFIG = (
    "Options may also come from --config FILE.yaml (keys = long option names, dashes or "
    "underscores); command-line flags override the file."
)


class UsageError(Exception):
    """Bad input found after parsing: reported as one line, exit code 2."""


# ----------------------------------------------------------------------------- parser


def _add_replay(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="measure RankMe / alpha-ReQ over checkpoints (hub revisions or local folders)",
        description=(
            "Measure representation geometry over a series of checkpoints with one fixed probe set. "
            "Resumable: checkpoints already in OUTPUT (same probes) are skipped. Under torchrun every "
            "rank loads each checkpoint and measures a shard of the probes; rank 0 writes."
        ),
        epilog=_EPILOG_CONFIG + " Example: geomtrace replay --model EleutherAI/pythia-160m "
        "--revisions pythia-paper --output runs/pythia-160m",
    )
    src = p.add_argument_group("checkpoints")
    src.add_argument("--model", help="hub model id, e.g. EleutherAI/pythia-160m (with --revisions)")
    src.add_argument("--checkpoints", metavar="DIR",
                     help="local folder of checkpoint-N/ or stepN/ model folders or Lightning *.ckpt files")
    src.add_argument("--revisions", help="comma list (step0,step1000) or a preset: pythia (154), "
                     "pythia-paper (30, log-spaced), all (every branch of the repo; needs network)")
    src.add_argument("--revisions-file", metavar="FILE", help="revision names, one per line (# comments)")
    src.add_argument("--step-range", metavar="START:STOP[:EVERY]",
                     help="keep steps START <= s <= STOP with (s - START) %% EVERY == 0")
    src.add_argument("--log-spaced", type=int, metavar="N", help="keep N checkpoints evenly spread in log(1 + step)")
    src.add_argument("--stage", help="keep one training stage (OLMo-2: stage1, stage2, ...)")
    src.add_argument("--shard", metavar="I/N", help="measure only shard I of N (0-based, round-robin); "
                     "N independent jobs may write to the same --output")
    src.add_argument("--dry-run", action="store_true", help="list the checkpoints that would be measured and exit")

    meas = p.add_argument_group("measurement")
    meas.add_argument("--layers", help="last (default: last layer after the final norm), all, or comma "
                      "indices into hidden_states (0 = embeddings)")
    meas.add_argument("--tokens", choices=("last", "mean", "all"), help="which token states per probe (default last)")
    meas.add_argument("--batch-size", type=int, help="probe sequences per forward pass (default 32)")
    meas.add_argument("--max-components", type=int, help="keep at most this many eigenvalues "
                      "(2048 reproduces the paper's scripts; default: all)")
    meas.add_argument("--fit-range", metavar="LO:HI", help="alpha-ReQ fit ranks, 1-based inclusive (default 12:100)")
    meas.add_argument("--spectrum", choices=("covariance", "singular"),
                      help="RankMe on covariance eigenvalues (paper, default) or singular values")
    meas.add_argument("--autocast", choices=("auto", "off", "bf16", "fp16"),
                      help="precision of the probe forward: auto (default: the weights' dtype) or autocast to "
                      "bf16/fp16 with fp32 weights (faster on GPUs; statistics stay fp32/fp64)")
    meas.add_argument("--skip-first-token", action="store_true", default=None,
                      help="with --tokens mean/all: leave out each probe's first token (BOS / attention sink)")
    meas.add_argument("--like", metavar="RUN",
                      help="measure like RUN: a live history .json (e.g. outputs/pretrain/geometry.json) or a replay "
                      "output; takes its probe options, measurement options and precision (explicit options win)")

    probes = p.add_argument_group("probes (fixed for the whole replay)")
    probes.add_argument("--probe-file", metavar="PATH", help=".txt (one text per line) or .jsonl file")
    probes.add_argument("--probe-dataset", metavar="NAME", help="hub dataset name, e.g. wikitext")
    probes.add_argument("--probe-config", metavar="NAME", help="dataset config, e.g. wikitext-103-raw-v1")
    probes.add_argument("--probe-split", help="dataset split (default train)")
    probes.add_argument("--probe-column", help="text field of the dataset or .jsonl file (default text)")
    probes.add_argument("--num-sequences", type=int, help="number of probe sequences (default 1024)")
    probes.add_argument("--min-tokens", type=int, help="drop probes shorter than this (default 11)")
    probes.add_argument("--max-tokens", type=int, help="truncate probes to this many tokens (default 128)")
    probes.add_argument("--seed", type=int, help="seed of the probe selection (default 0)")
    probes.add_argument("--chat-template", action="store_true", default=None,
                        help="wrap each probe as a user message in the tokenizer's chat template, measured at the "
                        "generation prompt (post-trained models; as the callbacks' chat_template=True)")
    probes.add_argument("--system-prompt", metavar="TEXT", help="system message of --chat-template probes")
    probes.add_argument("--tokenizer", help="tokenizer name or path (default: the first checkpoint's own)")

    load = p.add_argument_group("loading")
    load.add_argument("--dtype", choices=("fp32", "bf16", "fp16", "float32", "bfloat16", "float16", "auto"),
                      help="weights dtype (default fp32); features are upcast to fp32 for the statistics")
    load.add_argument("--device", choices=("cpu", "cuda", "auto"), help="default auto (cuda if available)")
    load.add_argument("--device-map", help="from_pretrained device_map, e.g. auto (big models over GPUs)")
    load.add_argument("--trust-remote-code", action="store_true", default=None, help="allow custom model code")
    load.add_argument("--model-builder", metavar="MODULE:ATTRIBUTE",
                      help="for Lightning .ckpt: your LightningModule class, or a function(hyper_parameters) -> "
                      "module (or (module, tokenizer))")
    load.add_argument("--base-model", metavar="NAME_OR_PATH",
                      help="base model of PEFT adapter checkpoints (default: the adapter's base_model_name_or_path)")

    out = p.add_argument_group("output")
    out.add_argument("--output", "-o", metavar="OUT", help="results folder (required)")
    out.add_argument("--tokens-per-step", type=int, metavar="N",
                     help="tokens = step * N where revisions carry no token count (Pythia: 2097152)")
    out.add_argument("--tensorboard", metavar="DIR", help="TensorBoard log dir (default OUT/tensorboard)")
    out.add_argument("--no-tensorboard", action="store_true", default=None, help="do not write TensorBoard events")
    out.add_argument("--tensorboard-spectra", action="store_true", default=None,
                     help="also log an eigenspectrum figure per checkpoint")
    out.add_argument("--no-progress", action="store_true", default=None, help="no progress bars")
    out.add_argument("--quiet", "-q", action="store_true", default=None, help="no per-checkpoint summary lines")
    p.set_defaults(handler=_cmd_replay)


def _add_run_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer", type=int, help="layer index (default: the deepest measured layer)")
    p.add_argument("--stage", help="one training stage when steps restart per stage (OLMo-2)")


def _add_plot(sub: Any) -> None:
    p = sub.add_parser(
        "plot", help="RankMe and alpha-ReQ trajectories of one or more runs",
        description="Plot RankMe (top) and alpha-ReQ (bottom) against step, tokens or FLOPs "
        "(6 * n_params * tokens); several runs are overlaid. The x axis is symlog: step 0 stays visible.",
        epilog=_EPILOG_CONFIG,
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="replay output folders or live history .json files")
    p.add_argument("--x", choices=("step", "tokens", "flops"), help="x axis (default step)")
    _add_run_selection(p)
    p.add_argument("--output", "-o", metavar="FIG", help="figure path, .png/.svg/.pdf (default RUN/trajectory.png)")
    p.add_argument("--labels", help="comma list of legend labels (default: folder names)")
    p.add_argument("--phases", action="store_true", default=None, help="shade the phases detected on the first run")
    p.add_argument("--linear-x", action="store_true", default=None, help="linear x axis")
    p.add_argument("--title", help="figure title")
    p.set_defaults(handler=_cmd_plot)


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="export results as the paper's .npy dict or as CSV",
        description="seed-npy: np.save of {step: {'rankme', 'alpha', 'eigenspectrum', 'r2', ...}} for one "
        "layer, the paper's format (a pickle: read it with np.load(..., allow_pickle=True).item(), only from "
        "sources you trust). csv: one row per checkpoint and layer.",
        epilog=_EPILOG_CONFIG,
    )
    p.add_argument("run", nargs="?", metavar="OUT", help="replay output folder")
    p.add_argument("--format", choices=("seed-npy", "csv"), help="default seed-npy")
    p.add_argument("--output", "-o", metavar="PATH",
                   help="default OUT/geometry_layer<L>.npy (seed-npy) or OUT/results.csv (csv)")
    p.add_argument("--layer", type=int, help="layer (seed-npy default: deepest; csv default: all layers)")
    p.add_argument("--no-spectra", action="store_true", default=None, help="seed-npy without eigenspectra")
    p.set_defaults(handler=_cmd_export)


def _add_phases(sub: Any) -> None:
    p = sub.add_parser(
        "phases", help="detect geometric phases (warmup, entropy-seeking, compression-seeking)",
        description="Segment a run's RankMe / alpha-ReQ trajectory into phases and print a table.",
        epilog=_EPILOG_CONFIG,
    )
    p.add_argument("run", nargs="?", metavar="RUN", help="replay output folder or live history .json file")
    _add_run_selection(p)
    p.add_argument("--no-warmup", action="store_true", default=None,
                   help="the run does not start at initialisation (post-training): no warmup phase")
    p.add_argument("--json", action="store_true", default=None, help="print the segments as JSON")
    p.set_defaults(handler=_cmd_phases)


def build_parser() -> argparse.ArgumentParser:
    """The ``geomtrace`` argument parser (subcommands replay, plot, export, phases)."""
    parser = argparse.ArgumentParser(
        prog="geomtrace",
        description="Representation geometry (RankMe, alpha-ReQ) of language models over checkpoints.",
        epilog="Exit codes: 0 done, 1 some checkpoints failed (replay), 2 usage or input error.",
    )
    parser.add_argument("--version", action="version", version=f"geomtrace {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_replay, _add_plot, _add_export, _add_phases):
        add(sub)
    for p in sub.choices.values():
        p.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML mapping")
    return parser


def _version() -> str:
    from geomtrace import __version__  # the package's __init__ imports nothing heavy

    return __version__


# ----------------------------------------------------------------------------- config files


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:  # argparse keeps subparsers here; no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)


def load_config(path: str | os.PathLike, valid: set[str]) -> dict[str, Any]:
    """Read a YAML mapping of options; keys may use dashes or underscores. Raises
    UsageError on a missing file, a non-mapping or an unknown key."""
    from geomtrace._optional import require

    yaml = require("yaml", "--config files")
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UsageError(f"{p} is not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{p} must hold a mapping of option: value, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        dest = str(key).strip().lstrip("-").replace("-", "_")
        if dest not in valid:
            raise UsageError(f"{p}: unknown option {key!r}; valid keys: {', '.join(sorted(valid))}")
        out[dest] = value
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with ``--config`` applied (file values first, flags override)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.config:
        sub = _subparser(parser, args.command)
        valid = {a.dest for a in sub._actions if a.dest not in ("help", "config", "handler")}
        try:
            defaults = load_config(args.config, valid)
        except UsageError as err:
            sub.error(str(err))
        sub.set_defaults(**defaults)
        args = parser.parse_args(argv)
    return args


# ----------------------------------------------------------------------------- option helpers


def _items(value: Any) -> list[str]:
    """A YAML list or a comma string as a list of stripped strings."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [s.strip() for s in str(value).split(",") if s.strip()]


def _layers(value: Any) -> Any:
    if value is None:
        return "last"
    if isinstance(value, int):
        return value
    items = _items(value)
    if len(items) == 1 and items[0] in ("last", "all"):
        return items[0]
    try:
        ints = [int(v) for v in items]
    except ValueError:
        raise UsageError(f"--layers must be 'last', 'all' or comma-separated integers, got {value!r}") from None
    return ints[0] if len(ints) == 1 else ints


def _fit_range(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value if isinstance(value, (list, tuple)) else str(value).replace(",", ":").split(":")
    try:
        lo, hi = (int(v) for v in parts)
    except ValueError:
        raise UsageError(f"--fit-range must be LO:HI (e.g. 12:100), got {value!r}") from None
    return lo, hi


def like_settings(args: argparse.Namespace) -> Any:
    """The :class:`~geomtrace.replay.provenance.LikeSettings` of ``--like RUN``, or None."""
    if not getattr(args, "like", None):
        return None
    from geomtrace.replay.provenance import like_settings as settings, read_provenance

    return settings(read_provenance(args.like))


def measure_config(args: argparse.Namespace, like: Any = None) -> Any:
    """The :class:`~geomtrace.measure.MeasureConfig` of parsed replay options (explicit
    options over ``--like``'s)."""
    from geomtrace.measure import MeasureConfig

    given = {
        "layers": None if args.layers is None else _layers(args.layers),
        "tokens": args.tokens,
        "skip_first_token": getattr(args, "skip_first_token", None),
        "batch_size": args.batch_size,
        "max_components": args.max_components,
        "fit_range": _fit_range(args.fit_range),
        "spectrum": args.spectrum,
        "autocast": args.autocast,
    }
    base = dict(like.measure, **({"autocast": like.autocast} if like.autocast else {})) if like else {}
    config = MeasureConfig(**{**base, **{k: v for k, v in given.items() if v is not None}})
    try:
        config.validate()
    except ValueError as err:
        raise UsageError(str(err)) from err
    return config


def probe_options(args: argparse.Namespace, like: Any = None) -> Any:
    """The :class:`~geomtrace.replay.runner.ProbeOptions` of parsed replay options (explicit
    options over ``--like``'s)."""
    from geomtrace.replay.runner import ProbeOptions

    if args.probe_file and args.probe_dataset:
        raise UsageError("give either --probe-file or --probe-dataset, not both")
    if args.probe_file and not Path(args.probe_file).is_file():
        raise UsageError(f"probe file not found: {args.probe_file}")
    source = args.probe_file or args.probe_dataset
    if like and like.missing_source and source is None:
        raise UsageError(
            f"--like: the reference run's probes came from {like.missing_source}, which its record cannot rebuild: "
            "give the same texts with --probe-file (or --probe-dataset)"
        )
    given = {
        "source": source,
        "num_sequences": args.num_sequences,
        "min_tokens": args.min_tokens,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "text_column": args.probe_column,
        "split": args.probe_split,
        "config_name": args.probe_config,
        "chat_template": args.chat_template,
        "system_prompt": args.system_prompt,
    }
    base = dict(like.probe_options) if like else {}
    options = ProbeOptions(**{**base, **{k: v for k, v in given.items() if v is not None}})
    try:
        options.validate()
    except ValueError as err:  # name the command-line options
        message = str(err).replace("num_sequences", "--num-sequences").replace("chat_template (--chat-template)",
                                                                                "--chat-template")
        raise UsageError(message.replace("min_tokens", "--min-tokens").replace("max_tokens", "--max-tokens")) from err
    return options


def _check_loading(args: argparse.Namespace) -> None:
    """Fail before any checkpoint loads on a dtype or device that every load would reject
    (config files bypass argparse's choices)."""
    from geomtrace.replay.sources import resolve_dtype

    resolve_dtype(args.dtype or "float32")  # ValueError names the accepted dtypes
    device = str(args.device or "auto")
    if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
        raise UsageError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if device.startswith("cuda") and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA device is available here (use --device cpu or auto)")
    if args.tokens_per_step is not None and args.tokens_per_step < 1:
        raise UsageError(f"--tokens-per-step must be a positive number of tokens, got {args.tokens_per_step}")
    if args.model_builder:
        from geomtrace.replay.sources import _resolve_builder

        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # console scripts do not put the cwd on sys.path
        try:
            _resolve_builder(args.model_builder)
        except (ImportError, AttributeError, ValueError) as err:
            raise UsageError(f"--model-builder {args.model_builder}: {type(err).__name__}: {err}") from err


def _filter_checkpoints(ckpts: list[Any], args: argparse.Namespace) -> list[Any]:
    """Apply --stage / --step-range / --log-spaced (they work on revision-like names)."""
    from geomtrace.replay.sources import filter_revisions

    if args.stage is None and args.step_range is None and args.log_spaced is None:
        return ckpts
    by_name: dict[str, list[Any]] = {}
    for c in ckpts:
        name = c.revision or (None if c.step is None else "-".join(filter(None, [c.stage, f"step{c.step}"])))
        if name is not None:
            by_name.setdefault(name, []).append(c)
    kept = filter_revisions(list(by_name), step_range=args.step_range, log_spaced=args.log_spaced, stage=args.stage)
    return [c for name in kept for c in by_name[name]]


def replay_checkpoints(args: argparse.Namespace) -> tuple[list[Any], int]:
    """``(this shard's checkpoints, number before sharding)`` for parsed replay options."""
    from geomtrace.replay.sources import hub_checkpoints, local_checkpoints, read_revisions_file, shard_checkpoints

    if bool(args.model) == bool(args.checkpoints):
        raise UsageError("give exactly one of --model ORG/NAME (hub revisions) or --checkpoints DIR (local)")
    if args.model:
        if args.revisions and args.revisions_file:
            raise UsageError("give either --revisions or --revisions-file, not both")
        if args.revisions_file:
            revisions: Any = read_revisions_file(args.revisions_file)
        elif args.revisions:
            revisions = args.revisions if isinstance(args.revisions, str) else _items(args.revisions)
        else:
            raise UsageError("--model needs --revisions (e.g. step0,step1000 or pythia-paper) or --revisions-file")
        try:
            ckpts = hub_checkpoints(args.model, revisions)
        except RuntimeError as err:  # listing revisions ('all') needs the hub
            raise UsageError(str(err)) from err
    else:
        if args.revisions or args.revisions_file:
            raise UsageError("--revisions/--revisions-file select hub revisions; with --checkpoints use --step-range")
        ckpts = local_checkpoints(args.checkpoints)
    ckpts = _filter_checkpoints(ckpts, args)
    if not ckpts:
        raise UsageError("no checkpoints left after --stage/--step-range/--log-spaced")
    return shard_checkpoints(ckpts, args.shard), len(ckpts)


# ----------------------------------------------------------------------------- commands


def _cmd_replay(args: argparse.Namespace) -> int:
    from geomtrace.replay.runner import run_replay
    from geomtrace.replay.store import check_output_dir

    if not args.output:
        raise UsageError("--output OUT is required (the results folder)")
    check_output_dir(args.output, writable=not args.dry_run)
    like = like_settings(args)
    config = measure_config(args, like)
    options = probe_options(args, like)
    dtype = args.dtype or (like.dtype if like and like.dtype else "float32")
    _check_loading(args)
    ckpts, total = replay_checkpoints(args)
    if args.dry_run:
        for c in ckpts:
            print(f"{c.key}\tstep={c.step}\ttokens={c.tokens}\tstage={c.stage}\t{c.kind}")
        print(f"{len(ckpts)} checkpoint(s) of {total}")
        return 0
    if not ckpts:
        print(f"shard {args.shard}: no checkpoints ({total} in all, fewer than shards): nothing to do")
        return 0
    tensorboard = None if args.no_tensorboard else (args.tensorboard or os.path.join(args.output, "tensorboard"))
    summary = run_replay(
        ckpts,
        args.output,
        config=config,
        probe_options=options,
        dtype=dtype,
        device=args.device or "auto",
        device_map=args.device_map,
        trust_remote_code=bool(args.trust_remote_code),
        tokenizer=args.tokenizer,
        model_builder=args.model_builder,
        base_model=args.base_model,
        tokens_per_step=args.tokens_per_step or (like.tokens_per_step if like else None),
        tensorboard_dir=tensorboard,
        tensorboard_spectra=bool(args.tensorboard_spectra),
        progress=not args.no_progress,
        verbose=not args.quiet,
        reference=like.provenance if like else None,
    )
    if not args.quiet:
        print(summary)
    return 1 if summary.failed else 0


def _run_paths(args: argparse.Namespace, many: bool) -> list[str]:
    runs = args.runs if many else ([args.run] if args.run else [])
    runs = _items(runs) if many else runs
    if not runs:
        raise UsageError("give a replay output folder (or a live history .json)")
    return runs


def _cmd_plot(args: argparse.Namespace) -> int:
    from geomtrace.plots import save_figure, trajectory_figure
    from geomtrace.replay.results import check_comparable, load_trajectory

    paths = _run_paths(args, many=True)
    labels = _items(args.labels) or [Path(p).name or p for p in paths]
    if len(labels) != len(paths):
        raise UsageError(f"--labels has {len(labels)} names for {len(paths)} runs")
    if len(set(labels)) != len(labels):
        raise UsageError(f"two runs share a label ({', '.join(labels)}): give distinct --labels")
    runs = {label: load_trajectory(p, layer=args.layer, stage=args.stage, label=label)
            for label, p in zip(labels, paths)}
    check_comparable(runs)
    phases = None
    if args.phases:
        phases = _detect(next(iter(runs.values())), allow_warmup=True)
    fig = trajectory_figure(runs, x=args.x or "step", phases=phases, log_x=not args.linear_x, title=args.title)
    first = Path(paths[0])
    out = args.output or str((first if first.is_dir() else Path.cwd()) / "trajectory.png")
    print(save_figure(fig, out))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from geomtrace.replay.results import latest_probe_records
    from geomtrace.replay.store import ResultsStore, export_csv, export_seed_npy

    run = Path(_run_paths(args, many=False)[0])
    if not (run / "results.jsonl").is_file():
        raise UsageError(f"{run} has no results.jsonl: not a geomtrace replay output folder")
    store = ResultsStore(run)
    records = latest_probe_records(store.records(), run.name)
    if args.layer is not None:
        records = [r for r in records if r.get("layer") == args.layer]
        if not records:
            raise UsageError(f"{run}: no records for layer {args.layer}")
    if (args.format or "seed-npy") == "csv":
        print(export_csv(records, args.output or run / "results.csv"))
        return 0
    layer = args.layer if args.layer is not None else max(r["layer"] for r in records)
    records = [r for r in records if r.get("layer") == layer]
    if not args.no_spectra:
        missing = []
        for r in records:
            r["eigenspectrum"] = store.spectrum(r["key"], layer)  # ValueError names a corrupt file
            if r["eigenspectrum"] is None:
                missing.append(str(store.spectrum_path(r["key"], layer)))
        if missing:
            raise UsageError(
                f"{len(missing)} eigenspectrum file(s) missing ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}): export with --no-spectra, or replay those checkpoints again"
            )
    path = args.output or run / f"geometry_layer{layer}.npy"
    print(export_seed_npy(records, path, layer=layer, spectra=not args.no_spectra))
    return 0


def _detect(trajectory: Any, allow_warmup: bool) -> list[Any]:
    from geomtrace.phases import detect_phases

    alpha = trajectory.alpha if trajectory.alpha.size and (trajectory.alpha == trajectory.alpha).any() else None
    return detect_phases(trajectory.step, trajectory.rankme, alpha, allow_warmup=allow_warmup)


def _cmd_phases(args: argparse.Namespace) -> int:
    from geomtrace.phases import format_segments
    from geomtrace.replay.results import check_comparable, load_trajectory

    path = _run_paths(args, many=False)[0]
    trajectory = load_trajectory(path, layer=args.layer, stage=args.stage)
    check_comparable({trajectory.label: trajectory})
    segments = _detect(trajectory, allow_warmup=not args.no_warmup)
    if args.json:
        import json

        print(json.dumps([s.to_dict() for s in segments], indent=2))
    else:
        layer = "" if trajectory.layer is None else f", layer {trajectory.layer}"
        print(f"{trajectory.label}: {len(trajectory.step)} measurements{layer}")
        print(format_segments(segments))
    return 0


# ----------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``geomtrace`` command line; returns the exit code (0 ok, 1 some checkpoints
    failed, 2 bad input)."""
    args = parse_args(argv)
    from geomtrace.probes import ProbeLoadError
    from geomtrace.replay.sources import CheckpointLoadError

    try:
        return int(args.handler(args))
    except (UsageError, ValueError, OSError, KeyError, ImportError, ProbeLoadError, CheckpointLoadError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        one_line = " ".join(str(message).split())  # library messages may hold newlines
        print(f"geomtrace {args.command}: error: {one_line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Results are appended per checkpoint as units: nothing measured so far is lost.
        print(f"geomtrace {args.command}: interrupted (rerun the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
