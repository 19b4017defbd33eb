#!/usr/bin/env python
"""Pretrain a Pythia-shaped model from scratch with live geometry (Lightning + TensorBoard).

The default is the tiny CPU demo: a Pythia-14m-shaped GPT-NeoX (d = 128, 6 layers) with a
byte-level BPE tokenizer trained on the embedded corpus (paragraphs of Python's own
documentation, shipped with CPython), GeometryMonitor measuring RankMe and alpha-ReQ every
``--every-n-steps`` steps, and a TensorBoardLogger. It saves a checkpoint series
(``checkpoints/stepN/``, Hugging Face folders with the tokenizer, at log-spaced early steps and
every ``--checkpoint-every`` steps) that ``geomtrace replay`` measures again, and ends by
printing where the logs are, a summary of the trajectory, the time spent measuring and the
path of a PNG plot of it.

Memorization beside geometry (with the ``memorization`` extra, Python >= 3.11): a few
paragraphs are held out of training, the training text is indexed with infini-gram
(``OUTPUT/ngram``), and cloze pairs cut from the training text and from the held-out text
are measured at every geometry step (``memorization/<probe>/spearman``, ``answer_logprob``,
``n_scored``; see docs/memorization.md). The pairs go to ``OUTPUT/memorization/*.jsonl`` so
``geomtrace replay --qa ... --index OUTPUT/ngram`` measures the checkpoints on the same ones
(the line it prints). ``--memorization-pairs 0`` turns it off.

    python recipes/pretrain.py                       # the demo, a few minutes on CPU
    python recipes/pretrain.py --max-steps 2000 --corpus zipf
    python recipes/pretrain.py --model EleutherAI/pythia-160m --from-config  # real shape, hub config
    tensorboard --logdir outputs/pretrain/tensorboard
    geomtrace replay --checkpoints outputs/pretrain/checkpoints --output runs/pretrain-replay
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, help="hub id or path whose *config* shapes the model "
                       "(default: a Pythia-14m-shaped config built locally)")
    model.add_argument("--from-config", action="store_true", default=True,
                       help="train from scratch from the model's config (the only mode; kept for clarity)")
    model.add_argument("--hidden-size", type=int, default=128, help="width of the default model (Pythia-14m: 128)")
    model.add_argument("--num-layers", type=int, default=6, help="depth of the default model (Pythia-14m: 6)")
    model.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary trained on the corpus")
    data = parser.add_argument_group("data")
    data.add_argument("--corpus", default="embedded", choices=["embedded", "zipf"],
                      help="embedded: Python's documentation (~100k tokens, no download); "
                      "zipf: a synthetic corpus with Zipfian token frequencies, as large as you like")
    data.add_argument("--corpus-tokens", type=int, default=2_000_000, help="size of the zipf corpus in tokens")
    data.add_argument("--seq-len", type=int, default=128)
    train = parser.add_argument_group("training")
    train.add_argument("--max-steps", type=int, default=400)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--warmup-steps", type=int, default=40, help="linear warmup, then cosine decay to 10%%")
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--accelerator", default="auto")
    train.add_argument("--devices", default="auto")
    train.add_argument("--strategy", default="auto")
    train.add_argument("--precision", default="32-true")
    geometry = parser.add_argument_group("geometry")
    geometry.add_argument("--every-n-steps", type=int, default=25, help="measure geometry every N steps (0: off)")
    geometry.add_argument("--extra-steps", default="1,2,4,8,16,32,64",
                          help="further steps to measure at (log-spaced early steps resolve the warmup collapse; "
                          "'' for none)")
    geometry.add_argument("--num-probes", type=int, default=1024, help="probe sequences (paper: 1024)")
    geometry.add_argument("--probe-batch-size", type=int, default=64)
    geometry.add_argument("--probe-autocast", default="auto", choices=("auto", "off", "bf16", "fp16"),
                          help="probe forward precision: auto (the trainer's), bf16/fp16 (autocast the probes only), off")
    geometry.add_argument("--layers", default="last", help="'last', 'all' or comma-separated indices")
    geometry.add_argument("--log-spectrum-every", type=int, default=5,
                          help="eigenspectrum figure every N measurements and at the last (0: never)")
    geometry.add_argument("--source", default="probes", choices=("probes", "training"),
                          help="probes: an extra forward over the fixed probe set per measurement; training: "
                          "the training batches' own hidden states, accumulated over each window (no extra forward)")
    geometry.add_argument("--no-geometry", action="store_true", help="train without GeometryMonitor (baseline)")
    memo = parser.add_argument_group("memorization")
    memo.add_argument("--memorization-pairs", type=int, default=256,
                      help="cloze pairs per probe (training text, held-out text); 0: no memorization, no hold-out")
    memo.add_argument("--heldout-fraction", type=float, default=0.05,
                      help="share of the corpus's documents held out of training for the held-out probes")
    out = parser.add_argument_group("output")
    out.add_argument("--output", default="outputs/pretrain", help="logs, checkpoints, final model and plots go here")
    out.add_argument("--checkpoint-steps", default="0,4,16,64",
                     help="early steps to save a checkpoint at, under OUTPUT/checkpoints/stepN ('' for none)")
    out.add_argument("--checkpoint-every", type=int, default=100,
                     help="also save a checkpoint every N steps and at the last step (0: only --checkpoint-steps)")
    out.add_argument("--no-save", action="store_true", help="save no checkpoint and no final model")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


class RepeatedShuffle(Sampler[int]):
    """``num_samples`` indices from successive seeded permutations of ``range(size)``.

    One pass of this sampler is the whole run, so Lightning sees one epoch of exactly
    ``max_steps`` batches: an honest progress bar and rate, however small the corpus.
    """

    def __init__(self, size: int, num_samples: int, seed: int) -> None:
        self.size, self.num_samples, self.seed = size, num_samples, seed

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        produced = 0
        while produced < self.num_samples:
            for index in torch.randperm(self.size, generator=gen)[: self.num_samples - produced].tolist():
                yield index
            produced = min(self.num_samples, produced + self.size)


class TokenBlocks(Dataset):
    """Contiguous ``seq_len``-token blocks of one long token stream."""

    def __init__(self, ids: torch.Tensor, seq_len: int) -> None:
        usable = (ids.numel() // seq_len) * seq_len
        if usable == 0:
            raise ValueError(f"the corpus has {ids.numel()} tokens, fewer than one block of {seq_len}")
        self.blocks = ids[:usable].view(-1, seq_len)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.blocks[index]


def zipf_corpus(n_tokens: int, vocab: list[str], seed: int, exponent: float = 1.1) -> list[str]:
    """Synthetic sentences whose words follow a Zipf law with a little bigram structure."""
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.arange(1, len(vocab) + 1, dtype=torch.float64)
    probs = ranks ** -exponent
    probs /= probs.sum()
    words = torch.multinomial(probs, n_tokens, replacement=True, generator=gen)
    # Make each word depend on its predecessor sometimes, so there is something to learn.
    follow = torch.randint(0, len(vocab), (len(vocab),), generator=gen)
    copy = torch.rand(n_tokens, generator=gen) < 0.3
    words[1:][copy[1:]] = follow[words[:-1][copy[1:]]]
    sentences, length = [], 12
    for start in range(0, n_tokens, length):
        sentences.append(" ".join(vocab[i] for i in words[start : start + length].tolist()) + ".")
    return sentences


def build_corpus(args: argparse.Namespace) -> list[str]:
    from geomtrace.tiny import embedded_corpus

    paragraphs = embedded_corpus()
    if args.corpus == "embedded":
        return paragraphs
    # Words of the embedded corpus, most frequent first, as the Zipf vocabulary.
    counts: dict[str, int] = {}
    for paragraph in paragraphs:
        for word in paragraph.split():
            counts[word] = counts.get(word, 0) + 1
    vocab = sorted(counts, key=lambda w: -counts[w])[:8000]
    return zipf_corpus(args.corpus_tokens, vocab, args.seed)


def make_module(model: torch.nn.Module, tokenizer, args: argparse.Namespace):
    import lightning as L

    class CausalLMModule(L.LightningModule):
        """Next-token prediction with AdamW, linear warmup and cosine decay."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.tokenizer = tokenizer  # GeometryMonitor picks it up from here

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            loss = self.model(input_ids=batch, labels=batch).loss
            self.log("train/loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                          betas=(0.9, 0.95))

            def schedule(step: int) -> float:
                if step < args.warmup_steps:
                    return (step + 1) / args.warmup_steps
                progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
                return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    return CausalLMModule()


def build_model(args: argparse.Namespace, tokenizer) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    from geomtrace.tiny import tiny_pythia_config

    if args.model:
        config = AutoConfig.from_pretrained(args.model)
        config.vocab_size = len(tokenizer)
    else:
        # Pythia-14m's shape at the defaults (d=128, 6 layers, 4 heads, MLP 4d, rotary 25%).
        config = tiny_pythia_config(len(tokenizer), hidden_size=args.hidden_size, num_layers=args.num_layers,
                                    num_heads=4, max_position_embeddings=max(512, args.seq_len),
                                    intermediate_size=4 * args.hidden_size)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(args.seed)
    return AutoModelForCausalLM.from_config(config)


def checkpoint_steps(args: argparse.Namespace) -> list[int]:
    """The steps the demo saves a Hugging Face checkpoint at (none with --no-save)."""
    if args.no_save:
        return []
    steps = {int(v) for v in args.checkpoint_steps.split(",") if v.strip()}
    if args.checkpoint_every > 0:
        steps.update(range(args.checkpoint_every, args.max_steps + 1, args.checkpoint_every))
        steps.add(args.max_steps)
    return sorted(s for s in steps if 0 <= s <= args.max_steps)


def save_hf(model: torch.nn.Module, tokenizer, path: Path) -> None:
    """``save_pretrained`` of model and tokenizer, without transformers' per-save progress bar."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def checkpoint_series(model: torch.nn.Module, tokenizer, steps: list[int], directory: Path):
    """A Lightning callback saving ``directory/step{N}/`` (model + tokenizer) at ``steps``.

    These are the folders ``geomtrace replay --checkpoints`` reads (``stepN/`` with a
    ``config.json``). A few MB each for the demo model; rank 0 writes.
    """
    import lightning as L

    wanted, saved = set(steps), set()

    class CheckpointSeries(L.Callback):
        def _save(self, trainer) -> None:
            step = int(trainer.global_step)
            if step in wanted and step not in saved and trainer.is_global_zero:
                save_hf(model, tokenizer, directory / f"step{step}")
                saved.add(step)

        def on_train_start(self, trainer, pl_module) -> None:
            stale = sorted(directory.glob("step*")) if trainer.is_global_zero else []
            if stale:  # an earlier run's series would mix with this one in a replay
                print(f"[pretrain] replacing {len(stale)} checkpoint(s) of an earlier run in {directory}")
                for folder in stale:
                    shutil.rmtree(folder)
            self._save(trainer)

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self._save(trainer)

    return CheckpointSeries()


def run(args: argparse.Namespace) -> dict:
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from geomtrace.callbacks import GeometryMonitor
    from geomtrace.measure import MeasureConfig
    from geomtrace.probes import ProbeOptions
    from geomtrace.options import Schedule
    from geomtrace.tiny import train_bpe_tokenizer

    L.seed_everything(args.seed, verbose=False)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    texts = build_corpus(args)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=args.vocab_size)
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]  # one stream, cut below
    encoded, memorization = memorization_probes(args, tokenizer, encoded, output)
    ids = torch.tensor([token for text_ids in encoded for token in (*text_ids, tokenizer.eos_token_id)])
    dataset = TokenBlocks(ids, args.seq_len)
    sampler = RepeatedShuffle(len(dataset), max(1, args.max_steps) * args.batch_size, args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    model = build_model(args, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[pretrain] corpus: {args.corpus}, {ids.numel():,} tokens, {len(dataset)} blocks of {args.seq_len}; "
          f"model: {n_params / 1e6:.1f}M parameters (d={model.config.hidden_size})", flush=True)

    callbacks = []
    monitor = None
    history_path = output / "geometry.json"
    if not args.no_geometry and args.every_n_steps > 0:
        layers = args.layers if args.layers in ("last", "all") else [int(v) for v in args.layers.split(",")]
        extra = [int(v) for v in args.extra_steps.split(",") if v.strip()]
        # from_pretrained=False: trained from scratch, even when --model names a hub config
        # (the automatic rule would read that name as a pretrained start).
        monitor = GeometryMonitor(
            tokenizer=tokenizer,
            schedule=Schedule(every_n_steps=args.every_n_steps, extra_steps=tuple(extra),
                              log_spectrum_every=args.log_spectrum_every),
            measure=MeasureConfig(layers=layers, batch_size=args.probe_batch_size, autocast=args.probe_autocast,
                                  source=args.source),
            probes=ProbeOptions(num_sequences=args.num_probes),
            from_pretrained=False,
            history_file=str(history_path),
            memorization=memorization,
        )
        callbacks.append(monitor)
    saved_steps = checkpoint_steps(args)
    if saved_steps:
        callbacks.append(checkpoint_series(model, tokenizer, saved_steps, output / "checkpoints"))
    stale = sorted((output / "tensorboard").glob("events.out.tfevents.*"))
    if stale:  # two runs' curves in one folder would zig-zag over the same steps in TensorBoard
        print(f"[pretrain] replacing the TensorBoard events of an earlier run in {output / 'tensorboard'}")
        for path in stale:
            path.unlink()
    logger = TensorBoardLogger(str(output), name="tensorboard", version="")
    trainer = L.Trainer(
        max_steps=args.max_steps,
        max_epochs=1,  # one pass of the sampler is the whole run
        accelerator=args.accelerator,
        devices=args.devices,
        strategy=args.strategy,
        precision=args.precision,
        logger=logger,
        callbacks=callbacks,
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_progress_bar=not args.quiet,
        enable_model_summary=False,
        gradient_clip_val=1.0,
    )
    module = make_module(model, tokenizer, args)
    fit_started, fit_cpu_started = time.perf_counter(), time.process_time()
    trainer.fit(module, train_dataloaders=loader)
    fit_seconds = time.perf_counter() - fit_started
    fit_cpu_seconds = time.process_time() - fit_cpu_started  # all threads; less sensitive to other jobs
    summary = {"fit_seconds": fit_seconds, "total_seconds": time.perf_counter() - started,
               "n_params": n_params, "tensorboard": logger.log_dir, "history": []}
    if not trainer.is_global_zero:
        return summary
    if not args.no_save:
        save_hf(model, tokenizer, output / "final")
    if monitor is not None:
        # The monitor printed the trajectory summary and its cost; the record gets the token count.
        summary["history"] = monitor.history
        summary["cost"] = monitor.tracker.cost()
        monitor.tracker.save(history_path, n_params=n_params, tokens_per_step=args.batch_size * args.seq_len)
        summary["plot"] = str(_plot(monitor, output / "geometry.png"))
        print(f"[pretrain] geometry history: {history_path}; plot: {summary['plot']}")
    print(f"[pretrain] TensorBoard logs: {logger.log_dir}  (tensorboard --logdir {logger.log_dir})")
    if saved_steps:
        print(f"[pretrain] checkpoints at steps {', '.join(map(str, saved_steps))}: {output / 'checkpoints'}  "
              f"(geomtrace replay --checkpoints {output / 'checkpoints'} --output {output / 'replay'})")
    if not args.no_save:
        print(f"[pretrain] final model and tokenizer: {output / 'final'}")
    print(f"[pretrain] fit took {fit_seconds:.1f}s ({fit_cpu_seconds:.1f}s of CPU time)")
    return summary


def memorization_probes(args: argparse.Namespace, tokenizer, encoded: list[list[int]], output: Path):
    """``(documents to train on, memorization probes or None)``.

    Holds ``--heldout-fraction`` of the documents out of training, indexes the rest (what the
    model trains on) with infini-gram and cuts cloze pairs from both parts. Probes: ``train``
    and ``heldout`` under geomtrace's zero rule, and ``heldout_seedrule`` under the seed's (a
    zero-probability token dropped instead of the pair: on a small corpus most held-out answers
    hold one, see docs/memorization.md).
    Writes the QA sets to ``OUTPUT/memorization/train.jsonl`` and ``heldout.jsonl`` (the
    heldout_seedrule probe uses heldout's) for ``geomtrace replay --qa``.
    """
    if args.no_geometry or args.every_n_steps <= 0 or args.memorization_pairs <= 0:
        return encoded, None
    from geomtrace.memorization import MemorizationProbe, NgramIndex, QASet, hold_out

    try:
        from geomtrace.memorization.index import require_infini_gram

        require_infini_gram()
    except ImportError as err:
        print(f"[pretrain] no memorization tracking: {err}", flush=True)
        return encoded, None
    train_docs, held_docs = hold_out(encoded, fraction=args.heldout_fraction, seed=args.seed)
    index = NgramIndex.build(train_docs, output / "ngram", vocab_size=len(tokenizer))
    n = args.memorization_pairs
    train_qa = QASet.cloze(train_docs, n=n, seed=args.seed, description="training text")
    held_qa = QASet.cloze(held_docs, n=n, seed=args.seed, description="held-out text")
    options = {"batch_size": args.probe_batch_size, "autocast": args.probe_autocast}
    probes = [
        MemorizationProbe(train_qa, index, name="train", **options),
        MemorizationProbe(held_qa, index, name="heldout", **options),
        MemorizationProbe(held_qa, index, name="heldout_seedrule", zero_probability="as_one", **options),
    ]
    print(f"[pretrain] memorization: {len(held_docs)} of {len(encoded)} documents held out of training; "
          f"{len(train_qa)} + {len(held_qa)} cloze pairs against the index of the training text", flush=True)
    # One file per distinct QA set (heldout_seedrule scores heldout's pairs under the seed's
    # zero rule), so `geomtrace replay --qa` measures the checkpoints on the very same pairs.
    folder = output / "memorization"
    train_qa.to_jsonl(folder / "train.jsonl")
    held_qa.to_jsonl(folder / "heldout.jsonl")
    line = f"[pretrain] memorization QA sets: {folder}/train.jsonl, heldout.jsonl"
    if not args.no_save:  # the checkpoints replay reads
        line += (f"; replay one with: geomtrace replay --checkpoints {output / 'checkpoints'} "
                 f"--like {output / 'geometry.json'} --qa {folder / 'heldout.jsonl'} --index {output / 'ngram'} "
                 f"--memorization-name heldout --batch-size {args.probe_batch_size} "
                 f"--output {output / 'replay-heldout'}  (heldout_seedrule: add --zero-probability as_one)")
    print(line, flush=True)
    return train_docs, probes


def _plot(monitor, path: Path) -> Path | None:
    try:
        from geomtrace.phases import detect_phases
        from geomtrace.plots import memorization_series, save_figure, trajectory_figure
    except ImportError as err:
        print(f"[pretrain] no plot ({err})")
        return None
    history, keys = monitor.history, monitor.tracker.trajectory_keys()
    steps = [r["step"] for r in history]
    run = {"step": steps, "rankme": [r[keys["rankme"]] for r in history],
           "alpha": [r[keys["alpha"]] for r in history]}
    phases = detect_phases(run["step"], run["rankme"], run["alpha"]) if len(steps) >= 5 else None
    memorization = memorization_series(history, "spearman")
    for name, series in memorization_series(history, "answer_logprob").items():
        memorization.setdefault(name, {}).update(series)
    figure = trajectory_figure({"pretrain": run}, x="step", phases=phases, memorization=memorization or None,
                               memorization_keys=("spearman", "answer_logprob"))
    save_figure(figure, path)
    return path


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
