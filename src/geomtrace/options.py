"""The option sets, each declared once as a frozen dataclass: :class:`Schedule` (when to measure),
:class:`MeasureConfig` (what and how), :class:`ProbeOptions` (the probe set), :class:`LoadOptions`
(how replay loads a checkpoint) and :class:`DetectorOptions` (the phase detector).

The callbacks, the tracker, ``run_replay`` and ``geomtrace replay`` take these objects (or dicts of
their fields); the record keeps their ``to_dict()``; the command line's ``--GROUP.FIELD`` options,
the transformers checkpoint state and the deprecation shim derive their field lists from
:func:`dataclasses.fields`. This module imports neither torch nor numpy (the command line builds
its parser from it and answers ``--help`` at once); the checks that need them import them late.
Each class is also importable from where it is used: ``geomtrace.measure.MeasureConfig``,
``geomtrace.probes.ProbeOptions``, ``geomtrace.replay.LoadOptions``, ``geomtrace.phases.DetectorOptions``.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from geomtrace._detector import DetectorOptions
from geomtrace._options import OptionSet, option_set
from geomtrace._validate import Rule, check_fields, coerce_fields, numpy_module

if TYPE_CHECKING:
    from geomtrace.features import FeatureSpec
    from geomtrace.probes import ProbeSet

__all__ = [
    "AUTOCAST_CHOICES",
    "DEFAULT_EPS",
    "DEFAULT_FIT_RANGE",
    "DEFAULT_UNCERTAINTY_GROUPS",
    "FEATURE_SOURCES",
    "PROBE_OPTION_RULES",
    "AutocastSetting",
    "DetectorOptions",
    "FeatureSource",
    "LayerSelection",
    "LoadOptions",
    "MeasureConfig",
    "ProbeOptions",
    "Schedule",
    "TokenSelection",
    "check_probe_lengths",
]

#: The paper's alpha-ReQ fit range: eigenvalue ranks 12..100 (1-based, inclusive).
DEFAULT_FIT_RANGE: tuple[int, int] = (12, 100)
#: Jackknife groups of :attr:`MeasureConfig.uncertainty_groups` (``geomtrace.uncertainty.DEFAULT_GROUPS``).
DEFAULT_UNCERTAINTY_GROUPS: int = 20
#: RankMe's epsilon (added to the normalised spectrum before the entropy).
DEFAULT_EPS: float = 1e-7
#: Which hidden states: ``"last"``, ``"all"``, an index or indices into ``hidden_states``.
LayerSelection = str | int | Sequence[int]
#: Which token states per probe.
TokenSelection = Literal["last", "mean", "all"]
#: Whose hidden states are measured (:attr:`MeasureConfig.source`).
FeatureSource = Literal["probes", "training"]
FEATURE_SOURCES: tuple[str, ...] = get_args(FeatureSource)
#: Precision settings of the probe forward (:attr:`MeasureConfig.autocast`).
AutocastSetting = Literal["auto", "off", "bf16", "fp16"]
AUTOCAST_CHOICES: tuple[str, ...] = get_args(AutocastSetting)


# ----------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Schedule(OptionSet):
    """When to measure during training.

    Attributes:
        every_n_steps: measure every this many optimizer steps (0: only at start and end).
        extra_steps: further steps to measure at, e.g. log-spaced early steps
            ``(1, 2, 4, 8, 16, 32, 64)`` that resolve the fast warmup collapse.
        measure_on_start: measure before the first optimizer step (step 0, the initial geometry).
        measure_on_end: measure when training ends (if that step was not measured yet).
        log_spectrum_every: log an eigenspectrum figure every this many measurements, and always
            at the final one (0: never).
    """

    group = "schedule"

    every_n_steps: int = 100
    extra_steps: tuple[int, ...] = field(default=())
    measure_on_start: bool = True
    measure_on_end: bool = True
    log_spectrum_every: int = 5

    def __post_init__(self) -> None:
        coerce_fields(self, _SCHEDULE_RULES)  # types now, as plain Python values (the record is JSON)
        object.__setattr__(self, "extra_steps", tuple(sorted(set(self.extra_steps))))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option when a value is out of range."""
        check_fields(self, _SCHEDULE_RULES)

    @classmethod
    def of(cls, value: Any) -> Schedule:
        """``value`` as a schedule: an int is ``every_n_steps`` (``GeometryMonitor(tok, 100)``)."""
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return cls(every_n_steps=int(value))
        return option_set(value, cls, owner="schedule")

    def periodic(self, step: int) -> bool:
        """Whether ``step`` is on the schedule (``every_n_steps`` or ``extra_steps``)."""
        regular = self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0
        return regular or step in self.extra_steps

    def due(self, step: int, event: str) -> bool:
        """Whether ``event`` (``"start"``, ``"step"``, ``"end"``) at ``step`` calls for a measurement
        (the tracker adds: not twice at one step)."""
        if event == "start":
            return self.measure_on_start and step == 0
        if event == "end":
            return self.measure_on_end or self.periodic(step)
        return self.periodic(step)

    def spectrum_due(self, measurement_number: int, final: bool) -> bool:
        """Whether the ``measurement_number``-th measurement (1-based) logs an eigenspectrum figure."""
        return self.log_spectrum_every > 0 and (final or (measurement_number - 1) % self.log_spectrum_every == 0)


