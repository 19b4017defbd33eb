"""Jackknife error bars (``uncertainty="jackknife"``): values untouched, SEs sane, groups stable.

Tolerances: the group moments of one set of rows fed in other batchings differ only by fp32 GEMM
round-off (~1e-7 of the moments, docs/concepts.md "Numerics"), so values agree to 1e-6. The SE is
a spread of replicates that differ from each other by ~se/sqrt(G) while round-off moves each by
~1e-7 of the value: for RankMe ~50 with se ~0.5 that is ~1e-7 * 50 / 0.1 ~ 5e-5 of the SE, hence
rtol 1e-3 on SEs from fp32 rows (and 1e-9 from fp64 rows, whose GEMM is fp64).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchmetrics import MetricCollection

from geomtrace import AlphaReQ, EigenSpectrum, Geometry, RankMe
from geomtrace.covariance import PENDING_NAMES, STATE_NAMES
from geomtrace.uncertainty import jackknife_se, t_quantile
from timeouts import SUBPROCESS_TIMEOUT

WORKER = Path(__file__).parent / "workers" / "uncertainty_ddp.py"


def power_law(n: int, d: int, seed: int, decay: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, d + 1, dtype=torch.float64) ** (-decay / 2)
    return (torch.randn(n, d, generator=gen, dtype=torch.float64) * scale + 3.0).to(dtype)


def fed(metric, x: torch.Tensor, sizes=None, **kwargs):
    if sizes is None:
        metric.update(x, **kwargs)
        return metric
    start = 0
    for size in sizes:
        part = {key: value[start : start + size] for key, value in kwargs.items()}
        metric.update(x[start : start + size], **part)
        start += size
    assert start == x.shape[0]
    return metric


def jack(**kwargs) -> Geometry:
    kwargs.setdefault("fit_range", (2, 30))
    return Geometry(uncertainty="jackknife", **kwargs)


# ------------------------------------------------------------------------- basic sanity
def test_se_is_finite_and_positive_and_the_single_metrics_agree():
    x = power_law(2000, 64, seed=0)
    out = fed(jack(eigenvalues=False), x, [500] * 4).compute()
    assert set(out) == {"rankme", "alpha", "r2", "rankme_se", "alpha_se"}
    for key in ("rankme_se", "alpha_se"):
        assert math.isfinite(float(out[key])) and float(out[key]) > 0
    assert float(out["rankme_se"]) < 0.1 * float(out["rankme"])
    rankme = fed(RankMe(uncertainty="jackknife"), x, [500] * 4)
    assert torch.equal(rankme.compute(), out["rankme"])
    errors = rankme.compute_uncertainty()
    assert errors.alpha is None and errors.alpha_se is None and errors.groups == 20
    assert float(errors.rankme_se) == pytest.approx(float(out["rankme_se"]), rel=1e-12)
    assert errors.group_sizes.tolist() == [100.0] * 20
    alpha = fed(AlphaReQ(uncertainty="jackknife", fit_range=(2, 30)), x, [500] * 4).compute()
    assert set(alpha) == {"alpha", "r2", "alpha_se"}
    assert float(alpha["alpha_se"]) == pytest.approx(float(out["alpha_se"]), rel=1e-12)
    low, high = errors.interval("rankme")
    assert high - low == pytest.approx(2 * t_quantile(0.975, 19) * float(errors.rankme_se))
    summary = fed(jack(), x).compute_summary()
    assert summary.rankme_se is not None and summary.alpha_se is not None


def test_t_quantile_and_the_se_formula():
    assert t_quantile(0.975, 19) == pytest.approx(2.0930, abs=2e-4)
    assert t_quantile(0.975, 9) == pytest.approx(2.2622, abs=2e-4)
    replicates = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    assert float(jackknife_se(replicates)) == pytest.approx(math.sqrt(3 / 4 * 5.0))
    assert math.isnan(float(jackknife_se(torch.tensor([1.0, math.nan]))))


def test_se_shrinks_as_one_over_sqrt_n():
    """N -> 4N halves the SE (mean of 4 seeds: a 20-group SE alone scatters by ~16 %)."""
    ratios = {}
    for key in ("rankme_se", "alpha_se"):
        small = [float(fed(jack(eigenvalues=False), power_law(1024, 32, seed=s)).compute()[key]) for s in range(4)]
        large = [float(fed(jack(eigenvalues=False), power_law(4096, 32, seed=s)).compute()[key]) for s in range(4)]
        ratios[key] = sum(small) / sum(large)
    for key, ratio in ratios.items():
        assert 1.5 < ratio < 2.7, (key, ratio)


def test_se_matches_the_spread_across_draws():
    """The SE's own target: the standard deviation of the estimate over independent draws."""
    estimates, ses = [], []
    for seed in range(12):
        out = fed(jack(eigenvalues=False), power_law(2048, 32, seed=100 + seed)).compute()
        estimates.append(float(out["rankme"]))
        ses.append(float(out["rankme_se"]))
    spread = torch.tensor(estimates).std().item()
    typical = math.sqrt(sum(s * s for s in ses) / len(ses))
    assert 0.5 < typical / spread < 2.0  # 12 draws: the spread itself is only known to ~20 %


