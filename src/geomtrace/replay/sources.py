"""Checkpoint sources for replay: hub revisions (Pythia, OLMo), local folders, Lightning files.

A :class:`Checkpoint` says *where* one model state lives; :func:`load_checkpoint_model` turns
it into ``(model, tokenizer_or_None)``. Nothing here imports transformers or
huggingface_hub at module import time.

Revision names understood by :func:`parse_revision`:

* Pythia: ``step0``, ``step1``, ``step2``, ``step4`` … ``step512``, ``step1000`` … ``step143000``.
* OLMo (v1): ``step1000-tokens4B`` (also ``tokens4194M``, ``tokens2048MB``, ``tokens512K``).
* OLMo-2: ``stage1-step1000-tokens5B``, ``stage2-ingredient3-step1000-tokens5B``.
* Anything else (``main``): ``(None, None, None)``.

Token counts are stored as integer numbers of tokens: ``K`` = 1e3, ``M`` = 1e6, ``B``/``G``
= 1e9, ``T`` = 1e12 (a trailing ``B`` after ``K``/``M``/``G``/``T``, as in ``2048MB``, is
read as "tokens", not bytes).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomtrace._optional import require

__all__ = [
    "Checkpoint",
    "CheckpointLoadError",
    "PYTHIA_REVISIONS",
    "PYTHIA_PAPER_SUBSET",
    "REVISION_PRESETS",
    "parse_revision",
    "revision_sort_key",
    "list_hub_revisions",
    "read_revisions_file",
    "filter_revisions",
    "hub_checkpoints",
    "local_checkpoints",
    "shard_checkpoints",
    "fetch_checkpoint",
    "load_checkpoint_model",
    "load_checkpoint_tokenizer",
    "resolve_dtype",
    "resolve_device",
]


# --------------------------------------------------------------------------------------
# Checkpoint
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """One model state to measure.

    Attributes:
        step: training step, when known.
        revision: hub revision (branch) name, e.g. ``"step1000"`` or
            ``"stage1-step1000-tokens4B"``; None for local checkpoints.
        path: local folder (``hf_folder``, ``peft_adapter``) or ``.ckpt`` file
            (``lightning_ckpt``); None for hub.
        model: hub id (``"EleutherAI/pythia-160m"``) or the local root folder; this is the
            ``model`` field of result records.
        tokens: tokens seen (integer count), when known from the revision name.
        stage: training stage, e.g. ``"stage1"`` or ``"stage2-ingredient3"``; None for Pythia.
        kind: ``"hub"``, ``"hf_folder"``, ``"peft_adapter"`` (a folder holding only a PEFT
            adapter, replayed on its base model) or ``"lightning_ckpt"``.
    """

    step: int | None
    revision: str | None
    path: str | None
    model: str
    tokens: int | None
    stage: str | None
    kind: str

    @property
    def key(self) -> str:
        """Stable unique id used for resuming: the revision for hub checkpoints, else the
        path relative to ``model`` (the discovery root) with ``/`` separators."""
        if self.revision:
            return self.revision
        if self.path is None:
            return self.model
        try:
            rel = os.path.relpath(self.path, self.model)
        except ValueError:  # different drives on Windows
            rel = self.path
        if rel.startswith("..") or rel == ".":
            rel = os.path.basename(os.path.normpath(self.path))
        return rel.replace(os.sep, "/")


class CheckpointLoadError(RuntimeError):
    """A checkpoint could not be loaded (missing revision, offline cache miss, bad file)."""


# --------------------------------------------------------------------------------------
# Revision names
# --------------------------------------------------------------------------------------

#: All 154 Pythia checkpoints: step0, step1, 2, 4, …, 512 (log-spaced), then every 1000 steps
#: from step1000 to step143000 (the final one, also on ``main``).
PYTHIA_REVISIONS: list[str] = (
    ["step0"] + [f"step{2**i}" for i in range(10)] + [f"step{s}" for s in range(1000, 143001, 1000)]
)

#: A roughly log-spaced subset of 30 Pythia checkpoints covering warmup, entropy-seeking and
#: compression-seeking phases. Our choice: the coarse grid found (commented out) in the
#: paper's released script, ``[0, 1, 2, 4, …, 512] + range(1000, 143001, 10000)``, plus
#: step2000, step4000, step8000 for the early phases and the final step143000.
PYTHIA_PAPER_SUBSET: list[str] = [
    f"step{s}" for s in sorted({0, *(2**i for i in range(10)), *range(1000, 143001, 10000), 2000, 4000, 8000, 143000})
]

_TOKEN_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9, "T": 10**12}
_STEP_PART = re.compile(r"^step(\d+)$", re.IGNORECASE)
_TOKENS_PART = re.compile(r"^tokens(\d+(?:\.\d+)?)([KMGBT]?)B?$", re.IGNORECASE)


def _parse_tokens(text: str) -> int | None:
    m = _TOKENS_PART.match(text)
    if not m:
        return None
    value, unit = m.group(1), m.group(2).upper()
    if "." in value:
        return int(round(float(value) * _TOKEN_UNITS[unit]))
    return int(value) * _TOKEN_UNITS[unit]


def parse_revision(name: str) -> tuple[int | None, int | None, str | None]:
    """Parse a revision name into ``(step, tokens, stage)``.

    ``"step1000"`` -> ``(1000, None, None)``; ``"step1000-tokens4B"`` -> ``(1000, 4_000_000_000,
    None)``; ``"stage2-ingredient2-step1000-tokens4B"`` -> ``(1000, 4_000_000_000,
    "stage2-ingredient2")``; names without a ``stepN`` part (``"main"``) -> ``(None, None, None)``.
    """
    parts = name.strip().split("-")
    for i, part in enumerate(parts):
        m = _STEP_PART.match(part)
        if m:
            step = int(m.group(1))
            stage = "-".join(parts[:i]) or None
            tokens = None
            for rest in parts[i + 1 :]:
                tokens = _parse_tokens(rest)
                if tokens is not None:
                    break
            return step, tokens, stage
    return None, None, None


def _natural_key(text: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def revision_sort_key(name: str) -> tuple:
    """Sort key ordering revisions by (stage, step); names without a step go last."""
    step, _, stage = parse_revision(name)
    return (
        0 if step is not None else 1,
        _natural_key(stage or ""),
        step if step is not None else 0,
        name,
    )


def list_hub_revisions(model_id: str) -> list[str]:
    """All branch names of a hub model repo (e.g. the 154 ``stepN`` branches of Pythia),
    sorted by (stage, step). Needs network access."""
    hub = require("huggingface_hub", "listing hub revisions")
    try:
        refs = hub.list_repo_refs(model_id)
    except Exception as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        why = "HF_HUB_OFFLINE is set" if offline else f"{type(err).__name__}: {err}"
        raise RuntimeError(
            f"Could not list the revisions of {model_id!r} on the Hugging Face hub ({why}). "
            "Pass the revisions explicitly instead: a comma list (--revisions step0,step1000), "
            "a preset (--revisions pythia | pythia-paper) or a file with one revision per line "
            "(--revisions-file revisions.txt)."
        ) from err
    names = [b.name for b in refs.branches]
    return sorted(names, key=revision_sort_key)


def read_revisions_file(path: str | os.PathLike) -> list[str]:
    """Read revision names, one per line. Blank lines and ``#`` comments are skipped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"revisions file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = p.read_bytes()[: err.start].count(b"\n") + 1
        raise ValueError(f"{p}:{line}: not UTF-8 text; revision names are plain UTF-8 text, one per line") from None
    out: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def _parse_step_range(spec: str) -> tuple[int, float, int]:
    parts = spec.strip().split(":")
    if not 2 <= len(parts) <= 3:
        raise ValueError(f"step_range must be 'start:stop' or 'start:stop:every', got {spec!r}")
    try:
        start = int(parts[0]) if parts[0].strip() else 0
        stop: float = int(parts[1]) if parts[1].strip() else math.inf
        every = int(parts[2]) if len(parts) == 3 and parts[2].strip() else 1
    except ValueError as err:
        raise ValueError(f"step_range {spec!r}: start, stop and every must be integers") from err
    if every <= 0:
        raise ValueError(f"step_range {spec!r}: every must be positive")
    if stop < start:
        raise ValueError(f"step_range {spec!r}: stop < start")
    return start, stop, every


