"""Streaming covariance moments: update, merge, finalize. Torch only.

The accumulated quantities are three plain sums, so batches, processes and ranks combine
them by addition (``all_reduce(SUM)``):

* ``n``: number of rows,
* ``s = sum x`` (float64),
* ``S = sum x x^T`` (float64), built per batch without ever forming ``x x^T`` in low
  precision around a large mean.

Per batch (see ``docs/concepts.md``, "Numerics"): ``s_b`` is summed in float64,
``mu_b = s_b / n_b``, ``m`` is ``mu_b`` rounded to the compute dtype, ``M2_b = (X_b - m)^T
(X_b - m)`` is a fast fp32 matmul (the subtraction is exact enough because ``m`` is close to
every row's mean), ``delta = mu_b - m`` in float64 and ``S += M2_b + n_b (mu_b mu_b^T -
delta delta^T)``. At the end ``C = (S - s s^T / n) / (n - 1)`` in float64. Raw fp32
``sum x x^T - n mu mu^T`` loses every digit when LLM activations carry large means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CovarianceAccumulator",
    "PreparedRows",
    "accumulate_rows",
    "batch_moments",
    "covariance_from_moments",
    "fold_rank_one",
    "prepare_rows",
]


@dataclass(frozen=True)
class PreparedRows:
    """Rows ready to accumulate: finite, 2-D, in the compute dtype (fp32 or fp64)."""

    rows: Tensor
    n_dropped: int
    #: float64 column sums of ``rows`` (computed anyway for the finiteness check).
    batch_sum: Tensor | None = None


def prepare_rows(features: Tensor, mask: Tensor | None = None, *, expected_dim: int | None = None) -> PreparedRows:
    """Validate, flatten, mask and clean a batch of features.

    Args:
        features: ``(N, d)`` or ``(..., d)`` floating point tensor (any float dtype; bf16 and
            fp16 are upcast to fp32, fp64 stays fp64).
        mask: optional boolean tensor of shape ``features.shape[:-1]``; ``True`` keeps a row
            (e.g. an attention mask to skip padding).
        expected_dim: the feature dimension seen so far, to reject a changing ``d``.

    Returns:
        The kept rows and how many rows were dropped for containing NaN or Inf.
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}.")
    if not features.is_floating_point():
        raise TypeError(
            f"features must be a floating point tensor (hidden states), got dtype {features.dtype}. "
            "Integer inputs such as token ids are not features: pass the model's hidden states."
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
    rows = features.reshape(-1, d)
    if mask is not None:
        if mask.shape != features.shape[:-1]:
            raise ValueError(
                f"mask must have shape features.shape[:-1] = {tuple(features.shape[:-1])}, got {tuple(mask.shape)}."
            )
        rows = rows[mask.reshape(-1).to(device=rows.device, dtype=torch.bool)]
    compute_dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
    rows = rows.to(compute_dtype)
    # The float64 column sums are needed anyway; they are finite exactly when every row is,
    # so the per-row scan only runs for a batch that does contain NaN/Inf.
    batch_sum = torch.sum(rows, dim=0, dtype=torch.float64)
    if bool(torch.isfinite(batch_sum).all()):
        return PreparedRows(rows, 0, batch_sum)
    finite = torch.isfinite(rows).all(dim=1)
    n_dropped = int(rows.shape[0] - finite.sum().item())
    rows = rows[finite]
    return PreparedRows(rows, n_dropped, torch.sum(rows, dim=0, dtype=torch.float64))


def batch_moments(
    rows: Tensor, m2_out: Tensor | None = None, batch_sum: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-batch pieces: ``(batch_sum, mean, correction, m2)``.

    ``batch_sum`` and ``mean`` are float64, ``correction = mean - fp32(mean)`` (float64) and
    ``m2 = (X - fp32(mean))^T (X - fp32(mean))`` in the rows' dtype. With ``m2_out`` the
    matmul accumulates into it in place (``m2_out += ...``, fused into the GEMM) and it is
    returned as ``m2``. ``batch_sum`` may be passed when already known.
    """
    n_b = rows.shape[0]
    # Never under autocast: the matmul must stay in fp32 (or fp64).
    with torch.autocast(device_type=rows.device.type, enabled=False):
        if batch_sum is None:
            batch_sum = torch.sum(rows, dim=0, dtype=torch.float64)
        mean = batch_sum / n_b
        rounded_mean = mean.to(rows.dtype)
        centered = rows - rounded_mean
        if m2_out is None:
            m2 = centered.T @ centered
        else:
            m2 = m2_out.addmm_(centered.T, centered.to(m2_out.dtype) if centered.dtype != m2_out.dtype else centered)
        correction = mean - rounded_mean.to(torch.float64)
    return batch_sum, mean, correction, m2


def fold_rank_one(second: Tensor, means: Tensor, corrections: Tensor, weights: Tensor) -> None:
    """``second += sum_b w_b (mu_b mu_b^T - delta_b delta_b^T)`` in place, as two small fp64 GEMMs.

    Adding ``n_b (mu_b mu_b^T - delta_b delta_b^T)`` to the sum around the rounded mean
    turns it into ``sum x x^T``; stacking many batches makes it one matmul instead of two
    ``d^2`` passes per batch.
    """
    if means.shape[0] == 0:
        return
    second.addmm_(means.T * weights, means)
    second.addmm_(corrections.T * weights, corrections, alpha=-1.0)


def accumulate_rows(
    rows: Tensor, n: Tensor, total: Tensor, second: Tensor, batch_sum: Tensor | None = None
) -> None:
    """Add one batch of clean rows into the float64 sums ``n``, ``total``, ``second`` in place."""
    n_b = rows.shape[0]
    if n_b == 0:
        return
    batch_sum, mean, correction, m2 = batch_moments(rows, batch_sum=batch_sum)
    n.add_(n_b)
    total.add_(batch_sum)
    second.add_(m2)
    weight = torch.tensor([float(n_b)], dtype=torch.float64, device=second.device)
    fold_rank_one(second, mean[None], correction[None], weight)


def covariance_from_moments(n: Tensor | float, total: Tensor, second: Tensor) -> Tensor:
    """Unbiased covariance ``(S - s s^T / n) / (n - 1)`` in float64, symmetrised."""
    count = float(n)
    if count < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {count:g}.")
    total = total.to(torch.float64)
    cov = (second.to(torch.float64) - torch.outer(total, total) / count) / (count - 1.0)
    return (cov + cov.T) * 0.5


class CovarianceAccumulator:
    """Framework-free streaming covariance: ``update``, ``merge``, ``all_reduce``, ``covariance``.

    The torchmetrics metrics in :mod:`geomtrace.metrics` hold the same three sums as
    metric states; this class is for code that wants the moments without torchmetrics.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.n = torch.zeros((), dtype=torch.float64, device=self.device)
        self.total: Tensor | None = None
        self.second: Tensor | None = None
        self.n_dropped = 0

    @property
    def dim(self) -> int | None:
        """The feature dimension, or None before the first update."""
        return None if self.total is None else self.total.numel()

    def _ensure(self, d: int, device: torch.device) -> None:
        if self.total is None:
            self.n = self.n.to(device)
            self.total = torch.zeros(d, dtype=torch.float64, device=device)
            self.second = torch.zeros(d, d, dtype=torch.float64, device=device)

    def update(self, features: Tensor, mask: Tensor | None = None) -> int:
        """Accumulate a batch; returns the number of rows dropped for NaN/Inf."""
        prepared = prepare_rows(features, mask, expected_dim=self.dim)
        rows = prepared.rows
        if self.device is not None:
            rows = rows.to(self.device)
        self._ensure(rows.shape[1], rows.device)
        assert self.total is not None and self.second is not None
        batch_sum = prepared.batch_sum.to(rows.device) if prepared.batch_sum is not None else None
        accumulate_rows(rows, self.n, self.total, self.second, batch_sum)
        self.n_dropped += prepared.n_dropped
        return prepared.n_dropped

    def merge(self, other: CovarianceAccumulator) -> CovarianceAccumulator:
        """Add another accumulator's sums into this one (in place) and return self."""
        if other.total is None:
            return self
        assert other.second is not None
        if self.total is not None and self.total.numel() != other.total.numel():
            raise ValueError(f"cannot merge covariances of dimension {self.dim} and {other.dim}.")
        self._ensure(other.total.numel(), other.total.device)
        assert self.total is not None and self.second is not None
        self.n.add_(other.n.to(self.n.device))
        self.total.add_(other.total.to(self.total.device))
        self.second.add_(other.second.to(self.second.device))
        self.n_dropped += other.n_dropped
        return self

    def all_reduce(self, group=None) -> None:  # noqa: ANN001 - torch ProcessGroup
        """Sum the moments over all ranks in place. Every rank must call it, also with no rows."""
        from geomtrace._distributed import all_reduce_moments

        self.n, self.total, self.second = all_reduce_moments(self.n, self.total, self.second, group=group)

    def covariance(self) -> Tensor:
        """The float64 covariance of everything accumulated."""
        if self.total is None or self.second is None:
            raise ValueError("no features were accumulated yet.")
        return covariance_from_moments(self.n, self.total, self.second)
