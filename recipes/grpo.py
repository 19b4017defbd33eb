#!/usr/bin/env python
"""RL with verifiable rewards (TRL GRPOTrainer) with live geometry (GeometryCallback + TensorBoard).

The task is arithmetic: prompts like "What is 12+7?"; the reward is 1.0 when the completion
contains the right number (as a whole number), else 0.0 -- exact and checkable, no reward
model. GRPO learns only from groups whose completions score differently, so it starts by
default from the SFT recipe's model (outputs/sft/final, which has seen the task), else from
the pretrain recipe's model, else from a fresh tiny model (rewards then stay near 0 and the
geometry barely moves). RLVR is expected to be compression-seeking (RankMe down, alpha up).

    python recipes/sft.py && python recipes/grpo.py       # tiny CPU demo, a few minutes
    python recipes/grpo.py --model outputs/sft/final --num-generations 8 --max-steps 300
    tensorboard --logdir outputs/grpo
"""

from __future__ import annotations

import sys

from _common import PRETRAINED, arithmetic, build_parser, config_kwargs, contains_number, prepare, run, user


def exact_answer_reward(completions: list, answer: list[int], **_: object) -> list[float]:
    """1.0 for a completion that contains the right number, else 0.0 (conversational completions)."""
    texts = [c[0]["content"] if isinstance(c, list) else str(c) for c in completions]
    return [1.0 if contains_number(text, int(a)) else 0.0 for text, a in zip(texts, answer)]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__, output="outputs/grpo", max_steps=30, lr=2e-5, batch_size=16,
                          model_default=("outputs/sft/final", PRETRAINED))
    parser.add_argument("--num-generations", type=int, default=8, help="completions per prompt (the GRPO group)")
    parser.add_argument("--max-completion-length", type=int, default=8, help="generated tokens per completion")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.set_defaults(max_operand=10, every_n_steps=10)
    args = parser.parse_args(argv)
    if args.batch_size % args.num_generations:
        parser.error("--batch-size must be a multiple of --num-generations (each prompt's group fills the batch)")

    from trl import GRPOConfig, GRPOTrainer

    rows = [{"prompt": user(q), "answer": a} for q, a in arithmetic(args.num_examples, args.max_operand, args.seed)]
    model, tokenizer, data, callback = prepare(args, "grpo", rows)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=exact_answer_reward,
        args=GRPOConfig(
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            temperature=args.temperature,
            **config_kwargs(args),
        ),
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[callback],
    )
    run(trainer, callback, args, "grpo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