def _log_spaced_pick(xs: list[float], n: int) -> list[int]:
    """Indices of ~n points of the sorted coordinates xs spread evenly in xs, keeping ends."""
    m = len(xs)
    if n >= m:
        return list(range(m))
    chosen = {0, m - 1}
    lo, hi = xs[0], xs[-1]
    for j in range(1, n - 1):
        target = lo + (hi - lo) * j / (n - 1)
        best = min((i for i in range(m) if i not in chosen), key=lambda i: (abs(xs[i] - target), i))
        chosen.add(best)
    return sorted(chosen)


def filter_revisions(
    revisions: Iterable[str],
    *,
    step_range: str | None = None,
    log_spaced: int | None = None,
    stage: str | None = None,
) -> list[str]:
    """Select revisions; the result is de-duplicated and sorted by (stage, step).

    Args:
        stage: keep revisions whose stage equals ``stage`` or starts with ``stage + "-"``
            (``"stage2"`` keeps ``"stage2-ingredient1-…"``).
        step_range: ``"start:stop[:every]"``: keep steps ``s`` with ``start <= s <= stop``
            (both inclusive) and ``(s - start) % every == 0``. Empty start means 0, empty stop
            means no upper bound. ``"0:143000:10000"`` keeps 0, 10000, …, 140000.
        log_spaced: keep exactly ``min(N, available)`` revisions spread evenly in
            ``log(1 + step)``, always keeping the first and the last. With several stages the
            coordinate is a global step (each stage's steps are offset by the previous
            stages' last step), so the picks follow training order.

    Filters apply in the order stage, step_range, log_spaced. When ``step_range`` or
    ``log_spaced`` is given, revisions without a step (``main``) are dropped.
    """
    seen: set[str] = set()
    revs = [r for r in revisions if not (r in seen or seen.add(r))]
    revs.sort(key=revision_sort_key)
    if stage is not None:
        revs = [
            r for r in revs if (s := parse_revision(r)[2]) is not None and (s == stage or s.startswith(stage + "-"))
        ]
    if step_range is not None:
        start, stop, every = _parse_step_range(step_range)
        kept = []
        for r in revs:
            step = parse_revision(r)[0]
            if step is not None and start <= step <= stop and (step - start) % every == 0:
                kept.append(r)
        revs = kept
    if log_spaced is not None:
        if log_spaced < 2:
            raise ValueError(f"log_spaced must be >= 2 (first and last are always kept), got {log_spaced}")
        revs = [r for r in revs if parse_revision(r)[0] is not None]
        xs: list[float] = []
        offset, prev_stage, stage_max = 0, None, 0
        for r in revs:
            step, _, st = parse_revision(r)
            assert step is not None
            if st != prev_stage and xs:
                offset += stage_max
                stage_max = 0
            prev_stage = st
            stage_max = max(stage_max, step)
            xs.append(math.log1p(offset + step))
        revs = [revs[i] for i in _log_spaced_pick(xs, log_spaced)]
    return revs


