"""Standard errors from the sample itself: a delete-a-group jackknife over the covariance moments.

Opt in with ``Geometry(uncertainty="jackknife", groups=20)`` (likewise ``RankMe`` and
``AlphaReQ``). Beside the total moments (:mod:`geomtrace.covariance`) the metric keeps, for
each of ``G`` groups of rows, that group's own sums around the *same* shift ``c``:

* ``group_count[g] = n_g``, ``group_sum[g] = sum_{i in g} (x_i - c)``,
  ``group_second[g] = sum_{i in g} (x_i - c)(x_i - c)^T`` (float64, ``G x d x d``).

They are plain sums like the totals, so batches, merges and ranks add them. Deleting group
``g`` is a subtraction: ``(n - n_g, s - s_g, S - S_g)`` are the moments of every other row, and
the replicate statistic ``theta_(g)`` (RankMe, alpha) is computed from them exactly like the
value itself. The standard error is the delete-a-group jackknife's:

``se^2 = (G - 1) / G * sum_g (theta_(g) - mean_g theta_(g))^2``,

with ``G - 1`` degrees of freedom (a 95 % interval is ``theta +- t_{0.975, G-1} se``; 2.093 for
G = 20). See ``docs/concepts.md`` ("Error bars") for why a jackknife and not a bootstrap, how
it is calibrated and where bias, not noise, dominates.

Rows go to groups round-robin in the order they are accumulated: the ``j``-th kept row of the
metric (counted over every update since ``reset()``) goes to group ``j mod G``, so the groups do
not depend on how the rows are split into batches. ``update(x, sample_index=idx)`` assigns
``idx mod G`` instead (e.g. the probe's position in the whole probe set): then the groups are
the same whatever the process, shard or order, and every row of one sequence (``tokens="all"``)
lands in one group, as a jackknife of correlated rows needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple, Protocol

import torch
from torch import Tensor

from geomtrace.covariance import Moments
from geomtrace.options import DEFAULT_UNCERTAINTY_GROUPS

__all__ = [
    "DEFAULT_GROUPS",
    "DEFAULT_MAX_GROUP_MEMORY",
    "GROUP_STATE_NAMES",
    "Uncertainty",
    "UncertaintyMethod",
    "GroupedState",
    "accumulate_groups",
    "all_reduce_groups",
    "check_group_memory",
    "group_ids",
    "group_memory_bytes",
    "jackknife_se",
    "kept_sample_index",
    "merge_groups",
    "recenter_groups",
    "replicate_moments",
    "replicate_values",
    "t_quantile",
    "update_groups",
    "validate_uncertainty",
]

UncertaintyMethod = Literal["jackknife"]

#: Groups of the delete-a-group jackknife when ``uncertainty="jackknife"`` and no ``groups``.
DEFAULT_GROUPS: int = DEFAULT_UNCERTAINTY_GROUPS
#: Largest memory the group moments may take (bytes): ``G * d^2 * 8`` must not exceed it.
DEFAULT_MAX_GROUP_MEMORY: int = 2 * 2**30
#: The metric states that hold the group moments (only registered with ``uncertainty=``).
GROUP_STATE_NAMES: tuple[str, ...] = ("group_count", "group_sum", "group_second")

# Fp32 GEMM inputs outside 2**+-20 are rescaled by an exact power of two (as in covariance.py).
_NO_SCALE_BAND = 20


class Uncertainty(NamedTuple):
    """Jackknife standard errors of one accumulation (:meth:`compute_uncertainty`).

    Attributes:
        method: ``"jackknife"``.
        groups: the number of groups ``G``; intervals use ``G - 1`` degrees of freedom.
        group_sizes: rows in each group (float64, ``(G,)``).
        rankme, alpha: the values (as ``compute()`` gives them; None when the metric does not
            measure that quantity, e.g. alpha on :class:`~geomtrace.RankMe`).
        rankme_se, alpha_se: their standard errors (float64 scalars; NaN when the value or a
            replicate is undefined, e.g. fewer than 2 rows in the groups left after deleting one).
        rankme_replicates, alpha_replicates: the delete-one-group values ``theta_(g)`` (``(G,)``).
    """

    method: str
    groups: int
    group_sizes: Tensor
    rankme: Tensor | None
    rankme_se: Tensor | None
    rankme_replicates: Tensor | None
    alpha: Tensor | None
    alpha_se: Tensor | None
    alpha_replicates: Tensor | None

    def interval(self, name: str = "rankme", level: float = 0.95) -> tuple[float, float]:
        """``value +- t_{(1+level)/2, G-1} * se`` for ``name`` in ``{"rankme", "alpha"}``.

        Centred on the estimate: it covers the estimator's expectation at this N, which is not
        the population value where the estimate is biased (small N, see ``docs/concepts.md``).
        """
        value, se = getattr(self, name), getattr(self, f"{name}_se")
        if value is None or se is None:
            raise ValueError(f"this metric does not measure {name!r}.")
        half = t_quantile((1.0 + level) / 2.0, self.groups - 1) * float(se)
        return float(value) - half, float(value) + half


# ------------------------------------------------------------------------- validation
def validate_uncertainty(
    uncertainty: Any, groups: Any, max_group_memory: Any
) -> tuple[UncertaintyMethod | None, int, int | None]:
    """Check the options; returns ``(method, G, memory cap in bytes or None)``."""
    if uncertainty is None:
        if groups is not None:
            raise ValueError(
                f"groups={groups!r} only applies with uncertainty='jackknife'; pass both, or neither for plain values."
            )
        return None, 0, None
    if uncertainty == "bootstrap":
        raise ValueError(
            "uncertainty='bootstrap' is not offered: on covariance spectra at d/N >= 0.1 the row bootstrap "
            "misjudges the spread (resamples hold only ~63 % distinct rows) and needs ~10x more replicates "
            "than a 20-group jackknife; use uncertainty='jackknife' (see docs/concepts.md, 'Error bars')."
        )
    if uncertainty != "jackknife":
        raise ValueError(f"uncertainty must be None or 'jackknife', got {uncertainty!r}.")
    if groups is None:
        groups = DEFAULT_GROUPS
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 2:
        raise ValueError(
            f"groups must be an int >= 2 (the jackknife deletes one group of rows at a time; 20 is a good "
            f"default, 10 halves the cost), got {groups!r}."
        )
    if max_group_memory is not None and (
        isinstance(max_group_memory, bool) or not isinstance(max_group_memory, int) or max_group_memory < 1
    ):
        raise ValueError(f"max_group_memory must be a positive number of bytes or None, got {max_group_memory!r}.")
    return "jackknife", int(groups), max_group_memory


def group_memory_bytes(groups: int, dim: int) -> int:
    """Bytes of the group moments: ``G * (d^2 + d + 1)`` float64 numbers."""
    return groups * (dim * dim + dim + 1) * 8


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def check_group_memory(groups: int, dim: int, cap: int | None, who: str) -> None:
    """Raise a ``ValueError`` naming the memory when ``G`` group moments of ``d x d`` exceed ``cap``."""
    need = group_memory_bytes(groups, dim)
    if cap is None or need <= cap:
        return
    fits = max(cap // max(group_memory_bytes(1, dim), 1), 0)
    advice = (
        f"use groups={fits} (MeasureConfig: uncertainty_groups={fits}; the most that fit; >= 10 keeps the error "
        "bars usable)"
        if fits >= 2
        else "even 2 groups do not fit"
    )
    raise ValueError(
        f"{who}: uncertainty='jackknife' with groups={groups} keeps {groups} group covariances of "
        f"{dim} x {dim} float64 beside the total: {_gib(need)}, over max_group_memory={cap} ({_gib(cap)}). "
        f"{advice.capitalize()}, or raise max_group_memory (bytes) if the device has room, or "
        "measure with uncertainty=None."
    )


# ------------------------------------------------------------------------ accumulation
def group_ids(
    first_row: int,
    n_rows: int,
    groups: int,
    device: torch.device,
    sample_index: Tensor | None = None,
) -> Tensor:
    """Group of each kept row: ``(first_row + j) mod G`` (round-robin), or ``sample_index mod G``."""
    if sample_index is not None:
        return torch.remainder(sample_index.to(device=device, dtype=torch.int64), groups)
    return torch.remainder(torch.arange(first_row, first_row + n_rows, device=device, dtype=torch.int64), groups)


def kept_sample_index(sample_index: Any, features: Tensor, mask: Tensor | None, n_dropped: int) -> Tensor:
    """``sample_index`` of the rows that ``prepare_rows`` keeps (same masking and NaN/Inf dropping)."""
    expected = tuple(features.shape[:-1])
    if not isinstance(sample_index, Tensor):
        sample_index = torch.as_tensor(sample_index)
    if tuple(sample_index.shape) != expected:
        raise ValueError(
            f"sample_index must have shape features.shape[:-1] = {expected} (one sampling unit per row, "
            f"e.g. the probe's position), got {tuple(sample_index.shape)}."
        )
    if sample_index.is_floating_point() or sample_index.is_complex() or sample_index.dtype == torch.bool:
        raise TypeError(f"sample_index must hold integers (e.g. probe positions), got dtype {sample_index.dtype}.")
    if sample_index.numel() and int(sample_index.min()) < 0:
        raise ValueError("sample_index must be >= 0 (e.g. the probe's position in the probe set).")
    d = features.shape[-1]
    index = sample_index.reshape(-1).to(torch.int64)
    rows = features.detach().reshape(-1, d)
    if mask is not None:
        keep = (mask if mask.dtype == torch.bool else mask != 0).reshape(-1).to(index.device)
        index = index[keep]
        rows = rows[keep.to(rows.device)]
    if n_dropped:
        finite = torch.isfinite(rows).all(dim=1).to(index.device)
        index = index[finite]
    return index


def _scale_exponent(amax: float) -> int:
    if amax == 0.0 or 2.0**-_NO_SCALE_BAND <= amax <= 2.0**_NO_SCALE_BAND:
        return 0
    return -math.frexp(amax)[1]


def accumulate_groups(count: Tensor, total: Tensor, second: Tensor, rows: Tensor, gid: Tensor, shift: Tensor) -> None:
    """Add clean rows (fp32/fp64, ``(n, d)``) into the group moments around ``shift``, in place.

    Per group, the numerics of :mod:`geomtrace.covariance`: the float64 column sum, the group
    mean ``mu`` rounded to the rows' dtype (``m``), ``M2 = (X - m)^T (X - m)`` as one GEMM in the
    rows' dtype, and ``S_g += M2 + n_g ((mu - c)(mu - c)^T - delta delta^T)`` in float64 with
    ``delta = mu - m``. The GEMMs together cost what the total's does (``n d^2``); the float64
    additions ``G d^2`` per update (batch rows, as the measuring path does, to keep that small).
    """
    if rows.shape[0] == 0:
        return
    f64 = torch.float64
    sizes = torch.bincount(gid, minlength=count.numel())
    order = torch.argsort(gid, stable=True)
    chunks = rows[order].split(sizes.tolist())
    with torch.autocast(device_type=rows.device.type, enabled=False):
        for g, chunk in enumerate(chunks):
            n_g = chunk.shape[0]
            if n_g == 0:
                continue
            mean = torch.sum(chunk, dim=0, dtype=f64) / n_g
            rounded = mean.to(chunk.dtype)
            centred = chunk - rounded
            low, high = torch.aminmax(centred)
            exponent = _scale_exponent(max(float(high), -float(low)))
            if exponent:
                centred = centred * 2.0**exponent  # exact (a power of two)
            second[g].add_(centred.T @ centred, alpha=2.0 ** (-2 * exponent))
            deviation = mean - shift
            correction = mean - rounded.to(f64)
            # n_g (dev dev^T - corr corr^T) as one rank-2 GEMM: one pass over the d x d block
            terms = torch.stack([deviation, correction])
            weights = torch.tensor([[float(n_g)], [-float(n_g)]], dtype=f64, device=terms.device)
            second[g].addmm_((terms * weights).T, terms)
            total[g].add_(deviation, alpha=float(n_g))
    count.add_(sizes.to(count))


def recenter_groups(count: Tensor, total: Tensor, second: Tensor, shift: Tensor, new_shift: Tensor) -> None:
    """Move group sums around ``shift`` to sums around ``new_shift``, in place (see ``covariance.recenter``)."""
    delta = shift.to(torch.float64) - new_shift.to(torch.float64)
    if not bool(torch.any(delta != 0)):
        return
    for g in range(count.numel()):
        n_g = float(count[g])
        if n_g == 0:
            continue
        second[g].addr_(total[g], delta).addr_(delta, total[g]).addr_(delta, delta, alpha=n_g)
        total[g].add_(delta, alpha=n_g)


# ------------------------------------------------------------------- on a metric's states
class GroupedState(Protocol):
    """A covariance state (:class:`geomtrace.covariance.CovarianceState`) with group moments:
    what the metrics of :mod:`geomtrace.metrics` hold with ``uncertainty=``."""

    groups: int
    max_group_memory: int | None
    shift: Tensor
    feature_sum: Tensor
    second_moment: Tensor
    group_count: Tensor
    group_sum: Tensor
    group_second: Tensor

    @property
    def _who(self) -> str: ...


def materialize_groups(state: GroupedState, d: int) -> None:
    """Zero group moments of dimension ``d`` (after checking the memory cap); kept if already there."""
    if tuple(state.group_sum.shape) == (state.groups, d):
        return
    check_group_memory(state.groups, d, state.max_group_memory, state._who)
    device, f64 = state.second_moment.device, torch.float64
    state.group_count = torch.zeros(state.groups, dtype=f64, device=device)
    state.group_sum = torch.zeros(state.groups, d, dtype=f64, device=device)
    state.group_second = torch.zeros(state.groups, d, d, dtype=f64, device=device)


def update_groups(state: GroupedState, rows: Tensor, first_row: int, index: Tensor | None) -> None:
    """Add a batch's clean rows (already in the totals, whose shift they share) to their groups."""
    d = state.feature_sum.numel()
    if d == 0:
        return
    materialize_groups(state, d)
    if rows.shape[0] == 0:
        return
    device = state.second_moment.device
    rows = rows.to(device)
    gid = group_ids(first_row, rows.shape[0], state.groups, device, index)
    accumulate_groups(state.group_count, state.group_sum, state.group_second, rows, gid, state.shift)


