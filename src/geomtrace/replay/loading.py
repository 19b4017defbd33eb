"""Loading a checkpoint: ``(model, tokenizer_or_None)`` from the hub, an HF folder, a PEFT adapter
or a Lightning file, and fetching its files ahead. Nothing here imports transformers or
huggingface_hub at module import time."""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from geomtrace._optional import require
from geomtrace.options import LoadOptions
from geomtrace.replay.checkpoint import Checkpoint, CheckpointKind, CheckpointLoadError
from geomtrace.replay.lightning_ckpt import find_pretrained, load_lightning
from geomtrace.replay.naming import FOLDER_KINDS
from geomtrace.replay.retry import is_transient, retry_transient

__all__ = [
    "fetch_checkpoint",
    "hub_fetch_patterns",
    "load_checkpoint_model",
    "load_checkpoint_tokenizer",
    "load_tokenizer",
    "loading_progress_bars",
    "no_safetensors_conversion",
    "resolve_device",
    "resolve_dtype",
]

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


@contextlib.contextmanager
def loading_progress_bars(enabled: bool) -> Iterator[None]:
    """transformers' and huggingface_hub's own progress bars ("Loading weights", downloads) for
    the block: unchanged when ``enabled``, else off, and as they were again after the block."""
    if enabled:
        yield
        return
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        transformers_logging = None  # type: ignore[assignment]
    try:
        from huggingface_hub import utils as hub_utils
    except ImportError:
        hub_utils = None  # type: ignore[assignment]
    transformers_on = transformers_logging is not None and transformers_logging.is_progress_bar_enabled()
    hub_off = hub_utils is None or hub_utils.are_progress_bars_disabled()
    if transformers_logging is not None:
        transformers_logging.disable_progress_bar()  # also turns the hub's off
    elif hub_utils is not None:
        hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        if transformers_on and transformers_logging is not None:
            transformers_logging.enable_progress_bar()  # also turns the hub's on
        if hub_utils is not None:
            if hub_off and not hub_utils.are_progress_bars_disabled():
                hub_utils.disable_progress_bars()
            elif not hub_off and hub_utils.are_progress_bars_disabled():
                hub_utils.enable_progress_bars()


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


def _hub_error(what: str, err: BaseException, retries: int) -> CheckpointLoadError:
    if is_transient(err):
        return CheckpointLoadError(
            f"could not load {what}: {type(err).__name__}: {err}. The hub or the network failed for a passing "
            f"reason, {retries + 1} time(s): try again later (a rerun resumes and retries the failed checkpoints) "
            "or allow more retries (--load.retries N)."
        )
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


#: Tries again after a transient hub error (LoadOptions.retries' default).
_RETRIES: int = LoadOptions.retries

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(
    name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False, retries: int = _RETRIES
) -> Any:
    """The tokenizer named by ``--tokenizer`` (a hub id or a folder); raises
    :class:`CheckpointLoadError` naming it when it cannot be loaded (a missing folder included).
    A transient hub error is tried again ``retries`` times (:mod:`geomtrace.replay.retry`)."""
    transformers = require("transformers", "loading tokenizers")
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if name_or_path.startswith(("/", "./", "../", "~")) and not Path(name_or_path).expanduser().exists():
        raise CheckpointLoadError(f"the tokenizer folder {name_or_path} does not exist (--tokenizer)")
    try:
        return retry_transient(
            lambda: transformers.AutoTokenizer.from_pretrained(name_or_path, **kwargs),
            retries=retries,
            what=f"the tokenizer {name_or_path!r}",
        )
    except (OSError, ValueError) as err:
        raise CheckpointLoadError(
            f"could not load the tokenizer {name_or_path!r} (--tokenizer): {type(err).__name__}: {err}"
        ) from err


def _try_tokenizer(source: str, retries: int, **kwargs: Any) -> Any:
    """The tokenizer at ``source``, or None: transient hub errors are tried again first."""
    transformers = require("transformers", "loading tokenizers")
    try:
        return retry_transient(
            lambda: transformers.AutoTokenizer.from_pretrained(source, **kwargs),
            retries=retries,
            what=f"the tokenizer of {source!r}",
        )
    except Exception:  # noqa: BLE001 - "no tokenizer here" has many forms; the caller says what to pass
        return None


