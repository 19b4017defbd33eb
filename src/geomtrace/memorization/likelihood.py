"""The model side: log-likelihood of each pair's answer tokens given its question.

For a pair with context ``c`` and answer ``a_1..a_m``, the model's answer log-likelihood is
``Σ_j log p_model(a_j | c, a_1..a_{j-1})``, read from one forward of ``c + a``: the logits at
the position of ``c``'s last token predict ``a_1``, and so on (the seed's
``compute_llm_likelihood.py`` computes the same sum one pair at a time with full logits).

Here pairs are scored in padded batches (left or right padding; position ids come from the
attention mask, so both give the batch-size-1 values) sorted by length, and logits are only
computed for the last positions of each batch, the ones that predict answer tokens (through
the model's ``logits_to_keep`` argument, when its forward has one): with a 50k vocabulary
the LM head is most of a small model's forward. Log-softmax is taken in fp32.

Under torch.distributed each rank scores its contiguous shard of the pairs; every rank runs
the same number of forwards (a rank whose shard ran out repeats a one-pair forward, so FSDP /
ZeRO-3 parameter gathers never wait on a missing rank), then one ``all_reduce(SUM)`` of the
per-token values (each written at its own offset, zeros elsewhere) gives every rank - rank 0
included - all values.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from geomtrace._distributed import any_rank, rank_and_world_size
from geomtrace.features import find_causal_lm, is_fsdp, position_ids, unwrap_chain
from geomtrace.measure import (
    batch_count,
    device_of,
    eval_mode,
    forward_precision,
    probe_autocast,
    progress_bar,
)
from geomtrace.memorization.qa import TokenizedPair

__all__ = ["AnswerLogprobs", "answer_logprobs", "model_vocab_size"]


@dataclass
class AnswerLogprobs:
    """Model answer log-likelihoods of a QA set.

    Attributes:
        total: ``(n_pairs,)`` float64, Σ of each pair's answer-token log-probabilities.
        per_token: per pair, the log-probability of each answer token.
        precision: dtype of the forward's matmuls (``"fp32"``, ``"bf16"``...).
    """

    total: np.ndarray
    per_token: list[np.ndarray]
    precision: str


def model_vocab_size(model: nn.Module) -> int | None:
    """Rows of the causal LM's input embedding (the ids it accepts: ``0 .. n - 1``); None if unknown."""
    try:
        embeddings = find_causal_lm(model).get_input_embeddings()
    except (ValueError, AttributeError, NotImplementedError):
        return None
    rows = getattr(embeddings, "num_embeddings", None)
    return int(rows) if isinstance(rows, int) and rows > 0 else None


def _runner(model: nn.Module, lm: nn.Module) -> nn.Module:
    # FSDP gathers parameters in its wrapper's forward: call the outermost FSDP module then.
    for module in unwrap_chain(model):
        if is_fsdp(module):
            return module
    return lm


def _keep_argument(lm: nn.Module) -> str | None:
    parameters = inspect.signature(lm.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):  # transformers >= 4.50, 4.45-4.49
        if name in parameters:
            return name
    return None


def _prepare(pairs: Sequence[TokenizedPair], max_length: int | None) -> list[tuple[list[int], list[int]]]:
    out = []
    for i, pair in enumerate(pairs):
        context, answer = list(pair.context_ids), list(pair.answer_ids)
        if not context or not answer:
            raise ValueError(f"pair {i} needs at least one context token and one answer token")
        if max_length is not None and len(context) + len(answer) > max_length:
            if len(answer) >= max_length:
                raise ValueError(f"pair {i}: its {len(answer)} answer tokens do not fit in max_length={max_length}")
            context = context[len(context) + len(answer) - max_length :]  # keep the context's end
        out.append((context, answer))
    return out


