"""torchmetrics metrics over one shared covariance state: Geometry, RankMe, AlphaReQ, EigenSpectrum.

All four hold the same states (``n_samples``, ``shift``, ``feature_sum``,
``second_moment``, ``n_dropped`` and the deferred-work buffers; see
:mod:`geomtrace.covariance`, which runs them). :class:`Geometry` returns RankMe, alpha-ReQ,
R² and the eigenspectrum from one accumulation and one eigendecomposition: it is the fast
way to get more than one of them. A ``MetricCollection`` of the single-purpose metrics
forms one compute group (one accumulation) but decomposes once per member.

Across processes the states are summed by an in-place ``all_reduce(SUM)`` around one agreed
shift instead of torchmetrics' all-gather, so the memory per rank during sync stays about
``d^2``.

torchmetrics semantics, as they apply here:

* ``metric(x)`` (``forward``) accumulates ``x`` *and* returns the value of ``x`` alone (a
  per-batch RankMe of a batch of rows, NaN with a warning for a batch of fewer than 2 rows);
  ``compute()`` gives the value over everything accumulated since the last ``reset()``.
* The states stay float64 (the accumulation runs fp32/fp64 inside); ``.half()``,
  ``.to(torch.bfloat16)`` and the like leave them alone, and ``set_dtype(dtype)`` only sets the
  dtype of the results.
* ``AlphaReQ`` and ``Geometry`` return dicts: log them with ``self.log_dict(metric.compute())``
  (Lightning's ``self.log(name, metric)`` takes metrics that return one scalar, such as
  ``RankMe``); see ``docs/concepts.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric

from geomtrace import functional as F
from geomtrace import uncertainty as U
from geomtrace._distributed import all_reduce_state
from geomtrace._warnings import GeometryWarning, warn
from geomtrace.covariance import (
    FOLD_EVERY,
    Moments,
    accumulate,
    default_states,
    merge_states,
    moments_of,
    prepare_rows,
    symmetric_from_upper,
)

__all__ = [
    "AlphaReQ",
    "CovarianceSpectrum",
    "EigenSpectrum",
    "Geometry",
    "GeometrySummary",
    "RankMe",
    "Spectrum",
    "Uncertainty",
    "covariance_spectrum",
]

Uncertainty = U.Uncertainty

Spectrum = Literal["covariance", "singular"]

#: Below this, ``|x|^2`` is near float64's subnormal range (2**-1022) and loses digits.
_SMALLEST_EXACT_SQUARE = 2.0**-960


# ----------------------------------------------------------------- from moments to spectrum
class CovarianceSpectrum(NamedTuple):
    """The covariance eigenvalues of some moments, or why there are none.

    Attributes:
        eigenvalues: float64, descending, ``k = min(N, d, max_components)`` values; None when
            the spectrum is undefined (fewer than 2 samples, a covariance that overflowed).
            All zeros for constant features.
        floor: the round-off floor (:func:`geomtrace.functional.roundoff_floor`) for alpha.
        problem: None, or ``(key, message)`` with key ``"few"``, ``"overflow"``, ``"underflow"`` or ``"constant"``.
    """

    eigenvalues: Tensor | None
    floor: float
    problem: tuple[str, str] | None


def covariance_spectrum(
    moments: Moments, max_components: int | None = None, who: str = "geometry"
) -> CovarianceSpectrum:
    """Eigenvalues of the covariance of ``moments``, with the degenerate-input rules applied.

    * fewer than 2 samples: undefined (``"few"``);
    * a covariance that is not finite (fp64 overflow: features beyond ~1e154): undefined (``"overflow"``);
    * features so small that their float64 squares are subnormal (below ~1e-154): undefined
      (``"underflow"``), never a silently inexact value;
    * zero variance, i.e. every channel's variance is no larger than rounding its own values
      would give (``C_jj <= u^2 (C_jj + mean_j^2)`` for every ``j``, ``u`` the unit round-off of
      the coarser of the input and accumulation dtypes; a constant channel holds no round-off):
      all eigenvalues are exactly 0 (``"constant"``; RankMe and alpha are NaN).
    """
    n, d = moments.n, moments.dim
    if n < 2 or d == 0:
        message = (
            f"{who}: a spectrum needs at least 2 samples, got {n:g}; the result is NaN. "
            "Feed more probe sequences (or check that the masks keep some rows)."
        )
        return CovarianceSpectrum(None, math.inf, ("few", message))
    covariance = moments.covariance()
    if not bool(torch.isfinite(covariance).all()):
        message = (
            f"{who}: the covariance overflowed float64 (features of magnitude beyond ~1e154); the result "
            "is NaN. RankMe and alpha are scale-invariant: divide the features by a constant."
        )
        return CovarianceSpectrum(None, math.inf, ("overflow", message))
    variances = covariance.diagonal().clamp(min=0.0)
    trace = float(variances.sum())
    unit = max(F.unit_roundoff(moments.accumulation_dtype), moments.input_roundoff)
    # What rounding could put into each channel: u^2 (var_j + mean_j^2), but never more than
    # the variance the channel shows. A constant channel (however large) holds no round-off at
    # all: every row carries the same rounded value. A global u^2 |mean|^2 would let one large
    # constant channel declare every other channel "round-off" (issue 15, item 1).
    mean = moments.mean()
    second_moments = variances + mean.square()  # E[x_j^2] per channel
    roundoff = torch.minimum(variances, unit**2 * second_moments)
    k = min(int(n), d, max_components or d)
    # The data's magnitude squared; the means (kept in fp64 in the data's units) still show it
    # when the squares have underflowed to 0.
    magnitude = max(float(moments.shift.abs().max()), float(mean.abs().max()))
    scale = max(float(second_moments.max()), magnitude * magnitude)
    if magnitude > 0.0 and scale < _SMALLEST_EXACT_SQUARE:
        message = (
            f"{who}: the features are so small (magnitude below ~1e-144) that their float64 squares "
            "lose precision; the result is NaN. RankMe and alpha are scale-invariant: multiply the "
            "features by a constant."
        )
        return CovarianceSpectrum(None, math.inf, ("underflow", message))
    if trace <= float(roundoff.sum()):
        message = (
            f"{who}: the features have zero variance (all {int(n)} rows are equal up to round-off); RankMe "
            "and alpha are NaN. Check that the layer's output depends on its input (e.g. not a "
            "collapsed or all-zero layer) and that the probes differ."
        )
        zeros = torch.zeros(k, dtype=torch.float64, device=covariance.device)
        return CovarianceSpectrum(zeros, math.inf, ("constant", message))
    eigenvalues = F.eigenspectrum(covariance, max_components, n_samples=int(n))
    floor = F.roundoff_floor(
        trace,
        moments.accumulation_dtype,
        input_roundoff=moments.input_roundoff,
        quantization=float(roundoff.sum()) if moments.input_roundoff > 0 else 0.0,
        dim=d,
    )
    return CovarianceSpectrum(eigenvalues, floor, None)


class GeometrySummary(NamedTuple):
    """Everything one accumulation gives (:meth:`Geometry.compute_summary`)."""

    rankme: Tensor
    alpha: Tensor
    r2: Tensor
    #: Covariance eigenvalues, descending (``d`` NaNs when undefined, zeros for constant features).
    eigenvalues: Tensor
    fit: F.PowerLawFit
    n_samples: int
    dim: int
    n_dropped: int
    #: Jackknife standard errors (``uncertainty="jackknife"``); None without ``uncertainty=``.
    rankme_se: Tensor | None = None
    alpha_se: Tensor | None = None
    #: The delete-one-group values behind them (``(G,)``): two measurements of the same rows'
    #: groups (the same probes) pair them for the standard error of a change.
    rankme_replicates: Tensor | None = None
    alpha_replicates: Tensor | None = None


def _to_device(value: Tensor, device: torch.device) -> Tensor:
    if value.device.type == "meta" and device.type != "meta":
        return torch.zeros(value.shape, dtype=value.dtype, device=device)  # meta holds only defaults
    return value.to(device)


def _nan_fit(device: torch.device) -> F.PowerLawFit:
    nan = torch.tensor(math.nan, dtype=torch.float64, device=device)
    empty = torch.zeros(0, dtype=torch.float64, device=device)
    return F.PowerLawFit(nan, nan.clone(), nan.clone(), empty.long(), empty)


# ----------------------------------------------------------------------- the base metric
class _CovarianceMetric(Metric):
    """Base: the streaming covariance states, their update, sync, merge and spectra."""

    is_differentiable = False
    # Neither a higher nor a lower effective rank is "better" in general: it depends on
    # the training phase (see docs/concepts.md).
    higher_is_better: bool | None = None
    full_state_update = False

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

    #: Batches whose rank-one corrections and fp32 M2 are buffered before one fp64 fold.
    fold_every: int = FOLD_EVERY
    #: Names the metric in its warnings (e.g. ``"layer 3"``); the class name when None.
    label: str | None = None

    def __init__(
        self,
        *,
        spectrum: Spectrum = "covariance",
        max_components: int | None = None,
        strict: bool = False,
        uncertainty: U.UncertaintyMethod | None = None,
        groups: int | None = None,
        max_group_memory: int | None = U.DEFAULT_MAX_GROUP_MEMORY,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.uncertainty, self.groups, self.max_group_memory = U.validate_uncertainty(
            uncertainty, groups, max_group_memory
        )
        # Rows accumulated before a forward() (which resets the states for its batch): the
        # round-robin group assignment continues from there (see forward).
        self._group_offset = 0
        if spectrum not in ("covariance", "singular"):
            raise ValueError(f"spectrum must be 'covariance' or 'singular', got {spectrum!r}.")
        if max_components is not None and (
            isinstance(max_components, bool) or not isinstance(max_components, int) or max_components < 1
        ):
            raise ValueError(f"max_components must be a positive int or None, got {max_components!r}.")
        self.spectrum = spectrum
        self.max_components = max_components
        self.strict = strict
        self._warned: set[str] = set()
        self._output_dtype: torch.dtype = torch.float64
        # The dimension d is unknown until the first update: states start empty and are
        # materialised then (reset() restores the empty defaults). All are sums or
        # deferred sums; the sync and merge below combine them (never torchmetrics' gather).
        for name, default in default_states().items():
            self.add_state(name, default, dist_reduce_fx="sum", persistent=True)
        if self.uncertainty is not None:  # only then: uncertainty=None keeps today's states and cost
            f64 = torch.float64
            self.add_state("group_count", torch.zeros(self.groups, dtype=f64), dist_reduce_fx="sum", persistent=True)
            self.add_state("group_sum", torch.zeros(0, 0, dtype=f64), dist_reduce_fx="sum", persistent=True)
            self.add_state("group_second", torch.zeros(0, 0, 0, dtype=f64), dist_reduce_fx="sum", persistent=True)

    # ------------------------------------------------------------------ update
    @property
    def dim(self) -> int | None:
        """Feature dimension ``d``, or None before the first update."""
        return self.feature_sum.numel() or None

    def update(self, features: Tensor, mask: Tensor | None = None, sample_index: Tensor | None = None) -> None:
        """Accumulate a batch of features.

        Args:
            features: ``(N, d)`` or ``(..., d)`` floating point tensor of any float dtype.
            mask: optional tensor of shape ``features.shape[:-1]``, boolean or 0/1 (an
                attention mask); False/0 rows are skipped (padding).
            sample_index: only with ``uncertainty=``: non-negative integers of shape
                ``features.shape[:-1]`` naming each row's sampling unit (e.g. the probe's
                position in the whole probe set); the row goes to jackknife group
                ``sample_index mod groups``. Default: round-robin over the rows in the order
                they are accumulated. Ignored without ``uncertainty=``.
        """
        self._check_not_meta()
        prepared = prepare_rows(features, mask, expected_dim=self.dim)
        if prepared.n_dropped:
            self._on_dropped_rows(prepared.n_dropped)
        if self.uncertainty is None:
            accumulate(self, prepared, self.fold_every)
            return
        first_row = self._group_offset + int(self.n_samples)
        index = None if sample_index is None else U.kept_sample_index(sample_index, features, mask, prepared.n_dropped)
        accumulate(self, prepared, self.fold_every)
        U.update_groups(self, prepared.rows, first_row, index)

    # ------------------------------------------------------- jackknife groups
    group_count: Tensor
    group_sum: Tensor
    group_second: Tensor

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """torchmetrics' ``forward``; with ``uncertainty=`` the batch's rows continue the groups' round-robin."""
        if self.uncertainty is None:
            return super().forward(*args, **kwargs)
        self._group_offset = self._group_offset + int(self.n_samples)
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._group_offset = 0

    def _check_not_meta(self) -> None:
        if self.second_moment.device.type == "meta":
            raise RuntimeError(
                f"{type(self).__name__}'s states are on the meta device (it was created under "
                "torch.device('meta') or moved there), so it holds no data. Give it a real device "
                "first: metric.to_empty(device='cpu') (or 'cuda')."
            )

    def _on_dropped_rows(self, count: int) -> None:
        message = (
            f"{self._who}: dropped {count} feature row(s) containing NaN or Inf. "
            "The model may be diverging; pass strict=True to raise instead."
        )
        if self.strict:
            raise ValueError(message.replace("; pass strict=True to raise instead", ""))
        self.n_dropped += count
        self._warn_once("dropped", message)

    @property
    def _who(self) -> str:
        return self.label or type(self).__name__

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message, stacklevel=4)

    # -------------------------------------------------------- sync, merge, load
    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        # All states are sums: reduce them in place (around one agreed shift) instead of
        # gathering world_size copies. Reduce copies: in a MetricCollection compute group the
        # state tensors are shared with the other members, which must keep seeing the local sums.
        if self.uncertainty is None:
            all_reduce_state(self, process_group or self.process_group)
            return
        old_shift = self.shift.clone()
        all_reduce_state(self, process_group or self.process_group)
        U.all_reduce_groups(self, old_shift, process_group or self.process_group)

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        # merge_state() and forward(): sums around possibly different shifts; see merge_states.
        if self.uncertainty is None:
            merge_states(self, incoming_state, self.fold_every)
            return
        own_shift = self.shift.clone()
        merge_states(self, incoming_state, self.fold_every)
        U.merge_groups(self, own_shift, incoming_state)

    def state_dict(  # type: ignore[override]  # torchmetrics overrides nn.Module.state_dict so
        self, destination: dict[str, Any] | None = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        # The update may fill only the upper triangle of pending_m2 (covariance.add_gram): a
        # saved state carries the full symmetric matrix, which any reader (older versions too)
        # folds correctly.
        destination = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        key = prefix + "pending_m2"
        if isinstance(destination.get(key), Tensor):
            destination[key] = symmetric_from_upper(destination[key])
        return destination

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # torchmetrics assigns the caller's tensors as the states, and accumulation is in
        # place: without a copy, two metrics loaded from one dict would share their sums and
        # the dict would change under the caller.
        for name in self._defaults:
            value = getattr(self, name)
            if isinstance(value, Tensor):
                setattr(self, name, value.clone())
        # A state saved before the shift existed holds sums around 0.
        d = self.feature_sum.numel()
        if self.shift.numel() != d:
            self.shift = torch.zeros(d, dtype=torch.float64, device=self.feature_sum.device)
        # Accumulation continues after a restore: don't warn that compute() precedes update().
        if float(self.n_samples) > 0:
            self._update_count = max(self._update_count, 1)
        self._computed = None

    # --------------------------------------------------- devices and dtypes
    # torchmetrics' Metric._apply takes `exclude_state` second, where nn.Module's takes `recurse`;
    # torch calls it with `fn` alone or `recurse=` by keyword, so both orders work at run time.
    def _apply(  # type: ignore[override]  # Metric's signature, not nn.Module's (see above)
        self, fn: Callable, exclude_state: Any = (), recurse: bool = True
    ) -> Metric:
        # Move the states between devices but never change their dtype: float64 sums are
        # what makes the covariance exact (torchmetrics would cast them on .to(dtype) or
        # set_dtype). States on the meta device hold only defaults: they become zeros
        # (so to_empty() works; torchmetrics' own _apply does not take `recurse`).
        names = tuple(self._defaults)
        super()._apply(fn, exclude_state=names)  # nn.Module._apply returns self
        device = self.device
        for name in names:
            setattr(self, name, _to_device(getattr(self, name), device))
            default = self._defaults[name]
            if isinstance(default, Tensor):  # every default here is a tensor (no list states)
                self._defaults[name] = _to_device(default, device)
        return self

    def set_dtype(self, dst_type: str | torch.dtype) -> Metric:
        """Set the dtype of the *results*; the states stay float64 (the covariance needs them)."""
        dtype = getattr(torch, dst_type) if isinstance(dst_type, str) else dst_type
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"set_dtype takes a floating point dtype, got {dst_type!r}.")
        self._output_dtype = dtype
        self._computed = None
        return self

    def _out(self, value: Tensor) -> Tensor:
        return value if self._output_dtype == torch.float64 else value.to(self._output_dtype)

    # ----------------------------------------------------------------- compute
    def _moments(self) -> Moments:
        self._check_not_meta()
        return moments_of(self)

    def _covariance_spectrum(self, moments: Moments) -> CovarianceSpectrum:
        result = covariance_spectrum(moments, self.max_components, who=self._who)
        if result.problem is not None:
            self._warn_once(*result.problem)
        return result

    def _singular_values(self, moments: Moments) -> Tensor | None:
        if moments.n < 2 or moments.dim == 0:
            self._covariance_spectrum(moments)  # warns "few"
            return None
        gram = moments.gram()
        if not bool(torch.isfinite(gram).all()):
            self._covariance_spectrum(moments)  # warns "overflow"
            return None
        if float(gram.diagonal().sum()) <= 0:
            self._warn_once("zero", f"{self._who}: every feature is exactly 0; the singular-value RankMe is NaN.")
            return None
        return F.singular_spectrum(gram, self.max_components, n_samples=int(moments.n))

    def _rankme(self, moments: Moments, spectrum: CovarianceSpectrum | None, eps: float) -> Tensor:
        if self.spectrum == "singular":
            values = self._singular_values(moments)
        else:
            spectrum = spectrum or self._covariance_spectrum(moments)
            values = None if spectrum.problem else spectrum.eigenvalues
        return self._nan() if values is None else F.rankme(values, eps=eps)

    def _fit(self, moments: Moments, spectrum: CovarianceSpectrum, fit_range: tuple[int, int]) -> F.PowerLawFit:
        if spectrum.problem is not None or spectrum.eigenvalues is None:
            return _nan_fit(self.second_moment.device)
        return F.alpha_req(spectrum.eigenvalues, fit_range=fit_range, n_samples=int(moments.n), floor=spectrum.floor)

    def _eigenvalues_or_nan(self, moments: Moments, spectrum: CovarianceSpectrum) -> Tensor:
        if spectrum.eigenvalues is None:
            return torch.full((moments.dim,), math.nan, dtype=torch.float64, device=self.second_moment.device)
        return spectrum.eigenvalues

    def _nan(self) -> Tensor:
        return torch.tensor(math.nan, dtype=torch.float64, device=self.second_moment.device)

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot a result of ``compute()``/``forward`` (or a list of them) with torchmetrics' plotter.

        Needs matplotlib. Returns ``(figure, axes)``.
        """
        return self._plot(val, ax)

    # ------------------------------------------------------------- error bars
    #: What the metric measures, hence what its jackknife replicates compute.
    _measures: tuple[str, ...] = ()

    def compute_uncertainty(self) -> U.Uncertainty:
        """Jackknife standard errors of the values (synchronised across processes like ``compute``).

        Needs ``uncertainty="jackknife"``. Costs ``groups`` more eigendecompositions of the
        ``d x d`` covariance (one per deleted group). See :class:`~geomtrace.uncertainty.Uncertainty`.
        """
        if self.uncertainty is None:
            raise ValueError(
                f"{self._who} was created without uncertainty=: create it with uncertainty='jackknife' "
                "(and groups=, default 20) to get standard errors."
            )
        return self._synced(self._uncertainty)

    def _uncertainty(
        self, moments: Moments | None = None, rankme: Tensor | None = None, alpha: Tensor | None = None
    ) -> U.Uncertainty:
        moments = moments if moments is not None else self._moments()
        wants_rankme, wants_alpha = "rankme" in self._measures, "alpha" in self._measures
        if (wants_rankme and rankme is None) or (wants_alpha and alpha is None):
            full_rankme, full_alpha = self._replicate_statistic(moments)
            rankme = rankme if rankme is not None else torch.tensor(full_rankme, dtype=torch.float64)
            alpha = alpha if alpha is not None else torch.tensor(full_alpha, dtype=torch.float64)
        device = self.second_moment.device
        count, total, second = self.group_count, self.group_sum, self.group_second
        if moments.dim == 0 or total.shape != (self.groups, moments.dim):
            nan = torch.full((self.groups,), math.nan, dtype=torch.float64, device=device)
            rankme_reps, alpha_reps = nan, nan.clone()
        else:
            rankme_reps, alpha_reps = U.replicate_values(moments, count, total, second, self._replicate_statistic)

        def se(value: Tensor | None, replicates: Tensor) -> Tensor:
            if value is None or not bool(torch.isfinite(value)):
                return torch.tensor(math.nan, dtype=torch.float64, device=device)
            return U.jackknife_se(replicates)

        return U.Uncertainty(
            method="jackknife",
            groups=self.groups,
            group_sizes=count.clone(),
            rankme=self._out(rankme.to(device)) if wants_rankme and rankme is not None else None,
            rankme_se=self._out(se(rankme, rankme_reps)) if wants_rankme else None,
            rankme_replicates=self._out(rankme_reps) if wants_rankme else None,
            alpha=self._out(alpha.to(device)) if wants_alpha and alpha is not None else None,
            alpha_se=self._out(se(alpha, alpha_reps)) if wants_alpha else None,
            alpha_replicates=self._out(alpha_reps) if wants_alpha else None,
        )

    def _replicate_statistic(self, moments: Moments) -> tuple[float, float]:
        """``(rankme, alpha)`` of some moments as ``compute`` gives them, without warnings (NaN if undefined)."""
        rankme = alpha = math.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GeometryWarning)
            spectrum = None
            if "alpha" in self._measures or (self.spectrum == "covariance" and "rankme" in self._measures):
                spectrum = covariance_spectrum(moments, self.max_components, who=self._who)
            if "rankme" in self._measures:
                values: Tensor | None = None
                if self.spectrum == "singular":
                    gram = moments.gram() if moments.n >= 2 else None
                    if gram is not None and bool(torch.isfinite(gram).all()) and float(gram.diagonal().sum()) > 0:
                        values = F.singular_spectrum(gram, self.max_components, n_samples=int(moments.n))
                elif spectrum is not None and spectrum.problem is None:
                    values = spectrum.eigenvalues
                if values is not None:
                    rankme = float(F.rankme(values, eps=getattr(self, "eps", F.DEFAULT_EPS)))
            if "alpha" in self._measures and spectrum is not None:
                fit_range = getattr(self, "fit_range", F.DEFAULT_FIT_RANGE)
                alpha = float(self._fit(moments, spectrum, fit_range).alpha)
        return rankme, alpha

    def _synced(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the synchronised state, like ``compute`` does (for the richer results)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=True):
            return fn()


# ----------------------------------------------------------------------------- metrics
class Geometry(_CovarianceMetric):
    r"""RankMe, alpha-ReQ, R² and the eigenspectrum from one accumulation: the fast way to get them.

    ``compute()`` returns ``{"rankme", "alpha", "r2", "eigenvalues"}`` (float64; the first
    three scalars, ``eigenvalues`` the covariance spectrum, descending). With
    ``eigenvalues=False`` the dict holds only the three scalars, ready for
    ``self.log_dict(metric.compute())``. :meth:`compute_summary` also gives the power-law fit
    (ranks and fitted values, for plots) and the counts. The definitions are those of
    :class:`RankMe`, :class:`AlphaReQ` and :class:`EigenSpectrum`.

    Args:
        spectrum: RankMe on ``"covariance"`` eigenvalues (paper) or ``"singular"`` values.
        eps: RankMe's epsilon (paper: ``1e-7``).
        fit_range: alpha-ReQ ranks (1-based, inclusive; paper: 12 to 100).
        max_components: keep the top-k eigenvalues (paper's scripts: ``2048``).
        eigenvalues: include the eigenvalues in ``compute()``'s dict.
        strict: raise on NaN/Inf rows instead of dropping them with a warning.
        uncertainty: ``"jackknife"`` adds standard errors from the sample itself (a delete-a-group
            jackknife, see :mod:`geomtrace.uncertainty` and ``docs/concepts.md``, "Error bars");
            None (default) measures exactly as without it.
        groups: the jackknife's number of groups ``G`` (default 20; >= 2). Costs ``G`` more
            ``d x d`` eigendecompositions at compute and ``G d^2`` float64 numbers of memory.
        max_group_memory: refuse (``ValueError`` at the first update) group moments larger than
            this many bytes (default 2 GiB); None: no cap.
            With ``uncertainty=``, ``compute()`` also holds ``"rankme_se"`` and ``"alpha_se"``.
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``...).

    Example:
        Features in d = 128 whose covariance eigenvalues fall as ``1 / r`` (column ``r`` scaled
        by ``r ** -0.5``), streamed in batches: alpha comes out near 1 with an almost perfect
        power-law fit, and RankMe counts about 47 effective dimensions of the 128.

        >>> import torch
        >>> from geomtrace import Geometry
        >>> generator = torch.Generator().manual_seed(0)
        >>> scale = torch.arange(1, 129) ** -0.5
        >>> features = torch.randn(4096, 128, generator=generator) * scale
        >>> metric = Geometry()
        >>> for batch in features.split(1024):
        ...     metric.update(batch)
        >>> out = metric.compute()
        >>> sorted(out), out["eigenvalues"].shape
        (['alpha', 'eigenvalues', 'r2', 'rankme'], torch.Size([128]))
        >>> print(f"RankMe {out['rankme']:.1f}, alpha {out['alpha']:.2f}, R^2 {out['r2']:.2f}")
        RankMe 46.6, alpha 1.01, R^2 1.00
    """

    def __init__(
        self,
        spectrum: Spectrum = "covariance",
        eps: float = F.DEFAULT_EPS,
        fit_range: tuple[int, int] = F.DEFAULT_FIT_RANGE,
        max_components: int | None = None,
        eigenvalues: bool = True,
        strict: bool = False,
        uncertainty: U.UncertaintyMethod | None = None,
        groups: int | None = None,
        max_group_memory: int | None = U.DEFAULT_MAX_GROUP_MEMORY,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            spectrum=spectrum,
            max_components=max_components,
            strict=strict,
            uncertainty=uncertainty,
            groups=groups,
            max_group_memory=max_group_memory,
            **kwargs,
        )
        self.eps = F.validate_eps(eps)
        self.fit_range = F.validate_fit_range(fit_range)
        self.return_eigenvalues = bool(eigenvalues)

    _measures = ("rankme", "alpha")

    def compute(self) -> dict[str, Tensor]:
        """``{"rankme", "alpha", "r2"[, "eigenvalues"]}`` of everything accumulated (synchronised);
        with ``uncertainty=`` also ``"rankme_se"`` and ``"alpha_se"``."""
        summary = self._summary()
        out = {"rankme": summary.rankme, "alpha": summary.alpha, "r2": summary.r2}
        if summary.rankme_se is not None and summary.alpha_se is not None:
            out["rankme_se"], out["alpha_se"] = summary.rankme_se, summary.alpha_se
        if self.return_eigenvalues:
            out["eigenvalues"] = summary.eigenvalues
        return {key: self._out(value) for key, value in out.items()}

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot RankMe, alpha and R² (the eigenvalues are left out). Needs matplotlib."""
        if val is None:
            val = self.compute()
        strip = lambda v: {k: t for k, t in v.items() if k != "eigenvalues"}  # noqa: E731
        val = [strip(v) for v in val] if isinstance(val, (list, tuple)) else strip(val)
        return self._plot(val, ax)

    def compute_summary(self) -> GeometrySummary:
        """Everything, with the full power-law fit (synchronised across processes like ``compute``)."""
        return self._synced(self._summary)

    def _summary(self) -> GeometrySummary:
        moments = self._moments()
        spectrum = self._covariance_spectrum(moments)
        fit = self._fit(moments, spectrum, self.fit_range)
        rankme = self._rankme(moments, spectrum, self.eps)
        errors = None if self.uncertainty is None else self._uncertainty(moments, rankme, fit.alpha)
        return GeometrySummary(
            rankme=rankme,
            alpha=fit.alpha,
            r2=fit.r2,
            eigenvalues=self._eigenvalues_or_nan(moments, spectrum),
            fit=fit,
            n_samples=int(moments.n),
            dim=moments.dim,
            n_dropped=moments.n_dropped,
            rankme_se=None if errors is None else errors.rankme_se,
            alpha_se=None if errors is None else errors.alpha_se,
            rankme_replicates=None if errors is None else errors.rankme_replicates,
            alpha_replicates=None if errors is None else errors.alpha_replicates,
        )


