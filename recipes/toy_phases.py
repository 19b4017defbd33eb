#!/usr/bin/env python
"""The paper's proposed mechanism for the geometric phases, in a toy that runs in about half a second on CPU.

Li et al. (2025) explain the warmup / entropy-seeking / compression-seeking sequence of RankMe
by gradient descent on cross-entropy under two conditions: skewed token frequencies and a
representational bottleneck (feature dimension d smaller than the number of classes). This
recipe puts that mechanism to the test, with nothing else around it. Measured (docs/phases.md,
issue 19): warmup and entropy-seeking, but **no compression** in its honest variants; the
compression an earlier version showed was an artefact of its missing output bias.

Two set-ups (``--mode``):

* ``bigram`` (default): a bigram language model reduced to its bones. A vocabulary of
  ``--vocab`` tokens with Zipfian frequencies q_k ~ k^-zipf; each token i (the context) is
  followed by a next-token distribution P(.|i) drawn around the unigram frequencies (Dirichlet
  with mean q; ``ToyConfig.concentration`` sets how much the contexts differ). Objective: the
  exact expected loss, sum_i q_i CE(P(.|i), softmax(W e_i + b)), by full-batch gradient
  descent. Free features per context (E: one d-vector per token, whitened at initialisation so
  RankMe starts at d), a linear unembedding W and an **output bias** b (``--no-bias``: none,
  the artefact: the features must then carry the shared unigram offset, move onto an affine
  line, and centred RankMe falls towards 1 under any loss).
* ``paper``: the paper's own toy: free per-sample features, hard one-hot labels, 4 classes
  with skewed counts (``--counts``), d = 2, cross-entropy, full-batch gradient descent, no
  bias. The paper leaves counts, lr, init and steps unstated; ours are in :func:`paper_config`.

Measurement: geomtrace's own metrics on the features of a fixed probe set (contexts drawn in
proportion to their frequency; in paper mode every sample), **centred and uncentred** in every
row (``rankme_centred``: covariance eigenvalues, as the paper's code; ``rankme_uncentred``:
singular values of the raw features, as its theory), alpha-ReQ where d allows a fit.

    python recipes/toy_phases.py                              # table, ~0.5 s
    python recipes/toy_phases.py --no-bias                    # the old toy: the centring artefact
    python recipes/toy_phases.py --mode paper                 # the paper's own set-up
    python recipes/toy_phases.py --spectrum singular          # detect on the uncentred RankMe
    python recipes/toy_phases.py --control uniform            # equal token frequencies
    python recipes/toy_phases.py --control no-bottleneck      # d = number of classes
    python recipes/toy_phases.py --control mse                # squared error (step / 8: no oscillation)
    nice -n 10 python recipes/toy_phases.py --seeds 8         # every variant x control x 8 seeds (~1 min)
    python recipes/toy_phases.py --output outputs/toy && geomtrace phases outputs/toy/geometry.json

``--output DIR`` writes DIR/geometry.json (the history JSON that ``geomtrace phases`` and
``geomtrace plot`` read, like the pretrain recipe's), DIR/toy_phases.png (RankMe with the
detected phases shaded, and the top eigenvalues over time) and TensorBoard logs in
DIR/tensorboard; with ``--seeds``, DIR/sweep.json. What each variant shows, measured:
docs/phases.md."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

CONTROLS = ("uniform", "no-bottleneck", "mse")
MODES = ("bigram", "paper")
SPECTRA = ("covariance", "singular")


@dataclass(frozen=True)
class ToyConfig:
    """One toy run. The defaults (bigram, with output bias) show warmup and entropy-seeking,
    and no compression (docs/phases.md)."""

    vocab: int = 32
    dim: int = 2
    zipf: float = 1.5
    concentration: float = 0.3
    steps: int = 2000
    lr: float = 1.0
    init: float = 0.1
    seed: int = 0
    loss: str = "ce"
    uniform: bool = False
    num_probes: int = 512
    num_measurements: int = 70
    bias: bool = True
    mode: str = "bigram"
    counts: tuple[int, ...] = (20, 20, 10, 10)
    spectrum: str = "covariance"

    @property
    def num_classes(self) -> int:
        """Output classes: the vocabulary (bigram) or ``len(counts)`` (paper)."""
        return len(self.counts) if self.mode == "paper" else self.vocab

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.spectrum not in SPECTRA:
            raise ValueError(f"spectrum must be one of {SPECTRA}, got {self.spectrum!r}")
        if self.mode == "paper" and (len(self.counts) < 2 or min(self.counts) < 1):
            raise ValueError(f"paper mode needs >= 2 classes with counts >= 1, got counts={self.counts}")
        if self.vocab < 2 or self.dim < 1:
            raise ValueError(f"need vocab >= 2 and dim >= 1, got vocab={self.vocab}, dim={self.dim}")
        if self.loss not in ("ce", "mse"):
            raise ValueError(f"loss must be 'ce' or 'mse', got {self.loss!r}")
        if self.steps < 10 or self.lr <= 0 or self.init <= 0:
            raise ValueError(f"need steps >= 10, lr > 0, init > 0, got {self.steps}, {self.lr}, {self.init}")
        if self.mode == "bigram" and self.num_probes < self.vocab:
            raise ValueError(f"num_probes ({self.num_probes}) must be >= vocab ({self.vocab}): every token is probed")


def with_control(config: ToyConfig, control: str | None) -> ToyConfig:
    """The config of one control: each changes exactly one of the mechanism's conditions."""
    if control is None:
        return config
    if control == "uniform":
        return replace(config, uniform=True)  # equal token frequencies
    if control == "no-bottleneck":
        return replace(config, dim=config.num_classes)  # d = number of classes
    if control == "mse":
        # Squared error on the next-token distribution. Its curvature (2 q_i per logit) is
        # about 8x cross-entropy's (q_i p (1 - p) <= q_i / 4): at the same step size gradient
        # descent oscillates (a period-2 cycle, measured), so the step is scaled by 1/8.
        return replace(config, loss="mse", lr=config.lr / 8)
    raise ValueError(f"unknown control {control!r}; choose from {', '.join(CONTROLS)}")