def _score_batch(
    runner: nn.Module,
    keep_argument: str | None,
    batch: Sequence[tuple[list[int], list[int]]],
    padding_side: str,
    device: torch.device,
) -> list[torch.Tensor]:
    """Per-token answer log-probabilities of each pair of ``batch`` (fp32, on ``device``)."""
    width = max(len(c) + len(a) for c, a in batch)
    input_ids = torch.zeros((len(batch), width), dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows: list[int] = []
    columns: list[int] = []
    targets: list[int] = []
    sizes: list[int] = []
    for row, (context, answer) in enumerate(batch):
        length = len(context) + len(answer)
        offset = 0 if padding_side == "right" else width - length
        input_ids[row, offset : offset + length] = torch.tensor(context + answer, dtype=torch.long)
        attention_mask[row, offset : offset + length] = 1
        first = offset + len(context) - 1  # this position's logits predict the first answer token
        rows.extend([row] * len(answer))
        columns.extend(range(first, first + len(answer)))
        targets.extend(answer)
        sizes.append(len(answer))
    start, stop = min(columns), max(columns) + 1
    kwargs: dict[str, Any] = {}
    if keep_argument == "logits_to_keep":  # transformers >= 4.50 takes the positions themselves
        kwargs[keep_argument] = torch.arange(start, stop, device=device)
    elif keep_argument is not None:  # older: an int, the last positions
        kwargs[keep_argument] = width - start
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    logits = runner(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
        **kwargs,
    ).logits
    # Column 0 of the logits is position `start` when the model kept only what was asked.
    shift = start if logits.shape[1] in (stop - start, width - start) else 0
    index_rows = torch.tensor(rows, device=logits.device)
    index_cols = torch.tensor(columns, device=logits.device) - shift
    selected = logits[index_rows, index_cols].float()  # (answer tokens in batch, vocab)
    target = torch.tensor(targets, device=logits.device)
    values = selected.gather(1, target[:, None])[:, 0] - torch.logsumexp(selected, dim=-1)
    return list(values.split(sizes))


@torch.no_grad()
def answer_logprobs(
    model: nn.Module,
    pairs: Sequence[TokenizedPair],
    *,
    batch_size: int = 32,
    padding_side: str = "left",
    max_length: int | None = None,
    autocast: str = "auto",
    distributed: bool | None = None,
    progress: bool = False,
) -> AnswerLogprobs:
    """Each pair's answer log-likelihood under ``model``, batched.

    Args:
        model: an HF causal LM or a module holding one (Lightning module, DDP, FSDP, PEFT).
            It runs in eval mode; every module's own mode is restored afterwards.
        pairs: token ids (:meth:`QASet.tokenize`).
        batch_size: pairs per forward.
        padding_side: ``"left"`` (default; then the kept logits are just the answer span)
            or ``"right"``. Both give the batch-size-1 values.
        max_length: keep at most this many tokens per pair, dropping the context's start;
            default the model's ``max_position_embeddings`` when it has one.
        autocast: the probe forward precision, as for geometry (``"auto"``, ``"off"``,
            ``"bf16"``, ``"fp16"``).
        distributed: shard over torch.distributed ranks; default when initialised with > 1
            rank. Every rank must call this at the same point; every rank gets all values.
        progress: a progress bar (rank 0).

    Raises:
        RuntimeError: the forward failed on this or another rank (all ranks raise, none hang).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not pairs:
        raise ValueError("no pairs to score")
    lm = find_causal_lm(model)
    if max_length is None:
        max_length = getattr(lm.config, "max_position_embeddings", None)
    prepared = _prepare(pairs, max_length)
    rank, world_size = rank_and_world_size()
    if distributed is False:
        rank, world_size = 0, 1
    device = device_of(lm)
    runner = _runner(model, lm)
    keep_argument = _keep_argument(lm)

    sizes = np.array([len(a) for _, a in prepared], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    values = torch.zeros(int(offsets[-1]), dtype=torch.float64, device=device)
    n = len(prepared)
    shard = list(range(rank * n // world_size, (rank + 1) * n // world_size))
    # Similar lengths together: less padding, and fewer kept logit positions per batch.
    shard.sort(key=lambda i: len(prepared[i][0]) + len(prepared[i][1]))
    n_batches = batch_count(len(shard), batch_size, world_size, device)

    error: BaseException | None = None
    precision = "fp32"
    bar = progress_bar(n_batches, progress and rank == 0, "memorization")
    try:
        with eval_mode(model), probe_autocast(autocast, device):
            precision = forward_precision(model, device)
            for b in range(n_batches):
                chunk = shard[b * batch_size : (b + 1) * batch_size]
                if not chunk:  # this rank's shard ran out: a discarded forward keeps ranks in step
                    _score_batch(runner, keep_argument, [prepared[0]], padding_side, device)
                else:
                    scores = _score_batch(runner, keep_argument, [prepared[i] for i in chunk], padding_side, device)
                    for i, tokens in zip(chunk, scores):
                        values[int(offsets[i]) : int(offsets[i + 1])] = tokens.to(torch.float64)
                if bar is not None:
                    bar.update(1)
    except Exception as err:  # noqa: BLE001 - re-raised below after the ranks agree
        error = err
    finally:
        if bar is not None:
            bar.close()
    if any_rank(error is not None, device, world_size=world_size):
        if error is not None:
            raise RuntimeError(f"answer log-likelihood failed: {type(error).__name__}: {error}") from error
        raise RuntimeError("answer log-likelihood failed on another rank")
    if world_size > 1:
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    flat = values.cpu().numpy()
    per_token = [flat[offsets[i] : offsets[i + 1]].copy() for i in range(n)]
    total = np.array([tokens.sum() for tokens in per_token], dtype=np.float64)
    return AnswerLogprobs(total=total, per_token=per_token, precision=precision)