def _hub_has_tokenizer(repo: str, revision: str | None, retries: int) -> bool:
    """Whether the hub revision (or, offline, its cached snapshot) holds a tokenizer file."""
    hub = require("huggingface_hub", "loading tokenizers")
    for name in _TOKENIZER_FILES:
        try:
            retry_transient(
                functools.partial(hub.hf_hub_download, repo, name, revision=revision),
                retries=retries,
                what=f"the tokenizer of {repo!r} at revision {revision or 'main'!r}",
            )
            return True
        except hub.errors.EntryNotFoundError:  # not there (or, offline, not cached): the next name
            continue
        except Exception:  # noqa: BLE001 - no revision, no access, no network: no tokenizer from here
            return False
    return False


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
    ckpt: Checkpoint, *, trust_remote_code: bool = False, base_model: str | None = None, retries: int = _RETRIES
) -> Any:
    """The tokenizer of ``ckpt`` without loading its weights, or None.

    Hub: from the same id and revision. ``hf_folder`` / ``peft_adapter``: from the folder if
    it holds tokenizer files, else from its parent (HF Trainer saves it at the run root); an
    adapter falls back to its base model's tokenizer. A folder without tokenizer files is never
    passed to ``AutoTokenizer`` (transformers 5 would build an *empty* tokenizer from its
    config.json). Lightning checkpoints: None (the module or the model builder may hold one).
    A hub revision holding none of the tokenizer files gives None too (transformers 5 would
    build a two-token tokenizer from its ``config.json``). A transient hub error is tried again
    ``retries`` times before giving None.
    """
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if ckpt.kind == CheckpointKind.HUB:
        if not _hub_has_tokenizer(ckpt.model, ckpt.revision, retries):
            return None
        if ckpt.revision:
            kwargs["revision"] = ckpt.revision
        return _try_tokenizer(ckpt.model, retries, **kwargs)
    if ckpt.kind not in FOLDER_KINDS or not ckpt.path:
        return None
    folder = Path(ckpt.path)
    for candidate in (folder, folder.parent):
        if _has_tokenizer_files(candidate):
            tokenizer = _try_tokenizer(str(candidate), retries, **kwargs)
            if tokenizer is not None:
                return tokenizer
    if ckpt.kind == CheckpointKind.PEFT_ADAPTER:
        base = _adapter_base(folder, base_model)
        if base and (not Path(base).is_dir() or _has_tokenizer_files(Path(base))):
            return _try_tokenizer(base, retries, **kwargs)
    return None


def no_safetensors_conversion() -> None:
    """Stop transformers' safetensors auto-conversion for ``.bin`` hub checkpoints.

    Loading a hub revision that holds only ``pytorch_model.bin`` (Pythia's ``stepN`` branches)
    makes ``from_pretrained`` start a thread (``Thread-auto_conversion``) that asks the hub for
    a conversion pull request of the repo, or opens one: more hub calls per checkpoint, on a
    repo replay only reads. transformers' own switch is the ``DISABLE_SAFETENSORS_CONVERSION``
    environment variable (read at each ``from_pretrained``); it is set here unless you set it.
    """
    os.environ.setdefault("DISABLE_SAFETENSORS_CONVERSION", "1")


def _from_pretrained(source: str, what: str, hub: bool, kwargs: dict[str, Any], retries: int = _RETRIES) -> Any:
    transformers = require("transformers", "loading checkpoints")
    if hub:
        no_safetensors_conversion()
    try:
        return retry_transient(
            lambda: transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs), retries=retries, what=what
        )
    except (OSError, ValueError) as err:
        if hub:
            raise _hub_error(what, err, retries) from err
        raise CheckpointLoadError(f"could not load {what}: {type(err).__name__}: {err}") from err


def _load_adapter(ckpt: Checkpoint, base_model: str | None, kwargs: dict[str, Any], retries: int) -> Any:
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
            base,
            f"the base model {base!r} of the adapter {folder}",
            hub=not Path(base).exists(),
            kwargs=kwargs,
            retries=retries,
        )
    except CheckpointLoadError as err:
        raise CheckpointLoadError(
            f"{err} Pass --base-model NAME_OR_PATH to use another copy of the base model."
        ) from err
    try:
        return peft.PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as err:  # noqa: BLE001 - peft raises many types for a bad adapter
        raise CheckpointLoadError(f"could not load the PEFT adapter {folder}: {type(err).__name__}: {err}") from err


