"""Worker for tests/test_training_source.py: 2 gloo ranks measure the training batches' windows.

Each rank runs the training forwards of its share of each window's batches through a
``GeometryTracker(measure=MeasureConfig(source="training"))`` (the path the callbacks take);
the windows' moments are summed over the ranks. ``rank1-empty``: rank 1 sees no batch in the
second window and still joins its collectives. ``fsdp``: as ``even``, with the model sharded by
FSDP2 (``fully_shard`` on each decoder layer and the whole model): the hooks sit on the sharded
modules, every forward all-gathers the parameters and every backward reduce-scatters the gradients.

The splits given run one after the other in one process group (one start-up for them all).

Usage: python training_source_ddp.py OUT_JSON PORT SPLIT[,SPLIT...]   (SPLIT: even | rank1-empty | fsdp)
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_finish import finish_rank  # tests/workers/ is the script's folder, on sys.path

#: Each window: the seeds of its batches (32 sequences of 16 tokens each).
WINDOWS: list[list[int]] = [[10, 11, 12, 13], [20, 21, 22]]


def batches_of(window: list[int]) -> list[torch.Tensor]:
    return [torch.randint(3, 300, (32, 16), generator=torch.Generator().manual_seed(seed)) for seed in window]


def run(rank: int, world_size: int, port: int, splits: list[str], out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    finish_rank(out, rank, {split: windows_of(rank, world_size, split) for split in splits})


def windows_of(rank: int, world_size: int, split: str) -> list[dict[str, float]]:
    """This rank's values of each window of ``WINDOWS``, the batches shared out as ``split`` says."""
    from geomtrace.options import MeasureConfig, Schedule
    from geomtrace.tiny import build_tiny_model
    from geomtrace.tracking import GeometryTracker

    model = build_tiny_model("gpt_neox", vocab_size=300, hidden_size=128)  # same seed: same weights on each rank
    if split == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world_size,))
        for layer in model.gpt_neox.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    tracker = GeometryTracker(schedule=Schedule(every_n_steps=1), measure=MeasureConfig(source="training"))
    tracker.prepare(None)
    tracker.attach(model)
    tracker.begin(object(), 0)
    model.train()
    windows = []
    for step, window in enumerate(WINDOWS, start=1):
        batches = batches_of(window)
        if split == "rank1-empty" and step == 2:
            mine = batches if rank == 0 else []
        else:
            mine = batches[rank::world_size]
        if split == "fsdp" and len(mine) < len(batches[::world_size]):
            # FSDP: every rank runs every forward and backward (their collectives pair up), so
            # the rank with one batch fewer trains on a filler that the paused hook leaves out.
            assert tracker.training_features is not None
            tracker.training_features.enabled = False
            model(input_ids=batches[0], labels=batches[0]).loss.backward()
            tracker.training_features.enabled = True
        for ids in mine:
            model(input_ids=ids, labels=ids).loss.backward()
        measurement = tracker.measure(model, step)
        assert measurement is not None
        last = measurement.result.last
        windows.append(
            {
                "rankme": last.rankme,
                "alpha": last.alpha,
                "n": last.n_samples,
                "rows": measurement.result.window["rows"],
            }
        )
    tracker.detach()
    return windows


if __name__ == "__main__":
    out_path, port, splits = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
    mp.spawn(run, args=(2, port, splits, out_path), nprocs=2, join=True)
