"""How replay loads each checkpoint: :class:`LoadOptions`, declared once.

``run_replay(load=LoadOptions(...))`` and ``geomtrace replay --load.dtype bf16`` take it; ``run.json``
keeps :meth:`LoadOptions.to_dict` (a builder callable by its ``module:qualname``). No torch at
import time (the command line builds its options from this class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from geomtrace._options import OptionSet
from geomtrace._validate import Rule, coerce_fields

__all__ = ["LoadOptions"]


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
    """

    group = "load"

    dtype: Any = "float32"
    device: str = "auto"
    device_map: Any = None
    trust_remote_code: bool = False
    model_builder: Callable[..., Any] | str | None = None
    base_model: str | None = None

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
        """Keyword arguments of :func:`~geomtrace.replay.sources.load_checkpoint_model`."""
        return {**{name: getattr(self, name) for name in self.field_names()}, **changes}

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
}
