"""2 gloo ranks, a tiny GPT-NeoX sharded with FSDP2 (`fully_shard`) on CPU, measured once.

Usage: python fsdp_measure.py OUT_JSON PORT
"""

from __future__ import annotations

import math
import os
import sys

import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_finish import finish_rank  # tests/workers/ is the script's folder, on sys.path

PROBES = 33  # odd: the ranks get 17 and 16 probes, so one rank runs a filler forward


def run(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from geomtrace.measure import MeasureConfig, measure_geometry
    from geomtrace.probes import load_probes
    from geomtrace.tiny import build_tiny_model, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer()
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer, hidden_size=64)
    mesh = init_device_mesh("cpu", (2,))
    for layer in model.gpt_neox.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    from feature_metrics import BrokenOnRankOne, ParticipationRatio

    extra = {"pr": ParticipationRatio(), "broken": BrokenOnRankOne()}
    result = measure_geometry(
        model, load_probes(tokenizer, num_sequences=PROBES), MeasureConfig(batch_size=8), extra_metrics=extra
    ).last
    finish_rank(
        out,
        rank,
        {
            "rankme": result.rankme,
            "n_samples": result.n_samples,
            "pr": result.extras["pr"],
            "broken_is_nan": math.isnan(result.extras["broken"]),
        },
    )


if __name__ == "__main__":
    mp.spawn(run, args=(int(sys.argv[2]), sys.argv[1]), nprocs=2, join=True)