#: One rule per option of :class:`Schedule`.
_SCHEDULE_RULES: dict[str, Rule] = {
    "every_n_steps": Rule("int", minimum=0, example="100; 0 measures only at start and end"),
    "extra_steps": Rule("ints", minimum=1, example="(1, 2, 4, 8)"),
    "measure_on_start": Rule("bool"),
    "measure_on_end": Rule("bool"),
    "log_spectrum_every": Rule("int", minimum=0, example="5; 0 never"),
}


# ----------------------------------------------------------------------------- measurement


# What a MeasureConfig field changes (``metadata["changes"]``): the values (runs that differ in one
# are not comparable), only the speed (round-off at most), or the forward's precision (recorded
# apart, as the provenance's ``precision``).
_VALUES = {"changes": "values"}
_SPEED = {"changes": "speed"}
_PRECISION = {"changes": "precision"}
_OUTPUTS = {"changes": "outputs"}


@dataclass(frozen=True)
class MeasureConfig(OptionSet):
    """How to measure: which states, how many per forward, which conventions.

    Each field says in its ``metadata["changes"]`` what it changes: ``"values"`` (layers, tokens,
    conventions: :meth:`identity_fields`), ``"speed"`` (batch size, buffering, padding:
    :meth:`speed_fields`), ``"precision"`` (``autocast``) or ``"outputs"`` (error bars beside the
    values, which stay as they are: :meth:`output_fields`). Everything that compares runs (the
    tracker's provenance check, replay's output identity, ``--like``, ``plot``'s warning) derives
    its field list from this: neither speed nor output fields make runs incomparable, so records
    with and without standard errors may share a replay output (each record says what it has).

    Attributes:
        layers: ``"last"`` (post final norm, default), ``"all"``, an index or a list of
            indices into ``hidden_states`` (0 = embeddings).
        tokens: ``"last"`` (last real token of each probe, default), ``"mean"`` or ``"all"``.
        skip_first_token: leave out the first real token for ``tokens="all"``/``"mean"``.
        batch_size: probe sequences per forward pass.
        spectrum: RankMe on ``"covariance"`` eigenvalues (paper) or ``"singular"`` values.
        eps: RankMe epsilon.
        fit_range: alpha-ReQ ranks (1-based, inclusive).
        max_components: keep at most this many eigenvalues (paper's scripts: 2048).
        rows_per_update: feature rows buffered per layer before a covariance update, so a
            few last-token rows per batch still make a matmul worth its d^2 merge.
        padding_side: how probe batches are padded (features do not depend on it).
        autocast: precision of the probe forward. ``"auto"`` (default) keeps the caller's
            context: the callbacks run the probes under the trainer's own mixed precision,
            replay in the weights' dtype. ``"bf16"``/``"fp16"`` autocast the forward to that
            dtype whatever the trainer does (cheaper probes for an fp32 run); ``"off"``
            disables autocast (the model's own dtype, e.g. fp32 probes in a bf16-mixed run).
            The statistics are fp32/fp64 in every case.
        source: whose hidden states: ``"probes"`` (default: an extra forward over the fixed
            probe set at each measurement) or ``"training"`` (the training batches' own forwards,
            captured by a hook and accumulated over the window since the previous measurement:
            no extra forward, no tokenizer, but the rows differ from window to window; see
            docs/concepts.md, "Which rows"). Live tracking only: replay has no training forward.
            With ``"training"``, ``batch_size``, ``padding_side`` and ``autocast`` do not apply
            (the training batches are as the trainer makes them).
        uncertainty: ``"jackknife"`` adds standard errors ``rankme_se``, ``alpha_se`` beside the
            values (logged as ``geometry/rankme_se``...), from a delete-a-group jackknife over the
            probe set (:mod:`geomtrace.uncertainty`; docs/concepts.md, "Error bars"): the spread
            of *this* probe set's value under resampling the probes, not its distance from the
            population value (the plug-in estimate is biased at small N / d). None (default): none.
        uncertainty_groups: the jackknife's groups ``G`` (probe ``i`` is in group ``i mod G``):
            ``G`` more ``d x d`` eigendecompositions per layer and ``G d^2`` float64 of memory.
    """

    group = "measure"

    layers: LayerSelection = field(default="last", metadata=_VALUES)
    tokens: TokenSelection = field(default="last", metadata=_VALUES)
    skip_first_token: bool = field(default=False, metadata=_VALUES)
    batch_size: int = field(default=32, metadata=_SPEED)
    spectrum: Literal["covariance", "singular"] = field(default="covariance", metadata=_VALUES)
    eps: float = field(default=DEFAULT_EPS, metadata=_VALUES)
    fit_range: tuple[int, int] = field(default=DEFAULT_FIT_RANGE, metadata=_VALUES)
    max_components: int | None = field(default=None, metadata=_VALUES)
    rows_per_update: int = field(default=2048, metadata=_SPEED)
    padding_side: Literal["left", "right"] = field(default="right", metadata=_SPEED)
    autocast: AutocastSetting = field(default="auto", metadata=_PRECISION)
    source: FeatureSource = field(default="probes", metadata=_VALUES)
    uncertainty: Literal["jackknife"] | None = field(default=None, metadata=_OUTPUTS)
    uncertainty_groups: int = field(default=DEFAULT_UNCERTAINTY_GROUPS, metadata=_OUTPUTS)

    def __post_init__(self) -> None:
        # Types at construction (plain Python values: the record is JSON); ranges in validate().
        object.__setattr__(self, "layers", _coerce_layers(self.layers))
        coerce_fields(self, _CONFIG_RULES)

    @property
    def feature_spec(self) -> FeatureSpec:
        from geomtrace.features import FeatureSpec

        return FeatureSpec(layers=self.layers, tokens=self.tokens, skip_first_token=self.skip_first_token)

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message on a bad option."""
        self.feature_spec.validate()
        from geomtrace.functional import validate_eps

        check_fields(self, _CONFIG_RULES)
        validate_eps(self.eps)
        if self.uncertainty is None and self.uncertainty_groups != DEFAULT_UNCERTAINTY_GROUPS:
            raise ValueError(
                f"uncertainty_groups={self.uncertainty_groups} only applies with uncertainty='jackknife': "
                "set both (--measure.uncertainty jackknife), or neither for plain values"
            )

    @classmethod
    def identity_fields(cls) -> tuple[str, ...]:
        """The fields that change the values: runs that differ in one are not comparable."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("changes") == "values")

    @classmethod
    def speed_fields(cls) -> tuple[str, ...]:
        """The fields that change only the speed (round-off at most): a replay with other values
        of these continues an output instead of conflicting with it."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("changes") == "speed")

    @classmethod
    def output_fields(cls) -> tuple[str, ...]:
        """The fields that add outputs (standard errors) and leave the values as they are: a
        replay with other values of these continues an output, whose records then differ in
        whether they hold ``rankme_se``/``alpha_se``."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("changes") == "outputs")