def all_reduce_groups(state: GroupedState, old_shift: Tensor, group: Any = None) -> None:
    """Sum the group moments over ranks around the shift the totals just agreed on.

    Call after :func:`geomtrace._distributed.all_reduce_state` with the rank's shift from
    before it. Every rank enters the same collectives (a rank with no rows sends zeros).
    """
    d = state.feature_sum.numel()  # agreed by all_reduce_state
    if d == 0:
        return
    count, total, second = (t.clone() for t in (state.group_count, state.group_sum, state.group_second))
    if tuple(total.shape) != (state.groups, d) or old_shift.numel() != d:  # a rank with no rows
        f64, device = torch.float64, state.second_moment.device
        count = torch.zeros(state.groups, dtype=f64, device=device)
        total = torch.zeros(state.groups, d, dtype=f64, device=device)
        second = torch.zeros(state.groups, d, d, dtype=f64, device=device)
    else:
        recenter_groups(count, total, second, old_shift, state.shift)
    dist = torch.distributed
    for tensor in (count, total, second):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    state.group_count, state.group_sum, state.group_second = count, total, second


def merge_groups(state: GroupedState, own_shift: Tensor, incoming: dict[str, Any]) -> None:
    """Add the incoming group moments, both sides recentred onto the merged shift.

    Call after :func:`geomtrace.covariance.merge_states` with ``state``'s shift from before it.
    """
    if "group_second" not in incoming:
        raise ValueError("cannot merge: the incoming state has no jackknife groups; give both metrics uncertainty=.")
    inc_count, inc_total, inc_second = (incoming[name] for name in GROUP_STATE_NAMES)
    if inc_count.numel() != state.groups:
        raise ValueError(f"cannot merge jackknife states of {inc_count.numel()} and {state.groups} groups.")
    d = state.feature_sum.numel()
    if d == 0:
        return
    had_groups = tuple(state.group_sum.shape) == (state.groups, d)
    materialize_groups(state, d)
    if had_groups and own_shift.numel() == d:
        recenter_groups(state.group_count, state.group_sum, state.group_second, own_shift, state.shift)
    if tuple(inc_total.shape) != (state.groups, d) or not float(inc_count.sum()):
        return
    device = state.second_moment.device
    count, total, second = (t.to(device).clone() for t in (inc_count, inc_total, inc_second))
    inc_shift = incoming.get("shift")
    if inc_shift is None or inc_shift.numel() != d:
        inc_shift = torch.zeros(d, dtype=torch.float64, device=device)
    recenter_groups(count, total, second, inc_shift.to(device), state.shift)
    state.group_count.add_(count)
    state.group_sum.add_(total)
    state.group_second.add_(second)


