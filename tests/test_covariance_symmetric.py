"""The update computes only the upper block triangle of X^T X (issue 18, part 2).

Reference: the same fp32 rows in float64 (a product of two fp32 numbers is exact in fp64, so
the reference carries only fp64 round-off). An fp32 dot product of length N errs by at most
about ``N u`` times ``sum |x_i y_i|`` (u = 2^-24) in the worst case and by about ``sqrt(N) u``
times it for rounding errors of random sign, whatever the summation order or blocking of the
BLAS; the bound used is ``8 sqrt(N) u (|X|^T |X|)_ij``, so no bit equality with one BLAS is
assumed.
"""

from __future__ import annotations

import math

import pytest
import torch

import geomtrace.covariance as cov
from geomtrace import Geometry
from geomtrace.covariance import CovarianceAccumulator, add_gram, symmetric_from_upper

U32 = 2.0**-24


def assert_gram_close(got: torch.Tensor, rows: torch.Tensor, *, upper_only: bool) -> None:
    """``got`` equals ``rows^T rows`` (upper triangle, or all of it) within fp32 round-off."""
    x = rows.double()
    exact = x.T @ x
    bound = 8.0 * math.sqrt(rows.shape[0]) * U32 * (x.abs().T @ x.abs()) + 1e-30
    error = (got.double() - exact).abs()
    if upper_only:
        error = error.triu()
    worst = float((error / bound).max())
    assert worst <= 1.0, f"error reaches {worst:.2f} of the fp32 round-off bound"


def features(n: int, d: int, seed: int = 0, offset: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen) * torch.linspace(0.1, 2.0, d) + offset


@pytest.mark.parametrize(
    "d, block",
    [(5, 2), (100, 7), (255, 64), (300, 128), (513, 256), (700, None), (1030, None), (1030, 512)],
)
def test_blocked_gram_equals_the_float64_product_on_the_upper_triangle(d, block):
    rows = features(1500, d) - 3.0
    out = torch.zeros(d, d)
    add_gram(out, rows, block)
    add_gram(out, rows[:700], block)  # accumulates in place
    stacked = torch.cat([rows, rows[:700]])
    assert_gram_close(out, stacked, upper_only=True)
    assert_gram_close(symmetric_from_upper(out), stacked, upper_only=False)
    full = torch.zeros(d, d).addmm_(rows.T, rows).addmm_(rows[:700].T, rows[:700])
    assert_gram_close(full, stacked, upper_only=False)  # the plain GEMM meets the same bound


def test_only_the_upper_block_triangle_is_written():
    d, block = 300, 128
    out = torch.zeros(d, d)
    add_gram(out, features(200, d), block)
    below = torch.ones(d, d, dtype=torch.bool).tril(-1)
    for start in range(0, d, block):  # diagonal blocks are whole GEMM blocks
        below[start : start + block, start : start + block] = False
    assert bool((out[below] == 0).all())
    assert bool((out[torch.ones(d, d, dtype=torch.bool).triu()] != 0).all())


def test_switch_dimension_picks_the_path():
    small, large = cov.SYMMETRIC_MIN_DIM - 1, cov.SYMMETRIC_MIN_DIM + cov.SYMMETRIC_BLOCK // 2
    for d, blocked in ((small, False), (large, True)):
        out = torch.zeros(d, d)
        add_gram(out, features(64, d))
        strictly_lower = out[torch.ones(d, d, dtype=torch.bool).tril(-1)]
        assert bool((strictly_lower == 0).any()) is blocked
    assert cov.SYMMETRIC_BLOCK >= 64 and cov.SYMMETRIC_MIN_DIM >= cov.SYMMETRIC_BLOCK


def test_symmetric_from_upper_ignores_the_lower_triangle():
    upper = torch.arange(16.0).reshape(4, 4)
    full = symmetric_from_upper(upper)
    assert torch.equal(full, full.T)
    assert torch.equal(full.triu(), upper.triu())


def run_geometry(batches, masks=None, fold_every=cov.FOLD_EVERY):
    metric = Geometry()
    metric.fold_every = fold_every
    for i, batch in enumerate(batches):
        metric.update(batch, None if masks is None else masks[i])
    return metric.compute()


