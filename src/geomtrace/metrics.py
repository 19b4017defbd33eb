"""torchmetrics metrics RankMe, AlphaReQ and EigenSpectrum over one shared covariance state.

All three hold the same states (``n_samples``, ``feature_sum``, ``second_moment``,
``n_dropped``: plain sums, see :mod:`geomtrace.covariance`), so a ``MetricCollection``
of them forms one compute group and accumulates the covariance once. Across processes
the states are summed by an in-place ``all_reduce(SUM)`` instead of torchmetrics'
all-gather, so the memory per rank during sync stays about ``d^2``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from geomtrace import functional as F
from geomtrace._distributed import all_reduce_moments
from geomtrace._warnings import warn
from geomtrace.covariance import batch_moments, covariance_from_moments, fold_rank_one, prepare_rows

__all__ = ["AlphaReQ", "EigenSpectrum", "RankMe", "Spectrum"]

Spectrum = Literal["covariance", "singular"]
_STATES = ("n_samples", "feature_sum", "second_moment", "n_dropped")
_PENDING = ("pending_m2", "pending_means", "pending_corrections", "pending_weights", "pending_count")


class _CovarianceMetric(Metric):
    """Base: the streaming covariance states, their update, sync and spectrum."""

    is_differentiable = False
    # Neither a higher nor a lower effective rank is "better" in general: it depends on
    # the training phase (see docs/concepts.md).
    higher_is_better: bool | None = None
    full_state_update = False

    n_samples: Tensor
    feature_sum: Tensor
    second_moment: Tensor
    n_dropped: Tensor
    pending_m2: Tensor
    pending_means: Tensor
    pending_corrections: Tensor
    pending_weights: Tensor
    pending_count: Tensor

    #: Batches whose rank-one corrections and fp32 M2 are buffered before one fp64 fold.
    fold_every: int = 32

    def __init__(
        self,
        *,
        spectrum: Spectrum = "covariance",
        max_components: int | None = None,
        strict: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if spectrum not in ("covariance", "singular"):
            raise ValueError(f"spectrum must be 'covariance' or 'singular', got {spectrum!r}.")
        if max_components is not None and (not isinstance(max_components, int) or max_components < 1):
            raise ValueError(f"max_components must be a positive int or None, got {max_components!r}.")
        self.spectrum = spectrum
        self.max_components = max_components
        self.strict = strict
        self._warned: set[str] = set()
        # The dimension d is unknown until the first update: states start empty and are
        # materialised then (reset() restores the empty defaults).
        f64 = torch.float64
        self.add_state("n_samples", torch.zeros((), dtype=f64), dist_reduce_fx="sum", persistent=True)
        self.add_state("feature_sum", torch.zeros(0, dtype=f64), dist_reduce_fx="sum", persistent=True)
        self.add_state("second_moment", torch.zeros(0, 0, dtype=f64), dist_reduce_fx="sum", persistent=True)
        self.add_state("n_dropped", torch.zeros((), dtype=f64), dist_reduce_fx="sum", persistent=True)
        # Deferred per-batch work (folded into second_moment every `fold_every` batches and
        # before sync/compute): the fp32 sum of centered M2 (accumulated inside the GEMM) and
        # the batch means/corrections whose rank-one terms become one fp64 matmul. They are
        # states so that compute groups share them and state_dict() captures them exactly.
        self.add_state("pending_m2", torch.zeros(0, 0), dist_reduce_fx="sum", persistent=True)
        self.add_state("pending_means", torch.zeros(0, 0, dtype=f64), dist_reduce_fx="sum", persistent=True)
        self.add_state("pending_corrections", torch.zeros(0, 0, dtype=f64), dist_reduce_fx="sum", persistent=True)
        self.add_state("pending_weights", torch.zeros(0, dtype=f64), dist_reduce_fx="sum", persistent=True)
        self.add_state("pending_count", torch.zeros((), dtype=f64), dist_reduce_fx="sum", persistent=True)

    # ------------------------------------------------------------------ update
    @property
    def dim(self) -> int | None:
        """Feature dimension ``d``, or None before the first update."""
        return self.feature_sum.numel() or None

    def update(self, features: Tensor, mask: Tensor | None = None) -> None:
        """Accumulate a batch of features.

        Args:
            features: ``(N, d)`` or ``(..., d)`` floating point tensor of any float dtype.
            mask: optional boolean tensor of shape ``features.shape[:-1]``; False rows are
                skipped (padding).
        """
        prepared = prepare_rows(features, mask, expected_dim=self.dim)
        if prepared.n_dropped:
            self._on_dropped_rows(prepared.n_dropped)
        rows = prepared.rows.to(self.second_moment.device)
        if rows.shape[0] == 0:
            return
        if self.dim is None:
            self._materialize(rows.shape[1], rows.dtype, rows.device)
        elif self.pending_means.numel() == 0:  # states restored by a sync on a rank that had no rows
            self._materialize_pending(rows.dtype)
        slot = int(self.pending_count)
        known_sum = prepared.batch_sum.to(rows.device) if prepared.batch_sum is not None else None
        batch_sum, mean, correction, _ = batch_moments(
            rows.to(self.pending_m2.dtype), m2_out=self.pending_m2, batch_sum=known_sum
        )
        self.n_samples += rows.shape[0]
        self.feature_sum += batch_sum
        self.pending_means[slot] = mean
        self.pending_corrections[slot] = correction
        self.pending_weights[slot] = rows.shape[0]
        self.pending_count += 1
        if slot + 1 >= self.fold_every:
            self._fold()

    def _materialize(self, d: int, dtype: torch.dtype, device: torch.device) -> None:
        self.feature_sum = torch.zeros(d, dtype=torch.float64, device=device)
        self.second_moment = torch.zeros(d, d, dtype=torch.float64, device=device)
        self._materialize_pending(dtype)

    def _materialize_pending(self, dtype: torch.dtype) -> None:
        d, device, f64 = self.feature_sum.numel(), self.feature_sum.device, torch.float64
        self.pending_m2 = torch.zeros(d, d, dtype=dtype, device=device)
        self.pending_means = torch.zeros(self.fold_every, d, dtype=f64, device=device)
        self.pending_corrections = torch.zeros(self.fold_every, d, dtype=f64, device=device)
        self.pending_weights = torch.zeros(self.fold_every, dtype=f64, device=device)
        self.pending_count = torch.zeros((), dtype=f64, device=device)

    def _fold(self) -> None:
        """Move the deferred per-batch terms into ``second_moment`` (in place: compute-group
        members share these tensors and must all see the fold)."""
        count = int(self.pending_count)
        if count == 0:
            return
        self.second_moment.add_(self.pending_m2)
        fold_rank_one(
            self.second_moment,
            self.pending_means[:count],
            self.pending_corrections[:count],
            self.pending_weights[:count],
        )
        for name in _PENDING:
            getattr(self, name).zero_()

    def _on_dropped_rows(self, count: int) -> None:
        message = (
            f"{type(self).__name__}: dropped {count} feature row(s) containing NaN or Inf. "
            "The model may be diverging; pass strict=True to raise instead."
        )
        if self.strict:
            raise ValueError(message.replace("; pass strict=True to raise instead", ""))
        self.n_dropped += count
        self._warn_once("dropped", message)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message, stacklevel=4)

    # -------------------------------------------------------------------- sync
    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        # All states are sums: reduce them in place instead of gathering world_size copies.
        # Reduce copies: in a MetricCollection compute group the state tensors are shared
        # with the other members, which must keep seeing the local (unsynced) sums.
        group = process_group or self.process_group
        self._fold()
        n, total, second = all_reduce_moments(
            self.n_samples.clone(), self.feature_sum.clone(), self.second_moment.clone(), group=group
        )
        dropped = self.n_dropped.clone()
        torch.distributed.all_reduce(dropped, op=torch.distributed.ReduceOp.SUM, group=group)
        self.n_samples, self.feature_sum, self.second_moment, self.n_dropped = n, total, second, dropped

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        # merge_state(): sums, but a side that has seen no rows has empty tensors, and each
        # side's deferred terms must be folded first.
        incoming = dict(incoming_state)
        if incoming["feature_sum"].numel() == 0:
            return
        count = int(incoming["pending_count"])
        if count:
            second = incoming["second_moment"].clone() + incoming["pending_m2"]
            fold_rank_one(
                second,
                incoming["pending_means"][:count],
                incoming["pending_corrections"][:count],
                incoming["pending_weights"][:count],
            )
            incoming["second_moment"] = second
        d = incoming["feature_sum"].numel()
        if self.dim is None:
            self._materialize(d, incoming["pending_m2"].dtype, self.second_moment.device)
        elif self.dim != d:
            raise ValueError(f"cannot merge a state of dimension {d} into one of {self.dim}.")
        self._fold()
        for name in _STATES:
            setattr(self, name, getattr(self, name) + incoming[name].to(getattr(self, name).device))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # Accumulation continues after a restore: don't warn that compute() precedes update().
        if float(self.n_samples) > 0:
            self._update_count = max(self._update_count, 1)
        self._computed = None

    # ----------------------------------------------------------------- compute
    def _spectrum_or_none(self) -> Tensor | None:
        """The selected spectrum, or None (with one warning) when there are < 2 samples."""
        self._fold()
        n = float(self.n_samples)
        if n < 2 or self.dim is None:
            self._warn_once(
                "few",
                f"{type(self).__name__}: a spectrum needs at least 2 samples, got {n:g}; the result is NaN. "
                "Feed more probe sequences (or check that the masks keep some rows).",
            )
            return None
        k_limit = int(n)
        if self.spectrum == "singular":
            return F.singular_spectrum(self.second_moment, self.max_components, n_samples=k_limit)
        covariance = covariance_from_moments(self.n_samples, self.feature_sum, self.second_moment)
        return F.eigenspectrum(covariance, self.max_components, n_samples=k_limit)

    def _nan(self) -> Tensor:
        return torch.tensor(math.nan, dtype=torch.float64, device=self.second_moment.device)


class RankMe(_CovarianceMetric):
    r"""Effective rank (RankMe) of a stream of features.

    ``RankMe = exp(-sum_i p_i log p_i)`` with ``p_i = lambda_i / sum_j lambda_j + eps``.

    Args:
        spectrum: ``"covariance"`` (default; the paper's convention: eigenvalues of the
            feature covariance) or ``"singular"`` (Garrido et al., 2023: singular values of
            the uncentered feature matrix). The two differ a lot: log which one you use.
        eps: added to every normalised eigenvalue (paper: ``1e-7``).
        max_components: keep the top-k eigenvalues (paper's scripts: ``2048``).
        strict: raise on NaN/Inf rows instead of dropping them with a warning.
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``...).

    ``compute()`` returns a float64 scalar tensor; NaN with one warning for fewer than 2 samples.

    Example:
        >>> import torch
        >>> from geomtrace import RankMe
        >>> metric = RankMe()
        >>> metric.update(torch.randn(4096, 8))
        >>> 7.5 < float(metric.compute()) <= 8.0
        True
    """

    def __init__(
        self,
        spectrum: Spectrum = "covariance",
        eps: float = F.DEFAULT_EPS,
        max_components: int | None = None,
        strict: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(spectrum=spectrum, max_components=max_components, strict=strict, **kwargs)
        self.eps = eps

    def compute(self) -> Tensor:
        """The RankMe of everything accumulated (synchronised across processes)."""
        values = self._spectrum_or_none()
        return self._nan() if values is None else F.rankme(values, eps=self.eps)


class AlphaReQ(_CovarianceMetric):
    r"""Eigenspectrum decay (alpha-ReQ) of a stream of features.

    Fits ``log lambda_r = -alpha log r + b`` by weighted least squares (weights ``1/r``)
    over the 1-based ranks ``fit_range`` (paper: 12 to 100).

    ``compute()`` returns a dict ``{"alpha": Tensor, "r2": Tensor}`` (float64 scalars; a
    ``MetricCollection`` flattens it into two keys). :meth:`compute_fit` returns the whole
    :class:`~geomtrace.functional.PowerLawFit` for plots. Fewer than 2 samples, or fewer
    than 5 usable eigenvalues in the fit range, give NaN with one warning. Ranks up to 100
    need ``d >= 100``.
    """

    def __init__(
        self,
        fit_range: tuple[int, int] = F.DEFAULT_FIT_RANGE,
        max_components: int | None = None,
        strict: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(spectrum="covariance", max_components=max_components, strict=strict, **kwargs)
        self.fit_range = F._validate_fit_range(fit_range)

    def compute(self) -> dict[str, Tensor]:
        """``{"alpha": ..., "r2": ...}`` of everything accumulated."""
        fit = self._fit()
        return {"alpha": fit.alpha, "r2": fit.r2}

    def compute_fit(self) -> F.PowerLawFit:
        """The full power-law fit (synchronised across processes like ``compute``)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=True):
            return self._fit()

    def _fit(self) -> F.PowerLawFit:
        values = self._spectrum_or_none()
        if values is None:
            nan = self._nan()
            empty = torch.zeros(0, dtype=torch.float64, device=nan.device)
            return F.PowerLawFit(nan, nan.clone(), nan.clone(), empty.long(), empty)
        return F.alpha_req(values, fit_range=self.fit_range)


class EigenSpectrum(_CovarianceMetric):
    """Eigenvalues of the feature covariance (or singular values), largest first.

    ``compute()`` returns a float64 1-D tensor of ``min(N, d, max_components)`` values;
    with fewer than 2 samples, ``d`` NaNs (empty before any update) and one warning.
    """

    def __init__(
        self,
        spectrum: Spectrum = "covariance",
        max_components: int | None = None,
        strict: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(spectrum=spectrum, max_components=max_components, strict=strict, **kwargs)

    def compute(self) -> Tensor:
        """The spectrum of everything accumulated."""
        values = self._spectrum_or_none()
        if values is None:
            return torch.full((self.dim or 0,), math.nan, dtype=torch.float64, device=self.second_moment.device)
        return values
