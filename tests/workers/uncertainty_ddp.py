"""Worker for tests/test_uncertainty.py: jackknife groups summed over 2 gloo ranks.

Usage: python uncertainty_ddp.py OUT_JSON PORT SPLIT[,SPLIT...]   (SPLIT: rows of rank 0; the rest go
to rank 1; the splits run one after the other in one process group, OUT_JSON.rank{r} maps each to its results)
Each rank passes the rows' global positions as ``sample_index``, so the groups are those of one
process; rank 1 also feeds its shard in reverse order (the groups must not care).
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_finish import finish_rank  # tests/workers/ is the script's folder, on sys.path


def features() -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return (torch.randn(900, 48, generator=gen) * torch.arange(1, 49) ** -0.5 + 5.0).float()


def run(rank: int, world_size: int, port: int, splits: list[int], out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    finish_rank(out, rank, {str(split): measure(rank, split) for split in splits})


def measure(rank: int, split: int) -> dict[str, float]:
    """This rank's synced values with ``split`` rows on rank 0 and the rest on rank 1."""
    from geomtrace import Geometry

    x = features()
    index = torch.arange(x.shape[0])
    rows, positions = (x[:split], index[:split]) if rank == 0 else (x[split:].flip(0), index[split:].flip(0))
    metric = Geometry(uncertainty="jackknife", groups=10, fit_range=(2, 20), eigenvalues=False)
    for batch, where in zip(rows.split(64), positions.split(64), strict=True):
        metric.update(batch, sample_index=where)
    out_values = metric.compute()
    result = {key: float(value) for key, value in out_values.items()}
    result["local_n"] = float(metric.n_samples)
    result["local_groups"] = float(metric.group_count.sum())
    return result


if __name__ == "__main__":
    out_path, port, splits = sys.argv[1], int(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")]
    mp.spawn(run, args=(2, port, splits, out_path), nprocs=2, join=True)
