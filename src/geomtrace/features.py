"""Which hidden states: layers, token selection, padding-aware, for any HF causal LM.

Layer indices follow HF ``hidden_states``: 0 is the embedding output (the input of the
first decoder layer), ``i`` is the output of decoder layer ``i``, and ``num_layers`` is
the last layer *after* the final norm (``last_hidden_state``).

How the states are read: one forward of the *base* model (no LM head, so no vocab-size
matmul), with ``position_ids`` derived from the attention mask so left and right padding
give the same features. The last layer comes from ``last_hidden_state``; inner layers are
captured by forward hooks on the decoder layers, installed only for the duration of
that forward. We do not rely on ``output_hidden_states``: in transformers 5 a model
unpickled into a fresh process (spawn) returns ``hidden_states=None``, and hooks also keep
only the requested layers in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from torch import Tensor, nn

from geomtrace._optional import require
from geomtrace.options import LayerSelection, TokenSelection

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedModel

__all__ = [
    "decoder_layers",
    "extract_features",
    "FeatureSpec",
    "find_causal_lm",
    "first_tensor",
    "is_fsdp",
    "last_hidden_state",
    "last_token_index",
    "LayerSelection",
    "num_hidden_layers",
    "position_ids",
    "resolve_layers",
    "row_sequences",
    "select_tokens",
    "TokenSelection",
    "unwrap_chain",
    "unwrap_model",
]


_TOKEN_MODES = ("last", "mean", "all")
# Attribute names of the decoder-layer list across HF families (Llama/OLMo/NeoX: layers, GPT-2: h).
_LAYER_LIST_NAMES = ("layers", "h", "layer", "blocks", "block")


@dataclass(frozen=True)
class FeatureSpec:
    """What to measure: which layers and which tokens of each probe sequence.

    Attributes:
        layers: ``"last"`` (default: after the final norm), ``"all"`` (embeddings + every
            layer), an int, or a sequence of ints; negative ints count from the end of
            ``hidden_states`` (``-1`` is the last layer).
        tokens: ``"last"`` (last real token of each sequence, default), ``"mean"`` (masked
            mean over real tokens) or ``"all"`` (every real token is a row).
        skip_first_token: for ``"all"`` and ``"mean"``: leave out the first real token of each
            sequence (BOS / attention sink, whose state is often an outlier).
    """

    layers: LayerSelection = "last"
    tokens: TokenSelection = "last"
    skip_first_token: bool = False

    def __post_init__(self) -> None:
        # Lists are unhashable; store a tuple so the frozen spec can be a dict key.
        if isinstance(self.layers, Sequence) and not isinstance(self.layers, str):
            object.__setattr__(self, "layers", tuple(self.layers))

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message if a field has a bad value."""
        layers = self.layers
        if isinstance(layers, str):
            if layers not in ("last", "all"):
                raise ValueError(f"FeatureSpec.layers must be 'last', 'all', an int or a list of ints, got {layers!r}")
        elif _is_int(layers):
            pass
        elif isinstance(layers, Sequence):
            if len(layers) == 0:
                raise ValueError("FeatureSpec.layers is an empty list; give at least one layer index or 'last'")
            bad = [v for v in layers if not _is_int(v)]
            if bad:
                raise ValueError(f"FeatureSpec.layers must contain ints only, got {bad!r}")
        else:
            raise ValueError(f"FeatureSpec.layers must be 'last', 'all', an int or a list of ints, got {layers!r}")
        if self.tokens not in _TOKEN_MODES:
            raise ValueError(f"FeatureSpec.tokens must be one of {_TOKEN_MODES}, got {self.tokens!r}")
        if not isinstance(self.skip_first_token, bool):
            raise ValueError(f"FeatureSpec.skip_first_token must be a bool, got {self.skip_first_token!r}")
        if self.skip_first_token and self.tokens == "last":
            raise ValueError("skip_first_token=True only applies to tokens='all' or 'mean', not 'last'")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _pretrained_model_class() -> type[PreTrainedModel]:
    return require("transformers", "feature extraction").PreTrainedModel


