"""Worker for tests/test_callback_transformers.py: HF Trainer + GeometryCallback under torchrun (gloo, CPU).

Usage: torchrun --nproc_per_node 2 --master_port PORT hf_ddp.py OUT_DIR
Writes OUT_DIR/history.rank{R}.json on every rank (TensorBoard: rank 0 only, via the trainer).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments  # noqa: E402

from geomtrace.callbacks.transformers import GeometryCallback  # noqa: E402
from geomtrace.tiny import build_tiny_model, embedded_corpus, train_bpe_tokenizer  # noqa: E402

# float64 model: fp32 forwards differ in round-off with thread count and padding (alpha by ~1e-6),
# which would hide what this test checks, the distributed reduction. fit_range stops short of rank
# 64: after the final LayerNorm the features of a d=64 model span 63 dimensions, and the 64th
# eigenvalue is round-off that alpha would fit.
MEASURE = {"batch_size": 16, "fit_range": (12, 48)}


def model_for(tok):
    return build_tiny_model("gpt_neox", hidden_size=64, tokenizer=tok).double()


def main(out: Path) -> None:
    torch.set_num_threads(1)
    tok = train_bpe_tokenizer()
    model = model_for(tok)
    data = Dataset.from_dict(dict(tok(embedded_corpus()[:48], truncation=True, max_length=48)))
    callback = GeometryCallback(every_n_steps=2, num_sequences=96, **MEASURE)
    # No ddp_backend: under torchrun on CPU accelerate picks gloo itself.
    args = TrainingArguments(
        output_dir=str(out / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        report_to=["tensorboard"],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tok,
        callbacks=[callback],
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
    )
    trainer.train()
    assert trainer.args.world_size == 2, trainer.args.world_size
    (out / f"history.rank{trainer.args.process_index}.json").write_text(json.dumps(callback.history))
    # Trainer leaves the gloo group up; tearing it down at interpreter exit can abort (SIGABRT).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