# ----------------------------------------------------------------- today's behaviour kept
def test_uncertainty_none_leaves_states_and_results_as_they_were():
    plain, none = Geometry(), Geometry(uncertainty=None)
    assert tuple(plain._defaults) == tuple(none._defaults) == STATE_NAMES + PENDING_NAMES
    x = power_law(3000, 48, seed=1)
    sizes = [1000, 7, 993, 1000]
    reference = fed(Geometry(), x, sizes).compute()
    for metric in (fed(Geometry(uncertainty=None), x, sizes), fed(jack(fit_range=(12, 100)), x, sizes)):
        out = metric.compute()
        for key, value in reference.items():
            assert torch.equal(out[key], value), key  # bit-identical: the total is accumulated as before
    assert set(fed(AlphaReQ(), x).compute()) == {"alpha", "r2"}
    assert set(fed(Geometry(uncertainty=None, eigenvalues=False), x).compute()) == {"rankme", "alpha", "r2"}
    assert fed(Geometry(), x).compute_summary().rankme_se is None
    with pytest.raises(ValueError, match="uncertainty='jackknife'"):
        fed(RankMe(), x).compute_uncertainty()


# --------------------------------------------------------------------------- the groups
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-3), (torch.float64, 1e-9)], ids=["fp32", "fp64"])
def test_groups_do_not_depend_on_the_batch_split(dtype, rtol):
    x = power_law(2000, 48, seed=2, dtype=dtype)
    one = fed(jack(eigenvalues=False), x).compute()
    many = fed(jack(eigenvalues=False), x, [1, 19, 333, 7, 640, 1000]).compute()
    assert float(many["rankme"]) == pytest.approx(float(one["rankme"]), rel=1e-6)
    assert float(many["rankme_se"]) == pytest.approx(float(one["rankme_se"]), rel=rtol)
    assert float(many["alpha_se"]) == pytest.approx(float(one["alpha_se"]), rel=rtol)
    forward = jack(eigenvalues=False)
    for batch in x.split(250):
        forward(batch)  # forward resets the states for its batch: the round-robin must continue
    assert forward.group_count.tolist() == [100.0] * 20
    assert float(forward.compute()["rankme_se"]) == pytest.approx(float(one["rankme_se"]), rel=rtol)


def test_sample_index_makes_the_groups_independent_of_order_and_masks():
    x = power_law(1000, 32, seed=3, dtype=torch.float64)
    index = torch.arange(1000)
    ordered = fed(jack(eigenvalues=False), x, [500, 500], sample_index=index).compute()
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    shuffled = fed(jack(eigenvalues=False), x[perm], [300, 700], sample_index=index[perm]).compute()
    for key in ("rankme_se", "alpha_se"):
        assert float(shuffled[key]) == pytest.approx(float(ordered[key]), rel=1e-9)
    # round-robin over the rows in order gives the same groups as their positions
    plain = fed(jack(eigenvalues=False), x).compute()
    assert float(plain["rankme_se"]) == pytest.approx(float(ordered["rankme_se"]), rel=1e-9)
    # masked and NaN rows are dropped together with their index
    padded = torch.cat([x, torch.full((5, 32), math.nan, dtype=torch.float64), x[:3]])
    mask = torch.ones(1008, dtype=torch.bool)
    mask[1005:] = False
    with pytest.warns(UserWarning, match="dropped 5"):
        masked = jack(eigenvalues=False)
        masked.update(padded, mask=mask, sample_index=torch.arange(1008))
    assert float(masked.compute()["rankme_se"]) == pytest.approx(float(ordered["rankme_se"]), rel=1e-9)
    with pytest.raises(ValueError, match="shape"):
        jack().update(x, sample_index=index[:10])
    with pytest.raises(TypeError, match="integers"):
        jack().update(x, sample_index=index.double())


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric:UserWarning")
def test_merge_of_two_metrics_equals_one():
    x = power_law(2000, 48, seed=4) + torch.linspace(0, 1, 2000)[:, None]  # the halves differ: two shifts
    single = fed(jack(eigenvalues=False), x, [1000, 1000]).compute()
    first, second = fed(jack(eigenvalues=False), x[:1000]), fed(jack(eigenvalues=False), x[1000:])
    first.merge_state(second)  # 1000 rows = 50 rounds of 20 groups: the same assignment as one metric
    merged = first.compute()
    assert float(merged["rankme"]) == pytest.approx(float(single["rankme"]), rel=1e-6)
    for key in ("rankme_se", "alpha_se"):
        assert float(merged[key]) == pytest.approx(float(single[key]), rel=1e-3)
    empty = jack(eigenvalues=False)
    empty.merge_state(fed(jack(eigenvalues=False), x))
    assert float(empty.compute()["rankme_se"]) == pytest.approx(float(fed(jack(), x).compute()["rankme_se"]), rel=1e-9)
    with pytest.raises(ValueError, match="groups"):
        jack().merge_state(fed(Geometry(uncertainty="jackknife", groups=10), x))


