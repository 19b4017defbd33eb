#!/usr/bin/env python
"""Supervised fine-tuning (TRL SFTTrainer) with live geometry (GeometryCallback + TensorBoard).

Starts from the pretrain recipe's model (outputs/pretrain/final; a fresh tiny model if it is
missing) and fine-tunes it on synthetic chat pairs made in code: arithmetic questions with
their answers, and "continue this passage" turns cut from the embedded corpus. Geometry is
measured on chat-formatted probes every --every-n-steps steps. SFT is expected to be
entropy-seeking (RankMe up). Ends by printing the TensorBoard location and the geometry
shift from the first to the last measurement.

    python recipes/sft.py                       # tiny CPU demo, ~2 minutes
    python recipes/sft.py --model outputs/pretrain/final --max-steps 1000
    tensorboard --logdir outputs/sft
"""

from __future__ import annotations

import random
import sys

from _common import arithmetic, assistant, build_parser, config_kwargs, prepare, run, user


def chat_pairs(n: int, max_operand: int, seed: int) -> list[dict]:
    """Half arithmetic Q/A, half passage continuations from the embedded corpus."""
    from geomtrace.tiny import embedded_corpus

    rng = random.Random(seed)
    rows = [{"messages": user(q) + assistant(str(a))} for q, a in arithmetic(n - n // 2, max_operand, seed)]
    passages = [p for p in embedded_corpus() if 20 <= len(p.split()) <= 60]
    for passage in rng.sample(passages, min(n // 2, len(passages))):
        words = passage.split()
        cut = len(words) // 2
        rows.append({"messages": user("Continue: " + " ".join(words[:cut])) + assistant(" ".join(words[cut:]))})
    rng.shuffle(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__, output="outputs/sft", max_steps=100, lr=5e-4, batch_size=8)
    parser.add_argument("--max-length", type=int, default=128, help="truncate examples to this many tokens")
    args = parser.parse_args(argv)

    from trl import SFTConfig, SFTTrainer

    model, tokenizer, data, callback = prepare(args, "sft", chat_pairs(args.num_examples, args.max_operand, args.seed))
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(max_length=args.max_length, **config_kwargs(args)),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    run(trainer, callback, args, "sft")
    return 0


if __name__ == "__main__":
    sys.exit(main())
