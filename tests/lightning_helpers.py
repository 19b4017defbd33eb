"""A tiny LightningModule around a Hugging Face causal LM, shared by the Lightning tests."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from geomtrace.tiny import build_tiny_model, train_bpe_tokenizer


class TinyLM(L.LightningModule):
    def __init__(self, tokenizer=None, hidden_size: int = 64, seed: int = 0, lr: float = 1e-3) -> None:
        super().__init__()
        self.tokenizer = tokenizer or train_bpe_tokenizer()
        self.model = build_tiny_model("gpt_neox", hidden_size=hidden_size, tokenizer=self.tokenizer, seed=seed)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        return self.model(input_ids=ids, labels=ids).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return token_loader(self.tokenizer)


def token_loader(tokenizer, n_blocks: int = 32, seq_len: int = 32, batch_size: int = 4) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tokenizer), (n_blocks, seq_len), generator=gen)
    return DataLoader(TensorDataset(ids), batch_size=batch_size, shuffle=False)


def read_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """All scalars of the TensorBoard event files under ``log_dir``: {tag: [(step, value)]}."""
    from pathlib import Path

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out
