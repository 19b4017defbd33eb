#!/usr/bin/env python
"""Direct preference optimisation (TRL DPOTrainer) with live geometry (GeometryCallback + TensorBoard).

Starts from the pretrain recipe's model (outputs/pretrain/final; a fresh tiny model if it is
missing) and trains on synthetic preference pairs made in code: arithmetic questions whose
chosen answer is right and whose rejected answer is off by a few. The reference model is a
frozen copy of the starting model (it runs its own forwards; the geometry probes never see
them). Geometry is measured on chat-formatted probes; DPO is expected to be entropy-seeking.

    python recipes/dpo.py                       # tiny CPU demo, ~2 minutes
    python recipes/dpo.py --model outputs/sft/final --beta 0.1 --max-steps 500
    tensorboard --logdir outputs/dpo
"""

from __future__ import annotations

import copy
import random
import sys

from _common import arithmetic, assistant, build_parser, config_kwargs, prepare, run, user


def preference_pairs(n: int, max_operand: int, seed: int) -> list[dict]:
    """Prompt / chosen (right answer) / rejected (wrong by 1 to 3) in conversational form."""
    rng = random.Random(seed + 1)
    rows = []
    for question, answer in arithmetic(n, max_operand, seed):
        wrong = answer + rng.choice([-3, -2, -1, 1, 2, 3])
        rows.append({"prompt": user(question), "chosen": assistant(str(answer)), "rejected": assistant(str(wrong))})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__, output="outputs/dpo", max_steps=60, lr=5e-5, batch_size=8)
    parser.add_argument("--beta", type=float, default=0.1, help="DPO temperature")
    parser.add_argument("--max-length", type=int, default=64, help="truncate prompt + completion to this many tokens")
    args = parser.parse_args(argv)

    from trl import DPOConfig, DPOTrainer

    rows = preference_pairs(args.num_examples, args.max_operand, args.seed)
    model, tokenizer, data, callback = prepare(args, "dpo", rows)
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),  # a config-built model has no hub id to reload a reference from
        args=DPOConfig(beta=args.beta, max_length=args.max_length, **config_kwargs(args)),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    run(trainer, callback, args, "dpo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
