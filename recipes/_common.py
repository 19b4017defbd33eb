"""Shared pieces of the TRL post-training recipes (sft.py, dpo.py, grpo.py).

Each recipe: load a starting checkpoint (or build a tiny model when there is none), make a
small synthetic dataset in code, train with a TRL trainer + GeometryCallback reporting to
TensorBoard, then print where the logs are and how the geometry moved (start -> end).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PRETRAINED = "outputs/pretrain/final"


# ------------------------------------------------------------------ arguments
def build_parser(doc: str, *, output: str, max_steps: int, lr: float, batch_size: int,
                 model_default: Sequence[str] = (PRETRAINED,)) -> argparse.ArgumentParser:
    """Arguments common to the recipes; each recipe adds its own to the returned parser."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=None, help="checkpoint path or hub id to start from (default: the first of "
                       f"{', '.join(model_default)} that exists, else a fresh tiny model)")
    model.set_defaults(model_candidates=list(model_default))
    train = parser.add_argument_group("training")
    train.add_argument("--max-steps", type=int, default=max_steps)
    train.add_argument("--batch-size", type=int, default=batch_size, help="per-device batch size")
    train.add_argument("--lr", type=float, default=lr)
    train.add_argument("--num-examples", type=int, default=2000, help="size of the synthetic dataset")
    train.add_argument("--max-operand", type=int, default=20, help="arithmetic operands are drawn from 0..N")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--bf16", action="store_true",
                       help="bf16 mixed precision (TRL's own default is bf16=True, which fails on a CPU-only "
                       "machine unless use_cpu=True; the recipes default to fp32 and set use_cpu themselves)")
    geometry = parser.add_argument_group("geometry")
    geometry.add_argument("--every-n-steps", type=int, default=20, help="measure geometry every N steps")
    geometry.add_argument("--num-probes", type=int, default=256,
                          help="probe sequences (paper: 1024; 256 keeps the CPU demo fast)")
    geometry.add_argument("--probe-batch-size", type=int, default=64)
    geometry.add_argument("--probe-autocast", default="auto", choices=("auto", "off", "bf16", "fp16"),
                          help="probe forward precision: auto (the trainer's), bf16/fp16 (autocast the probes only), off")
    geometry.add_argument("--layers", default="last", help="'last', 'all' or comma-separated indices")
    geometry.add_argument("--plain-probes", action="store_true",
                          help="probe with raw text instead of chat-formatted probes")
    geometry.add_argument("--uncertainty", default="none", choices=("none", "jackknife"),
                          help="jackknife: standard errors of RankMe and alpha from the probe sample "
                          "(geometry/rankme_se, ...); the printed shift then says whether it exceeds them")
    geometry.add_argument("--uncertainty-groups", type=int, default=None,
                          help="the jackknife's groups (default: geomtrace's, 20)")
    out = parser.add_argument_group("output")
    out.add_argument("--output", default=output, help="checkpoints, TensorBoard logs and the final model go here")
    out.add_argument("--no-save", action="store_true", help="do not save the final model")
    out.add_argument("--quiet", action="store_true", help="no progress bar, fewer log lines")
    return parser


def parse_layers(text: str) -> str | list[int]:
    """``"last"``, ``"all"`` or ``"0,3,6"`` -> a GeometryCallback ``layers`` value."""
    if text in ("last", "all"):
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"--layers must be 'last', 'all' or comma-separated integers, got {text!r}") from None


