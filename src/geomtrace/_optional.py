"""Lazy imports of optional dependencies with an install hint."""

from __future__ import annotations

import importlib
from types import ModuleType

_EXTRA_FOR = {
    "lightning": "lightning",
    "transformers": "hf",
    "trl": "hf",
    "datasets": "hf",
    "tokenizers": "hf",
    "huggingface_hub": "hf",
    "tensorboard": "tensorboard",
    "matplotlib": "plot",
    "yaml": "cli",
    "jsonargparse": "cli",
    "docstring_parser": "cli",
    "tqdm": "cli",
    "infini_gram": "memorization",
}


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise an ImportError that says which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = _EXTRA_FOR.get(top, "all")
        why = f" for {purpose}" if purpose else ""
        raise ImportError(f'geomtrace needs `{top}`{why}. Install it with: pip install "geomtrace[{extra}]"') from err
