"""Worker for tests/test_distributed.py: the "all ranks agree" helpers of geomtrace._distributed on 2 gloo ranks.

Usage: python agree_ddp.py OUT_JSON PORT
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_finish import finish_rank  # tests/workers/ is the script's folder, on sys.path


def run(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    from geomtrace._distributed import all_ranks, any_rank, any_rank_each

    calls = []
    reduce = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return reduce(tensor, *args, **kwargs)

    dist.all_reduce = counted
    only_rank1 = rank == 1
    result = {
        "any_one": any_rank(only_rank1, "cpu"),
        "any_none": any_rank(False, "cpu"),
        "all_one": all_ranks(not only_rank1, "cpu"),  # rank 1 says no
        "all_every": all_ranks(True, "cpu"),
        "each": any_rank_each([False, only_rank1, rank == 0, False], "cpu"),
        "each_empty": any_rank_each([], "cpu"),
        "local": any_rank(only_rank1, "cpu", world_size=1),  # the caller measures without distribution
    }
    result["collectives"] = calls  # one per agreed call, none for [] or world_size=1
    finish_rank(out, rank, result)


if __name__ == "__main__":
    out_path, port = sys.argv[1], int(sys.argv[2])
    mp.spawn(run, args=(2, port, out_path), nprocs=2, join=True)
