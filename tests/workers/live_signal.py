"""Worker for the live signal tests: training with the geometry callback, stopped inside a
measurement until the test's signal arrives.

Usage: python live_signal.py lightning|hf OUT

Each time it is inside a measurement where the test signals, it writes its pid to
OUT/inside-<n> (n = 1, 2, ...) and waits (at most timeouts.SUBPROCESS_TIMEOUT).

* lightning: fit 8 steps, a measurement every step, checkpoints every 2 steps. Inside the
  measurement of step 3 the test sends SIGTERM: Lightning only notes it, so the measurement
  completes and Lightning stops at the next batch (its SIGTERM handling). Then a new Trainer
  resumes from the step-2 checkpoint; inside the measurement of step 4 the test sends SIGINT
  (a KeyboardInterrupt in the middle of it). OUT/result.json: what each fit left.
* hf: transformers.Trainer, 8 steps, a measurement every step, checkpoints every 2 steps;
  inside the measurement of step 3 the test sends SIGTERM (the default action kills it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import geomtrace.tracking as tracking
from timeouts import SUBPROCESS_TIMEOUT

out = Path(sys.argv[2])
calls = {"n": 0, "inside": 0}
stop_at: set[int] = set()
released = {"flag": lambda: False}


def patched(measure):
    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] in stop_at:
            calls["inside"] += 1
            marker = out / f"inside-{calls['inside']}"
            marker.with_suffix(".tmp").write_text(str(os.getpid()))
            os.replace(marker.with_suffix(".tmp"), marker)
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT
            while time.monotonic() < deadline and not released["flag"]():
                time.sleep(0.02)  # SIGINT raises here; Lightning's SIGTERM handler sets a flag
        return measure(*args, **kwargs)

    return wrapped


def history(path: Path) -> list[int]:
    return [r["step"] for r in json.loads(path.read_text())["history"]] if path.is_file() else []


def lightning() -> None:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from geomtrace.callbacks import GeometryMonitor
    from lightning_helpers import TinyLM

    model = TinyLM()
    result: dict = {}
    history_file = out / "geometry.json"

    def fit(ckpt_path=None):
        monitor = GeometryMonitor(every_n_steps=1, num_sequences=24, history_file=str(history_file))
        saver = ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=2, save_top_k=-1)
        trainer = L.Trainer(
            max_steps=8,
            callbacks=[monitor, saver],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=out,
            accelerator="cpu",
        )
        released["flag"] = lambda: trainer.received_sigterm
        calls["n"] = 0
        try:
            trainer.fit(TinyLM(model.tokenizer), ckpt_path=ckpt_path)
            ended = "finished"
        except SystemExit as err:  # Lightning's exit after SIGTERM (SIGTERMException) or Ctrl-C
            ended = f"{type(err).__name__}({err.code})"
        return {
            "ended": ended,
            "status": str(trainer.state.status),
            "memory": [r["step"] for r in monitor.history],
            "file": history(history_file),
            "checkpoints": sorted(p.name for p in (out / "ckpt").glob("*.ckpt")),
        }

    stop_at.update({4})  # measurements at steps 0, 1, 2, then 3
    result["sigterm"] = fit()
    stop_at.clear()
    stop_at.update({2})  # resumed at step 2: step 3 is measured, then 4
    result["sigint"] = fit(ckpt_path=str(out / "ckpt" / "epoch=0-step=2.ckpt"))
    (out / "result.json").write_text(json.dumps(result))


def hf() -> None:
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from geomtrace.callbacks import GeometryCallback
    from geomtrace.tiny import build_tiny_model, embedded_corpus, train_bpe_tokenizer

    tok = train_bpe_tokenizer()
    data = Dataset.from_dict(dict(tok(embedded_corpus()[:48], truncation=True, max_length=48)))
    callback = GeometryCallback(
        every_n_steps=1, num_sequences=24, tokenizer=tok, history_file=str(out / "geometry.json")
    )
    args = TrainingArguments(
        output_dir=str(out / "run"),
        max_steps=8,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="steps",
        save_steps=2,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    stop_at.update({4})  # measurements at steps 0, 1, 2, then 3
    Trainer(
        model=build_tiny_model("gpt_neox", hidden_size=64, tokenizer=tok),
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        processing_class=tok,
        callbacks=[callback],
    ).train()


if __name__ == "__main__":
    # Ctrl-C as in a terminal: a shell starts background jobs (`cmd &`, nohup, some CI runners)
    # with SIGINT ignored, and Python then keeps it ignored, so the test's SIGINT would never
    # interrupt the measurement (the run waited out its safety timeout: a flake that depended on
    # how the suite was started).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tracking.measure_geometry = patched(tracking.measure_geometry)
    {"lightning": lightning, "hf": hf}[sys.argv[1]]()