def test_state_dict_round_trip_continues_the_accumulation():
    x = power_law(1500, 32, seed=5)
    reference = fed(jack(eigenvalues=False), x, [700, 800]).compute()
    saved = fed(jack(eigenvalues=False), x[:700]).state_dict()
    assert {"group_count", "group_sum", "group_second"} <= set(saved)
    restored = jack(eigenvalues=False)
    restored.load_state_dict(saved)
    restored.update(x[700:])
    out = restored.compute()
    for key in ("rankme_se", "alpha_se"):
        assert float(out[key]) == pytest.approx(float(reference[key]), rel=1e-3)
    assert float(saved["group_count"].sum()) == 700  # the caller's dict is not changed


def test_metric_collection_and_reset():
    x = power_law(1000, 32, seed=6)
    collection = MetricCollection({"rankme": RankMe(uncertainty="jackknife"), "spectrum": EigenSpectrum()})
    collection.update(x)
    assert float(collection["rankme"].compute_uncertainty().rankme_se) > 0
    metric = fed(jack(), x)
    metric.reset()
    assert metric.group_sum.numel() == 0 and float(metric.group_count.sum()) == 0
    singular = fed(Geometry(uncertainty="jackknife", spectrum="singular", groups=5), x).compute()
    assert math.isfinite(float(singular["rankme_se"])) and float(singular["rankme_se"]) > 0
    with pytest.warns(UserWarning):
        before = jack(eigenvalues=False).compute()  # nothing accumulated: NaN values, NaN errors
    assert math.isnan(float(before["rankme_se"])) and math.isnan(float(before["alpha_se"]))
    few = jack(eigenvalues=False)
    few.update(x[:30])  # 20 groups of 1-2 rows: the replicates exist, alpha's fit range is clipped
    out = few.compute()
    assert math.isfinite(float(out["rankme_se"]))


# ---------------------------------------------------------------------- validation, cap
def test_options_are_validated():
    with pytest.raises(ValueError, match="groups must be an int >= 2"):
        Geometry(uncertainty="jackknife", groups=1)
    with pytest.raises(ValueError, match="groups must be an int >= 2"):
        RankMe(uncertainty="jackknife", groups=True)
    with pytest.raises(ValueError, match="only applies with uncertainty='jackknife'"):
        AlphaReQ(groups=10)
    with pytest.raises(ValueError, match="must be None or 'jackknife'"):
        Geometry(uncertainty="jacknife")
    with pytest.raises(ValueError, match="bootstrap' is not offered"):
        Geometry(uncertainty="bootstrap")


def test_memory_cap_names_the_memory_and_what_to_do():
    metric = Geometry(uncertainty="jackknife", groups=20, max_group_memory=2**20)
    with pytest.raises(ValueError, match=r"20 group covariances of 128 x 128 float64.*2\.5 MiB.*groups=7"):
        metric.update(torch.randn(64, 128))
    Geometry(uncertainty="jackknife", groups=20, max_group_memory=None).update(torch.randn(64, 128))


# ------------------------------------------------------------------------- distributed
@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory, pick_free_port) -> dict[str, dict]:
    """Both splits' values on both ranks, from one 2-rank worker run (one start-up for both)."""
    out = tmp_path_factory.mktemp("gloo") / "result.json"
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), str(pick_free_port()), "333,900"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {f"rank{rank}": json.loads(Path(f"{out}.rank{rank}").read_text()) for rank in (0, 1)}


@pytest.mark.parametrize("split", [333, 900], ids=["uneven", "rank1-empty"])
def test_two_gloo_ranks_equal_one_process(gloo_results, split):
    from uncertainty_ddp import features  # tests/workers/ is on sys.path (pyproject's pythonpath)

    x = features()
    reference = Geometry(uncertainty="jackknife", groups=10, fit_range=(2, 20), eigenvalues=False)
    for batch in x.split(64):
        reference.update(batch)
    expected = reference.compute()
    for rank in (0, 1):
        got = gloo_results[f"rank{rank}"][str(split)]
        assert got["local_n"] == got["local_groups"] == (split if rank == 0 else 900 - split)  # local states kept
        for key in ("rankme", "alpha"):
            assert got[key] == pytest.approx(float(expected[key]), rel=1e-6)
        for key in ("rankme_se", "alpha_se"):
            assert got[key] == pytest.approx(float(expected[key]), rel=1e-3)