def unwrap_chain(model: nn.Module) -> list[nn.Module]:
    """``model`` followed by each module found by peeling one wrapper layer."""
    pretrained = _pretrained_model_class()
    chain = [model]
    for _ in range(32):  # wrappers nest a few levels at most; guard against cycles
        current = chain[-1]
        if isinstance(current, pretrained):
            break
        get_base = getattr(current, "get_base_model", None)
        if callable(get_base) and type(current).__module__.startswith("peft"):
            inner = get_base()
        elif isinstance(getattr(current, "_orig_mod", None), nn.Module):
            inner = current._orig_mod
        elif isinstance(getattr(current, "_forward_module", None), nn.Module):
            inner = current._forward_module
        elif isinstance(getattr(current, "module", None), nn.Module):
            inner = current.module
        else:
            break
        if any(inner is seen for seen in chain):
            break
        chain.append(inner)
    return chain


def unwrap_model(model: nn.Module) -> nn.Module:
    """Peel training wrappers and return the module they wrap.

    Handles DDP / DataParallel / FSDP1 / DeepSpeed (``.module``), ``torch.compile``
    (``._orig_mod``), Lightning/Fabric wrappers (``._forward_module``) and PEFT
    (``get_base_model()``, which keeps the adapters active). Stops at the first HF
    ``PreTrainedModel``; anything else without a wrapper attribute is returned as is
    (use :func:`find_causal_lm` to search inside e.g. a LightningModule).
    """
    return unwrap_chain(model)[-1]


def find_causal_lm(module: nn.Module) -> PreTrainedModel:
    """Return the HF ``PreTrainedModel`` inside ``module`` (wrappers peeled).

    ``module`` may be the model itself, a wrapped model (DDP, FSDP, compile, PEFT), or any
    ``nn.Module`` (e.g. a LightningModule) holding one as a submodule; submodules are searched
    breadth-first and the first ``PreTrainedModel`` found is returned.
    """
    pretrained = _pretrained_model_class()
    root = unwrap_model(module)
    if isinstance(root, pretrained):
        return root
    queue: deque[nn.Module] = deque(root.children())
    seen: set[int] = {id(root)}
    while queue:
        child = queue.popleft()
        if id(child) in seen:
            continue
        seen.add(id(child))
        inner = unwrap_model(child)
        if isinstance(inner, pretrained):
            return inner
        queue.extend(inner.children())
    raise ValueError(
        f"no Hugging Face PreTrainedModel found inside {type(module).__name__}. Pass the causal LM "
        "explicitly (or `model_getter=` to the callback) so geomtrace knows which model to probe."
    )


def num_hidden_layers(model: nn.Module) -> int:
    """Number of decoder layers of the (possibly wrapped) HF model."""
    config = find_causal_lm(model).config
    get_text_config = getattr(config, "get_text_config", None)
    text_config = get_text_config() if callable(get_text_config) else config
    n = getattr(text_config, "num_hidden_layers", None)
    if not _is_int(n) or n < 1:
        raise ValueError(f"cannot tell the number of layers: config.num_hidden_layers is {n!r}")
    return n


