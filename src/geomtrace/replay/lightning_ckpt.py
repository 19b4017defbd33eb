"""Lightning ``.ckpt`` files: the model builder, the state_dict load, the causal LM inside."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

from geomtrace.replay.checkpoint import Checkpoint, CheckpointLoadError

__all__ = ["find_pretrained", "load_lightning", "resolve_builder"]


def resolve_builder(model_builder: Callable[..., Any] | str | None) -> Callable[..., Any] | None:
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


def find_pretrained(module: Any) -> Any:
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


def _builder_hyperparameters(data: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``hyper_parameters`` as a module's ``__init__`` takes them: without
    LightningCLI's private entries (``_instantiator``, ``_class_path``)."""
    hparams = data.get("hyper_parameters") or {}
    try:
        hparams = dict(hparams)
    except (TypeError, ValueError):
        hparams = dict(vars(hparams))  # an argparse Namespace (old Lightning versions)
    return {k: v for k, v in hparams.items() if not str(k).startswith("_")}


def _is_lightning_class(obj: Any) -> TypeGuard[type[Any]]:
    return isinstance(obj, type) and callable(getattr(obj, "load_from_checkpoint", None))


def load_lightning(ckpt: Checkpoint, model_builder: Any) -> tuple[Any, Any]:
    """``(module, tokenizer_or_None)`` of a Lightning ``.ckpt`` file (see load_checkpoint_model)."""
    builder = resolve_builder(model_builder)
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
