"""Worker for tests/test_uncertainty_measure.py: jackknife error bars through the tracker on 2 gloo ranks.

Each rank measures its shard of the probe set (``GeometryTracker(measure=MeasureConfig(uncertainty=...))``,
the callbacks' path); the groups follow the probe positions, so the errors are those of one process.

Usage: python uncertainty_tracker_ddp.py OUT_JSON PORT
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_finish import finish_rank  # tests/workers/ is the script's folder, on sys.path

#: The measurement options (tokens="mean": every token of a probe feeds one row of its group).
CONFIG = {"tokens": "mean", "fit_range": (2, 20), "batch_size": 4, "uncertainty": "jackknife", "uncertainty_groups": 5}


def probe_set():
    from geomtrace.probes import ProbeSet

    gen = torch.Generator().manual_seed(11)
    lengths = torch.randint(6, 21, (41,), generator=gen).tolist()  # 41: uneven shards (20 + 21)
    return ProbeSet([torch.randint(3, 300, (k,), generator=gen).tolist() for k in lengths], "random n=41", 0)


def run(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    from geomtrace.options import MeasureConfig
    from geomtrace.tiny import build_tiny_model
    from geomtrace.tracking import GeometryTracker

    model = build_tiny_model("gpt_neox", vocab_size=300, hidden_size=64)  # same seed: same weights on each rank
    tracker = GeometryTracker(probes=probe_set(), measure=MeasureConfig(**CONFIG))
    measurement = tracker.measure(model, 0)
    assert measurement is not None
    finish_rank(out, rank, {k: float(v) for k, v in measurement.scalars.items()})


if __name__ == "__main__":
    out_path, port = sys.argv[1], int(sys.argv[2])
    mp.spawn(run, args=(2, port, out_path), nprocs=2, join=True)