def load_checkpoint_model(
    ckpt: Checkpoint,
    *,
    dtype: Any = "float32",
    device: Any = "cpu",
    device_map: Any = None,
    trust_remote_code: bool = False,
    model_builder: Callable[[dict[str, Any]], Any] | str | None = None,
    base_model: str | None = None,
    retries: int = _RETRIES,
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
        retries: how many more times a transient hub error (timeout, connection error, HTTP
            429/5xx) is tried, with exponential backoff (:mod:`geomtrace.replay.retry`).

    A ``.bin``-only hub revision loads like a safetensors one, without transformers'
    safetensors-conversion thread (:func:`no_safetensors_conversion`).

    Raises:
        CheckpointLoadError: a hub revision or local checkpoint could not be loaded.
        ValueError: a Lightning checkpoint without ``model_builder``.
    """
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map

    if ckpt.kind in (CheckpointKind.HUB, *FOLDER_KINDS):
        if ckpt.kind == CheckpointKind.HUB:
            revision_kwargs = {"revision": ckpt.revision} if ckpt.revision else {}
            what = f"{ckpt.model!r} at revision {ckpt.revision or 'main'!r}"
            model = _from_pretrained(ckpt.model, what, hub=True, kwargs={**kwargs, **revision_kwargs}, retries=retries)
        elif not ckpt.path or not Path(ckpt.path).is_dir():
            raise CheckpointLoadError(f"checkpoint folder not found: {ckpt.path}")
        elif ckpt.kind == CheckpointKind.PEFT_ADAPTER:
            model = _load_adapter(ckpt, base_model, kwargs, retries)
        else:
            model = _from_pretrained(ckpt.path, f"the model folder {ckpt.path}", hub=False, kwargs=kwargs, retries=0)
        if device_map is None:
            model.to(dev)
        model.eval()
        tokenizer = load_checkpoint_tokenizer(
            ckpt, trust_remote_code=trust_remote_code, base_model=base_model, retries=retries
        )
        return model, tokenizer

    if ckpt.kind == CheckpointKind.LIGHTNING_CKPT:
        built, tokenizer = load_lightning(ckpt, model_builder)
        model = find_pretrained(built)
        if torch_dtype != "auto":
            model.to(dtype=torch_dtype)
        model.to(dev)
        model.eval()
        return model, tokenizer

    raise ValueError(
        f"unknown checkpoint kind {ckpt.kind!r}; expected 'hub', 'hf_folder', 'peft_adapter' or 'lightning_ckpt'"
    )


#: The small files a model load reads (config, tokenizer, index, code): fetched ahead by
#: :func:`fetch_checkpoint`, with the weights of one format (:func:`hub_fetch_patterns`).
_FETCH_PATTERNS = ["*.json", "*.model", "*.txt", "*.py"]
#: Weight files by format, in transformers' order of preference (safetensors first), named as
#: ``from_pretrained`` reads them (``model.safetensors``, ``model-00001-of-00004.safetensors``):
#: not a repo's other copies (Mistral's ``consolidated.safetensors``, ``original/``).
_WEIGHT_PATTERNS = (["model*.safetensors"], ["pytorch_model*.bin"])
_READ_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")


def _read_through(path: Path, chunk: int = 1 << 24) -> None:
    """Read a file once so that the load that follows finds it in the page cache."""
    with path.open("rb") as handle:
        while handle.read(chunk):
            pass


def hub_fetch_patterns(files: Iterable[str]) -> list[str]:
    """``snapshot_download``'s ``allow_patterns`` for a revision holding ``files``: the small
    files, and the weights ``from_pretrained`` will read: safetensors when the revision has
    them, else ``pytorch_model*.bin`` (Pythia's ``stepN`` branches), never both."""
    names = [f for f in files if "/" not in f]  # from_pretrained reads the repo's root
    for patterns in _WEIGHT_PATTERNS:
        if any(fnmatch.fnmatch(name, p) for name in names for p in patterns):
            return [*_FETCH_PATTERNS, *patterns]
    return list(_FETCH_PATTERNS)


def _fetch_hub(ckpt: Checkpoint, retries: int) -> None:
    hub = require("huggingface_hub", "downloading checkpoints")
    what = f"fetching {ckpt.model!r} at revision {ckpt.revision or 'main'!r}"
    info = retry_transient(lambda: hub.model_info(ckpt.model, revision=ckpt.revision), retries=retries, what=what)
    patterns = hub_fetch_patterns(s.rfilename for s in info.siblings or ())
    retry_transient(
        lambda: hub.snapshot_download(ckpt.model, revision=ckpt.revision, allow_patterns=patterns),
        retries=retries,
        what=what,
    )


def fetch_checkpoint(ckpt: Checkpoint, *, base_model: str | None = None, retries: int = _RETRIES) -> None:
    """Bring ``ckpt``'s files close without building anything: download a hub revision into
    the local cache (what the revision holds: its safetensors, or its ``.bin`` weights when it
    has only those, see :func:`hub_fetch_patterns`; transient errors tried again ``retries``
    times), or read a local checkpoint's weight files into the page cache.

    Touches no process-wide torch state, so it may run beside a measurement. Never raises:
    the load that follows reports any problem properly.
    """
    try:
        if ckpt.kind == CheckpointKind.HUB:
            _fetch_hub(ckpt, retries)
            return
        if not ckpt.path:
            return
        path = Path(ckpt.path)
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in _READ_SUFFIXES)
        if ckpt.kind == CheckpointKind.PEFT_ADAPTER:
            base = _adapter_base(path, base_model)
            if base and Path(base).is_dir():
                files += sorted(p for p in Path(base).iterdir() if p.suffix in _READ_SUFFIXES)
        for f in files:
            _read_through(f)
    except Exception:  # noqa: BLE001 - fetching ahead is an optimisation; the load reports errors
        return