class RankMe(_CovarianceMetric):
    r"""Effective rank (RankMe) of a stream of features.

    ``RankMe = exp(-sum_i p_i log p_i)`` with ``p_i = lambda_i / sum_j lambda_j + eps`` over
    the top ``k = min(N, d, max_components)`` eigenvalues (the paper's convention).

    Args:
        spectrum: ``"covariance"`` (default; the paper's convention: eigenvalues of the
            feature covariance) or ``"singular"`` (Garrido et al., 2023: singular values of
            the uncentered feature matrix). The two differ a lot: log which one you use.
        eps: added to every normalised eigenvalue (paper: ``1e-7``); must be >= 0.
        max_components: keep the top-k eigenvalues (paper's scripts: ``2048``).
        strict: raise on NaN/Inf rows instead of dropping them with a warning.
        uncertainty: ``"jackknife"`` adds standard errors from the sample itself (a delete-a-group
            jackknife, see :mod:`geomtrace.uncertainty` and ``docs/concepts.md``, "Error bars");
            None (default) measures exactly as without it.
        groups: the jackknife's number of groups ``G`` (default 20; >= 2). Costs ``G`` more
            ``d x d`` eigendecompositions at compute and ``G d^2`` float64 numbers of memory.
        max_group_memory: refuse (``ValueError`` at the first update) group moments larger than
            this many bytes (default 2 GiB); None: no cap.
            ``compute()`` still returns the RankMe alone (a scalar for ``self.log``);
            :meth:`compute_uncertainty` gives ``.rankme_se`` (and the replicates).
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``...).

    ``compute()`` returns a float64 scalar tensor; NaN with one warning for fewer than 2
    samples or zero variance. ``metric(x)`` returns the RankMe of the batch ``x`` alone (and
    accumulates it). Want alpha too? Use :class:`Geometry` (one accumulation for both).

    Example:
        >>> import torch
        >>> from geomtrace import RankMe
        >>> metric = RankMe()
        >>> metric.update(torch.randn(4096, 8, generator=torch.Generator().manual_seed(0)))
        >>> 7.5 < float(metric.compute()) <= 8.0
        True
    """

    def __init__(
        self,
        spectrum: Spectrum = "covariance",
        eps: float = F.DEFAULT_EPS,
        max_components: int | None = None,
        strict: bool = False,
        uncertainty: U.UncertaintyMethod | None = None,
        groups: int | None = None,
        max_group_memory: int | None = U.DEFAULT_MAX_GROUP_MEMORY,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            spectrum=spectrum,
            max_components=max_components,
            strict=strict,
            uncertainty=uncertainty,
            groups=groups,
            max_group_memory=max_group_memory,
            **kwargs,
        )
        self.eps = F.validate_eps(eps)

    _measures = ("rankme",)

    def compute(self) -> Tensor:
        """The RankMe of everything accumulated (synchronised across processes)."""
        moments = self._moments()
        return self._out(self._rankme(moments, None, self.eps))


