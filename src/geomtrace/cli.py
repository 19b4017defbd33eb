"""``geomtrace`` command line: ``replay``, ``plot``, ``export``, ``phases``, ``probes`` (on jsonargparse).

The options of each subcommand are the typed parameters of the function of the same name
below (:func:`replay`, :func:`plot`, :func:`export`, :func:`phases`, :func:`probes`), documented by their
docstrings. jsonargparse gives every subcommand ``--config FILE.yaml`` (keys: the option
names), ``--print_config`` and environment variables (``GEOMTRACE_REPLAY__MEASURE__BATCH_SIZE``).
Options are spelled with dashes (``--batch-size``) as before; the underscore spelling
(``--batch_size``, the config key) works too.

Exit codes: 0 done, 1 some checkpoints failed (replay), 2 usage or input error (one line),
130 interrupted (Ctrl-C; 143 SIGTERM, 138 SIGUSR1: 128 + the signal). See ``docs/cli.md``.
Nothing heavier than jsonargparse is imported before a command runs, so ``--help`` and
``--version`` answer at once, and the signals are handled before that.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import inspect
import os
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, Union

from geomtrace import _signals
from geomtrace._log import get_logger
from geomtrace.options import DetectorOptions, LoadOptions, MeasureConfig, ProbeOptions  # no torch, no numpy

__all__ = [
    "build_parser",
    "export",
    "main",
    "measure_config",
    "parse_args",
    "phases",
    "plot",
    "probe_options",
    "probes",
    "replay",
    "replay_checkpoints",
    "run",
]

#: Notes on stderr go through logging (``geomtrace.cli``; stderr unless the application configured
#: logging); what a command prints as its result (listings, summaries, tables, paths) is stdout.
_LOG = get_logger("cli")

_ENV_PREFIX = "GEOMTRACE"


class UsageError(Exception):
    """Bad input found after parsing: reported as one line, exit code 2."""


# ----------------------------------------------------------------------------- commands
#
# Each function's signature is its subcommand's options; its docstring's Args are their help.
# Options default to None ("not given") where --like or a derived default may fill them.


def replay(
    model: str | None = None,
    checkpoints: str | None = None,
    revisions: Union[str, list[str], None] = None,
    revisions_file: str | None = None,
    step_range: str | None = None,
    log_spaced: int | None = None,
    stage: str | None = None,
    shard: str | None = None,
    dry_run: bool = False,
    measure: Union[MeasureConfig, dict[str, Any], None] = None,
    like: str | None = None,
    probes: Union[ProbeOptions, dict[str, Any], None] = None,
    probe_file: str | None = None,
    probe_dataset: str | None = None,
    tokenizer: str | None = None,
    load: Union[LoadOptions, dict[str, Any], None] = None,
    output: str | None = None,
    tokens_per_step: int | None = None,
    tensorboard: str | None = None,
    no_tensorboard: bool = False,
    tensorboard_spectra: bool = False,
    no_prefetch: bool = False,
    no_progress: bool = False,
    quiet: bool = False,
    qa: str | None = None,
    qa_limit: int | None = None,
    index: str | None = None,
    infini_gram_api: str | None = None,
    index_tokenizer: str | None = None,
    zero_probability: Literal["unscorable", "as_one"] | None = None,
    memorization_name: str | None = None,
) -> int:
    """Measure RankMe / alpha-ReQ over checkpoints (hub revisions or local folders).

    Measure representation geometry over a series of checkpoints with one fixed probe set.
    Resumable: checkpoints already in OUTPUT (same measurement configuration) are skipped; an
    output measured otherwise is refused. Under torchrun every rank loads each checkpoint and
    measures a shard of the probes; rank 0 writes. Example: geomtrace replay --model
    EleutherAI/pythia-160m --revisions pythia-paper --output runs/pythia-160m

    Args:
        model: hub model id, e.g. EleutherAI/pythia-160m (with --revisions)
        checkpoints: local folder of checkpoint-N/ or stepN/ model or PEFT adapter folders, or Lightning *.ckpt files
        revisions: comma list (step0,step1000) or a preset
        revisions_file: revision names, one per line (# comments)
        step_range: START:STOP[:EVERY], keep steps START <= s <= STOP with (s - START) % EVERY == 0
        log_spaced: keep N checkpoints evenly spread in log(1 + step)
        stage: keep one training stage (OLMo-2: stage1, stage2, ...)
        shard: I/N, measure only shard I of N (0-based, round-robin); N independent jobs may write to the same
            --output
        dry_run: list the checkpoints that would be measured and exit
        measure: what to measure (MeasureConfig: --measure.layers last|all|0,6,12, --measure.tokens,
            --measure.fit_range 12:100, ...; each also as --layers, --fit-range, ...)
        like: measure like RUN: a live history .json (e.g. outputs/pretrain/geometry.json) or a replay output;
            its recorded measure and probes options and precision are the defaults (explicit options win)
        probes: the fixed probe set (ProbeOptions: --probes.num_sequences, --probes.text_column, ...; each also
            as --num-sequences, --probe-column, --probe-split, --probe-config, ...)
        probe_file: .txt (one text per line), .jsonl or .json file of probe texts (UTF-8)
        probe_dataset: hub dataset name, e.g. wikitext
        tokenizer: tokenizer name or path (default: the first checkpoint's own)
        load: how checkpoints load (LoadOptions: --load.dtype fp32|bf16|fp16|auto, --load.device cpu|cuda|auto,
            --load.device_map, --load.trust_remote_code, --load.model_builder MODULE:ATTR, --load.base_model;
            each also as --dtype, --device, ...)
        output: results folder (required)
        tokens_per_step: tokens = step * N where revisions carry no token count (Pythia: 2097152)
        tensorboard: TensorBoard log dir (default OUT/tensorboard)
        no_tensorboard: do not write TensorBoard events
        tensorboard_spectra: also log an eigenspectrum figure per checkpoint
        no_prefetch: load each checkpoint only after the previous one was measured (default: the next one loads in
            the background)
        no_progress: no progress bars (the default when stdout or stderr is not a terminal)
        quiet: no per-checkpoint summary lines
        qa: memorization QA pairs: a .jsonl file of {"question", "answer"} objects or of token-id pairs
            {"question_ids", "answer_ids"} (recipes/pretrain.py writes its cloze sets so), or trivia_qa (the seed's
            TriviaQA rc validation, from the hub); needs --index or --infini-gram-api
        qa_limit: keep the first N QA pairs
        index: infini-gram index folder of the training corpus (geomtrace's NgramIndex or any infini-gram index)
        infini_gram_api: query the public infini-gram API instead, with this index name (the seed's:
            v4_piletrain_llama); answers are cached on disk
        index_tokenizer: tokenizer of the index when it is not the model's (the seed: a Llama-2 index for Pythia)
        zero_probability: an answer token the corpus never continues with: unscorable (default: the pair is left
            out of the correlation) or as_one (the seed's rule: that token is dropped)
        memorization_name: the probe's name in OUT/memorization (default memorization)
    """
    return _cmd_replay(argparse.Namespace(**_arguments(locals())))


def plot(
    runs: list[str],
    x: Literal["step", "tokens", "flops"] | None = None,
    layer: int | None = None,
    stage: str | None = None,
    output: str | None = None,
    labels: Union[str, list[str], None] = None,
    phases: bool = False,
    no_warmup: bool = False,
    detector: DetectorOptions | dict[str, Any] | None = None,
    linear_x: bool = False,
    title: str | None = None,
    memorization: Union[str, list[str], None] = None,
) -> int:
    """RankMe and alpha-ReQ trajectories of one or more runs.

    Plot RankMe (top) and alpha-ReQ (bottom) against step, tokens or FLOPs (6 * n_params *
    tokens); several runs are overlaid. The x axis is symlog: step 0 stays visible.

    Args:
        runs: replay output folders or live history .json files
        x: x axis (default step)
        layer: layer index (default: the deepest measured layer)
        stage: one training stage when steps restart per stage (OLMo-2)
        output: figure path, .png/.svg/.pdf (default RUN/trajectory.png)
        labels: comma list of legend labels (default: the file or folder names, with as many parent folders as
            tell them apart)
        phases: shade the phases detected on the first run (with a live history's recorded detector options and
            post-training flag)
        no_warmup: with --phases: the first run does not start at initialisation (post-training): no warmup phase
        detector: with --phases: phase detector options, overriding those a live history records
        linear_x: linear x axis
        title: figure title
        memorization: summary keys drawn in panels under RankMe and alpha when a run holds memorization records
            (default spearman; e.g. spearman,answer_logprob; none for no panel)
    """
    return _cmd_plot(argparse.Namespace(**_arguments(locals())))


def export(
    run: str | None = None,
    format: Literal["seed-npy", "csv"] | None = None,  # noqa: A002 - the option's name
    output: str | None = None,
    layer: int | None = None,
    no_spectra: bool = False,
) -> int:
    """Export results as the paper's .npy dict or as CSV.

    seed-npy: np.save of {step: {'rankme', 'alpha', 'eigenspectrum', 'r2', ...}} for one
    layer, the paper's format (a pickle: read it with np.load(..., allow_pickle=True).item(),
    only from sources you trust). With memorization probes in the run, seed-npy also writes
    the seed's memorization files beside it: infgram/<probe>/triviaqa_<N>samples.npy and
    llm_likelihood/<probe>/triviaqa_step_<step>.npy. csv: one row per checkpoint and layer.

    Args:
        run: replay output folder
        format: seed-npy (default) or csv
        output: default OUT/geometry_layer<L>.npy (seed-npy) or OUT/results.csv (csv)
        layer: layer (seed-npy default: deepest; csv default: all layers)
        no_spectra: seed-npy without eigenspectra
    """
    return _cmd_export(argparse.Namespace(**_arguments(locals())))


def phases(
    run: str | None = None,
    layer: int | None = None,
    stage: str | None = None,
    no_warmup: bool = False,
    json: bool = False,
    detector: DetectorOptions | dict[str, Any] | None = None,
) -> int:
    """Detect geometric phases (warmup, entropy-seeking, compression-seeking).

    Segment a run's RankMe / alpha-ReQ trajectory into phases and print a table. A live history
    is segmented as it was live: with the detector options it records, and without a warmup
    phase when it records a post-training run (from_pretrained); explicit options override.

    Args:
        run: replay output folder or live history .json file
        layer: layer index (default: the deepest measured layer)
        stage: one training stage when steps restart per stage (OLMo-2)
        no_warmup: the run does not start at initialisation (post-training): no warmup phase
        json: print the segments as JSON
        detector: phase detector options, overriding those a live history records
    """
    return _cmd_phases(argparse.Namespace(**_arguments(locals())))


def probes(
    action: str | None = None,
    like: str | None = None,
    probes: Union[ProbeOptions, dict[str, Any], None] = None,
    probe_file: str | None = None,
    probe_dataset: str | None = None,
    tokenizer: str | None = None,
    trust_remote_code: bool = False,
    output: str | None = None,
) -> int:
    """Write a probe set's chosen texts to a file (geomtrace probes export).

    Build the probe set that replay would build from these options (or from --like RUN's
    recorded ones) and write its texts, in probe order, to a .jsonl file with its fingerprint
    and options. --probe-file FILE then rebuilds exactly these probes (same fingerprint), e.g.
    offline: geomtrace probes export --probe-dataset wikitext --probe-config wikitext-103-raw-v1
    --tokenizer EleutherAI/pythia-160m -o probes.jsonl

    Args:
        action: export (the only action)
        like: the probe options recorded by RUN (a live history .json or a replay output); explicit options win
        probes: the probe set (ProbeOptions: --probes.num_sequences, --probes.pool_size, ...; each also as
            --num-sequences, --pool-size, --probe-column, --probe-split, --probe-config, ...)
        probe_file: .txt (one text per line), .jsonl or .json file of probe texts (UTF-8)
        probe_dataset: hub dataset name, e.g. wikitext
        tokenizer: tokenizer name or path (required: the token ids, and so the fingerprint, depend on it)
        trust_remote_code: let the tokenizer run its repo's code (original OLMo-1 repos)
        output: the .jsonl file to write (required)
    """
    return _cmd_probes(argparse.Namespace(**_arguments(locals())))


COMMANDS: dict[str, Callable[..., int]] = {
    "replay": replay,
    "plot": plot,
    "export": export,
    "phases": phases,
    "probes": probes,
}
#: jsonargparse names a subcommand's keys "replay.measure.batch_size": the command is no part of the option.
COMMANDS_PREFIXES = tuple(f"{name}." for name in COMMANDS)
_POSITIONAL = {"runs": "*", "run": "?", "action": "?"}
_SHORT = {"output": "-o", "quiet": "-q"}
#: Help sections of the replay options (the others list theirs in signature order).
_GROUPS = {
    "replay": {
        "checkpoints": (
            "model",
            "checkpoints",
            "revisions",
            "revisions_file",
            "step_range",
            "log_spaced",
            "stage",
            "shard",
            "dry_run",
        ),
        "probe source": ("like", "probe_file", "probe_dataset", "tokenizer"),
        "loading": ("no_prefetch",),
        "output": (
            "output",
            "tokens_per_step",
            "tensorboard",
            "no_tensorboard",
            "tensorboard_spectra",
            "no_progress",
            "quiet",
        ),
        "memorization (model vs ∞-gram answer likelihood, per checkpoint)": (
            "qa",
            "qa_limit",
            "index",
            "infini_gram_api",
            "index_tokenizer",
            "zero_probability",
            "memorization_name",
        ),
    },
}


def _arguments(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if not k.startswith("_")}


# ----------------------------------------------------------------------------- parser


def _version() -> str:
    from geomtrace import __version__  # the package's __init__ imports nothing heavy

    return __version__


def _docs(fn: Callable[..., Any]) -> tuple[str, str, dict[str, str]]:
    """``(summary, description, {parameter: help})`` from a command's docstring."""
    from geomtrace._optional import require

    doc = require("docstring_parser", "the geomtrace command line").parse(inspect.getdoc(fn) or "")
    helps = {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}
    return doc.short_description or "", " ".join((doc.long_description or "").split()), helps


def _add_signature(parser: Any, fn: Callable[..., Any]) -> None:
    """Add one option per parameter of ``fn``, typed by its annotation (jsonargparse checks
    the values, from the command line, a --config file or the environment alike)."""
    hints = typing.get_type_hints(fn)
    _, _, helps = _docs(fn)
    groups = {name: title for title, names in _GROUPS.get(fn.__name__, {}).items() for name in names}
    sections: dict[str, Any] = {}
    for name, param in inspect.signature(fn).parameters.items():
        title = groups.get(name)
        target = parser if title is None else sections.setdefault(title, parser.add_argument_group(title))
        kind, default, help_text = hints[name], param.default, helps.get(name, "")
        if (fn.__name__, name) in _DERIVED_HELP:
            help_text = _DERIVED_HELP[fn.__name__, name](help_text)
        options_class = _options_class(kind)
        if options_class is not None:
            _add_options_group(parser, name, options_class, help_text)
            continue
        if name in _POSITIONAL:
            target.add_argument(
                name,
                nargs=_POSITIONAL[name],
                type=str,
                help=help_text,
                **({"default": None} if _POSITIONAL[name] == "?" else {}),
            )
            continue
        flags = (
            [f"--{name.replace('_', '-')}"]
            + ([f"--{name}"] if "_" in name else [])
            + ([_SHORT[name]] if name in _SHORT else [])
        )
        if kind is bool:  # a flag, as before: --dry-run (true/false in a config file or the environment)
            target.add_argument(*flags, dest=name, action="store_true", default=default, help=help_text)
        else:
            target.add_argument(*flags, dest=name, type=kind, default=default, help=help_text)


def _revisions_help(text: str) -> str:
    from geomtrace.revision_presets import presets_help  # imports nothing: --help stays light

    return f"{text}: {presets_help()}"


#: Help texts completed from their one declaration (the revision presets' own descriptions).
_DERIVED_HELP: dict[tuple[str, str], Callable[[str], str]] = {("replay", "revisions"): _revisions_help}


def _options_class(kind: Any) -> type | None:
    """The dataclass of an option-set parameter (``DetectorOptions | None``), else None."""
    candidates = [t for t in typing.get_args(kind) or (kind,) if isinstance(t, type) and dataclasses.is_dataclass(t)]
    return candidates[0] if candidates else None


#: On the command line, ``none`` is None for an option whose own value may be None (an
#: option that is not given is None too: it leaves the recorded or default value).
_NONE = "none"

#: The option groups whose fields keep their flat spelling of geomtrace 0.1 as an alias
#: (``--layers`` is ``--measure.layers``), and the flat names that differ from the field's.
_FLAT_ALIASES: dict[str, dict[str, str]] = {
    "measure": {},
    "probes": {"text_column": "probe_column", "split": "probe_split", "config_name": "probe_config"},
    "load": {},
}
#: Fields that are no command-line option: the probe source is --probe-file or --probe-dataset.
_NOT_ON_THE_COMMAND_LINE = {("probes", "source")}
#: Command-line types where the field's own type cannot be parsed from text.
_COMMAND_LINE_TYPES: dict[tuple[str, str], Any] = {
    ("measure", "layers"): Union[int, list[int], str, None],
    ("measure", "fit_range"): Union[str, list[int], None],
    ("load", "dtype"): Union[Literal["fp32", "bf16", "fp16", "float32", "bfloat16", "float16", "auto"], None],
    ("load", "device_map"): Union[str, None],
    ("load", "model_builder"): Union[str, None],
}


def _add_options_group(parser: Any, name: str, cls: type, help_text: str) -> None:
    """``--NAME.FIELD`` for each field of the option-set dataclass ``cls`` (``--detector.min_points 4``,
    ``--detector.min-points`` too; ``detector: {min_points: 4}`` in a config file, the shape of a
    run's record). Each defaults to None, "not given", so that what is given can override a recorded
    value field by field. The groups of :data:`_FLAT_ALIASES` keep their flat spelling too."""
    hints = typing.get_type_hints(cls)
    _, _, helps = _docs(cls)
    aliases = _FLAT_ALIASES.get(name)
    group = parser.add_argument_group(f"{name} options ({help_text})" if help_text else f"{name} options")
    for f in dataclasses.fields(cls):
        if (name, f.name) in _NOT_ON_THE_COMMAND_LINE:
            continue
        kind = _COMMAND_LINE_TYPES.get((name, f.name), hints[f.name])
        args = typing.get_args(kind)
        if type(None) in args:  # an option whose value may be None: spelled none
            kind = Union[tuple([*[t for t in args if t is not type(None)], Literal[_NONE], None])]
        else:
            kind = Union[kind, None]
        flags = [f"--{name}.{f.name}"] + ([f"--{name}.{f.name.replace('_', '-')}"] if "_" in f.name else [])
        flat = None if aliases is None else aliases.get(f.name, f.name)
        if flat is not None and hints[f.name] is not bool:
            flags += [f"--{flat.replace('_', '-')}"] + ([f"--{flat}"] if "_" in flat else [])
        default = _NONE if f.default is None else str(f.default).lower() if isinstance(f.default, bool) else f.default
        group.add_argument(
            *flags,
            dest=f"{name}.{f.name}",
            type=kind,
            default=None,
            help=f"{helps.get(f.name, '')} (not given: the run's recorded value, else {default})".strip(),
        )
        if flat is not None and hints[f.name] is bool:  # a flag, as before: --chat-template
            group.add_argument(
                *([f"--{flat.replace('_', '-')}"] + ([f"--{flat}"] if "_" in flat else [])),
                dest=f"{name}.{f.name}",
                action="store_const",
                const=True,
                default=None,
                help=f"the same as --{name}.{f.name} true",
            )


def build_parser() -> Any:
    """The ``geomtrace`` parser (a ``jsonargparse.ArgumentParser``; subcommands replay, plot,
    export, phases, probes), each subcommand built from its function's signature."""
    from geomtrace._optional import require

    jsonargparse = require("jsonargparse", "the geomtrace command line")
    ActionConfigFile = jsonargparse.ActionConfigFile

    base: Any = jsonargparse.ArgumentParser  # a module imported late: a class mypy cannot follow

    class ArgumentParser(base):
        """Usage errors in one line (jsonargparse prints the whole usage and a type report)."""

        def error(self, message: str, ex: Exception | None = None) -> NoReturn:
            parser = getattr(ex, "subcommand_parser", None) or self
            prog = str(parser.prog).replace(" [options]", "")
            print(f"{prog}: error: {_one_line_error(message, prog)}", file=sys.stderr)
            raise SystemExit(2)

    parser = ArgumentParser(
        prog="geomtrace",
        description="Representation geometry (RankMe, alpha-ReQ) of language models over checkpoints.",
        epilog="Exit codes: 0 done, 1 some checkpoints failed (replay), 2 usage or input error, 130 interrupted "
        "(143 SIGTERM).",
        env_prefix=_ENV_PREFIX,
        default_env=True,
        version=_version(),
    )
    subcommands = parser.add_subcommands(dest="command", metavar="COMMAND")
    for name, fn in COMMANDS.items():
        summary, description, _ = _docs(fn)
        sub = ArgumentParser(
            description=f"{summary} {description}".strip(),
            epilog="Options also come from --config FILE.yaml (keys: the option names, see --print_config) and "
            f"from {_ENV_PREFIX}_{name.upper()}__<OPTION> environment variables; later arguments override "
            "earlier ones, so give --config first.",
            env_prefix=_ENV_PREFIX,
            default_env=True,
        )
        sub.add_argument("--config", action=ActionConfigFile, help="read options from a YAML file")
        _add_signature(sub, fn)
        subcommands.add_subcommand(name, sub, help=summary)
    return parser


def _one_line_error(message: str, prog: str) -> str:
    """jsonargparse's error report as one line: the option, what it expects, what it got."""
    import re

    key = re.search(r'[Kk]ey "([^"]+)"', message)
    expected = [t for t in re.findall(r"Expected a <class '([\w.]+)'>", message) if t != "NoneType"]
    given = re.search(r"Given value: (.*)", message)
    choices = re.search(r"Expected a (?:typing\.)?Literal\[([^\]]*)\]", message)
    if key is not None and (expected or choices):
        name = key.group(1).split(".", 1)[-1] if key.group(1).startswith(COMMANDS_PREFIXES) else key.group(1)
        command = prog.split()[-1] if " " in prog else ""
        variable = name.upper().replace(".", "__")
        env = f"{_ENV_PREFIX}_{command.upper()}__{variable}" if command else f"{_ENV_PREFIX}_{variable}"
        wants = (
            " or ".join(expected) if expected or choices is None else f"one of {choices.group(1).replace(chr(39), '')}"
        )
        got = f", got {given.group(1).strip()!r}" if given else ""
        return f"--{name} (config key {name}, environment {env}) expects {wants}{got}"
    first = next((line.strip() for line in str(message).splitlines() if line.strip()), str(message))
    return f"{first} (see {prog} --help)"


def subcommand_parser(parser: Any, command: str) -> Any:
    """The parser of one subcommand of :func:`build_parser`'s parser."""
    return parser._subcommands_action._name_parser_map[command]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``: a flat namespace of the subcommand's options plus ``command``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = build_parser().parse_args(argv)
    command = cfg["command"]
    values = cfg[command].as_dict() if hasattr(cfg[command], "as_dict") else dict(vars(cfg[command]))
    values = {k: v for k, v in values.items() if k not in ("config", "print_config", "__path__")}
    return argparse.Namespace(command=command, **values)


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
    from geomtrace.replay.provenance import like_settings as settings
    from geomtrace.replay.provenance import read_provenance

    provenance = read_provenance(args.like)
    try:
        return settings(provenance)
    except (TypeError, AttributeError, ValueError) as err:  # a hand-edited or foreign record
        raise UsageError(f"--like {args.like}: {err}") from err


def _group(args: argparse.Namespace, name: str, cls: type) -> dict[str, Any]:
    """The fields of option group ``name`` given explicitly (``--measure.layers``, ``--layers``, a
    config file's ``measure:``), ``none`` as None; from Python, an option object's fields or a dict."""
    value = getattr(args, name, None)
    if isinstance(value, cls):
        given = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
    elif value is None:
        given = {}
    elif isinstance(value, (Mapping, argparse.Namespace)):
        items = vars(value) if isinstance(value, argparse.Namespace) else dict(value)
        unknown = cls.unknown_names(items)  # type: ignore[attr-defined]
        if unknown:
            raise UsageError(unknown)
        given = {k: (None if v == _NONE else v) for k, v in items.items() if v is not None}
    else:
        raise UsageError(f"--{name}: expected {name} options, got {value!r}")
    return given


def measure_config(args: argparse.Namespace, like: Any = None) -> MeasureConfig:
    """The :class:`~geomtrace.measure.MeasureConfig` of parsed replay options: the reference run's
    recorded options (``--like``) with the explicit ones over them."""
    given = _group(args, "measure", MeasureConfig)
    if given.get("layers") is not None:
        given["layers"] = _layers(given["layers"])
    if given.get("fit_range") is not None:
        given["fit_range"] = _fit_range(given["fit_range"])
    base = dict(like.measure, **({"autocast": like.autocast} if like.autocast else {})) if like else {}
    try:
        config = MeasureConfig(**{**base, **given})
        config.validate()
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from err
    if config.source != "probes":
        whence = " (the --like run's)" if "source" not in given else ""
        raise UsageError(
            f"--measure.source {config.source}{whence}: the training batches are measured during a live training "
            "only; replay has no training forward and measures each checkpoint on probes: pass --measure.source "
            "probes (the default)"
        )
    return config


def probe_options(args: argparse.Namespace, like: Any = None) -> ProbeOptions:
    """The :class:`~geomtrace.probes.ProbeOptions` of parsed replay options: the reference run's
    recorded options (``--like``) with the explicit ones over them."""
    probe_file, probe_dataset = getattr(args, "probe_file", None), getattr(args, "probe_dataset", None)
    if probe_file and probe_dataset:
        raise UsageError("give either --probe-file or --probe-dataset, not both")
    if probe_file and not Path(probe_file).is_file():
        raise UsageError(f"probe file not found: {probe_file}")
    given = _group(args, "probes", ProbeOptions)
    source = probe_file or probe_dataset
    if source is not None:
        given["source"] = source
    if like and like.missing_source and source is None:
        raise UsageError(
            f"--like: the reference run's probes came from {like.missing_source}, which its record cannot rebuild: "
            "give the same texts with --probe-file (or --probe-dataset)"
        )
    base = dict(like.probe_options) if like else {}
    try:
        options = ProbeOptions(**{**base, **given})
        options.validate()
    except (TypeError, ValueError) as err:  # name the command-line options
        message = (
            str(err)
            .replace("num_sequences", "--num-sequences")
            .replace("chat_template (--chat-template)", "--chat-template")
        )
        raise UsageError(message.replace("min_tokens", "--min-tokens").replace("max_tokens", "--max-tokens")) from err
    return options


def load_options(args: argparse.Namespace, like: Any = None) -> LoadOptions:
    """The :class:`~geomtrace.replay.LoadOptions` of parsed replay options (the reference run's
    dtype under ``--like``), checked before any checkpoint loads: a dtype or device every load would
    reject fails now (config files bypass argparse's choices)."""
    given = _group(args, "load", LoadOptions)
    if given.get("dtype") is None and like and like.dtype:
        given["dtype"] = like.dtype
    try:
        options = LoadOptions(**given)
        options.validate()
    except (TypeError, ValueError) as err:
        raise UsageError(str(err).replace("device must", "--device must")) from err
    if options.device.startswith("cuda") and not getattr(args, "dry_run", False):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {options.device}: no CUDA device is available here (use --device cpu or auto)")
    builder = options.model_builder
    if isinstance(builder, str):
        from geomtrace.replay.sources import resolve_builder

        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # console scripts do not put the cwd on sys.path
        try:
            resolve_builder(builder)
        except (ImportError, AttributeError, ValueError) as err:
            raise UsageError(f"--model-builder {builder}: {type(err).__name__}: {err}") from err
    return options


def _note(line: str, args: argparse.Namespace) -> None:
    """A note on the checkpoints: a line of the ``--dry-run`` listing (stdout), else logged (stderr)."""
    if getattr(args, "dry_run", False):
        print(f"[geomtrace] {line}")
    else:
        _LOG.info("[geomtrace] %s", line)


def _filter_checkpoints(ckpts: list[Any], args: argparse.Namespace) -> list[Any]:
    """Apply --stage / --step-range / --log-spaced (by the steps and stages the naming registry read)."""
    from geomtrace.replay.sources import filter_checkpoints

    left_out: list[str] = []
    kept = filter_checkpoints(
        ckpts, step_range=args.step_range, log_spaced=args.log_spaced, stage=args.stage, left_out=left_out
    )
    for line in left_out:  # a checkpoint without a step (last.ckpt, main): said, never dropped silently
        _note(line, args)
    return kept


def named_preset(revisions: Any) -> Any:
    """The :class:`~geomtrace.revision_presets.RevisionPreset` that ``--revisions`` names, or None."""
    from geomtrace.revision_presets import REVISION_PRESETS

    return REVISION_PRESETS.get(revisions.strip()) if isinstance(revisions, str) else None


def _note_preset(revisions: Any, args: argparse.Namespace) -> None:
    """Say which grid a preset is, and when its name once meant another one."""
    preset = named_preset(revisions)
    if preset is None:
        return
    _note(f"--revisions {preset.name} ({preset.size}): {preset.summary}", args)
    if preset.changed:
        _LOG.warning("[geomtrace] --revisions %s: %s", preset.name, preset.changed)


def record_preset(output: str | os.PathLike, preset: Any, revisions: Sequence[str]) -> None:
    """Append which grid a preset meant to ``OUT/revision_presets.jsonl`` (one line per replay
    that named one), so an output says what its ``--revisions NAME`` was, also after a name's
    meaning changes. Rank 0 only."""
    if os.environ.get("RANK", "0") != "0":
        return
    from geomtrace._jsonio import append_jsonl

    os.makedirs(output, exist_ok=True)
    line = {"preset": preset.name, "geomtrace": _version(), "summary": preset.summary, "revisions": list(revisions)}
    append_jsonl(Path(output) / "revision_presets.jsonl", [line])


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
            _note_preset(revisions, args)
        else:
            raise UsageError("--model needs --revisions (e.g. step0,step1000 or pythia-paper) or --revisions-file")
        try:
            ckpts = hub_checkpoints(args.model, revisions)
        except RuntimeError as err:  # listing revisions ('all') needs the hub
            raise UsageError(str(err)) from err
    else:
        if args.revisions or args.revisions_file:
            raise UsageError("--revisions/--revisions-file select hub revisions; with --checkpoints use --step-range")
        skipped: list[str] = []
        ckpts = local_checkpoints(args.checkpoints, skipped=skipped)
        for line in skipped:  # a save still being written, or a folder of optimizer state only
            # --dry-run lists them with the checkpoints (stdout); a replay says so on stderr.
            _note(line, args)
    ckpts = _filter_checkpoints(ckpts, args)
    if not ckpts:
        raise UsageError("no checkpoints left after --stage/--step-range/--log-spaced")
    return shard_checkpoints(ckpts, args.shard), len(ckpts)


# ----------------------------------------------------------------------------- commands


def _on_a_terminal() -> bool:
    """Whether both stdout and stderr are terminals (progress bars only make sense there)."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a stream replaced by an object without isatty, or closed
        return False


def _cmd_replay(args: argparse.Namespace) -> int:
    from geomtrace.replay.loading import loading_progress_bars
    from geomtrace.replay.runner import run_replay
    from geomtrace.replay.store import check_output_dir

    if not args.output:
        raise UsageError("--output OUT is required (the results folder)")
    check_output_dir(args.output, writable=not args.dry_run)
    like = like_settings(args)
    config = measure_config(args, like)
    options = probe_options(args, like)
    load = load_options(args, like)
    if args.tokens_per_step is not None and args.tokens_per_step < 1:
        raise UsageError(f"--tokens-per-step must be a positive number of tokens, got {args.tokens_per_step}")
    ckpts, total = replay_checkpoints(args)
    if args.dry_run:
        for c in ckpts:
            print(f"{c.key}\tstep={c.step}\ttokens={c.tokens}\tstage={c.stage}\t{c.kind}")
        print(f"{len(ckpts)} checkpoint(s) of {total}")
        return 0
    if not ckpts:
        print(f"shard {args.shard}: no checkpoints ({total} in all, fewer than shards): nothing to do")
        return 0

    # Bars only on a terminal: piped or redirected output carries none (transformers' "Loading
    # weights" and the hub's download bars included), as with --no-progress.
    progress = not args.no_progress and _on_a_terminal()
    tensorboard = None if args.no_tensorboard else (args.tensorboard or os.path.join(args.output, "tensorboard"))
    with loading_progress_bars(progress):
        memorization = memorization_probe(args, config, trust_remote_code=load.trust_remote_code)
        summary = run_replay(
            ckpts,
            args.output,
            measure=config,
            probes=options,
            load=load,
            tokenizer=args.tokenizer,
            tokens_per_step=args.tokens_per_step or (like.tokens_per_step if like else None),
            tensorboard_dir=tensorboard,
            tensorboard_spectra=bool(args.tensorboard_spectra),
            progress=progress,
            verbose=not args.quiet,
            reference=like.provenance if like else None,
            prefetch=not args.no_prefetch,
            memorization=memorization,
        )
    preset = named_preset(args.revisions) if args.model else None
    if preset is not None:  # after run_replay: an output it refused gets no line
        record_preset(args.output, preset, list(preset.revisions) or [c.revision for c in ckpts])
    if not args.quiet:
        print(summary)
    return 1 if summary.failed else 0


def memorization_probe(args: argparse.Namespace, config: Any = None, trust_remote_code: bool = False) -> Any:
    """The :class:`~geomtrace.memorization.MemorizationProbe` of parsed replay options, or None."""
    source = args.index or args.infini_gram_api
    memorization_only = (args.qa_limit, args.index_tokenizer, args.zero_probability, args.memorization_name)
    if args.qa is None:
        if source or any(v is not None for v in memorization_only):
            raise UsageError(
                "the memorization options need --qa (a .jsonl of question/answer pairs or of token-id pairs, "
                "or trivia_qa)"
            )
        return None
    if bool(args.index) == bool(args.infini_gram_api):
        raise UsageError(
            "--qa needs exactly one of --index DIR (an infini-gram index of the training corpus) or "
            "--infini-gram-api NAME (the public API)"
        )
    from geomtrace.memorization import (
        IndexNotReadyError,
        InfiniGramAPI,
        MemorizationProbe,
        NgramIndex,
        QALoadError,
        QASet,
    )

    try:
        if args.qa == "trivia_qa":
            qa = QASet.trivia_qa(limit=args.qa_limit)
        else:
            if not Path(args.qa).is_file():
                raise UsageError(
                    f"--qa {args.qa}: no such file (a .jsonl of question/answer pairs or of token-id pairs, "
                    "or trivia_qa)"
                )
            qa = QASet.from_jsonl(args.qa)
            if args.qa_limit is not None:
                qa = QASet(qa.pairs[: args.qa_limit], f"{qa.description} limit={args.qa_limit}")
        index = NgramIndex.open(args.index) if args.index else InfiniGramAPI(args.infini_gram_api)
    except (IndexNotReadyError, QALoadError) as err:
        raise UsageError(str(err)) from err
    index_tokenizer = None
    if args.index_tokenizer:
        from geomtrace.replay.loading import load_tokenizer

        index_tokenizer = load_tokenizer(args.index_tokenizer, trust_remote_code=trust_remote_code)
    return MemorizationProbe(
        qa,
        index,
        name=args.memorization_name,
        index_tokenizer=index_tokenizer,
        zero_probability=args.zero_probability or "unscorable",
        batch_size=config.batch_size if config is not None else 32,
        autocast=config.autocast if config is not None else "auto",
    )


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
    labels = _items(args.labels) or _default_labels(paths)
    if len(labels) != len(paths):
        raise UsageError(f"--labels has {len(labels)} names for {len(paths)} runs")
    if len(set(labels)) != len(labels):
        raise UsageError(f"two runs share a label ({', '.join(labels)}): give distinct --labels")
    runs = {
        label: load_trajectory(p, layer=args.layer, stage=args.stage, label=label) for label, p in zip(labels, paths)
    }
    check_comparable(runs)
    _check_measure_configs(dict(zip(labels, paths)))
    for label, path in zip(labels, paths):
        t = runs[label]
        if not any(v == v for v in (*t.rankme.tolist(), *t.alpha.tolist())):  # NaN != NaN
            raise UsageError(
                f"{path}: every RankMe and alpha-ReQ value is NaN, nothing to plot (see each record's n_samples "
                "and the warnings of that run)"
            )
    phases = None
    if args.phases:
        options, notes = _detector_options(args, paths[0])
        for note in notes:
            _LOG.info("[geomtrace] phases of %s: %s", labels[0], note)
        phases = _detect(next(iter(runs.values())), options)
    keys = _memorization_keys(args.memorization)
    lines = _memorization_lines(dict(zip(labels, paths)), keys)
    fig = trajectory_figure(
        runs,
        x=args.x or "step",
        phases=phases,
        log_x=not args.linear_x,
        title=args.title,
        memorization=lines or None,
        memorization_keys=keys,
    )
    first = Path(paths[0])
    out = args.output or str((first if first.is_dir() else Path.cwd()) / "trajectory.png")
    print(save_figure(fig, out))
    return 0


def _default_labels(paths: list[str]) -> list[str]:
    """Legend labels: each run's file or folder name, with as many parent folders as it takes
    to tell runs of the same name apart (``sft/geometry.json``, ``dpo/geometry.json``)."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    labels = [Path(p).name or p for p in paths]
    for depth in range(2, max(len(x) for x in parts) + 1):
        # (the same run given twice stays a clash: "give distinct --labels")
        clashing = {
            i
            for i, label in enumerate(labels)
            if any(labels[j] == label and parts[j] != parts[i] for j in range(len(labels)))
        }
        if not clashing:
            break
        for i in clashing:
            labels[i] = "/".join(parts[i][-depth:]).replace("//", "/")
    return labels


def _check_measure_configs(runs: dict[str, str]) -> list[str]:
    """Warn (and return the message) when the runs' recorded measurement options differ in a
    field that changes the values (:func:`geomtrace.measure.value_fields`: layers, tokens, ...):
    then their values differ for that reason too. Runs that record none are left out."""
    import json

    from geomtrace._warnings import warn
    from geomtrace.measure import value_fields
    from geomtrace.replay.provenance import read_provenance

    configs: dict[str, dict[str, Any]] = {}
    for label, path in runs.items():
        try:
            config = read_provenance(path).get("measure_config")
        except (OSError, ValueError):
            continue  # no provenance recorded (a bare history, an older output)
        if isinstance(config, dict):
            configs[label] = config
    differences = []
    for name in value_fields():
        values = {label: c[name] for label, c in configs.items() if name in c}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            differences.append(f"{name}: " + ", ".join(f"{label} {v!r}" for label, v in values.items()))
    if not differences:
        return []
    message = (
        f"the runs were measured with different options ({'; '.join(differences)}): their values differ for that "
        "reason too; replay with --like RUN to measure like another run"
    )
    warn(message)
    return [message]


_MEMORIZATION_PANEL_KEYS = ("spearman", "pearson", "answer_logprob", "n_scored")


def _memorization_keys(value: Any) -> list[str]:
    keys = _items(value) or ["spearman"]
    if keys == ["none"]:
        return []
    unknown = [k for k in keys if k not in _MEMORIZATION_PANEL_KEYS]
    if unknown:
        raise UsageError(
            f"--memorization {','.join(unknown)}: choose from {', '.join(_MEMORIZATION_PANEL_KEYS)} or none"
        )
    return keys


def _memorization_lines(runs: dict[str, str], keys: list[str]) -> dict[str, dict[str, list[float]]]:
    """``{line label: {"step": [...], key: [...]}}`` of every run's memorization records (a
    replay output's memorization.jsonl, or a live history's memorization/... values)."""
    from geomtrace.plots import memorization_series
    from geomtrace.replay.memorization import MemorizationStore

    lines: dict[str, dict[str, list[float]]] = {}
    for label, path in runs.items():
        per_probe: dict[str, dict[str, list[float]]] = {}
        for key in keys:
            if Path(path).is_dir():
                found = MemorizationStore(path).series(key)
            else:
                import json

                data = json.loads(Path(path).read_text(encoding="utf-8"))
                found = memorization_series(data.get("history", []) if isinstance(data, dict) else data, key)
            for probe, series in found.items():
                per_probe.setdefault(probe, {"step": series["step"]})[key] = series[key]
        for probe, series in per_probe.items():
            lines[probe if len(runs) == 1 else f"{label}: {probe}"] = series
    return lines


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
    from geomtrace.replay.memorization import export_seed_memorization

    # The memorization probes' ∞-gram and model sides in the seed's two formats, beside it.
    for written in export_seed_memorization(run, Path(path).parent):
        print(written)
    return 0


#: The actions of ``geomtrace probes``.
PROBES_ACTIONS = ("export",)


def _cmd_probes(args: argparse.Namespace) -> int:
    import dataclasses as dc

    from geomtrace.probes import write_probe_file
    from geomtrace.replay.loading import load_tokenizer

    if args.action not in PROBES_ACTIONS:
        raise UsageError(
            f"geomtrace probes needs an action ({', '.join(PROBES_ACTIONS)}), got {args.action!r}: e.g. geomtrace "
            "probes export --probe-dataset wikitext --tokenizer EleutherAI/pythia-160m -o probes.jsonl"
        )
    if not args.tokenizer:
        raise UsageError("--tokenizer NAME_OR_PATH is required: the probes' token ids (their fingerprint) depend on it")
    if not args.output or Path(args.output).suffix.lower() != ".jsonl":
        raise UsageError(f"--output FILE.jsonl is required (the probe file to write), got {args.output!r}")
    options = probe_options(args, like_settings(args))
    tokenizer = load_tokenizer(args.tokenizer, trust_remote_code=args.trust_remote_code)
    built = options.build(tokenizer)
    path = write_probe_file(built, args.output, tokenizer=args.tokenizer)
    # What a later run relies on: reading the file back gives exactly these probes.
    again = dc.replace(options, source=str(path)).build(tokenizer)
    if again.fingerprint() != built.fingerprint():
        raise ValueError(
            f"{path}: the written texts rebuild other probes ({again.fingerprint()}, not {built.fingerprint()}) with "
            f"this tokenizer: it does not round-trip its own texts; replay from the original source instead"
        )
    print(f"{path}\t{len(built)} probes\tfingerprint {built.fingerprint()}\t{built.description}")
    return 0


def _detect(trajectory: Any, options: DetectorOptions) -> list[Any]:
    from geomtrace.phases import trajectory_phases  # standard errors and centring too

    return trajectory_phases(trajectory, options)


def _cmd_phases(args: argparse.Namespace) -> int:
    from geomtrace.phases import format_segments
    from geomtrace.replay.results import check_comparable, load_trajectory

    path = _run_paths(args, many=False)[0]
    trajectory = load_trajectory(path, layer=args.layer, stage=args.stage)
    check_comparable({trajectory.label: trajectory})
    options, notes = _detector_options(args, path)
    segments = _detect(trajectory, options)
    if args.json:
        import json

        for note in notes:
            _LOG.info("[geomtrace] %s", note)
        print(json.dumps([s.to_dict() for s in segments], indent=2))
    else:
        layer = "" if trajectory.layer is None else f", layer {trajectory.layer}"
        print("; ".join([f"{trajectory.label}: {len(trajectory.step)} measurements{layer}", *notes]))
        print(format_segments(segments, options))
    return 0


def _given_options(value: Any) -> dict[str, Any]:
    """The detector options given explicitly: from the ``--detector.*`` group (a mapping, None =
    not given, ``none`` = None) or, from Python, a :class:`DetectorOptions` (its non-default fields)."""
    if value is None:
        return {}
    if isinstance(value, DetectorOptions):
        defaults = DetectorOptions()
        return {
            f.name: getattr(value, f.name)
            for f in dataclasses.fields(value)
            if getattr(value, f.name) != getattr(defaults, f.name)
        }
    if not isinstance(value, Mapping):
        raise UsageError(f"--detector: expected detector options, got {value!r}")
    unknown = DetectorOptions.unknown_names(value)
    if unknown:
        raise UsageError(unknown)
    return {k: (None if v == _NONE else v) for k, v in value.items() if v is not None}


def _recorded_detector(path: str) -> tuple[dict[str, Any], bool | None]:
    """``(detector options, from_pretrained)`` a live history records (``GeometryTracker.record()``);
    nothing for a replay output or a bare list of rows. A history of a later stage of a reused
    callback without a ``from_pretrained`` value is post-training, as the tracker decides."""
    import json

    p = Path(path)
    if not p.is_file():
        return {}, None
    data = json.loads(p.read_text(encoding="utf-8"))  # load_trajectory read it already
    if not isinstance(data, dict):
        return {}, None
    recorded = data.get("detector")
    if recorded is not None:
        try:
            recorded = DetectorOptions.from_dict(recorded).to_dict()
        except (TypeError, ValueError) as err:
            raise UsageError(f"{p}: recorded detector options not valid ({err}); give --detector.* options") from None
    from_pretrained = data.get("from_pretrained")
    if from_pretrained is None and data.get("stages"):
        from_pretrained = True
    return recorded or {}, from_pretrained if isinstance(from_pretrained, bool) else None


def _detector_options(args: argparse.Namespace, path: str) -> tuple[DetectorOptions, list[str]]:
    """The detector options for the run at ``path``, and notes saying where they came from.

    Order, later wins: the defaults; the options a live history records; no warmup when it
    records a post-training run (``from_pretrained``, as live); the explicit ``--detector.*``
    options; ``--no-warmup``.
    """
    from geomtrace.phases import resolve_options

    given = _given_options(getattr(args, "detector", None))
    if getattr(args, "no_warmup", False):
        if given.get("allow_warmup") is True:
            raise UsageError("--no-warmup contradicts --detector.allow_warmup true: give one of them")
        given["allow_warmup"] = False
    recorded, from_pretrained = _recorded_detector(path)
    notes = []
    changed = {k: v for k, v in recorded.items() if k not in given and v != getattr(DetectorOptions(), k)}
    if changed:
        notes.append("detector options from the record: " + ", ".join(f"{k}={v}" for k, v in changed.items()))
    options = dict(recorded)
    if from_pretrained and "allow_warmup" not in given:
        options["allow_warmup"] = False
        notes.append("post-training (the record's from_pretrained): a first fall is compression-seeking, not warmup")
    options.update(given)
    try:
        return resolve_options(options), notes
    except (TypeError, ValueError) as err:
        raise UsageError(f"detector options: {err}") from None


# ----------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``geomtrace`` command line; returns the exit code (0 ok, 1 some checkpoints
    failed, 2 bad input, 130 interrupted by SIGINT, 143 by SIGTERM: 128 + the signal).
    Usage errors found while parsing (and --help, --version, --print_config) end in
    SystemExit, as with argparse. SIGINT, SIGTERM and SIGUSR1 are handled from the first line
    (before anything heavy is imported) until it returns; the previous handlers come back
    then. The process entry point is :func:`run`."""
    with _signals.handle_signals():
        return _main(argv)


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """The process entry point (the ``geomtrace`` console script, ``python -m geomtrace.cli``):
    :func:`main`, then exit with its code.

    An interrupt must give its exit code (130, 143) whenever it arrives before the process
    ends, also after the command finished, while the interpreter runs its exit handlers
    (torch's among them): there a raised ``KeyboardInterrupt`` would only be printed as
    "Exception ignored" and the process would exit 0. So the handlers stay installed to the
    end and, once the command is done, only note a signal; the last exit handler turns a
    noted one into the interrupted exit. An interrupted command exits at once (its results
    are on disk): a background download is not waited for.
    """
    _signals.install()
    atexit.register(_exit_if_interrupted)  # registered first, so it runs last
    command: list[str] = []
    try:
        code = _main(argv, command)
        _signals.finish()  # the command is done: from here a signal is only noted
    except SystemExit:  # --help, --version, a usage error while parsing: exit as argparse does
        _signals.finish()
        raise
    except _signals.Interrupted as err:  # between the command's end and finish()
        _signals.finish()
        code = _report_interrupt(command[0] if command else None, err)
    if code >= 128:
        _hard_exit(code)
    sys.exit(code)


def _report_interrupt(command: str | None, err: _signals.Interrupted) -> int:
    # Results are appended per checkpoint as units: nothing measured so far is lost.
    where = f"geomtrace {command}" if command else "geomtrace"
    print(f"{where}: interrupted (rerun the same command to resume)", file=sys.stderr)
    return err.exit_code


def _hard_exit(code: int) -> NoReturn:
    """Flush what was printed and logged, then leave without the interpreter's exit handlers."""
    import logging

    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _exit_if_interrupted() -> None:
    """The last exit handler of :func:`run`: a signal noted after the command finished."""
    signum = _signals.pending()
    if signum is not None:
        _hard_exit(_report_interrupt(None, _signals.Interrupted(signum)))


def _main(argv: Sequence[str] | None, command_out: list[str] | None = None) -> int:
    """:func:`main` under handlers installed by the caller. ``command_out`` receives the
    subcommand's name once parsed."""
    command = None
    try:
        try:
            args = parse_args(argv)
        except ImportError as err:  # the cli extra is missing: say which, in one line
            print(f"geomtrace: error: {err}", file=sys.stderr)
            return 2
        command = args.command
        if command_out is not None:
            command_out.append(command)
        from geomtrace.probes import ProbeLoadError
        from geomtrace.replay.sources import CheckpointLoadError

        options = {k: v for k, v in vars(args).items() if k != "command"}
        try:
            return int(COMMANDS[command](**options))
        except (UsageError, ValueError, OSError, KeyError, ImportError, ProbeLoadError, CheckpointLoadError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            one_line = " ".join(str(message).split())  # library messages may hold newlines
            print(f"geomtrace {command}: error: {one_line}", file=sys.stderr)
            return 2
    except KeyboardInterrupt as err:  # Interrupted (a handled signal) or a plain Ctrl-C
        interrupt = err if isinstance(err, _signals.Interrupted) else _signals.Interrupted(2)
        return _report_interrupt(command, interrupt)


if __name__ == "__main__":  # pragma: no cover
    run()
