#!/usr/bin/env python
"""Look for the compression-seeking phase in a small causal LM on CPU (issue 11, part 2).

A plain PyTorch loop (no Lightning overhead) around geomtrace's own measuring path
(measure_geometry: last layer after the final norm, last real token, RankMe, alpha-ReQ and
the eigenspectrum). The corpus is natural English the model cannot memorise: the docstrings
of the Python standard library and of installed packages (transformers, torch, numpy), split
into train and held-out docstrings; probes and the validation loss come from held-out ones.

Writes OUT/geometry.json ({"history": [...]}, read by `geomtrace phases` / `geomtrace plot`),
rewritten atomically after every measurement, and OUT/log.txt.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

# The extracted docstrings are cached beside the runs (extracting them takes about a minute).
CACHE = Path(os.environ.get("GEOMTRACE_DOCSTRING_CACHE", "outputs/lm_runs/docstrings.json"))


def docstrings(packages: list[str]) -> list[str]:
    """Docstrings (>= 40 characters) of the stdlib and ``packages``, deduplicated, fixed order."""
    if CACHE.is_file():
        cached = json.loads(CACHE.read_text())
        if cached["packages"] == packages:
            return cached["texts"]
    roots = [sysconfig.get_paths()["stdlib"]]
    for pkg in packages:
        roots.append(os.path.dirname(importlib.util.find_spec(pkg).origin))
    seen: dict[str, None] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
            for name in sorted(filenames):
                if not name.endswith(".py"):
                    continue
                try:
                    tree = ast.parse(Path(dirpath, name).read_text(encoding="utf-8"))
                except Exception:  # noqa: BLE001 - unparsable files are skipped
                    continue
                for node in ast.walk(tree):
                    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                        doc = ast.get_docstring(node)
                        if doc and len(doc) >= 40:
                            seen.setdefault(doc.strip())
    texts = list(seen)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps({"packages": packages, "texts": texts}))
    return texts


def held_out(text: str, fraction: float = 0.05) -> bool:
    return int(hashlib.md5(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--packages", default="transformers,torch,numpy")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.0, help="cosine decays to this fraction of lr")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--schedule", choices=("cosine", "wsd"), default="cosine",
                   help="wsd: warmup, constant lr, then a linear cooldown to min-lr-frac over the last decay-frac")
    p.add_argument("--decay-frac", type=float, default=0.25, help="wsd: fraction of progress spent in cooldown")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--log-spaced", type=int, default=0, metavar="K",
                   help="measure at ~K log-spaced points instead of --every: steps 0, 1, 2, 4, 8, 16, 20, then "
                   "whenever the schedule's progress crosses one of K - 7 thresholds log-spaced from the "
                   "progress at step 20 to 1 (progress is what the time budget drives, so the grid needs "
                   "no estimate of the run's step count)")
    p.add_argument("--uncertainty", choices=("jackknife",), default=None,
                   help="MeasureConfig.uncertainty: jackknife standard errors of RankMe and alpha, and of the "
                   "top-eigenvalue share (same groups: probe i in group i mod --uncertainty-groups)")
    p.add_argument("--uncertainty-groups", type=int, default=20)
    p.add_argument("--num-probes", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=3300.0,
                   help="training seconds: the schedule's progress is max(step/max_steps, elapsed/budget), so the "
                   "cosine decay reaches its low-lr end within the budget whatever the machine's load")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.txt", "a")

    def log(msg: str) -> None:
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    from transformers import AutoModelForCausalLM

    from geomtrace.features import extract_features
    from geomtrace.measure import MeasureConfig, measure_geometry
    from geomtrace.probes import load_probes
    from geomtrace.tiny import tiny_pythia_config, train_bpe_tokenizer

    t0 = time.perf_counter()
    texts = docstrings([s for s in args.packages.split(",") if s])
    train_texts = [t for t in texts if not held_out(t)]
    val_texts = [t for t in texts if held_out(t)]
    tok = train_bpe_tokenizer(train_texts, vocab_size=args.vocab_size)
    enc = tok(train_texts, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([t for e in enc for t in (*e, tok.eos_token_id)])
    venc = tok(val_texts, add_special_tokens=False)["input_ids"]
    vids = torch.tensor([t for e in venc for t in (*e, tok.eos_token_id)])
    blocks = ids[: ids.numel() // args.seq_len * args.seq_len].view(-1, args.seq_len)
    vblocks = vids[: vids.numel() // args.seq_len * args.seq_len].view(-1, args.seq_len)[:32]
    counts = torch.bincount(ids, minlength=len(tok)).double()
    freq = (counts / counts.sum()).sort(descending=True).values
    probes = load_probes(tok, val_texts, num_sequences=args.num_probes, seed=0)
    log(f"corpus: {len(texts)} docstrings, train {ids.numel():,} tokens ({len(blocks)} blocks), held-out "
        f"{vids.numel():,} tokens; vocab {len(tok)}; top-10 token share {freq[:10].sum():.3f}, tokens with "
        f"freq < 1e-5: {(freq < 1e-5).float().mean():.3f}; {len(probes)} probes; prep {time.perf_counter() - t0:.0f}s")

    cfg = tiny_pythia_config(len(tok), hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=4,
                             max_position_embeddings=max(512, args.seq_len), intermediate_size=4 * args.hidden_size)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(cfg)
    n_params = sum(q.numel() for q in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.95))

    train_seconds = 0.0  # wall time in training steps only (not measurements)

    def progress(step: int) -> float:
        return max(step / args.max_steps, train_seconds / args.time_budget)

    def lr_at(step: int) -> float:
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        if args.schedule == "wsd":
            start = 1.0 - args.decay_frac
            frac = min(1.0, max(0.0, (progress(step) - start) / args.decay_frac))
            return args.lr * (1 - (1 - args.min_lr_frac) * frac)
        # cosine over the progress left after warmup
        p0 = args.warmup_steps / args.max_steps
        prog = min(1.0, max(0.0, (progress(step) - p0) / (1 - p0)))
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * prog)))

    if args.log_spaced:
        measure_at = {0, 1, 2, 4, 8, 16, 20}
    else:
        measure_at = {0, 1, 2, 4, 8, 16, 32, 64} | set(range(0, args.max_steps + 1, args.every))
    thresholds: list[float] = []  # log-spaced progress thresholds, set at step 20 (--log-spaced)
    if args.uncertainty:
        config = MeasureConfig(batch_size=64, uncertainty=args.uncertainty,
                               uncertainty_groups=args.uncertainty_groups)
    else:
        config = MeasureConfig(batch_size=64)
    history: list[dict] = []
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(blocks), generator=gen)
    pos, ema, started = 0, None, time.perf_counter()
    log(f"model: {n_params / 1e6:.2f}M parameters, d={args.hidden_size}, {args.num_layers} layers; "
        f"{args.max_steps} steps x {args.batch_size * args.seq_len} tokens; args {vars(args)}")

    def top_share_se() -> tuple[float, float]:
        """Jackknife standard error of lambda_1 / sum(lambda) over the same groups as the library's,
        and the share from these features (a check against the library's spectrum)."""
        model.eval()
        rows = []
        with torch.no_grad():
            for batch in probes.batches(64, padding_side=config.padding_side):
                feats = extract_features(model, batch["input_ids"], batch["attention_mask"], config.feature_spec)
                rows.append(next(iter(feats.values())).double())
        model.train()
        x = torch.cat(rows)
        gid = torch.arange(x.shape[0]) % args.uncertainty_groups
        shares = []
        for g in range(args.uncertainty_groups):
            xs = x[gid != g]
            ev = torch.linalg.eigvalsh(torch.cov(xs.T))
            shares.append(float(ev[-1] / ev.sum()))
        s_arr = np.array(shares)
        n = len(s_arr)
        full = torch.linalg.eigvalsh(torch.cov(x.T))
        return float(np.sqrt((n - 1) / n * np.sum((s_arr - s_arr.mean()) ** 2))), float(full[-1] / full.sum())

    def measure(step: int) -> None:
        res = measure_geometry(model, probes, config)
        g = res.last
        ev = np.asarray(g.eigenvalues, dtype=np.float64)
        extra = {"geometry/top_share": float(ev[0] / ev.sum())}
        if args.uncertainty:
            share_se, share_check = top_share_se()
            extra |= {"geometry/rankme_se": g.rankme_se, "geometry/alpha_se": g.alpha_se,
                      "geometry/top_share_se": share_se, "top_share_check": share_check}
        model.eval()
        with torch.no_grad():
            vloss = float(np.mean([model(input_ids=b, labels=b).loss.item() for b in vblocks.split(16)]))
        model.train()
        row = {"step": step, "tokens": step * args.batch_size * args.seq_len, "geometry/rankme": g.rankme,
               "geometry/alpha": g.alpha, "geometry/alpha_r2": g.r2, "train_loss": ema, "val_loss": vloss,
               "lr": lr_at(step), "progress": progress(step), "eig_top": [float(v) for v in g.eigenvalues[:8]],
               "eigenvalues": [float(v) for v in g.eigenvalues],
               "eig_sum": float(np.sum(g.eigenvalues)), "seconds": time.perf_counter() - started, **extra}
        history.append(row)
        write_json(out / "geometry.json", {"history": history, "n_params": n_params,
                                          "tokens_per_step": args.batch_size * args.seq_len, "args": vars(args)})
        se = (f" ± {g.rankme_se:.3f}", f" ± {g.alpha_se:.3f}") if args.uncertainty else ("", "")
        log(f"step {step:5d}  rankme {g.rankme:7.3f}{se[0]}  alpha {g.alpha:6.3f}{se[1]}"
            f"  top {extra['geometry/top_share']:.3f}  loss {ema if ema else float('nan'):.3f}"
            f"  val {vloss:.3f}  lr {lr_at(step):.2e}  t {row['seconds']:.0f}s (measure {res.seconds:.1f}s)")

    measure(0)
    step = 0
    while progress(step) < 1.0:
        step += 1
        t_step = time.perf_counter()
        if pos + args.batch_size > len(order):
            order, pos = torch.randperm(len(blocks), generator=gen), 0
        batch = blocks[order[pos : pos + args.batch_size]]
        pos += args.batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step - 1)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        train_seconds += time.perf_counter() - t_step
        if args.log_spaced and step == 20:
            p20 = progress(step)
            thresholds = [float(v) for v in np.geomspace(p20, 1.0, max(2, args.log_spaced - 7))[1:]]
            log(f"log-spaced grid: progress at step 20 = {p20:.2e}; {len(thresholds)} thresholds up to 1")
        crossed = bool(thresholds) and progress(step) >= thresholds[0]
        while thresholds and progress(step) >= thresholds[0]:
            thresholds.pop(0)
        if step in measure_at or crossed or progress(step) >= 1.0:
            measure(step)
    log(f"done in {time.perf_counter() - t0:.0f}s; epochs seen: {step * args.batch_size / len(blocks):.2f}")


if __name__ == "__main__":
    sys.exit(main())