# ---------------------------------------------------------------------- model
def load_start(args: argparse.Namespace, name: str) -> tuple[Any, Any, bool]:
    """The starting causal LM, its tokenizer (with a pad token and a chat template) and whether it was trained."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from geomtrace.tiny import CHAT_TEMPLATE

    source = args.model or next((path for path in args.model_candidates if Path(path, "config.json").is_file()), None)
    if source is None:
        print(f"[{name}] no checkpoint at {', '.join(args.model_candidates)} (run recipes/pretrain.py first "
              "for a pretrained start); building a fresh Pythia-14m-shaped model and BPE tokenizer instead")
        return (*_fresh_model(), False)
    print(f"[{name}] starting from {source}")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        print(f"[{name}] the tokenizer has no chat template; using geomtrace.tiny.CHAT_TEMPLATE")
        tokenizer.chat_template = CHAT_TEMPLATE
    return model, tokenizer, True


def _fresh_model() -> tuple[Any, Any]:
    # The same shape and vocabulary as recipes/pretrain.py's default, so results line up.
    from geomtrace.tiny import build_tiny_model, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(vocab_size=4096)
    model = build_tiny_model("gpt_neox", hidden_size=128, num_layers=6, intermediate_size=512,
                             max_position_embeddings=2048, tokenizer=tokenizer)
    return model, tokenizer


# ----------------------------------------------------------------------- data
def arithmetic(n: int, max_operand: int, seed: int) -> list[tuple[str, int]]:
    """``n`` questions ``"What is a+b?"`` (or a-b with a >= b) and their integer answers."""
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if rng.random() < 0.5:
            problems.append((f"What is {a}+{b}?", a + b))
        else:
            a, b = max(a, b), min(a, b)
            problems.append((f"What is {a}-{b}?", a - b))
    return problems


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


_NUMBER = re.compile(r"-?\d+")


def contains_number(text: str, answer: int) -> bool:
    """Whether ``answer`` appears in ``text`` as a whole number ("119" does not contain 19)."""
    return any(int(found) == answer for found in _NUMBER.findall(text))


# ------------------------------------------------------------------- training
def prepare(args: argparse.Namespace, name: str, rows: list[dict]) -> tuple[Any, Any, Any, Any]:
    """The starting model, its tokenizer, ``rows`` as a ``datasets.Dataset`` and the callback."""
    from datasets import Dataset

    model, tokenizer, trained = load_start(args, name)
    return model, tokenizer, Dataset.from_list(rows), geometry_callback(args, from_pretrained=trained)


def geometry_callback(args: argparse.Namespace, from_pretrained: bool):
    from geomtrace.callbacks.transformers import GeometryCallback
    from geomtrace.measure import MeasureConfig
    from geomtrace.probes import ProbeOptions
    from geomtrace.options import Schedule

    return GeometryCallback(
        # A fresh tiny model (no pretrain checkpoint) starts at initialisation: its early
        # collapse is warmup; from a checkpoint the run is post-training.
        from_pretrained=from_pretrained,
        history_file=str(Path(args.output) / "geometry.json"),
        schedule=Schedule(every_n_steps=args.every_n_steps),
        measure=MeasureConfig(layers=parse_layers(args.layers), batch_size=args.probe_batch_size,
                              autocast=args.probe_autocast, **uncertainty_options(args)),
        # post-trained models answer chat turns
        probes=ProbeOptions(num_sequences=args.num_probes, chat_template=not args.plain_probes, seed=args.seed),
    )


def uncertainty_options(args: argparse.Namespace) -> dict[str, Any]:
    """``MeasureConfig`` keywords for ``--uncertainty`` / ``--uncertainty-groups``."""
    if args.uncertainty == "none":
        if args.uncertainty_groups is not None:
            raise SystemExit("--uncertainty-groups needs --uncertainty jackknife")
        return {}
    options: dict[str, Any] = {"uncertainty": args.uncertainty}
    if args.uncertainty_groups is not None:
        options["uncertainty_groups"] = args.uncertainty_groups
    return options


def config_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments every TRL ``*Config`` of the recipes shares.

    ``bf16`` is set explicitly: TRL configs default to ``bf16=True``, which raises "Your setup
    doesn't support bf16/gpu" on a CPU-only machine, and ``use_cpu`` is set there so that
    ``--bf16`` works on a CPU too (the probes then run in bf16 as well: ``autocast="auto"``).
    """
    import torch

    return dict(
        use_cpu=not torch.cuda.is_available(),
        output_dir=args.output,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, args.max_steps // 20),
        logging_steps=max(1, args.every_n_steps // 2),
        save_strategy="no",
        report_to=["tensorboard"],
        seed=args.seed,
        bf16=args.bf16,
        disable_tqdm=args.quiet,
    )


def run(trainer: Any, callback: Any, args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Train, save, and print where the logs are and the geometry shift start -> end."""
    from geomtrace.phases import shift
    from transformers.integrations import TensorBoardCallback

    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    output = Path(args.output)
    if not args.no_save:
        trainer.save_model(str(output / "final"))
        trainer.processing_class.save_pretrained(str(output / "final"))
    board = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TensorBoardCallback)), None)
    summary: dict[str, Any] = {"recipe": name, "train_seconds": round(seconds, 1), "history": callback.history}
    history, keys = callback.history, callback.tracker.trajectory_keys()
    if len(history) >= 2:
        before, after = (_point(history[0], keys), _point(history[-1], keys))
        moved = shift(before, after)
        summary["shift"] = moved.to_dict()
        print(f"[{name}] geometry shift, step {history[0]['step']} -> {history[-1]['step']}: {moved.summary()}")
    else:
        print(f"[{name}] fewer than two geometry measurements; no shift to report")
    if board is not None and getattr(board, "logging_dir", None):
        print(f"[{name}] TensorBoard logs: {board.logging_dir}  (tensorboard --logdir {output})")
    if not args.no_save:
        print(f"[{name}] final model and tokenizer: {output / 'final'}")
    path = callback.tracker.save(output / "geometry.json", **{k: v for k, v in summary.items() if k != "history"})
    print(f"[{name}] geometry history with its provenance: {path}")
    print(f"[{name}] training took {seconds:.1f}s")
    return summary


def _point(record: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    # the standard errors and the jackknife replicates are there when --uncertainty measured
    # them; shift() then names a direction only where the change exceeds its (paired: the
    # same probes at both ends) standard error
    return {
        name + suffix: record.get(keys[name] + suffix)
        for name in ("rankme", "alpha")
        for suffix in ("", "_se", "_replicates")
    }
