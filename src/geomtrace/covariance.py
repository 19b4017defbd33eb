"""Streaming covariance moments: the one accumulation engine. Torch only.

The accumulated quantities are plain sums around a fixed **shift** ``c`` (the first
batch's mean), so batches, processes and ranks combine them by addition once their shifts
agree (see :func:`recenter`):

* ``n``: number of rows,
* ``s = sum (x - c)`` (float64),
* ``S = sum (x - c)(x - c)^T`` (float64).

Per batch (see ``docs/concepts.md``, "Numerics"): ``s_b`` is summed in float64,
``mu_b = s_b / n_b``, ``m`` is ``mu_b`` rounded to the compute dtype, ``M2_b = (X_b - m)^T
(X_b - m)`` is a fast fp32 GEMM accumulated in place into an fp32 buffer (from
:data:`SYMMETRIC_MIN_DIM` on, only its upper block triangle: :func:`add_gram`; the fold
mirrors it), ``delta = mu_b - m`` in float64, and ``S += M2_b + n_b ((mu_b - c)(mu_b - c)^T -
delta delta^T)``; the rank-one terms of up to :data:`FOLD_EVERY` batches are folded at once
as two small fp64 GEMMs. At the end ``C = (S - s s^T / n) / (n - 1)`` in float64: with the shift, ``s / n = mu - c`` is
small and the subtraction cancels nothing (without it, ``S - s s^T / n`` loses every digit
once ``(mean / std)^2`` nears ``1 / eps(fp64)``).

Magnitudes outside ``2**+-20`` are rescaled by an exact power of two before the fp32 GEMM
(its products would underflow below ~1e-19 or overflow above ~1e19); the float64 sums stay
in the features' own units.

The state lives in any object with the attributes of :data:`STATE_NAMES` and
:data:`PENDING_NAMES` (the :class:`CovarianceState` protocol): the torchmetrics metrics
(:mod:`geomtrace.metrics`) hold them as metric states, :class:`CovarianceAccumulator` as plain
tensors. Both run the functions here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = [
    "FOLD_EVERY",
    "PENDING_NAMES",
    "STATE_NAMES",
    "SYMMETRIC_BLOCK",
    "SYMMETRIC_MIN_DIM",
    "CovarianceAccumulator",
    "CovarianceState",
    "Moments",
    "PreparedRows",
    "accumulate",
    "accumulation_dtype",
    "add_gram",
    "column_sum64",
    "covariance_from_moments",
    "default_states",
    "fold",
    "fold_rank_one",
    "merge_states",
    "moments_of",
    "prepare_rows",
    "recenter",
    "symmetric_from_upper",
]

#: Batches whose fp32 M2 and rank-one terms are buffered before one fp64 fold.
FOLD_EVERY: int = 32
#: The accumulated sums (float64), combined across ranks once their shifts agree, and the
#: unit round-off of the coarsest input dtype seen (combined by max).
STATE_NAMES: tuple[str, ...] = ("n_samples", "shift", "feature_sum", "second_moment", "n_dropped", "input_roundoff")
#: The deferred per-batch work, folded into ``second_moment`` before sync, compute or merge.
PENDING_NAMES: tuple[str, ...] = (
    "pending_m2",
    "pending_means",
    "pending_corrections",
    "pending_weights",
    "pending_count",
    "pending_scale",
)

#: From this feature dimension on, the CPU update computes only the upper block triangle of
#: ``X^T X`` (:func:`add_gram`): about half the flops of the full GEMM. Measured
#: (benchmarks/symmetric_update.py, 2-core AMD EPYC, batches of 1024 rows, 2026-12-04, a loaded
#: machine): one thread, blocks of 128 gave 1.12x the full GEMM's throughput at d = 256 (two
#: blocks), 1.48x at 384, 1.36x at 512, 1.56x at 1024; with two threads on the loaded cores
#: d = 384 and 512 lost (0.31-0.96x). Below 384 the gain is small and machine dependent and the
#: GEMM cheap, so d <= 383 keeps the one full GEMM.
SYMMETRIC_MIN_DIM: int = 384
#: Rows per block GEMM (at most half of ``d``, rounded up to 64). Measured as above: one thread,
#: blocks of 128/256/512 gave 1.56/1.51/1.30x at d = 1024 and 1.75/1.71/1.52x at 2048; two threads
#: on an idle machine (load 0.6) 1.44/1.38/1.21x at d = 1024. 128 is the best of the three in
#: every idle or one-thread figure (only two threads on loaded cores, where more and smaller
#: GEMMs wait longer for a descheduled thread, preferred 512).
SYMMETRIC_BLOCK: int = 128

# Features whose largest magnitude lies in [2**-20, 2**20] go into the fp32 GEMM as they are;
# others are scaled by an exact power of two. A window of buffered batches shares one scale;
# a batch whose scaled magnitude would leave [2**-30, 2**30] folds the window first.
_NO_SCALE_BAND = 20
_WINDOW_BAND = 30


class CovarianceState(Protocol):
    """What the engine runs on: the tensors of :data:`STATE_NAMES` and :data:`PENDING_NAMES`.

    Any object with these attributes is a state (the metrics of :mod:`geomtrace.metrics` hold
    them as torchmetrics states, :class:`CovarianceAccumulator` as plain tensors). The
    functions here read them and update them in place or rebind them.
    """

    #: Rows accumulated (float64 scalar).
    n_samples: Tensor
    #: The shift ``c`` the sums are around (float64, ``(d,)``; empty before the first rows).
    shift: Tensor
    #: ``s = sum (x - c)`` (float64, ``(d,)``).
    feature_sum: Tensor
    #: ``S = sum (x - c)(x - c)^T`` (float64, ``(d, d)``), without the pending terms.
    second_moment: Tensor
    #: Rows dropped for NaN/Inf (float64 scalar).
    n_dropped: Tensor
    #: Unit round-off of the coarsest input dtype seen (float64 scalar; combined by max).
    input_roundoff: Tensor
    #: The window's fp32 (or fp64) M2 buffer, ``(d, d)``. Only its upper triangle is meaningful
    #: (:func:`add_gram` may skip the lower one); readers mirror it (:func:`symmetric_from_upper`).
    pending_m2: Tensor
    #: Per-batch ``mu_b - c`` of the window (float64, ``(fold_every, d)``).
    pending_means: Tensor
    #: Per-batch ``delta_b`` of the window (float64, ``(fold_every, d)``).
    pending_corrections: Tensor
    #: Per-batch row counts of the window (float64, ``(fold_every,)``).
    pending_weights: Tensor
    #: Batches in the window (float64 scalar).
    pending_count: Tensor
    #: The window's power-of-two exponent (float64 scalar).
    pending_scale: Tensor


def default_states(device: torch.device | str | None = None) -> dict[str, Tensor]:
    """The empty state (``d`` unknown until the first update): name -> tensor."""
    f64 = torch.float64
    return {
        "n_samples": torch.zeros((), dtype=f64, device=device),
        "shift": torch.zeros(0, dtype=f64, device=device),
        "feature_sum": torch.zeros(0, dtype=f64, device=device),
        "second_moment": torch.zeros(0, 0, dtype=f64, device=device),
        "n_dropped": torch.zeros((), dtype=f64, device=device),
        "input_roundoff": torch.zeros((), dtype=f64, device=device),
        "pending_m2": torch.zeros(0, 0, dtype=torch.float32, device=device),
        "pending_means": torch.zeros(0, 0, dtype=f64, device=device),
        "pending_corrections": torch.zeros(0, 0, dtype=f64, device=device),
        "pending_weights": torch.zeros(0, dtype=f64, device=device),
        "pending_count": torch.zeros((), dtype=f64, device=device),
        "pending_scale": torch.zeros((), dtype=f64, device=device),
    }


# --------------------------------------------------------------------------- input
@dataclass(frozen=True)
class PreparedRows:
    """Rows ready to accumulate: finite, 2-D, in the compute dtype (fp32 or fp64)."""

    rows: Tensor
    n_dropped: int
    #: float64 column sums of ``rows`` (computed anyway for the finiteness check).
    batch_sum: Tensor | None = None
    #: The feature dimension ``d`` (known even when every row was dropped).
    dim: int = 0
    #: The dtype the features arrived in (bf16 features carry bf16 quantization).
    input_dtype: torch.dtype = torch.float32


def _check_mask(mask: Any, features: Tensor) -> Tensor:
    """A boolean row mask of shape ``features.shape[:-1]`` (0/1 integer or float masks accepted)."""
    expected = tuple(features.shape[:-1])
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"mask must be a torch.Tensor of booleans with shape {expected} (True keeps a row), got "
            f"{type(mask).__name__}. Convert it with torch.as_tensor(mask, dtype=torch.bool)."
        )
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask must have shape features.shape[:-1] = {expected}, got {tuple(mask.shape)}.")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise TypeError(f"mask must be boolean (or 0/1 like an attention mask), got dtype {mask.dtype}.")
    if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
        bad = mask[(mask != 0) & (mask != 1)].flatten()[:3].tolist()
        raise ValueError(
            f"mask must be boolean, or 0/1 like an attention mask; got {mask.dtype} values such as {bad}. "
            "Threshold it yourself (e.g. mask > 0.5) so that it is clear which rows are kept."
        )
    return mask != 0


def prepare_rows(features: Tensor, mask: Tensor | None = None, *, expected_dim: int | None = None) -> PreparedRows:
    """Validate, flatten, mask and clean a batch of features.

    Args:
        features: ``(N, d)`` or ``(..., d)`` floating point tensor (any float dtype; bf16 and
            fp16 are upcast to fp32, fp64 stays fp64).
        mask: optional tensor of shape ``features.shape[:-1]``, boolean or 0/1 (an attention
            mask); ``True``/1 keeps a row (e.g. to skip padding).
        expected_dim: the feature dimension seen so far, to reject a changing ``d``.

    Returns:
        The kept rows and how many rows were dropped for containing NaN or Inf.
    """
    if not isinstance(features, Tensor):
        raise TypeError(
            f"features must be a torch.Tensor, got {type(features).__name__}. "
            "Pass the hidden states as a tensor of shape (N, d) or (..., d)."
        )
    if not features.is_floating_point():
        raise TypeError(
            f"features must be a floating point tensor (hidden states), got dtype {features.dtype}. "
            "Integer inputs such as token ids are not features: pass the model's hidden states."
        )
    if features.device.type == "meta":
        raise ValueError(
            "features are on the meta device (shapes without data, e.g. a model built under "
            "torch.device('meta') or init_empty_weights): load real weights before measuring."
        )
    if features.ndim < 1:
        raise ValueError("features must have at least one dimension (the feature dimension d).")
    d = features.shape[-1]
    if d == 0:
        raise ValueError(f"features have a zero-sized feature dimension (shape {tuple(features.shape)}).")
    if expected_dim is not None and d != expected_dim:
        raise ValueError(
            f"feature dimension changed from {expected_dim} to {d}. A metric accumulates one "
            "covariance: use one metric per layer/model, or call reset() before switching."
        )
    rows = features.detach().reshape(-1, d)
    if mask is not None:
        keep = _check_mask(mask, features)
        rows = rows[keep.reshape(-1).to(device=rows.device)]
    input_dtype = rows.dtype
    compute_dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
    rows = rows.to(compute_dtype)
    # The float64 column sums are needed anyway; they are finite exactly when every row is
    # (barring an fp64 overflow of the sum itself, handled by the per-row scan), so the scan
    # only runs for a batch that does contain NaN/Inf.
    batch_sum = column_sum64(rows)
    if bool(torch.isfinite(batch_sum).all()):
        return PreparedRows(rows, 0, batch_sum, d, input_dtype)
    finite = torch.isfinite(rows).all(dim=1)
    n_dropped = int(rows.shape[0] - finite.sum().item())
    rows = rows[finite]
    return PreparedRows(rows, n_dropped, column_sum64(rows), d, input_dtype)


#: Rows summed per group by :func:`column_sum64` before the groups are summed.
_SUM_GROUP = 16


def column_sum64(rows: Tensor) -> Tensor:
    """``rows.sum(0)`` accumulated in float64 (``torch.sum(rows, 0, dtype=torch.float64)``).

    Summed as groups of :data:`_SUM_GROUP` consecutive rows, then the group sums, both in
    float64: the same precision, in another order, and about 20 % less time on CPU than the
    one column reduction (benchmarks/symmetric_update.py --part p), which converts the whole
    batch to fp64 first.
    """
    n, d = rows.shape
    head = n - n % _SUM_GROUP
    if head < 4 * _SUM_GROUP:
        return torch.sum(rows, dim=0, dtype=torch.float64)
    total = torch.sum(rows[:head].reshape(-1, _SUM_GROUP, d), dim=1, dtype=torch.float64).sum(0)
    if head < n:
        total += torch.sum(rows[head:], dim=0, dtype=torch.float64)
    return total


# ----------------------------------------------------------------------- the engine
def materialize(
    state: CovarianceState, d: int, dtype: torch.dtype, device: torch.device, fold_every: int = FOLD_EVERY
) -> None:
    """Give an empty state its dimension ``d`` (zeros; the shift is set by the first rows)."""
    f64 = torch.float64
    state.n_samples = torch.zeros((), dtype=f64, device=device)
    state.shift = torch.zeros(d, dtype=f64, device=device)
    state.feature_sum = torch.zeros(d, dtype=f64, device=device)
    state.second_moment = torch.zeros(d, d, dtype=f64, device=device)
    state.n_dropped = state.n_dropped.to(device)
    state.input_roundoff = state.input_roundoff.to(device)
    materialize_pending(state, dtype, fold_every)


def materialize_pending(state: CovarianceState, dtype: torch.dtype, fold_every: int = FOLD_EVERY) -> None:
    """Allocate the deferred-work buffers (after materialize, or on a state restored by a sync)."""
    d, device, f64 = state.feature_sum.numel(), state.feature_sum.device, torch.float64
    state.pending_m2 = torch.zeros(d, d, dtype=dtype, device=device)
    state.pending_means = torch.zeros(fold_every, d, dtype=f64, device=device)
    state.pending_corrections = torch.zeros(fold_every, d, dtype=f64, device=device)
    state.pending_weights = torch.zeros(fold_every, dtype=f64, device=device)
    state.pending_count = torch.zeros((), dtype=f64, device=device)
    state.pending_scale = torch.zeros((), dtype=f64, device=device)


def _scale_exponent(amax: float) -> int:
    """Power of two that brings ``amax`` into [0.5, 1); 0 when it is already in the safe band."""
    if amax == 0.0 or 2.0**-_NO_SCALE_BAND <= amax <= 2.0**_NO_SCALE_BAND:
        return 0
    return -math.frexp(amax)[1]


def _times_power_of_two(values: Tensor, exponent: int) -> Tensor:
    """``values * 2**exponent``, exact; in steps, because 2**130 itself is not an fp32 number."""
    while exponent:
        step = max(-100, min(100, exponent))
        values = values * 2.0**step
        exponent -= step
    return values


def _fits_window(amax: float, exponent: int) -> bool:
    return amax == 0.0 or 2.0**-_WINDOW_BAND <= math.ldexp(amax, exponent) <= 2.0**_WINDOW_BAND


def accumulate(state: CovarianceState, prepared: PreparedRows, fold_every: int = FOLD_EVERY) -> None:
    """Add one batch of clean rows into ``state`` (in place: compute-group members share it).

    The dimension is fixed by the first batch, even one whose rows were all dropped.
    """
    rows = prepared.rows
    device = state.second_moment.device
    if state.feature_sum.numel() == 0:
        materialize(state, prepared.dim or rows.shape[1], rows.dtype, device, fold_every)
    elif state.pending_means.numel() == 0:  # states restored by a sync on a rank that had no rows
        materialize_pending(state, rows.dtype, fold_every)
    n_b = rows.shape[0]
    if n_b == 0:
        return
    state.input_roundoff.clamp_(min=torch.finfo(prepared.input_dtype).eps / 2.0)
    f64 = torch.float64
    batch_sum = prepared.batch_sum
    if rows.dtype == torch.float64 and state.pending_m2.dtype != torch.float64:
        # Accumulate in the widest dtype seen: fp64 rows after fp32 ones must not be rounded to
        # fp32 (issue 15, item 3). The fp32 window so far is folded first; later fp32 rows are
        # upcast exactly. The round-off rules read the coarsest input, not this buffer's dtype.
        fold(state)
        state.pending_m2 = torch.zeros_like(state.pending_m2, dtype=torch.float64)
    if rows.dtype != state.pending_m2.dtype or rows.device != device or batch_sum is None:
        # the mean must be that of the very rows that enter the GEMM
        rows = rows.to(device=device, dtype=state.pending_m2.dtype)
        batch_sum = column_sum64(rows)
    # Never under autocast: the matmul must stay in fp32 (or fp64).
    with torch.autocast(device_type=device.type, enabled=False):
        mean = batch_sum / n_b
        low, high = torch.aminmax(rows)
        # One host sync for every scalar the update branches on.
        seen, slot, window, amax = torch.stack(
            [state.n_samples, state.pending_count, state.pending_scale, torch.maximum(high, -low).to(f64)]
        ).tolist()
        slot, window = int(slot), int(window)
        if seen == 0:  # the first rows fix the shift (nothing to recentre yet)
            state.shift.copy_(mean)
        if slot and not _fits_window(amax, window):
            fold(state)
            slot = 0
        if slot == 0:
            window = _scale_exponent(amax)
            state.pending_scale.fill_(window)
        exponent = window
        scaled_mean = mean * 2.0**exponent if exponent else mean  # exact: a power of two
        rounded_mean = scaled_mean.to(rows.dtype)
        centered = _times_power_of_two(rows, exponent) if exponent else rows
        centered = centered - rounded_mean
        add_gram(state.pending_m2, centered)
        correction = torch.sub(scaled_mean, rounded_mean, out=state.pending_corrections[slot])
        if exponent:
            correction.mul_(2.0**-exponent)
    deviation = torch.sub(mean, state.shift, out=state.pending_means[slot])
    state.n_samples += n_b
    state.feature_sum.add_(deviation, alpha=n_b)
    state.pending_weights[slot] = n_b
    state.pending_count += 1
    if slot + 1 >= state.pending_means.shape[0]:
        fold(state)


def add_gram(out: Tensor, rows: Tensor, block: int | None = None) -> None:
    """``out += rows^T rows`` on (at least) the upper triangle of ``out``, in place.

    ``X^T X`` is symmetric, so from :data:`SYMMETRIC_MIN_DIM` columns on (on CPU) only the
    upper block triangle is computed: one GEMM per block row of ``block`` rows (default
    :data:`SYMMETRIC_BLOCK`, at most half of ``d`` rounded up to 64),
    ``out[i:j, i:] += rows[:, i:j]^T rows[:, i:]``, about
    ``(1 + block / d) / 2`` of the full GEMM's flops. What lies below the diagonal blocks is
    then left untouched: read ``out`` through :func:`symmetric_from_upper` (as :func:`fold`
    does). Smaller ``d`` (and other devices, not measured yet) take the one full GEMM, whose
    upper triangle is the same sum.
    """
    d = rows.shape[1]
    if block is None:
        if d < SYMMETRIC_MIN_DIM or rows.device.type != "cpu":
            out.addmm_(rows.T, rows)
            return
        block = min(SYMMETRIC_BLOCK, 64 * math.ceil(d / 128))  # at least two block rows
    for start in range(0, d, block):
        stop = min(start + block, d)
        out[start:stop, start:].addmm_(rows[:, start:stop].T, rows[:, start:])


def symmetric_from_upper(upper: Tensor) -> Tensor:
    """A new full symmetric matrix from the upper triangle of ``upper`` (the lower is ignored)."""
    full = upper.triu()
    return full.add_(upper.triu(1).T)


def fold_rank_one(second: Tensor, means: Tensor, corrections: Tensor, weights: Tensor) -> None:
    """``second += sum_b w_b (m_b m_b^T - delta_b delta_b^T)`` in place, as two small fp64 GEMMs.

    With ``m_b = mu_b - c`` this turns the sums of centred M2 into ``sum (x - c)(x - c)^T``;
    stacking many batches makes it one matmul instead of two ``d^2`` passes per batch.
    """
    if means.shape[0] == 0:
        return
    second.addmm_(means.T * weights, means)
    second.addmm_(corrections.T * weights, corrections, alpha=-1.0)


def fold(state: CovarianceState) -> None:
    """Move the deferred per-batch terms into ``second_moment``, in place."""
    count = int(state.pending_count)
    if count == 0:
        return
    exponent = int(state.pending_scale)
    # The buffer holds the upper triangle (add_gram): mirror it once here, in place (the buffer
    # is zeroed below), adding the upper triangle and then the strict upper one transposed.
    upper = state.pending_m2.triu_()
    if abs(exponent) < 500:
        scale = 2.0 ** (-2 * exponent)  # exact rescale
    else:  # fp64 features beyond ~1e150: the true sums overflow (reported at compute)
        upper = _times_power_of_two(upper.to(torch.float64), -2 * exponent)
        scale = 1.0
    state.second_moment.add_(upper, alpha=scale)
    upper.diagonal().zero_()
    state.second_moment.add_(upper.T, alpha=scale)
    fold_rank_one(
        state.second_moment,
        state.pending_means[:count],
        state.pending_corrections[:count],
        state.pending_weights[:count],
    )
    for name in PENDING_NAMES:
        getattr(state, name).zero_()


def recenter(n: Tensor | float, shift: Tensor, total: Tensor, second: Tensor, new_shift: Tensor) -> None:
    """Move sums around ``shift`` to sums around ``new_shift``, in place (``shift`` too).

    ``sum (x - c')(x - c')^T = S + s d^T + d s^T + n d d^T`` and ``sum (x - c') = s + n d``
    with ``d = c - c'``: exact algebra, and accurate in fp64 while both shifts lie within a
    few thousand standard deviations of the data.
    """
    delta = shift - new_shift
    if not bool(torch.any(delta != 0)):
        return
    count = float(n)
    second.add_(torch.outer(total, delta)).add_(torch.outer(delta, total)).add_(torch.outer(delta, delta), alpha=count)
    total.add_(delta, alpha=count)
    shift.copy_(new_shift)


def merge_states(state: CovarianceState, incoming: Mapping[str, Tensor], fold_every: int = FOLD_EVERY) -> None:
    """Add another state's sums (a mapping of :data:`STATE_NAMES` + :data:`PENDING_NAMES`) into ``state``.

    Each side's deferred terms are folded first; the merged sums keep the shift of the side
    with more rows (the other side is recentred onto it). ``incoming`` is not modified.
    """
    missing = [name for name in ("n_samples", "feature_sum", "second_moment", "n_dropped") if name not in incoming]
    if missing:
        raise ValueError(
            f"cannot merge: the incoming state lacks {missing}; pass a metric of the same class or its state."
        )
    dropped = incoming["n_dropped"].to(state.n_dropped.device)
    roundoff = incoming.get("input_roundoff")
    if roundoff is not None:
        state.input_roundoff = torch.maximum(state.input_roundoff, roundoff.to(state.input_roundoff.device))
    d = incoming["feature_sum"].numel()
    if d == 0:
        state.n_dropped = state.n_dropped + dropped
        return
    device = state.second_moment.device
    if state.feature_sum.numel() == 0:
        materialize(state, d, incoming["pending_m2"].dtype, device, fold_every)
    elif state.feature_sum.numel() != d:
        raise ValueError(f"cannot merge a state of dimension {d} into one of dimension {state.feature_sum.numel()}.")
    fold(state)
    other = _Folded(incoming, device)
    if float(other.n_samples) == 0:
        state.n_dropped = state.n_dropped + dropped
        return
    if float(state.n_samples) == 0:
        state.shift.copy_(other.shift)
    elif float(other.n_samples) > float(state.n_samples):
        recenter(state.n_samples, state.shift, state.feature_sum, state.second_moment, other.shift)
    else:
        recenter(other.n_samples, other.shift, other.feature_sum, other.second_moment, state.shift)
    state.n_samples += other.n_samples
    state.feature_sum.add_(other.feature_sum)
    state.second_moment.add_(other.second_moment)
    state.n_dropped = state.n_dropped + dropped


class _Folded:
    """A folded copy of an incoming state's sums, on ``device`` (the incoming tensors stay untouched)."""

    n_samples: Tensor
    shift: Tensor
    feature_sum: Tensor
    second_moment: Tensor
    n_dropped: Tensor
    input_roundoff: Tensor
    pending_m2: Tensor
    pending_means: Tensor
    pending_corrections: Tensor
    pending_weights: Tensor
    pending_count: Tensor
    pending_scale: Tensor

    def __init__(self, incoming: Mapping[str, Tensor], device: torch.device) -> None:
        d = incoming["feature_sum"].numel()
        copy = {name: value.to(device).clone() for name, value in incoming.items() if isinstance(value, Tensor)}
        # States saved before the shift and the window scale existed: sums around 0, unscaled.
        if copy.get("shift") is None or copy["shift"].numel() != d:
            copy["shift"] = torch.zeros(d, dtype=torch.float64, device=device)
        for name in ("pending_scale", "input_roundoff"):
            copy.setdefault(name, torch.zeros((), dtype=torch.float64, device=device))
        for name in STATE_NAMES + PENDING_NAMES:
            setattr(self, name, copy[name])
        if self.pending_means.numel() and int(self.pending_count):
            fold(self)


# ---------------------------------------------------------------------- the result
@dataclass(frozen=True)
class Moments:
    """Folded float64 sums around ``shift``: everything a spectrum is computed from."""

    n: float
    shift: Tensor
    total: Tensor
    second: Tensor
    #: The dtype the Gram matrix was accumulated in (fp32 unless every input was fp64).
    accumulation_dtype: torch.dtype = torch.float32
    n_dropped: int = 0
    #: Unit round-off of the coarsest input dtype (0 when unknown).
    input_roundoff: float = 0.0

    @property
    def dim(self) -> int:
        return self.total.numel()

    def covariance(self) -> Tensor:
        """The unbiased float64 covariance (shift-invariant)."""
        return covariance_from_moments(self.n, self.total, self.second)

    def mean(self) -> Tensor:
        return self.shift + self.total / self.n

    def gram(self) -> Tensor:
        """``sum x x^T`` (uncentred), for the singular-value RankMe."""
        c, s = self.shift, self.total
        return self.second + torch.outer(s, c) + torch.outer(c, s) + self.n * torch.outer(c, c)


def moments_of(state: CovarianceState) -> Moments:
    """Fold ``state`` and return its :class:`Moments` (the tensors are the state's own)."""
    if state.feature_sum.numel() and state.pending_means.numel():
        fold(state)
    return Moments(
        n=float(state.n_samples),
        shift=state.shift,
        total=state.feature_sum,
        second=state.second_moment,
        accumulation_dtype=accumulation_dtype(float(state.input_roundoff)),
        n_dropped=int(state.n_dropped),
        input_roundoff=float(state.input_roundoff),
    )


def accumulation_dtype(input_roundoff: float) -> torch.dtype:
    """The dtype whose round-off the Gram matrix carries: float64 only when every input was
    float64 (coarser inputs go through the fp32 GEMM). Derived from ``input_roundoff``, a state
    every rank agrees on after a sync, rather than from a rank's own buffer dtype."""
    if 0.0 < input_roundoff <= torch.finfo(torch.float64).eps / 2.0:
        return torch.float64
    return torch.float32


def covariance_from_moments(n: Tensor | float, total: Tensor, second: Tensor) -> Tensor:
    """Unbiased covariance ``(S - s s^T / n) / (n - 1)`` in float64, symmetrised."""
    count = float(n)
    if count < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {count:g}.")
    total = total.to(torch.float64)
    cov = (second.to(torch.float64) - torch.outer(total, total) / count) / (count - 1.0)
    return (cov + cov.T) * 0.5


# ------------------------------------------------------------- framework-free view
class CovarianceAccumulator:
    """Framework-free streaming covariance: ``update``, ``merge``, ``all_reduce``, ``covariance``.

    A thin holder of the same state the torchmetrics metrics keep, run by the same
    functions (:func:`accumulate`, :func:`fold`, :func:`merge_states`), for code that wants
    the moments without torchmetrics. It is a :class:`CovarianceState`.
    """

    n_samples: Tensor
    shift: Tensor
    feature_sum: Tensor
    second_moment: Tensor
    n_dropped: Tensor
    input_roundoff: Tensor
    pending_m2: Tensor
    pending_means: Tensor
    pending_corrections: Tensor
    pending_weights: Tensor
    pending_count: Tensor
    pending_scale: Tensor

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        for name, value in default_states(self.device).items():
            setattr(self, name, value)

    @property
    def dim(self) -> int | None:
        """The feature dimension, or None before the first update."""
        return self.feature_sum.numel() or None

    @property
    def n(self) -> Tensor:
        """Number of rows accumulated (float64 scalar)."""
        return self.n_samples

    def update(self, features: Tensor, mask: Tensor | None = None) -> int:
        """Accumulate a batch; returns the number of rows dropped for NaN/Inf."""
        prepared = prepare_rows(features, mask, expected_dim=self.dim)
        if self.device is None and self.feature_sum.numel() == 0:
            for name in STATE_NAMES + PENDING_NAMES:
                setattr(self, name, getattr(self, name).to(prepared.rows.device))
        accumulate(self, prepared)
        self.n_dropped += prepared.n_dropped
        return prepared.n_dropped

    def state(self) -> dict[str, Tensor]:
        """The state tensors by name; ``pending_m2`` as a full symmetric copy (see :func:`add_gram`)."""
        out = {name: getattr(self, name) for name in STATE_NAMES + PENDING_NAMES}
        out["pending_m2"] = symmetric_from_upper(self.pending_m2)
        return out

    def merge(self, other: CovarianceAccumulator) -> CovarianceAccumulator:
        """Add another accumulator's sums into this one (in place) and return self."""
        merge_states(self, other.state())
        return self

    def all_reduce(self, group: Any = None) -> None:
        """Sum the moments over all ranks in place. Every rank must call it, also with no rows."""
        from geomtrace._distributed import all_reduce_state

        all_reduce_state(self, group)

    def moments(self) -> Moments:
        """The folded sums (see :class:`Moments`)."""
        return moments_of(self)

    def covariance(self) -> Tensor:
        """The float64 covariance of everything accumulated."""
        if self.feature_sum.numel() == 0:
            raise ValueError("no features were accumulated yet.")
        return self.moments().covariance()