class AlphaReQ(_CovarianceMetric):
    r"""Eigenspectrum decay (alpha-ReQ) of a stream of features.

    Fits ``log lambda_r = -alpha log r + b`` by weighted least squares (weights ``1/r``)
    over the 1-based ranks ``fit_range`` (paper: 12 to 100), clipped to the eigenvalues that
    can be non-zero: at most ``N - 1`` of them, and none at the round-off level of the
    accumulation (``<= u trace(C)``, see ``docs/concepts.md``).

    ``compute()`` returns a dict ``{"alpha": Tensor, "r2": Tensor}`` (float64 scalars; a
    ``MetricCollection`` flattens it into two keys; log it with ``self.log_dict``).
    :meth:`compute_fit` returns the whole :class:`~geomtrace.functional.PowerLawFit` for
    plots. Fewer than 2 samples, zero variance, or fewer than 5 usable eigenvalues in the
    fit range (N or d below the range's start...) give NaN with one warning, never an error.
    Ranks up to 100 need ``d >= 100``. Want RankMe too? Use :class:`Geometry`.

    With ``uncertainty="jackknife"`` (``groups=``, ``max_group_memory=``: as for
    :class:`Geometry`) ``compute()``'s dict also holds ``"alpha_se"``, the jackknife standard
    error; :meth:`compute_uncertainty` gives the replicates too.
    """

    def __init__(
        self,
        fit_range: tuple[int, int] = F.DEFAULT_FIT_RANGE,
        max_components: int | None = None,
        strict: bool = False,
        uncertainty: U.UncertaintyMethod | None = None,
        groups: int | None = None,
        max_group_memory: int | None = U.DEFAULT_MAX_GROUP_MEMORY,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            spectrum="covariance",
            max_components=max_components,
            strict=strict,
            uncertainty=uncertainty,
            groups=groups,
            max_group_memory=max_group_memory,
            **kwargs,
        )
        self.fit_range = F.validate_fit_range(fit_range)

    _measures = ("alpha",)

    def compute(self) -> dict[str, Tensor]:
        """``{"alpha": ..., "r2": ...}`` of everything accumulated; with ``uncertainty=`` also ``"alpha_se"``."""
        if self.uncertainty is None:
            fit = self._alpha_fit()
            return {"alpha": self._out(fit.alpha), "r2": self._out(fit.r2)}
        moments = self._moments()
        fit = self._fit(moments, self._covariance_spectrum(moments), self.fit_range)
        errors = self._uncertainty(moments, alpha=fit.alpha)
        assert errors.alpha_se is not None
        return {"alpha": self._out(fit.alpha), "r2": self._out(fit.r2), "alpha_se": errors.alpha_se}

    def compute_fit(self) -> F.PowerLawFit:
        """The full power-law fit (synchronised across processes like ``compute``)."""
        return self._synced(self._alpha_fit)

    def _alpha_fit(self) -> F.PowerLawFit:
        moments = self._moments()
        return self._fit(moments, self._covariance_spectrum(moments), self.fit_range)