@pytest.mark.parametrize("d", [300, 517])
def test_blocked_and_full_updates_give_the_same_geometry_with_masks_and_empty_batches(monkeypatch, d):
    x = features(1200, d, seed=1, offset=50.0)
    gen = torch.Generator().manual_seed(2)
    batches = list(x.split(250)) + [x[:0]]  # an empty batch at the end, and one below
    batches.insert(2, x[:0])
    masks = [torch.rand(b.shape[0], generator=gen) > 0.3 for b in batches]
    masks[1][:] = False  # a batch whose rows are all masked out
    monkeypatch.setattr(cov, "SYMMETRIC_BLOCK", 128)
    monkeypatch.setattr(cov, "SYMMETRIC_MIN_DIM", 10**9)
    full = run_geometry(batches, masks, fold_every=3)
    monkeypatch.setattr(cov, "SYMMETRIC_MIN_DIM", 1)
    blocked = run_geometry(batches, masks, fold_every=3)
    kept = torch.cat([b[m] for b, m in zip(batches, masks)]).double()
    reference = torch.linalg.eigvalsh(torch.cov(kept.T)).flip(0)
    for out in (full, blocked):
        torch.testing.assert_close(out["eigenvalues"][:30], reference[:30], rtol=1e-5, atol=0)
    for key in ("rankme", "alpha", "r2"):
        assert float(blocked[key]) == pytest.approx(float(full[key]), rel=1e-6)


def test_large_mean_bar_holds_on_the_blocked_path(monkeypatch):
    """The large-mean accuracy bar of test_metrics, with the update blocked (d not a block multiple)."""
    monkeypatch.setattr(cov, "SYMMETRIC_BLOCK", 96)
    monkeypatch.setattr(cov, "SYMMETRIC_MIN_DIM", 1)
    d, n = 256, 4096
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(n, d, generator=gen) * torch.linspace(0.2, 2.0, d) + 1e4).to(torch.float32)
    centered = x.double() - x.double().mean(0)
    reference = torch.linalg.eigvalsh(centered.T @ centered / (n - 1)).flip(0).clamp(min=0)
    out = run_geometry(x.split(512))
    torch.testing.assert_close(out["eigenvalues"][:50], reference[:50], rtol=1e-5, atol=0)
    p = reference / reference.sum() + 1e-7
    assert float(out["rankme"]) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)


def test_saved_and_merged_states_carry_a_full_symmetric_pending_matrix(monkeypatch):
    monkeypatch.setattr(cov, "SYMMETRIC_BLOCK", 64)
    monkeypatch.setattr(cov, "SYMMETRIC_MIN_DIM", 1)
    d = 200
    x = features(900, d, seed=3)
    metric = Geometry()
    for batch in x[:500].split(100):  # mid-window: pending_m2 holds unfolded batches
        metric.update(batch)
    assert bool((metric.pending_m2[torch.ones(d, d, dtype=torch.bool).tril(-1)] == 0).any())  # upper only
    saved = metric.state_dict()
    assert torch.equal(saved["pending_m2"], saved["pending_m2"].T)
    restored = Geometry()
    restored.load_state_dict(saved)
    for m in (metric, restored):
        for batch in x[500:].split(100):
            m.update(batch)
    expected, got = metric.compute(), restored.compute()
    torch.testing.assert_close(got["eigenvalues"], expected["eigenvalues"], rtol=1e-12, atol=1e-12)

    left, right, whole = CovarianceAccumulator(), CovarianceAccumulator(), CovarianceAccumulator()
    left.update(x[:450])
    right.update(x[450:])
    whole.update(x)
    state = right.state()
    assert torch.equal(state["pending_m2"], state["pending_m2"].T)
    # entries of order 1 (variances up to 4): fp32 round-off of sqrt(N) u ~ 2e-6 bounds them
    torch.testing.assert_close(left.merge(right).covariance(), whole.covariance(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole.covariance(), torch.cov(x.double().T), rtol=1e-5, atol=1e-5)


def test_a_state_saved_with_a_full_pending_matrix_folds_the_same(monkeypatch):
    """States saved by the full-GEMM update (a full, symmetric pending_m2) still load and fold."""
    monkeypatch.setattr(cov, "SYMMETRIC_MIN_DIM", 10**9)
    x = features(600, 180, seed=4)
    old = Geometry()
    for batch in x.split(200):
        old.update(batch)
    saved = old.state_dict()
    monkeypatch.setattr(cov, "SYMMETRIC_BLOCK", 64)
    monkeypatch.setattr(cov, "SYMMETRIC_MIN_DIM", 1)
    new = Geometry()
    new.load_state_dict(saved)
    torch.testing.assert_close(new.compute()["eigenvalues"], old.compute()["eigenvalues"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [1, 17, 63, 64, 1024, 1031])
def test_column_sum64_sums_in_float64_whatever_the_grouping(n):
    """Integers up to 2**24 plus ones: every partial sum is exact in fp64 and loses the ones in fp32."""
    gen = torch.Generator().manual_seed(n)
    rows = torch.randint(0, 2**24, (n, 7), generator=gen).float()
    rows[::2] = 1.0  # 2**24 + 1 is not an fp32 number: an fp32 accumulation drops these
    exact = torch.tensor([math.fsum(column) for column in rows.double().T.tolist()], dtype=torch.float64)
    got = cov.column_sum64(rows)
    assert got.dtype == torch.float64
    assert torch.equal(got, exact)
    assert torch.equal(cov.column_sum64(rows[::3]), rows[::3].double().sum(0))  # strided rows