#: Names accepted by :func:`hub_checkpoints` instead of an explicit list.
REVISION_PRESETS = ("pythia", "pythia-paper", "all")


def _expand_revisions(model_id: str, revisions: Sequence[str] | str) -> list[str]:
    if isinstance(revisions, str):
        spec = revisions.strip()
        if spec == "pythia":
            return list(PYTHIA_REVISIONS)
        if spec == "pythia-paper":
            return list(PYTHIA_PAPER_SUBSET)
        if spec == "all":
            names = list_hub_revisions(model_id)
            with_step = [n for n in names if parse_revision(n)[0] is not None]
            return with_step or names
        items = [s.strip() for s in spec.split(",")]
    else:
        items = [str(s).strip() for s in revisions]
    out: list[str] = []
    for s in items:
        if s and s not in out:
            out.append(s)
    if not out:
        raise ValueError(
            f"no revisions given for {model_id!r}: pass a comma list, a file, or a preset "
            f"({', '.join(REVISION_PRESETS)})"
        )
    return out


def hub_checkpoints(model_id: str, revisions: Sequence[str] | str) -> list[Checkpoint]:
    """Checkpoints for ``model_id`` on the hub.

    ``revisions`` is an explicit list, a comma string (``"step0,step1000"``) or a preset:
    ``"pythia"`` (all 154), ``"pythia-paper"`` (:data:`PYTHIA_PAPER_SUBSET`), ``"all"``
    (every branch of the repo that names a step, via :func:`list_hub_revisions`; needs
    network). Explicit lists keep their order (duplicates dropped).
    """
    out = []
    for rev in _expand_revisions(model_id, revisions):
        step, tokens, stage = parse_revision(rev)
        out.append(
            Checkpoint(step=step, revision=rev, path=None, model=model_id, tokens=tokens, stage=stage, kind="hub")
        )
    return out


