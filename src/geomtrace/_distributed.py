"""torch.distributed helpers: in-place SUM all-reduce of covariance moments, and flags every rank agrees on.

torchmetrics' default sync all-gathers every state and stacks it, which needs
``world_size x d^2`` memory per rank; the moments are plain sums, so an in-place
``all_reduce(SUM)`` keeps the per-rank memory at about ``d^2`` whatever the world size.

:func:`any_rank`, :func:`all_ranks` and :func:`any_rank_each` are the one way a bool is agreed
on (a failure on one rank, a load that worked everywhere): one small ``all_reduce(MAX)``, so
that every rank takes the same branch and none waits in a collective the others skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from geomtrace.covariance import CovarianceState

_NO_DIM = -(2**62)


def rank_and_world_size() -> tuple[int, int]:
    """``(global rank, world size)``; ``(0, 1)`` outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def any_rank_each(flags: Sequence[bool], device: torch.device | str, *, world_size: int | None = None) -> list[bool]:
    """For each of ``flags``: True when it is set on at least one rank.

    One ``all_reduce(MAX)`` of ``len(flags)`` numbers under torch.distributed, none when
    ``flags`` is empty or there is one rank. It is a collective: every rank must call it at
    the same point with as many flags. ``device``: where the flag tensor lives (the backend's
    device: CUDA for NCCL). ``world_size``: the caller's view (1 when it measures without
    distribution although a process group exists); default: the process group's.
    """
    local = [bool(flag) for flag in flags]
    if world_size is None:
        world_size = rank_and_world_size()[1]
    if world_size == 1 or not local:
        return local
    tensor = torch.tensor([1.0 if flag else 0.0 for flag in local], device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return [value > 0 for value in tensor.tolist()]


def any_rank(flag: bool, device: torch.device | str, *, world_size: int | None = None) -> bool:
    """True when ``flag`` is set on at least one rank (e.g. "this rank failed"); see :func:`any_rank_each`."""
    return any_rank_each([flag], device, world_size=world_size)[0]


def all_ranks(flag: bool, device: torch.device | str, *, world_size: int | None = None) -> bool:
    """True when ``flag`` holds on every rank (e.g. "this rank loaded the checkpoint"); see :func:`any_rank_each`."""
    return not any_rank(not flag, device, world_size=world_size)


def agree_on_dim(local_dim: int, device: torch.device, group: Any = None) -> int:
    """The feature dimension all ranks share (0 if no rank has rows).

    A rank that saw no rows does not know ``d`` yet; one small collective tells it. Every
    rank raises the same error when two ranks saw different dimensions, so none hangs.
    """
    dist = torch.distributed
    probe = torch.tensor([local_dim, -local_dim if local_dim else _NO_DIM], dtype=torch.int64, device=device)
    dist.all_reduce(probe, op=dist.ReduceOp.MAX, group=group)
    largest, smallest = int(probe[0]), -int(probe[1])
    if largest and smallest != largest:
        raise ValueError(
            f"ranks accumulated features of different dimensions ({smallest} and {largest}); "
            "every rank must measure the same layer of the same model."
        )
    return largest


def all_reduce_moments(
    n: Tensor, shift: Tensor | None, total: Tensor | None, second: Tensor | None, group: Any = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sum the moments ``n``, ``total`` (d,) and ``second`` (d, d) over ranks, around one shift.

    Each rank's sums are around its own shift (its first batch's mean). The ranks first agree
    on a common shift, the row-weighted mean of theirs (one all-reduce of ``d + 1`` numbers;
    every rank gets the same bits), recentre onto it (exact algebra in fp64, see
    :func:`geomtrace.covariance.recenter`), then sum in place. Empty or missing tensors (a
    rank with no rows) are replaced by zeros of the agreed dimension first, so every rank
    enters the same collectives. Returns ``(n, shift, total, second)``.
    """
    from geomtrace.covariance import recenter

    dist = torch.distributed
    device = n.device
    local_dim = 0 if total is None else total.numel()
    d = agree_on_dim(local_dim, device, group)
    if total is None or total.numel() != d or second is None or shift is None or shift.numel() != d:
        shift = torch.zeros(d, dtype=torch.float64, device=device)
        total = torch.zeros(d, dtype=torch.float64, device=device)
        second = torch.zeros(d, d, dtype=torch.float64, device=device)
        n = torch.zeros((), dtype=torch.float64, device=device)
    if d:
        weighted = torch.cat([shift * n, n.reshape(1).to(torch.float64)])
        dist.all_reduce(weighted, op=dist.ReduceOp.SUM, group=group)
        rows = weighted[d]
        common = weighted[:d] / rows if float(rows) > 0 else torch.zeros_like(shift)
        recenter(n, shift, total, second, common)
    dist.all_reduce(n, op=dist.ReduceOp.SUM, group=group)
    if d:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(second, op=dist.ReduceOp.SUM, group=group)
    return n, shift, total, second


def all_reduce_state(state: CovarianceState, group: Any = None) -> None:
    """Sum a covariance state (``geomtrace.covariance.STATE_NAMES``) over ranks.

    Folds the deferred batches, reduces *copies* of the sums (a ``MetricCollection`` compute
    group shares the tensors with members that must keep the local sums) and assigns the
    results to ``state``. Used by the metrics' ``_sync_dist`` and
    ``CovarianceAccumulator.all_reduce`` alike. Every rank must call it, also with no rows.
    """
    from geomtrace.covariance import fold

    if state.feature_sum.numel():
        fold(state)
    dist = torch.distributed
    n, shift, total, second = all_reduce_moments(
        state.n_samples.clone(),
        state.shift.clone(),
        state.feature_sum.clone(),
        state.second_moment.clone(),
        group=group,
    )
    dropped, roundoff = state.n_dropped.clone(), state.input_roundoff.clone()
    dist.all_reduce(dropped, op=dist.ReduceOp.SUM, group=group)
    dist.all_reduce(roundoff, op=dist.ReduceOp.MAX, group=group)
    state.n_samples, state.shift, state.feature_sum, state.second_moment = n, shift, total, second
    state.n_dropped, state.input_roundoff = dropped, roundoff