def paper_config(**changes: Any) -> ToyConfig:
    """The paper's own toy (Li et al., 2025): free per-sample features, hard one-hot labels,
    4 classes with skewed counts, d = 2, cross-entropy, full-batch gradient descent, **no
    output bias**. The paper leaves counts, lr, init and steps unstated: these are ours."""
    return replace(ToyConfig(mode="paper", bias=False, steps=5000), **changes)


def make_task(config: ToyConfig) -> tuple[np.ndarray, np.ndarray]:
    """(q, P): token frequencies q (sum 1) and next-token distributions P (vocab x vocab)."""
    rng = np.random.default_rng(config.seed)
    ranks = np.arange(1, config.vocab + 1, dtype=np.float64)
    q = np.ones(config.vocab) if config.uniform else ranks**-config.zipf
    q /= q.sum()
    # Each context's next-token distribution scatters around the unigram frequencies, so
    # the marginal token frequencies stay skewed (or uniform for the control). The small
    # floor keeps the Dirichlet sampler away from all-zero rows for very rare tokens.
    P = rng.dirichlet(q * config.concentration * config.vocab + 1e-3, size=config.vocab)
    return q, P


def make_rows(config: ToyConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, targets, probes) of the training rows, whatever the mode.

    The loss is ``sum_i weights[i] * loss(targets[i], logits of row i)``; each row has its own
    free feature vector. Bigram: one row per context token, weight q_i, target P(.|i), probes
    drawn in proportion to q. Paper: one row per sample, weight 1/N, a one-hot target
    (``counts[c]`` samples of class c; equal counts for ``uniform``), every sample probed once.
    """
    if config.mode == "bigram":
        q, P = make_task(config)
        return q, P, probe_contexts(q, config.num_probes)
    counts = np.asarray(config.counts, dtype=np.int64)
    if config.uniform:
        counts = np.full(len(counts), max(1, int(round(counts.mean()))), dtype=np.int64)
    labels = np.repeat(np.arange(len(counts)), counts)
    n = len(labels)
    return np.full(n, 1.0 / n), np.eye(len(counts))[labels], np.arange(n)


def probe_contexts(q: np.ndarray, num_probes: int) -> np.ndarray:
    """A fixed probe multiset of contexts, each token about q_i * num_probes times (>= 1)."""
    counts = np.maximum(1, np.round(q * num_probes)).astype(np.int64)
    return np.repeat(np.arange(len(q)), counts)


def measurement_steps(steps: int, n: int) -> list[int]:
    """About ``n`` steps: log-spaced early (the warmup is fast) and evenly spaced later."""
    log_part = np.unique(np.round(np.geomspace(1, steps, n // 2)).astype(int))
    lin_part = np.linspace(0, steps, n - n // 2 + 1).astype(int)
    return sorted({0, *log_part.tolist(), *lin_part.tolist()})


def measure(features: torch.Tensor, spectrum: str = "covariance") -> dict[str, Any]:
    """geomtrace's own metrics on one set of feature rows, **centred and uncentred**: RankMe
    and the top eigenvalue's share of both spectra, the eigenspectrum, and alpha-ReQ where the
    spectrum is long enough for its fit (d >= 16: ranks 12..16+).

    Centred (``"covariance"``, geomtrace's default and the paper's code, which centres via
    PCA) and uncentred (``"singular"``: singular values of the raw features, the paper's
    theory and Garrido et al.'s RankMe) differ exactly by the features' mean: a shared offset
    is invisible to the first and is a direction of the second. ``spectrum`` picks which one
    is ``geometry/rankme`` (what the detector reads); both are in every row.

    The functional core is used (not the torchmetrics classes) so the recipe does not pay
    torchmetrics' import time (~10 s here); the numbers are the same (tests/test_metrics.py).
    """
    from geomtrace.functional import alpha_req, covariance_from_features, eigenspectrum, rankme, singular_spectrum

    n = features.shape[0]
    centred = eigenspectrum(covariance_from_features(features), n_samples=n)
    singular = singular_spectrum(features.T @ features / n, n_samples=n)
    values = {"covariance": centred, "singular": singular}
    row: dict[str, Any] = {"geometry/rankme": float(rankme(values[spectrum])), "spectrum": spectrum,
                           "rankme_centred": float(rankme(centred)), "rankme_uncentred": float(rankme(singular)),
                           "top_share_centred": float(centred[0] / centred.sum().clamp_min(1e-300)),
                           "top_share_uncentred": float(singular[0] ** 2 / (singular**2).sum().clamp_min(1e-300)),
                           "eigenvalues": [float(v) for v in centred]}
    if features.shape[1] >= 16:
        fit = alpha_req(values[spectrum] if spectrum == "covariance" else singular**2)
        row["geometry/alpha"], row["geometry/alpha_r2"] = float(fit.alpha), float(fit.r2)
    return row


def isotropic(E: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """``E`` linearly mapped so that the probe features are centred and white (RankMe = d).

    A randomly initialised network's features are close to isotropic (high RankMe); with
    few contexts and skewed probe counts a raw Gaussian draw is not (RankMe 1.6 to 2.0 of
    2, by seed), and its first steps can then move RankMe either way. Whitening makes the
    start the same for every seed: the collapse is the first thing that happens.
    """
    rows = E[probes]
    centred = E - rows.mean(0)
    cov = torch.cov(rows.T).reshape(E.shape[1], E.shape[1])
    vals, vecs = torch.linalg.eigh(cov)
    # d >= number of contexts (the no-bottleneck control): the centred rows span fewer than
    # d dimensions; whiten within their span.
    inv_sqrt = torch.where(vals > 1e-9 * vals.max(), vals.clamp_min(1e-300).rsqrt(), torch.zeros_like(vals))
    return centred @ vecs @ torch.diag(inv_sqrt) @ vecs.T


def train(config: ToyConfig, on_measure: Any = None) -> list[dict[str, Any]]:
    """Full-batch gradient descent; returns the history rows (one per measurement).

    ``on_measure(row)`` is called after each measurement (TensorBoard logging).
    """
    config.validate()
    w_np, T_np, probes_np = make_rows(config)
    f64 = torch.float64
    weights, T = torch.tensor(w_np, dtype=f64), torch.tensor(T_np, dtype=f64)
    gen = torch.Generator().manual_seed(config.seed)
    scale = config.init / math.sqrt(config.dim)
    probes = torch.from_numpy(probes_np)
    E = isotropic(torch.randn(len(w_np), config.dim, generator=gen, dtype=f64), probes) * scale  # features
    W = torch.randn(config.num_classes, config.dim, generator=gen, dtype=f64) * scale  # classifier
    # The output bias carries the shared (unigram) part of the logits. Without it the d
    # features must carry it: they move onto an affine line and *centred* RankMe falls to 1
    # under any loss (issue 19) -- an artefact, not the paper's mechanism.
    b = torch.zeros(config.num_classes, dtype=f64)
    when = set(measurement_steps(config.steps, config.num_measurements))
    history: list[dict[str, Any]] = []
    for step in range(config.steps + 1):
        logits = E @ W.T + b
        if config.loss == "ce":
            log_p = torch.log_softmax(logits, dim=1)
            loss = -(weights[:, None] * T * log_p).sum()
            grad = weights[:, None] * (log_p.exp() - T)  # d loss / d logits
        else:
            loss = (weights[:, None] * (logits - T) ** 2).sum()
            grad = 2.0 * weights[:, None] * (logits - T)
        if step in when:
            row = {"step": step, **measure(E[probes], config.spectrum), "loss": float(loss)}
            history.append(row)
            if on_measure is not None:
                on_measure(row)
        if not math.isfinite(float(loss)):
            raise FloatingPointError(f"the loss diverged at step {step}: lower --lr (now {config.lr})")
        if step < config.steps:
            E, W = E - config.lr * (grad @ W), W - config.lr * (grad.T @ E)
            if config.bias:
                b = b - config.lr * grad.sum(0)
    return history


def detect(history: list[dict[str, Any]], spectrum: str | None = None) -> list[Any]:
    """Phases of a toy history, by geomtrace's detector at its defaults, on the centred
    (``"covariance"``) or uncentred (``"singular"``) RankMe (None: ``geometry/rankme``)."""
    from geomtrace.phases import detect_phases

    spectrum = spectrum or history[0].get("spectrum", "covariance")
    key = {"covariance": "rankme_centred", "singular": "rankme_uncentred"}[spectrum]
    alpha = [r["geometry/alpha"] for r in history] if "geometry/alpha" in history[0] else None
    if alpha is not None and spectrum != history[0].get("spectrum", "covariance"):
        alpha = None  # alpha was fitted to the other spectrum
    return detect_phases([r["step"] for r in history], [r[key] for r in history], alpha, spectrum=spectrum)


#: The sweep's variants: the toy with its output bias (the default), the same without it (the
#: toy as first published here, whose compression is the bias artefact), the paper's set-up.
VARIANTS = {
    "bigram": lambda **kw: ToyConfig(**kw),
    "bigram-no-bias": lambda **kw: ToyConfig(bias=False, **kw),
    "paper": lambda **kw: paper_config(**kw),
}


def late_change(rankme: list[float]) -> float:
    """Relative change from the highest RankMe after the warmup's bottom to the end (<= 0):
    the size of a late fall, whatever the detector says."""
    bottom = int(np.argmin(rankme[: max(2, len(rankme) // 2)]))
    peak = max(rankme[bottom:])
    return rankme[-1] / peak - 1.0


def sweep(seeds: int, variants: list[str] | None = None, controls: list[str | None] | None = None,
          steps: int | None = None) -> list[dict[str, Any]]:
    """Every variant x control x seed, measured centred and uncentred: one result per run."""
    out = []
    for variant in variants or list(VARIANTS):
        for control in controls or [None, *CONTROLS]:
            for seed in range(seeds):
                config = VARIANTS[variant](seed=seed, **({} if steps is None else {"steps": steps}))
                config = with_control(config, control)
                history = train(config)
                result: dict[str, Any] = {"variant": variant, "control": control or "none", "seed": seed}
                for spectrum, key in (("covariance", "rankme_centred"), ("singular", "rankme_uncentred")):
                    rankme = [r[key] for r in history]
                    phases = detect(history, spectrum)
                    names = [p.name for p in phases if p.name != "stable"]
                    result[spectrum] = {"phases": names, "compression": "compression-seeking" in names,
                                        "start": rankme[0], "min": min(rankme), "end": rankme[-1],
                                        "late_change": late_change(rankme)}
                out.append(result)
    return out


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def sweep_table(results: list[dict[str, Any]]) -> str:
    """Per variant and control, per centring: seeds with compression named, and mean +- sd over
    seeds of the end RankMe and of the late change (end vs the peak after the bottom)."""
    lines = ["| variant | control | centring | compression named | RankMe end (mean ± sd) | late change (mean ± sd) |",
             "|---|---|---|---|---|---|"]
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["variant"], r["control"]), []).append(r)
    for (variant, control), runs in cells.items():
        for spectrum, name in (("covariance", "centred"), ("singular", "uncentred")):
            values = [r[spectrum] for r in runs]
            end = np.array([v["end"] for v in values])
            late = np.array([v["late_change"] for v in values]) * 100
            named = sum(v["compression"] for v in values)
            lines.append(f"| {variant} | {control} | {name} | {named}/{len(values)} "
                         f"| {end.mean():.2f} ± {_sd(end):.2f} | {late.mean():+.1f} % ± {_sd(late):.1f} |")
    return "\n".join(lines)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def _tensorboard(directory: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # tensorboard is optional
        print(f"[toy] no TensorBoard logs ({err}; pip install tensorboard)")
        return None
    return SummaryWriter(str(directory))


def _log_row(writer: Any, row: dict[str, Any]) -> None:
    step = row["step"]
    writer.add_scalar("geometry/rankme", row["geometry/rankme"], step)
    if "geometry/alpha" in row:
        writer.add_scalar("geometry/alpha", row["geometry/alpha"], step)
    writer.add_scalar("train/loss", row["loss"], step)
    for k, value in enumerate(row["eigenvalues"][:4], start=1):
        writer.add_scalar(f"geometry/eigenvalue_{k}", value, step)


def plot(history: list[dict[str, Any]], phases: list[Any], path: Path, title: str) -> Path:
    """RankMe with the phases shaded, and the top eigenvalues over time."""
    from geomtrace.plots import phase_spectrum_figure, save_figure

    alpha = [r["geometry/alpha"] for r in history] if "geometry/alpha" in history[0] else None
    figure = phase_spectrum_figure([r["step"] for r in history], [r["geometry/rankme"] for r in history],
                                   [r["eigenvalues"] for r in history], phases, alpha=alpha, title=title)
    return save_figure(figure, path, dpi=80)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from geomtrace.phases import format_segments

    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    output = Path(args.output) if args.output else None
    if args.seeds:
        started = time.perf_counter()
        results = sweep(args.seeds, steps=args.steps)
        table = sweep_table(results)
        if not args.quiet:
            print(table)
            print(f"[toy] {len(results)} runs in {time.perf_counter() - started:.0f}s")
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
            _write_json(output / "sweep.json", {"results": results, "table": table})
        return {"results": results, "table": table}
    base = paper_config() if args.mode == "paper" else ToyConfig()
    fields = {"vocab": args.vocab, "dim": args.dim, "zipf": args.zipf, "steps": args.steps, "lr": args.lr,
              "seed": args.seed, "spectrum": args.spectrum}
    if args.counts:
        fields["counts"] = tuple(int(c) for c in args.counts.split(","))
    if args.no_bias:
        fields["bias"] = False
    config = with_control(replace(base, **{k: v for k, v in fields.items() if v is not None}), args.control)
    label = f"toy ({config.mode}{'' if config.bias else ', no bias'}, {config.spectrum})"
    label += f", control {args.control}" if args.control else ""
    writer = None
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        writer = None if args.no_tensorboard else _tensorboard(output / "tensorboard")
    started = time.perf_counter()
    history = train(config, on_measure=(lambda row: _log_row(writer, row)) if writer else None)
    seconds = time.perf_counter() - started
    phases = detect(history)
    if writer is not None:
        writer.add_text("geometry/phases", format_segments(phases).replace("\n", "  \n"), config.steps)
        writer.close()
    summary: dict[str, Any] = {"config": asdict(config), "control": args.control, "history": history,
                               "phases": [s.to_dict() for s in phases], "seconds": seconds}
    if not args.quiet:
        what = (f"counts {config.counts}" if config.mode == "paper"
                else f"vocab {config.vocab}, Zipf {0 if config.uniform else config.zipf}")
        print(f"[toy] {label}: {what}, d = {config.dim}, output bias {'on' if config.bias else 'off'}, "
              f"loss {config.loss}, {config.steps} steps of full-batch gradient descent in {seconds:.1f}s")
        rankme = [r["geometry/rankme"] for r in history]
        print(f"[toy] RankMe {rankme[0]:.2f} at step 0, min {min(rankme):.2f}, max {max(rankme):.2f}, "
              f"{rankme[-1]:.2f} at step {config.steps}")
        other = "rankme_uncentred" if config.spectrum == "covariance" else "rankme_centred"
        print(f"[toy] {other.split('_')[1]}: RankMe {history[0][other]:.2f} at step 0, "
              f"{history[-1][other]:.2f} at step {config.steps}")
        print(format_segments(phases))
    if output is not None:
        _write_json(output / "geometry.json", {"history": history, "config": asdict(config),
                                               "control": args.control, "phases": summary["phases"]})
        summary["json"] = str(output / "geometry.json")
        if not args.no_plot:
            summary["plot"] = str(plot(history, phases, output / "toy_phases.png", label))
        if not args.quiet:
            print(f"[toy] history: {summary['json']}  (geomtrace phases {summary['json']})")
            if "plot" in summary:
                print(f"[toy] figure: {summary['plot']}")
            if writer is not None:
                print(f"[toy] TensorBoard: tensorboard --logdir {output / 'tensorboard'}")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--control", choices=CONTROLS, default=None,
                        help="remove one condition of the mechanism: uniform token frequencies, no bottleneck "
                        "(d = vocabulary), or mean-squared error instead of cross-entropy")
    parser.add_argument("--seed", type=int, default=None, help="seed of the data and the initialisation")
    parser.add_argument("--vocab", type=int, default=None, help="number of tokens (classes)")
    parser.add_argument("--dim", type=int, default=None, help="feature dimension d (the bottleneck)")
    parser.add_argument("--zipf", type=float, default=None, help="Zipf exponent of the token frequencies")
    parser.add_argument("--steps", type=int, default=None, help="full-batch gradient descent steps")
    parser.add_argument("--lr", type=float, default=None, help="learning rate")
    parser.add_argument("--mode", choices=MODES, default="bigram",
                        help="bigram (default) or paper: the paper's own toy (free per-sample features, one-hot "
                        "labels, 4 skewed classes, d = 2, no output bias)")
    parser.add_argument("--counts", default=None, help="paper mode: samples per class, e.g. 20,20,10,10")
    parser.add_argument("--no-bias", action="store_true", help="no output bias (the artefact of issue 19)")
    parser.add_argument("--spectrum", choices=SPECTRA, default=None,
                        help="what the detector reads: centred (covariance, default) or uncentred (singular) RankMe")
    parser.add_argument("--seeds", type=int, default=0,
                        help="sweep: every variant (bigram, bigram-no-bias, paper) x control x this many seeds, "
                        "centred and uncentred; prints a table (mean +- sd over seeds), --output writes sweep.json")
    parser.add_argument("--output", default=None,
                        help="write geometry.json, toy_phases.png and TensorBoard logs into this folder")
    parser.add_argument("--no-plot", action="store_true", help="with --output: no figure")
    parser.add_argument("--no-tensorboard", action="store_true", help="with --output: no TensorBoard logs")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