# --------------------------------------------------------------------------------------
# Local checkpoints
# --------------------------------------------------------------------------------------

_HF_DIR = re.compile(r"^checkpoint-(\d+)$")


def _checkpoint_like(name: str) -> bool:
    """A folder name that says "a checkpoint" (checkpoint-N, stepN..., stageK-stepN...)."""
    return bool(_HF_DIR.match(name)) or (
        name.lower().startswith(("step", "stage")) and parse_revision(name)[0] is not None
    )


_CKPT_STEP = re.compile(r"step[=_-]?(\d+)", re.IGNORECASE)


def _ckpt_step(name: str) -> int | None:
    m = _CKPT_STEP.search(name)
    return int(m.group(1)) if m else None


def _folder_kind(folder: Path) -> str | None:
    """``hf_folder`` for a saved model, ``peft_adapter`` for a folder holding only a PEFT
    adapter (the HF Trainer saves just the adapter when training one), else None."""
    if (folder / "config.json").is_file():
        return "hf_folder"
    if (folder / "adapter_config.json").is_file():
        return "peft_adapter"
    return None


def _local_sort_key(c: Checkpoint) -> tuple:
    return (0 if c.step is not None else 1, c.step or 0, _natural_key(c.key))


def local_checkpoints(directory: str | os.PathLike, skipped: list[str] | None = None) -> list[Checkpoint]:
    """Discover checkpoints under a local folder, sorted by step (unknown steps last).

    Looked for:

    * ``checkpoint-N/`` folders (HF Trainer) and ``stepN/`` (or ``stepN-tokens…``) folders
      directly under ``directory`` that contain a ``config.json`` -> ``hf_folder``, or only a
      PEFT adapter (``adapter_config.json``) -> ``peft_adapter``;
    * ``*.ckpt`` files anywhere below ``directory`` (Lightning) -> ``lightning_ckpt``, step
      from ``step=N`` in the file name (``epoch=0-step=100.ckpt``), else None. ``last*.ckpt``
      is skipped when other ``.ckpt`` files exist (it duplicates the latest one).

    ``directory`` may also be a single ``.ckpt`` file or a single HF model folder.
    Raises FileNotFoundError when nothing is found, saying what was looked for. ``skipped``
    receives one line per ``checkpoint-N/`` / ``stepN/`` folder left out (no ``config.json``
    nor adapter: e.g. a save still being written, or only optimizer state).
    """
    root = Path(directory).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"checkpoint directory not found: {root}")
    if root.is_file():
        if root.suffix == ".ckpt":
            return [
                Checkpoint(
                    step=_ckpt_step(root.name),
                    revision=None,
                    path=str(root),
                    model=str(root.parent),
                    tokens=None,
                    stage=None,
                    kind="lightning_ckpt",
                )
            ]
        raise FileNotFoundError(f"{root} is a file but not a Lightning .ckpt file")

    found: list[Checkpoint] = []
    for child in sorted(root.iterdir()):
        kind = _folder_kind(child) if child.is_dir() else None
        if kind is None:
            if skipped is not None and child.is_dir() and _checkpoint_like(child.name):
                skipped.append(f"{child}: no config.json (nor adapter_config.json): not a model folder, skipped")
            continue
        m = _HF_DIR.match(child.name)
        if m:
            step, tokens, stage = int(m.group(1)), None, None
        else:
            step, tokens, stage = parse_revision(child.name)
            if step is None or not child.name.lower().startswith(("step", "stage")):
                continue
        found.append(
            Checkpoint(
                step=step, revision=None, path=str(child), model=str(root), tokens=tokens, stage=stage, kind=kind
            )
        )

    ckpts = sorted(p for p in root.rglob("*.ckpt") if p.is_file())
    if any(not p.name.startswith("last") for p in ckpts):
        ckpts = [p for p in ckpts if not p.name.startswith("last")]
    for p in ckpts:
        found.append(
            Checkpoint(
                step=_ckpt_step(p.name),
                revision=None,
                path=str(p),
                model=str(root),
                tokens=None,
                stage=None,
                kind="lightning_ckpt",
            )
        )

    if not found and (kind := _folder_kind(root)) is not None:
        m = _HF_DIR.match(root.name)
        step = int(m.group(1)) if m else parse_revision(root.name)[0]
        return [
            Checkpoint(
                step=step, revision=None, path=str(root), model=str(root.parent), tokens=None, stage=None, kind=kind
            )
        ]
    if not found:
        raise FileNotFoundError(
            f"no checkpoints found under {root}. Looked for: 'checkpoint-N/' or 'stepN/' folders "
            "containing config.json (HF Trainer / save_pretrained) or adapter_config.json (PEFT), "
            "and '*.ckpt' files at any depth (Lightning, step read from 'step=N' in the name). For "
            "hub models use hub_checkpoints(model_id, revisions) instead."
        )
    return sorted(found, key=_local_sort_key)