#: One rule per option of :class:`MeasureConfig` (``layers`` and ``eps`` have their own checks).
_CONFIG_RULES: dict[str, Rule] = {
    "tokens": Rule("str"),  # the choices: FeatureSpec.validate
    "skip_first_token": Rule("bool"),
    "batch_size": Rule("int", minimum=1, example="32"),
    "spectrum": Rule("str", choices=("covariance", "singular")),
    "eps": Rule("float"),  # the range: functional.validate_eps
    "fit_range": Rule("int_pair", minimum=1, example="(12, 100), 1-based ranks"),
    "max_components": Rule("int", minimum=1, optional=True, example="2048"),
    "rows_per_update": Rule("int", minimum=1, example="2048"),
    "padding_side": Rule("str", choices=("left", "right")),
    "autocast": Rule("str", choices=AUTOCAST_CHOICES, example="'auto', which follows the trainer's precision"),
    "source": Rule("str", choices=FEATURE_SOURCES, example="'probes' or 'training' (the training batches)"),
    "uncertainty": Rule("str", choices=("jackknife",), optional=True, example="'jackknife', or None"),
    "uncertainty_groups": Rule("int", minimum=2, example="20 (10 halves the cost)"),
}


def _coerce_layers(layers: Any) -> Any:
    """``"last"``/``"all"`` as is, an index or indices as plain ints (a list becomes a tuple)."""
    np = numpy_module()
    if isinstance(layers, str) or (np is not None and isinstance(layers, np.str_)):
        return str(layers)
    arrays = (Sequence,) if np is None else (Sequence, np.ndarray)
    if isinstance(layers, arrays) and not isinstance(layers, bytes):
        return Rule("ints", example="[0, 6, 12]")("layers", layers)
    return Rule("int", example="-1, or 'last', 'all', a list of ints")("layers", layers)