def resolve_layers(selection: LayerSelection, num_layers: int) -> list[int]:
    """Turn a layer selection into sorted, unique indices into ``hidden_states``.

    ``hidden_states`` has ``num_layers + 1`` entries: 0 = embeddings, ``num_layers`` = last
    layer after the final norm. ``"last"`` -> ``[num_layers]``; ``"all"`` -> ``[0 .. num_layers]``;
    negative ints count from the end (``-1`` = last). Out-of-range -> ``ValueError``.
    """
    FeatureSpec(layers=selection).validate()
    size = num_layers + 1
    if isinstance(selection, str):  # validated: "last" or "all"
        return [num_layers] if selection == "last" else list(range(size))
    wanted = [selection] if isinstance(selection, int) else list(selection)  # validated: no bools
    out = set()
    for index in wanted:
        if not -size <= index < size:
            raise ValueError(
                f"layer {index} is out of range for a model with {num_layers} layers: valid indices are "
                f"0..{num_layers} (0 = embeddings, {num_layers} = last) or -{size}..-1"
            )
        out.add(index % size)
    return sorted(out)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real (mask 1) token of each row; correct for left and right padding.

    ``attention_mask.sum(1) - 1`` is only right for right padding. Rows without any real
    token get 0.
    """
    mask = attention_mask.bool()
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.zeros_like(positions)).amax(dim=1)


def _first_token_index(mask: Tensor) -> Tensor:
    # argmax returns the first maximal element: the first real token.
    return mask.to(torch.int8).argmax(dim=1)


def _kept_tokens(mask: Tensor, skip_first_token: bool) -> Tensor:
    """The boolean mask of the tokens ``"all"``/``"mean"`` keep (the first real one left out if asked)."""
    if not skip_first_token:
        return mask
    first = _first_token_index(mask)
    mask = mask.clone()
    mask[torch.arange(mask.shape[0], device=mask.device), first] = False
    return mask


def row_sequences(attention_mask: Tensor, tokens: TokenSelection = "last", skip_first_token: bool = False) -> Tensor:
    """The batch position (0..B-1) of the sequence each row of :func:`select_tokens` comes from.

    Same rows, same order: ``select_tokens(h, mask, ...)[j]`` belongs to sequence
    ``row_sequences(mask, ...)[j]`` (int64, on the mask's device). The measuring path maps it
    to the probe's position in the probe set, the jackknife's sampling unit.
    """
    FeatureSpec(tokens=tokens, skip_first_token=skip_first_token).validate()
    mask = attention_mask.bool()
    positions = torch.arange(mask.shape[0], device=mask.device)
    if tokens == "last":
        return positions[mask.any(dim=1)]
    counts = _kept_tokens(mask, skip_first_token).sum(dim=1)
    if tokens == "all":
        return torch.repeat_interleave(positions, counts)
    return positions[counts > 0]


def select_tokens(
    hidden: Tensor,
    attention_mask: Tensor,
    tokens: TokenSelection = "last",
    skip_first_token: bool = False,
) -> Tensor:
    """Rows of features from a ``(B, T, d)`` hidden state and its ``(B, T)`` attention mask.

    ``"last"`` -> one row per sequence (last real token); ``"mean"`` -> one row per sequence
    (masked mean, skipping the first real token if asked); ``"all"`` -> one row per real
    token. Sequences with no (remaining) real token give no row. Rows keep ``hidden``'s dtype.
    """
    FeatureSpec(tokens=tokens, skip_first_token=skip_first_token).validate()
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden (B, T, d) and attention_mask (B, T), got {tuple(hidden.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    mask = attention_mask.to(hidden.device).bool()
    has_token = mask.any(dim=1)
    if tokens == "last":
        rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(mask)]
        return rows[has_token]
    mask = _kept_tokens(mask, skip_first_token)
    if tokens == "all":
        return hidden[mask]
    counts = mask.sum(dim=1)
    keep = counts > 0
    # Sum in fp32 so a bf16 mean over 128 tokens does not lose digits, then cast back.
    sums = (hidden.float() * mask.unsqueeze(-1)).sum(dim=1)
    means = sums / counts.clamp(min=1).unsqueeze(-1)
    return means[keep].to(hidden.dtype)


def decoder_layers(base: nn.Module, num_layers: int) -> nn.ModuleList:
    """The ModuleList holding the decoder layers of an HF base model."""
    for name in _LAYER_LIST_NAMES:
        candidate = getattr(base, name, None)
        if isinstance(candidate, nn.ModuleList) and len(candidate) == num_layers:
            return candidate
    for module in base.modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise ValueError(
        f"cannot find the {num_layers} decoder layers in {type(base).__name__}; use layers='last' "
        "(which needs no hooks) or open an issue with the model class"
    )


def first_tensor(value: Any) -> Tensor:
    # Decoder layers return a tensor in transformers 5 and a tuple (hidden, ...) in older code.
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    if isinstance(value, dict) and isinstance(value.get("hidden_states"), Tensor):
        return value["hidden_states"]
    raise TypeError(f"cannot read a hidden state from a decoder layer output of type {type(value).__name__}")


def is_fsdp(module: nn.Module) -> bool:
    """``module`` is an FSDP wrapper (FSDP1 ``FullyShardedDataParallel`` or an FSDP2 class)."""
    name = type(module).__name__
    return name == "FullyShardedDataParallel" or name.startswith("FSDP")


def _runner(model: nn.Module, lm: PreTrainedModel) -> nn.Module:
    """The module to call: the base model, unless FSDP must gather parameters first.

    FSDP unshards parameters in its wrapper's forward: calling an inner submodule directly
    would see sharded weights, so then the outermost FSDP wrapper (FSDP1) or the FSDP2 causal
    LM is run whole, logits included. Pass the FSDP-wrapped HF model itself in that case.
    """
    for module in unwrap_chain(model):
        if is_fsdp(module):
            return module
    return lm if is_fsdp(lm) else lm.base_model


def position_ids(attention_mask: Tensor) -> Tensor:
    """Position ids counted over the real tokens of ``attention_mask`` (0 on padding before them)."""
    # HF defaults to arange(T) whatever the padding; derive positions from the mask instead so
    # a left-padded sequence sees the same positions as a right-padded one.
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def last_hidden_state(output: Any) -> Tensor:
    state = getattr(output, "last_hidden_state", None)
    if state is None:
        state = output[0] if isinstance(output, (tuple, list)) else None
    if not isinstance(state, Tensor):
        raise TypeError(f"the base model returned no last_hidden_state ({type(output).__name__})")
    return state


@torch.no_grad()
def extract_features(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    spec: FeatureSpec = FeatureSpec(),
) -> dict[int, Tensor]:
    """Feature rows for each selected layer, from one forward pass.

    Args:
        model: an HF causal LM, possibly wrapped (DDP, FSDP, compile, PEFT, Lightning).
        input_ids: ``(B, T)`` token ids, left or right padded.
        attention_mask: ``(B, T)``, 1 for real tokens.
        spec: layers and token selection.

    Returns:
        ``{layer_index: rows}`` with rows ``(n, d)`` in the model's output dtype; layer indices
        as in :func:`resolve_layers`. Train/eval mode is left to the caller.
    """
    spec.validate()
    lm = find_causal_lm(model)
    n_layers = num_hidden_layers(lm)
    layers = resolve_layers(spec.layers, n_layers)
    device = next(lm.parameters()).device
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device)

    base = lm.base_model
    captured: dict[int, Tensor] = {}
    handles = []

    def keep(index: int):
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            captured[index] = first_tensor(output)

        return hook

    try:
        inner = [i for i in layers if i < n_layers]
        if inner:
            blocks = decoder_layers(base, n_layers)
            if 0 in inner:
                # hidden_states[0] is the input of the first decoder layer (embeddings after dropout).
                handles.append(
                    blocks[0].register_forward_pre_hook(
                        lambda _m, args, kwargs: captured.__setitem__(
                            0, first_tensor(args) if args else kwargs["hidden_states"]
                        ),
                        with_kwargs=True,
                    )
                )
            for i in inner:
                if i > 0:
                    handles.append(blocks[i - 1].register_forward_hook(keep(i)))
        if n_layers in layers:
            handles.append(
                base.register_forward_hook(lambda _m, _a, out: captured.__setitem__(n_layers, last_hidden_state(out)))
            )
        _runner(model, lm)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
        )
    finally:
        for handle in handles:
            handle.remove()

    missing = [i for i in layers if i not in captured]
    if missing:
        raise RuntimeError(f"hidden states of layers {missing} were not produced by {type(lm).__name__}'s forward")
    return {i: select_tokens(captured[i], attention_mask, spec.tokens, spec.skip_first_token) for i in layers}