class EigenSpectrum(_CovarianceMetric):
    """Eigenvalues of the feature covariance (or singular values), largest first.

    ``compute()`` returns a float64 1-D tensor of ``min(N, d, max_components)`` values. With
    fewer than 2 samples it returns ``d`` NaNs (``d`` is known from the first update, even one
    whose rows were all dropped; an empty tensor before any update) and warns once; constant
    features give zeros and a warning.
    """

    def __init__(
        self,
        spectrum: Spectrum = "covariance",
        max_components: int | None = None,
        strict: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(spectrum=spectrum, max_components=max_components, strict=strict, **kwargs)

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Not a scalar to plot over time: draw the spectrum on log-log axes yourself, e.g.
        ``plt.loglog(range(1, k + 1), metric.compute())``."""
        raise NotImplementedError(
            "EigenSpectrum returns a whole spectrum, which torchmetrics' plot cannot draw: plot it on "
            "log-log axes yourself (plt.loglog(range(1, len(values) + 1), values))."
        )

    def compute(self) -> Tensor:
        """The spectrum of everything accumulated."""
        moments = self._moments()
        if self.spectrum == "singular":
            values = self._singular_values(moments)
            if values is None:
                values = torch.full((moments.dim,), math.nan, dtype=torch.float64, device=self.second_moment.device)
            return self._out(values)
        return self._out(self._eigenvalues_or_nan(moments, self._covariance_spectrum(moments)))