# ----------------------------------------------------------------------------- probes


#: One rule per probe option, shared by :func:`load_probes` and :class:`ProbeOptions`.
PROBE_OPTION_RULES: dict[str, Rule] = {
    "num_sequences": Rule("int", minimum=1, example="1024"),
    "min_tokens": Rule("int", minimum=1, example="11"),
    "max_tokens": Rule("int", minimum=1, example="128"),
    "seed": Rule("int", minimum=0, example="0"),
    "pool_size": Rule("int", minimum=1, example="10000"),
    "chat_template": Rule("bool"),
    "text_column": Rule("str", example="'text'"),
    "split": Rule("str", example="'train'"),
    "config_name": Rule("str", optional=True, example="'wikitext-103-raw-v1'"),
    "system_prompt": Rule("str", optional=True, nonempty=False, example="'You are a helpful assistant.'"),
}


@dataclass(frozen=True)
class ProbeOptions(OptionSet):
    """How a probe set is built (the one declaration: the callbacks, the tracker, ``run_replay``
    and ``geomtrace replay --probes.*`` take it; the record keeps :meth:`to_dict`).

    Attributes:
        source: ``None`` (the embedded corpus), texts, a ``.txt``/``.jsonl``/``.json`` path, a
            ``datasets`` dataset or a hub dataset name (see :func:`load_probes`).
        num_sequences: how many probe sequences (at least 2; the paper: 1024).
        min_tokens: keep texts with at least this many tokens (11: "more than 10").
        max_tokens: truncate longer sequences to this many tokens.
        seed: seed of the shuffle that picks the sequences.
        pool_size: the probes are drawn from the first ``pool_size`` non-empty texts of the
            source, in its order (the same texts whether a dataset is streamed, cached or in
            memory; see :func:`~geomtrace.probes.load_probes`).
        chat_template: wrap each text as a user turn of the tokenizer's chat template, measured
            at the generation prompt (probes for post-trained models).
        text_column: the text field of a dataset or ``.jsonl`` file.
        split: dataset split of a hub name or ``DatasetDict``.
        config_name: dataset config of a hub name, e.g. ``"wikitext-103-raw-v1"``.
        system_prompt: the system message of chat probes (with ``chat_template=True``).
    """

    group = "probes"

    source: Any = field(default=None, metadata={"flat": "probe_source"})
    num_sequences: int = 1024
    min_tokens: int = 11
    max_tokens: int = 128
    seed: int = 0
    pool_size: int = 10_000
    chat_template: bool = False
    text_column: str = "text"
    split: str = "train"
    config_name: str | None = None
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        coerce_fields(self, PROBE_OPTION_RULES)  # types now, as plain Python values (the record is JSON)

    def validate(self) -> None:
        """Raise ``ValueError`` on options that cannot give a probe set (before any tokenizing)."""
        if self.num_sequences < 2:
            raise ValueError(
                f"num_sequences must be an int >= 2 (a spectrum needs 2 samples), got {self.num_sequences!r}"
            )
        check_fields(self, PROBE_OPTION_RULES)
        check_probe_lengths(self.min_tokens, self.max_tokens)
        if self.system_prompt is not None and not self.chat_template:
            raise ValueError("system_prompt is the system message of chat probes: set chat_template (--chat-template)")

    def build(self, tokenizer: Any) -> ProbeSet:
        """Tokenize the probe set described by these options (once; deterministic)."""
        from geomtrace.probes import load_probes

        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}  # not asdict: no deep copy
        return load_probes(tokenizer, kwargs.pop("source"), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready options. A local file is recorded by its absolute path (a record read from
        another folder finds it); a source JSON cannot hold (texts, a Dataset) is described, not kept."""
        out = super().to_dict()
        source = self.source
        if source is None or isinstance(source, (str, os.PathLike)):
            path = None if source is None else Path(source)
            out["source"] = None if path is None else os.fspath(path.resolve() if path.is_file() else path)
        else:
            size = f" of {len(source)}" if hasattr(source, "__len__") else ""
            out["source"] = f"<{type(source).__name__}{size} (in memory, not recorded)>"
        return out


def check_probe_lengths(min_tokens: int, max_tokens: int) -> None:
    """``min_tokens <= max_tokens`` (each already checked by its rule)."""
    if max_tokens < min_tokens:
        raise ValueError(
            f"need min_tokens <= max_tokens, got min_tokens={min_tokens}, max_tokens={max_tokens}: sequences are "
            "cut to max_tokens, so none could have min_tokens"
        )


# ----------------------------------------------------------------------------- replay loading


@dataclass(frozen=True)
class LoadOptions(OptionSet):
    """How each checkpoint is loaded (see :func:`~geomtrace.replay.sources.load_checkpoint_model`).

    Attributes:
        dtype: weights dtype: ``float32``/``fp32`` (default), ``bfloat16``/``bf16``,
            ``float16``/``fp16``, ``auto`` (the checkpoint's own) or a ``torch.dtype``; features
            are upcast to fp32 for the statistics.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available).
        device_map: ``from_pretrained``'s ``device_map`` (e.g. ``"auto"`` for big models over GPUs).
        trust_remote_code: allow custom model code.
        model_builder: for Lightning ``.ckpt`` files: ``"module:attribute"`` or a callable, your
            LightningModule class or a function(hyper_parameters) -> module (or (module, tokenizer)).
        base_model: base model of PEFT adapter checkpoints (default: the adapter's own
            ``base_model_name_or_path``).
        retries: how many more times a hub download or listing that failed for a passing reason
            (timeout, connection error, HTTP 429/5xx) is tried, waiting 1 s, 2 s, 4 s... between
            tries; 404s, missing revisions and gated repos fail at once. 0: no retry.
        keep_downloads: keep the hub revisions this run downloads in the hub cache (default: each
            is deleted once its records are written; revisions cached before the run, local
            folders and Lightning files are never deleted). See :mod:`geomtrace.replay.disk`.
    """

    group = "load"

    dtype: Any = "float32"
    device: str = "auto"
    device_map: Any = None
    trust_remote_code: bool = False
    model_builder: Callable[..., Any] | str | None = None
    base_model: str | None = None
    retries: int = 3
    keep_downloads: bool = False

    def __post_init__(self) -> None:
        coerce_fields(self, _LOAD_RULES)

    def validate(self) -> None:
        """Raise ``ValueError`` on a dtype or device that every load would reject."""
        from geomtrace.replay.sources import resolve_dtype

        resolve_dtype(self.dtype)  # names the accepted dtypes
        device = self.device
        if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {device!r}")
        if self.model_builder is not None and not (isinstance(self.model_builder, str) or callable(self.model_builder)):
            raise ValueError(f"model_builder must be 'module:attribute' or a callable, got {self.model_builder!r}")

    def kwargs(self, **changes: Any) -> dict[str, Any]:
        """Keyword arguments of :func:`~geomtrace.replay.sources.load_checkpoint_model` (every
        field but what the replay loop itself uses: ``keep_downloads``)."""
        names = [name for name in self.field_names() if name not in _LOOP_FIELDS]
        return {**{name: getattr(self, name) for name in names}, **changes}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the dtype by name, a builder callable by ``module:qualname``."""
        out = super().to_dict()
        dtype = self.dtype
        out["dtype"] = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        builder = self.model_builder
        if builder is not None and not isinstance(builder, str):
            out["model_builder"] = f"{getattr(builder, '__module__', '?')}:{getattr(builder, '__qualname__', builder)}"
        return out


#: One rule per plain option of :class:`LoadOptions` (dtype and the builder are checked in validate()).
_LOAD_RULES: dict[str, Rule] = {
    "device": Rule("str", example="'auto', 'cpu', 'cuda:0'"),
    "trust_remote_code": Rule("bool"),
    "base_model": Rule("str", optional=True, example="'EleutherAI/pythia-160m'"),
    "retries": Rule("int", minimum=0, example="3; 0 never retries"),
    "keep_downloads": Rule("bool"),
}
#: :class:`LoadOptions` fields that the replay loop uses, not a single load.
_LOOP_FIELDS = frozenset({"keep_downloads"})