def shard_checkpoints(checkpoints: Sequence[Checkpoint], shard: str | None) -> list[Checkpoint]:
    """This worker's share of ``checkpoints``: ``shard="i/n"`` (0-based ``i``) takes every
    n-th checkpoint starting at ``i`` (round-robin, so shards get similar step mixes). ``None``
    returns all. The n shards together cover every checkpoint exactly once."""
    items = list(checkpoints)
    if shard is None or str(shard).strip() == "":
        return items
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m:
        raise ValueError(f"shard must look like 'i/n' with 0 <= i < n (e.g. '0/4'), got {shard!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ValueError(f"shard {shard!r}: the number of shards n must be >= 1")
    if not 0 <= i < n:
        raise ValueError(f"shard {shard!r}: the index is 0-based and must satisfy 0 <= i < n (i={i}, n={n})")
    return items[i::n]


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "16": "float16",
}


def resolve_dtype(dtype: Any) -> Any:
    """A torch dtype from a name (``float32``/``fp32``, ``bfloat16``/``bf16``,
    ``float16``/``fp16``) or a torch dtype; ``"auto"`` is returned unchanged (use the
    checkpoint's own dtype)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float32
    name = str(dtype).strip().lower().removeprefix("torch.")
    if name == "auto":
        return "auto"
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32/fp32, bfloat16/bf16, float16/fp16, auto")
    return getattr(torch, _DTYPES[name])


def resolve_device(device: Any) -> Any:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; anything else unchanged."""
    import torch

    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_builder(model_builder: Callable[..., Any] | str | None) -> Callable[..., Any] | None:
    if model_builder is None or callable(model_builder):
        return model_builder
    spec = str(model_builder)
    if ":" not in spec:
        raise ValueError(f"model_builder must be a callable or 'module:function', got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model_builder {spec!r} is not callable")
    return obj


def _find_pretrained(module: Any) -> Any:
    """The causal LM inside ``module`` (a LightningModule, a wrapper or the model itself)."""
    from geomtrace.features import find_causal_lm

    try:
        return find_causal_lm(module)
    except ValueError as err:
        raise CheckpointLoadError(
            f"{err} The model_builder must return a module that holds a Hugging Face causal LM (e.g. as self.model)."
        ) from err


