"""Lightning strategy="ddp" on 2 CPU processes with GeometryMonitor (and a memorization probe); rank 0 writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L

from geomtrace.callbacks import GeometryMonitor
from geomtrace.tiny import train_bpe_tokenizer
from lightning_helpers import TinyLM, token_loader
from memorization_helpers import cloze_probe, repetitive_documents


def main(out: str) -> None:
    tokenizer = train_bpe_tokenizer()
    # The final step (4) is measured by the end rule in on_train_batch_end, on every rank alike.
    # Each rank scores its shard of the memorization pairs; rank 0 alone queries the ∞-gram source.
    probe = cloze_probe(repetitive_documents())
    monitor = GeometryMonitor(
        every_n_steps=3, num_sequences=48, history_file=str(Path(out).with_suffix(".history.json")), memorization=probe
    )
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(TinyLM(tokenizer), token_loader(tokenizer))
    if trainer.is_global_zero:
        Path(out).write_text(json.dumps({"history": monitor.history, "infgram_queries": probe.index.queries}))


if __name__ == "__main__":
    main(sys.argv[1])