# --------------------------------------------------------------------------- estimate
def replicate_moments(moments: Moments, count: Tensor, total: Tensor, second: Tensor) -> Iterator[Moments]:
    """The moments with group ``g`` deleted, for ``g = 0 .. G-1`` (one ``d x d`` at a time)."""
    for g in range(count.numel()):
        yield Moments(
            n=moments.n - float(count[g]),
            shift=moments.shift,
            total=moments.total - total[g],
            second=moments.second - second[g],
            accumulation_dtype=moments.accumulation_dtype,
            input_roundoff=moments.input_roundoff,
        )


def jackknife_se(replicates: Tensor) -> Tensor:
    """``sqrt((G - 1) / G * sum (theta_(g) - mean)^2)``; NaN if any replicate is NaN.

    Its numpy twin for the error of a change on the same probes (the replicate differences) is
    :func:`geomtrace.phases.paired_jackknife_se` (phases stays free of torch)."""
    values = replicates.to(torch.float64)
    groups = values.numel()
    if groups < 2 or not bool(torch.isfinite(values).all()):
        return torch.tensor(math.nan, dtype=torch.float64, device=values.device)
    return torch.sqrt((groups - 1) / groups * ((values - values.mean()) ** 2).sum())


def replicate_values(
    moments: Moments,
    count: Tensor,
    total: Tensor,
    second: Tensor,
    statistic: Callable[[Moments], tuple[float, float]],
) -> tuple[Tensor, Tensor]:
    """``statistic`` (``(rankme, alpha)``, NaN for what is not measured) of each replicate."""
    pairs = [statistic(replicate) for replicate in replicate_moments(moments, count, total, second)]
    device = moments.total.device
    rankme = torch.tensor([p[0] for p in pairs], dtype=torch.float64, device=device)
    alpha = torch.tensor([p[1] for p in pairs], dtype=torch.float64, device=device)
    return rankme, alpha


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (Cornish-Fisher expansion; within ~1e-3 of the exact value for df >= 5)."""
    if not 0.0 < p < 1.0 or df < 1:
        raise ValueError(f"need 0 < p < 1 and df >= 1, got p={p}, df={df}.")
    z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(2.0 * p - 1.0, dtype=torch.float64)).item()
    v = float(df)
    g1 = (z**3 + z) / 4.0
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96.0
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384.0
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160.0
    return z + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4
