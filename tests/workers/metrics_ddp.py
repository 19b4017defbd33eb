"""Worker for tests/test_distributed.py: 2 gloo ranks, uneven shards, in-place all_reduce sync.

Usage: python metrics_ddp.py OUT_JSON PORT CASE[,CASE...]   (CASE: SPLIT or SPLIT:BLOCK; SPLIT: rows
of rank 0, the rest go to rank 1; BLOCK: force the upper-block-triangle update with blocks of BLOCK
rows at every d). The cases run one after the other in one process group; OUT_JSON.rank{r} maps
each CASE to its results.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_finish import finish_rank  # tests/workers/ is the script's folder, on sys.path


def features() -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    return (torch.randn(900, 128, generator=gen) * torch.linspace(0.1, 3.0, 128) + 20.0).float()


def extreme_features() -> torch.Tensor:
    """float64, mean 1e6 and spread 0.01, the second half shifted: each rank's first batch
    (its shift) differs, and sums around 0 would lose every digit at (mean/std)^2 ~ 1e16."""
    gen = torch.Generator().manual_seed(321)
    x = torch.randn(900, 32, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 2.0, 32, dtype=torch.float64)
    x = x * 0.01 + 1e6
    x[450:] += 0.03
    return x


def run(rank: int, world_size: int, port: int, cases: list[str], out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)

    def forbidden(*_args, **_kwargs):
        raise AssertionError("all_gather must not be used to sync covariance states")

    dist.all_gather = forbidden  # the sync must use all_reduce only
    import geomtrace.covariance as cov

    defaults = cov.SYMMETRIC_MIN_DIM, cov.SYMMETRIC_BLOCK
    results = {}
    for case in cases:
        split, _, block = case.partition(":")
        cov.SYMMETRIC_MIN_DIM, cov.SYMMETRIC_BLOCK = (1, int(block)) if block else defaults
        results[case] = measure(rank, int(split))
    finish_rank(out, rank, results)


def measure(rank: int, split: int) -> dict:
    """This rank's synced values with ``split`` rows on rank 0 and the rest on rank 1."""
    from torchmetrics import MetricCollection

    from geomtrace import AlphaReQ, EigenSpectrum, Geometry, RankMe

    x = features()
    shard = x[:split] if rank == 0 else x[split:]
    metrics = MetricCollection({"rankme": RankMe(), "alpha": AlphaReQ(), "spectrum": EigenSpectrum()})
    for batch in shard.split(64):
        metrics.update(batch)
    out_values = metrics.compute()
    local_n = float(metrics["rankme"].n_samples)  # local state is restored after compute
    pending = metrics["rankme"].pending_m2  # unfolded window: only the upper blocks when blocked
    upper_only = bool((pending[torch.ones_like(pending, dtype=torch.bool).tril(-1)] == 0).any())
    extreme = extreme_features()
    geometry = Geometry(fit_range=(2, 20))
    for batch in (extreme[:split] if rank == 0 else extreme[split:]).split(64):
        geometry.update(batch)
    summary = geometry.compute_summary()
    from geomtrace.covariance import CovarianceAccumulator

    accumulator = CovarianceAccumulator()  # the framework-free holder: same state, same all-reduce
    for batch in shard.split(64):
        accumulator.update(batch)
    accumulator.all_reduce()
    result = {
        "rankme": float(out_values["rankme"]),
        "alpha": float(out_values["alpha"]),
        "r2": float(out_values["r2"]),
        "top": out_values["spectrum"][:20].tolist(),
        "local_n": local_n,
        "upper_only": upper_only,
        "extreme_rankme": float(summary.rankme),
        "extreme_alpha": float(summary.alpha),
        "extreme_n": summary.n_samples,
        "accumulator_n": float(accumulator.n),
        "accumulator_diag": accumulator.covariance().diagonal()[:20].tolist(),
    }
    return result


if __name__ == "__main__":
    out_path, port, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
    mp.spawn(run, args=(2, port, cases, out_path), nprocs=2, join=True)