def _load_state_dict_flexible(module: Any, state_dict: dict[str, Any]) -> None:
    """Load strictly; if keys carry a prefix (``model.``) the module lacks, strip it."""
    try:
        module.load_state_dict(state_dict, strict=True)
        return
    except RuntimeError:
        own = set(module.state_dict().keys())
        prefixes = set()
        for k in state_dict:
            parts = k.split(".")
            for j in range(1, len(parts)):
                prefixes.add(".".join(parts[:j]) + ".")
        for p in sorted(prefixes, key=len):
            stripped = {k[len(p) :]: v for k, v in state_dict.items() if k.startswith(p)}
            if stripped and set(stripped) == own:
                try:
                    module.load_state_dict(stripped, strict=True)
                    return
                except RuntimeError as err:
                    first = err
                    break
        raise CheckpointLoadError(
            "the checkpoint's state_dict does not match the module returned by model_builder "
            f"(build it with the checkpoint's hyper_parameters): {first}"
        ) from first


def _hub_error(what: str, err: BaseException) -> CheckpointLoadError:
    offline = any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    hint = (
        "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set, so only the local cache is used: download "
        "it first (huggingface-cli download MODEL --revision REV) or unset offline mode."
        if offline
        else "Check the model id and that the revision exists (list them with "
        "huggingface_hub.list_repo_refs), and your network / HF token for gated models."
    )
    return CheckpointLoadError(f"could not load {what}: {type(err).__name__}: {err}. {hint}")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _load_tokenizer(source: str, **kwargs: Any) -> Any:
    transformers = require("transformers", "loading tokenizers")
    try:
        return transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception:  # noqa: BLE001 - "no tokenizer here" has many forms; the caller says what to pass
        return None


def _has_tokenizer_files(folder: Path) -> bool:
    return any((folder / f).is_file() for f in _TOKENIZER_FILES)


def _adapter_base(folder: Path, base_model: str | None) -> str | None:
    """The base model of a PEFT adapter folder: ``base_model`` if given, else the adapter's
    ``base_model_name_or_path``."""
    if base_model:
        return str(base_model)
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return str(base) if base else None


def load_checkpoint_tokenizer(
    ckpt: Checkpoint, *, trust_remote_code: bool = False, base_model: str | None = None
) -> Any:
    """The tokenizer of ``ckpt`` without loading its weights, or None.

    Hub: from the same id and revision. ``hf_folder`` / ``peft_adapter``: from the folder if
    it holds tokenizer files, else from its parent (HF Trainer saves it at the run root); an
    adapter falls back to its base model's tokenizer. A folder without tokenizer files is never
    passed to ``AutoTokenizer`` (transformers 5 would build an *empty* tokenizer from its
    config.json). Lightning checkpoints: None (the module or the model builder may hold one).
    """
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if ckpt.kind == "hub":
        if ckpt.revision:
            kwargs["revision"] = ckpt.revision
        return _load_tokenizer(ckpt.model, **kwargs)
    if ckpt.kind not in ("hf_folder", "peft_adapter") or not ckpt.path:
        return None
    folder = Path(ckpt.path)
    for candidate in (folder, folder.parent):
        if _has_tokenizer_files(candidate):
            tokenizer = _load_tokenizer(str(candidate), **kwargs)
            if tokenizer is not None:
                return tokenizer
    if ckpt.kind == "peft_adapter":
        base = _adapter_base(folder, base_model)
        if base and (not Path(base).is_dir() or _has_tokenizer_files(Path(base))):
            return _load_tokenizer(base, **kwargs)
    return None


def _from_pretrained(source: str, what: str, hub: bool, kwargs: dict[str, Any]) -> Any:
    transformers = require("transformers", "loading checkpoints")
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        if hub:
            raise _hub_error(what, err) from err
        raise CheckpointLoadError(f"could not load {what}: {type(err).__name__}: {err}") from err


def _load_adapter(ckpt: Checkpoint, base_model: str | None, kwargs: dict[str, Any]) -> Any:
    """A PEFT adapter folder on its base model (adapters kept unmerged, as in training)."""
    peft = require("peft", "replaying PEFT adapter checkpoints")
    folder = Path(ckpt.path or "")
    base = _adapter_base(folder, base_model)
    if base is None:
        raise CheckpointLoadError(
            f"{folder / 'adapter_config.json'} names no base model (base_model_name_or_path): pass "
            "--base-model NAME_OR_PATH (base_model= in Python)"
        )
    try:
        model = _from_pretrained(
            base, f"the base model {base!r} of the adapter {folder}", hub=not Path(base).exists(), kwargs=kwargs
        )
    except CheckpointLoadError as err:
        raise CheckpointLoadError(
            f"{err} Pass --base-model NAME_OR_PATH to use another copy of the base model."
        ) from err
    try:
        return peft.PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as err:  # noqa: BLE001 - peft raises many types for a bad adapter
        raise CheckpointLoadError(f"could not load the PEFT adapter {folder}: {type(err).__name__}: {err}") from err


