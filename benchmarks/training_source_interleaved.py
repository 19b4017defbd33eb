"""CPU cost of ``source="training"`` on the demo, paired *inside one run*: blocks with and without.

``benchmarks/training_source.py`` pairs whole runs, and on a shared machine two identical runs
differ by several per cent of CPU time, ten times the effect. Here one Lightning fit of the demo
(``recipes/pretrain.py``'s corpus, tokenizer, model and optimiser at its defaults: Pythia-14m
shape, d = 128, 6 layers, 32 x 128 tokens per step, fp32) alternates blocks of ``--every-n-steps``
steps: in an "off" block the monitor's hooks are removed and none of its callbacks run (a plain
training step); in an "on" block ``GeometryMonitor(measure=MeasureConfig(source="training"))``
captures every training forward and measures, logs (TensorBoard scalars and, every
``--log-spectrum-every`` measurements, the eigenspectrum figure) and saves its history at the
block's last step, exactly what it does every ``every_n_steps`` in a normal run. Re-attaching the
hooks at each "on" block rebuilds the window's metric objects, a cost a normal run pays once, so
the figure errs high.

Each "on" block is compared with the mean of the "off" blocks on both sides (the process's CPU
time, all threads), which cancels the slow drift of a shared machine; the script prints the mean
paired overhead with its standard error, the median, and the monitor's own account.

Usage: python benchmarks/training_source_interleaved.py [--blocks 60] [--every-n-steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "pretrain.py"


def load_recipe() -> Any:
    spec = importlib.util.spec_from_file_location("pretrain_recipe", RECIPE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_interleaver(monitor: Any, block: int) -> Any:
    """A callback that runs ``monitor`` in odd blocks of ``block`` steps only, timing every block."""
    from lightning.pytorch.callbacks import Callback

    class Interleaved(Callback):
        def __init__(self) -> None:
            self.blocks: list[tuple[bool, float]] = []  # (monitor on, CPU seconds), in order
            self._on = False
            self._started: float | None = None

        def _close_block(self) -> None:
            if self._started is not None:
                self.blocks.append((self._on, time.process_time() - self._started))
            self._started = time.process_time()

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            monitor.setup(trainer, pl_module, stage)

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            monitor.on_fit_start(trainer, pl_module)
            monitor.tracker.detach()  # block 0 is "off"

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            monitor.on_train_start(trainer, pl_module)

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            step = int(trainer.global_step)
            if step % block:
                return
            self._close_block()
            self._on = (step // block) % 2 == 1
            if self._on:
                monitor.tracker.attach(monitor._model)  # a new window: rows of this block only
            else:
                monitor.tracker.detach()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self._on:
                monitor.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self._close_block()
            monitor.on_train_end(trainer, pl_module)

    return Interleaved()


def paired(blocks: list[tuple[bool, float]], skip: int) -> tuple[list[float], float]:
    """Per "on" block: (on - mean of its two "off" neighbours) / that mean; and the mean "off" block."""
    ratios, offs = [], []
    for index in range(max(1, skip), len(blocks) - 1):
        on, seconds = blocks[index]
        before, after = blocks[index - 1], blocks[index + 1]
        if on and not before[0] and not after[0]:
            base = (before[1] + after[1]) / 2
            ratios.append((seconds - base) / base)
            offs.append(base)
    return ratios, statistics.mean(offs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=60, help="blocks of --every-n-steps steps (half of them on)")
    parser.add_argument("--every-n-steps", type=int, default=10)
    parser.add_argument("--log-spectrum-every", type=int, default=5, help="the demo's default; 0: no figures")
    parser.add_argument("--skip", type=int, default=2, help="leading blocks left out (warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import lightning as L
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader

    from geomtrace.callbacks import GeometryMonitor
    from geomtrace.measure import MeasureConfig
    from geomtrace.options import Schedule
    from geomtrace.tiny import train_bpe_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe()
    max_steps = args.blocks * args.every_n_steps
    cli = ["--max-steps", str(max_steps), "--memorization-pairs", "0", "--no-save", "--quiet"]
    options = recipe.parse_args(cli)
    L.seed_everything(options.seed, verbose=False)
    texts = recipe.build_corpus(options)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=options.vocab_size)
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    ids = torch.tensor([token for text_ids in encoded for token in (*text_ids, tokenizer.eos_token_id)])
    dataset = recipe.TokenBlocks(ids, options.seq_len)
    sampler = recipe.RepeatedShuffle(len(dataset), max_steps * options.batch_size, options.seed)
    loader = DataLoader(dataset, batch_size=options.batch_size, sampler=sampler, drop_last=True)
    model = recipe.build_model(options, tokenizer)

    now = datetime.datetime.now(datetime.timezone.utc)
    try:
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        load = "unknown"
    print(
        f"{now:%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load {load}; the demo for {max_steps} "
        f"steps in {args.blocks} blocks of {args.every_n_steps}, figures every {args.log_spectrum_every} "
        "measurements",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as out:
        monitor = GeometryMonitor(
            tokenizer=tokenizer,
            schedule=Schedule(
                every_n_steps=args.every_n_steps, extra_steps=(), log_spectrum_every=args.log_spectrum_every
            ),
            measure=MeasureConfig(source="training"),
            from_pretrained=False,
            history_file=str(Path(out) / "geometry.json"),
        )
        interleaved = make_interleaver(monitor, args.every_n_steps)
        trainer = L.Trainer(
            max_steps=max_steps,
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            logger=TensorBoardLogger(out, name="tensorboard", version=""),
            callbacks=[interleaved],
            log_every_n_steps=10,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            gradient_clip_val=1.0,
        )
        started = time.process_time()
        trainer.fit(recipe.make_module(model, tokenizer, options), train_dataloaders=loader)
        fit_cpu = time.process_time() - started
        cost = monitor.tracker.cost() or {}
        history = monitor.history
    ratios, off_block = paired(interleaved.blocks, args.skip)
    n = len(ratios)
    mean = 100 * statistics.mean(ratios)
    se = 100 * statistics.stdev(ratios) / n**0.5 if n > 1 else float("nan")
    measured_seconds = sum(row["geometry/seconds"] for row in history)
    per_block = cost.get("seconds_measuring", 0.0) / max(1, len(history))  # every 'on' block measures once
    print(json.dumps({"blocks": [[on, round(s, 4)] for on, s in interleaved.blocks]}))
    print(
        f"fit: {fit_cpu:.1f} s of CPU; an 'off' block of {args.every_n_steps} steps {off_block:.2f} s "
        f"({off_block / args.every_n_steps:.3f} s per step); {len(history)} measurements"
    )
    print(
        f"paired overhead of the monitor over {n} 'on' blocks: mean {mean:+.2f} % +/- {se:.2f} % (1 s.e.), "
        f"median {100 * statistics.median(ratios):+.2f} %, range {100 * min(ratios):+.2f} .. "
        f"{100 * max(ratios):+.2f} % (aim <= 1 %)"
    )
    print(
        f"the monitor's own account: {cost.get('seconds_measuring', float('nan')):.2f} s measuring; the windows' "
        f"geometry {measured_seconds:.2f} s; per 'on' block {per_block:.3f} s = "
        f"{100 * per_block / off_block:.2f} % of an 'off' block"
    )


if __name__ == "__main__":
    main()