def _builder_hyperparameters(data: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``hyper_parameters`` as a module's ``__init__`` takes them: without
    LightningCLI's private entries (``_instantiator``, ``_class_path``)."""
    hparams = data.get("hyper_parameters") or {}
    try:
        hparams = dict(hparams)
    except (TypeError, ValueError):
        hparams = dict(vars(hparams))  # an argparse Namespace (old Lightning versions)
    return {k: v for k, v in hparams.items() if not str(k).startswith("_")}


def _is_lightning_class(obj: Any) -> bool:
    return isinstance(obj, type) and callable(getattr(obj, "load_from_checkpoint", None))


def _load_lightning(ckpt: Checkpoint, model_builder: Any) -> tuple[Any, Any]:
    """``(module, tokenizer_or_None)`` of a Lightning ``.ckpt`` file (see load_checkpoint_model)."""
    builder = _resolve_builder(model_builder)
    if builder is None:
        raise ValueError(
            f"{ckpt.path} is a Lightning checkpoint: geomtrace cannot know which module it "
            "holds. Pass model_builder: your LightningModule class, or a function hparams -> "
            "nn.Module (your LightningModule or an HF model) that geomtrace calls with the "
            "checkpoint's 'hyper_parameters' dict before loading its state_dict; on the command line: "
            "--model-builder mypackage.mymodule:MyModule (or :build_model)"
        )
    import torch

    if not ckpt.path or not Path(ckpt.path).is_file():
        raise CheckpointLoadError(f"Lightning checkpoint not found: {ckpt.path}")
    if _is_lightning_class(builder):
        # Lightning's own loader: it handles LightningCLI's _instantiator / _class_path.
        try:
            built = builder.load_from_checkpoint(ckpt.path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - reported as this checkpoint's failure
            raise CheckpointLoadError(
                f"{builder.__name__}.load_from_checkpoint({ckpt.path}) failed: {type(err).__name__}: {err}"
            ) from err
        return built, getattr(built, "tokenizer", None)
    try:
        # weights_only=False: hyper_parameters may hold arbitrary Python objects.
        # This unpickles: only load checkpoints you trust.
        data = torch.load(ckpt.path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointLoadError(f"could not read {ckpt.path}: {type(err).__name__}: {err}") from err
    if not isinstance(data, dict) or "state_dict" not in data:
        raise CheckpointLoadError(f"{ckpt.path} has no 'state_dict': not a Lightning checkpoint?")
    built = builder(_builder_hyperparameters(data))
    tokenizer = None
    if isinstance(built, tuple):
        built, tokenizer = built
    _load_state_dict_flexible(built, data["state_dict"])
    return built, tokenizer if tokenizer is not None else getattr(built, "tokenizer", None)


def load_checkpoint_model(
    ckpt: Checkpoint,
    *,
    dtype: Any = "float32",
    device: Any = "cpu",
    device_map: Any = None,
    trust_remote_code: bool = False,
    model_builder: Callable[[dict[str, Any]], Any] | str | None = None,
    base_model: str | None = None,
) -> tuple[Any, Any]:
    """Load ``ckpt`` and return ``(model, tokenizer_or_None)``, the model in eval mode.

    * ``hub``: ``AutoModelForCausalLM.from_pretrained(ckpt.model, revision=ckpt.revision,
      dtype=...)`` and the tokenizer from the same id and revision (None if it does not load).
    * ``hf_folder``: ``from_pretrained(ckpt.path)``; the tokenizer from the folder, else from
      its parent (HF Trainer saves it at the run root when checkpoints lack it).
    * ``peft_adapter``: the base model (``base_model``, else the adapter's
      ``base_model_name_or_path``) with the adapter loaded on it by
      ``peft.PeftModel.from_pretrained`` (unmerged, as in training); the tokenizer from the
      folder, its parent or the base model.
    * ``lightning_ckpt``: with a LightningModule class as ``model_builder``, its own
      ``load_from_checkpoint``; with a function, ``torch.load(path, map_location="cpu",
      weights_only=False)`` (needed to read ``hyper_parameters``; **pickle can execute code:
      only load checkpoints you trust**), then ``model_builder(hyper_parameters)`` builds the
      module (LightningCLI's private ``_instantiator``/``_class_path`` entries are left out; it
      may return a LightningModule, an HF model, or ``(module, tokenizer)``), its
      ``state_dict`` is loaded (a leading prefix such as ``model.`` is stripped if the module
      lacks it), and the HF causal LM inside is returned. The tokenizer is the builder's, else
      the module's ``tokenizer`` attribute. ``model_builder`` may be a ``"module:attribute"``
      string (the CLI's ``--model-builder``).

    Args:
        dtype: ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``, ``auto`` or a
            torch dtype.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` (cuda if available). Ignored
            when ``device_map`` is given.
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a big model over
            GPUs; needs accelerate).

    Raises:
        CheckpointLoadError: a hub revision or local checkpoint could not be loaded.
        ValueError: a Lightning checkpoint without ``model_builder``.
    """
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map

    if ckpt.kind in ("hub", "hf_folder", "peft_adapter"):
        if ckpt.kind == "hub":
            revision_kwargs = {"revision": ckpt.revision} if ckpt.revision else {}
            what = f"{ckpt.model!r} at revision {ckpt.revision or 'main'!r}"
            model = _from_pretrained(ckpt.model, what, hub=True, kwargs={**kwargs, **revision_kwargs})
        elif not ckpt.path or not Path(ckpt.path).is_dir():
            raise CheckpointLoadError(f"checkpoint folder not found: {ckpt.path}")
        elif ckpt.kind == "peft_adapter":
            model = _load_adapter(ckpt, base_model, kwargs)
        else:
            model = _from_pretrained(ckpt.path, f"the model folder {ckpt.path}", hub=False, kwargs=kwargs)
        if device_map is None:
            model.to(dev)
        model.eval()
        tokenizer = load_checkpoint_tokenizer(ckpt, trust_remote_code=trust_remote_code, base_model=base_model)
        return model, tokenizer

    if ckpt.kind == "lightning_ckpt":
        built, tokenizer = _load_lightning(ckpt, model_builder)
        model = _find_pretrained(built)
        if torch_dtype != "auto":
            model.to(dtype=torch_dtype)
        model.to(dev)
        model.eval()
        return model, tokenizer

    raise ValueError(
        f"unknown checkpoint kind {ckpt.kind!r}; expected 'hub', 'hf_folder', 'peft_adapter' or 'lightning_ckpt'"
    )


#: Files a model load reads: fetched ahead by :func:`fetch_checkpoint`.
_FETCH_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py"]
_READ_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")


def _read_through(path: Path, chunk: int = 1 << 24) -> None:
    """Read a file once so that the load that follows finds it in the page cache."""
    with path.open("rb") as handle:
        while handle.read(chunk):
            pass


def fetch_checkpoint(ckpt: Checkpoint, *, base_model: str | None = None) -> None:
    """Bring ``ckpt``'s files close without building anything: download a hub revision into
    the local cache, or read a local checkpoint's weight files into the page cache.

    Touches no process-wide torch state, so it may run beside a measurement. Never raises:
    the load that follows reports any problem properly.
    """
    try:
        if ckpt.kind == "hub":
            hub = require("huggingface_hub", "downloading checkpoints")
            hub.snapshot_download(ckpt.model, revision=ckpt.revision, allow_patterns=_FETCH_PATTERNS)
            return
        if not ckpt.path:
            return
        path = Path(ckpt.path)
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in _READ_SUFFIXES)
        if ckpt.kind == "peft_adapter":
            base = _adapter_base(path, base_model)
            if base and Path(base).is_dir():
                files += sorted(p for p in Path(base).iterdir() if p.suffix in _READ_SUFFIXES)
        for f in files:
            _read_through(f)
    except Exception:  # noqa: BLE001 - fetching ahead is an optimisation; the load reports errors
        return
