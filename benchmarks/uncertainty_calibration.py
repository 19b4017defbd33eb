"""Calibration and cost of the jackknife error bars (``uncertainty="jackknife"``); prints tables.

(i)   Calibration. Gaussian features with a known power-law population spectrum
      ``lambda_r = r ** -decay`` (r = 1..d; a diagonal covariance: the estimators are
      rotation-invariant, so a random basis would change nothing). The population values are
      those of the population eigenvalues under the metric's own conventions: RankMe =
      ``functional.rankme(lambda)`` (k = d, the N -> infinity limit of k = min(N, d)) and
      alpha = ``functional.alpha_req(lambda)`` (= decay exactly: the fit of an exact power law).
      For each (d, N), ``--draws`` independent draws: the estimate, its jackknife SE (G groups),
      and the delete-a-group bias-corrected estimate ``G theta - (G - 1) mean(theta_(g))``.
      Columns: ``sd`` the spread of the estimate across draws (the SE's target), ``se/sd`` the
      root-mean-square SE over it, ``cov(E)`` how often ``theta +- t se`` covers the
      estimator's expectation at this N (the mean over draws, as a proxy), ``cov(pop)`` how often
      it covers the population value, ``cov(pop,bc)`` the same for the bias-corrected centre.
      ``bias/sd`` says why ``cov(pop)`` fails where it fails.
(ii)  The row bootstrap (the alternative the issue names for few rows), on the N <= 1024 cases:
      B resamples of the rows with replacement, each spectrum through the N x N centred Gram
      matrix when N < d (its non-zero eigenvalues are the covariance's) or the d x d covariance
      otherwise; SE = sd of the B replicate values. Same columns.
(iii) Cost: update + compute of ``Geometry()`` vs ``Geometry(uncertainty="jackknife")`` on the
      same batches, side by side, best of ``--repeats`` (``--cost-cases d:N ...``; default the
      realistic probe sets, N = 1024 last-token rows, d = 128..2048, and two N = 8192 cases),
      with one float64 ``eigvalsh`` of the d x d covariance and the floor ``1 + G eigh / plain``
      (the G extra eigendecompositions alone).
(iv)  ``--end-to-end``: ``measure_geometry`` (probe forward + statistics) of a random-weights
      model shaped like Pythia-70m (d = 512, 6 layers) on 1024 probes of the embedded corpus,
      plain vs ``MeasureConfig(uncertainty="jackknife")`` with G = 10 and 20.

(v)   ``--paired``: the standard error of a *change* on the same rows. Each draw's features X and
      ``X M`` with one fixed "post-training" map ``M = I + eps R / sqrt(d)`` (R Gaussian, the same
      for every draw), both measured with the same groups (row i in group i mod G); the change
      ``theta(X M) - theta(X)`` across draws against the paired error
      (``phases.paired_jackknife_se``: the jackknife of the replicate differences) and the
      independent ``sqrt(se_X^2 + se_XM^2)``. Columns: ``sd`` of the change across draws, each
      error's root-mean-square over it, and how often ``change +- t se`` covers the mean change.

Usage: python benchmarks/uncertainty_calibration.py [--draws 200] [--quick]
(``--quick``: 20 draws, d = 64 and 512, no bootstrap; a smoke run, not a calibration).
"""

from __future__ import annotations

import argparse
import math
import platform
import time
import warnings
from typing import Any

import numpy as np
import torch

from geomtrace import Geometry, GeometryWarning
from geomtrace import functional as F
from geomtrace.uncertainty import t_quantile


def population(d: int, decay: float) -> tuple[float, float]:
    values = torch.arange(1, d + 1, dtype=torch.float64) ** -decay
    return float(F.rankme(values)), float(F.alpha_req(values).alpha)


def draw(n: int, d: int, decay: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scale = (torch.arange(1, d + 1, dtype=torch.float32) ** (-decay / 2)).to(torch.float32)
    return torch.randn(n, d, generator=gen) * scale


def jackknife(x: torch.Tensor, groups: int) -> Any:
    """``Geometry(uncertainty="jackknife")`` over ``x`` in batches of 2048 rows (round-robin groups)."""
    metric = Geometry(uncertainty="jackknife", groups=groups, eigenvalues=False)
    for batch in x.split(2048):
        metric.update(batch)
    return metric.compute_uncertainty()


def jackknife_draw(x: torch.Tensor, groups: int) -> dict[str, float]:
    u = jackknife(x, groups)
    out = {}
    for name in ("rankme", "alpha"):
        value, se, reps = float(getattr(u, name)), float(getattr(u, f"{name}_se")), getattr(u, f"{name}_replicates")
        out[name], out[f"{name}_se"] = value, se
        out[f"{name}_bc"] = groups * value - (groups - 1) * float(reps.mean())
    return out


def spectrum_stats(x: torch.Tensor, weights: torch.Tensor | None, n: int) -> tuple[float, float]:
    """RankMe and alpha of (weighted) rows, through the smaller of the Gram and covariance."""
    w = torch.ones(x.shape[0], dtype=torch.float64) if weights is None else weights
    mean = (w[:, None] * x).sum(0) / w.sum()
    y = w.sqrt()[:, None] * (x - mean)
    small = y @ y.T if x.shape[0] < x.shape[1] else y.T @ y
    values = torch.linalg.eigvalsh(small / (n - 1)).flip(0).clamp_min(0.0)[: min(n, x.shape[1])]
    floor = float(values.sum()) * 1e-12
    rankme = float(F.rankme(values))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeometryWarning)
        alpha = float(F.alpha_req(values, n_samples=n, floor=floor).alpha)
    return rankme, alpha


def bootstrap_draw(x: torch.Tensor, replicates: int, seed: int) -> dict[str, float]:
    x64 = x.double()
    n = x.shape[0]
    rankme, alpha = spectrum_stats(x64, None, n)
    gen = torch.Generator().manual_seed(seed)
    reps = []
    for _ in range(replicates):
        counts = torch.bincount(torch.randint(0, n, (n,), generator=gen), minlength=n).to(torch.float64)
        keep = counts > 0
        reps.append(spectrum_stats(x64[keep], counts[keep], n))
    r = np.array(reps)
    return {
        "rankme": rankme,
        "alpha": alpha,
        "rankme_se": float(r[:, 0].std(ddof=1)),
        "alpha_se": float(r[:, 1].std(ddof=1)),
        "rankme_bc": 2 * rankme - float(r[:, 0].mean()),
        "alpha_bc": 2 * alpha - float(r[:, 1].mean()),
    }


def summarise(rows: list[dict[str, float]], name: str, truth: float, t: float) -> dict[str, float]:
    est = np.array([r[name] for r in rows])
    se = np.array([r[f"{name}_se"] for r in rows])
    bc = np.array([r[f"{name}_bc"] for r in rows])
    sd, expected = est.std(ddof=1), est.mean()
    return {
        "pop": truth,
        "mean": expected,
        "sd": sd,
        "se_sd": math.sqrt(np.mean(se**2)) / sd if sd > 0 else math.nan,
        "cov_e": float(np.mean(np.abs(est - expected) <= t * se)),
        "cov_pop": float(np.mean(np.abs(est - truth) <= t * se)),
        "cov_bc": float(np.mean(np.abs(bc - truth) <= t * se)),
        "bias_sd": (expected - truth) / sd if sd > 0 else math.nan,
    }


HEADER = (
    f"{'method':>9} {'d':>5} {'N':>5} {'stat':>6} {'pop':>8} {'mean':>8} {'sd':>8} {'se/sd':>6} "
    f"{'cov(E)':>6} {'cov(pop)':>8} {'cov(pop,bc)':>11} {'bias/sd':>8}"
)


def line(method: str, d: int, n: int, name: str, s: dict[str, float]) -> str:
    return (
        f"{method:>9} {d:>5} {n:>5} {name:>6} {s['pop']:8.3f} {s['mean']:8.3f} {s['sd']:8.4f} {s['se_sd']:6.2f} "
        f"{s['cov_e']:6.1%} {s['cov_pop']:8.1%} {s['cov_bc']:11.1%} {s['bias_sd']:8.1f}"
    )


def calibration(args: argparse.Namespace) -> None:
    t_jack = t_quantile(0.975, args.groups - 1)
    print(f"(i) jackknife, G = {args.groups}, 95% intervals theta +- {t_jack:.3f} se; decay {args.decay}")
    print(HEADER)
    for d in args.dims:
        pop = dict(zip(("rankme", "alpha"), population(d, args.decay), strict=True))
        for n in args.ns:
            draws = args.draws if d <= 64 or args.draws_large is None else args.draws_large
            start = time.perf_counter()
            rows = [jackknife_draw(draw(n, d, args.decay, 1000 * n + seed), args.groups) for seed in range(draws)]
            for name in ("rankme", "alpha"):
                print(line("jackknife", d, n, name, summarise(rows, name, pop[name], t_jack)))
            print(f"{'':>9} ({draws} draws, {time.perf_counter() - start:.0f} s)", flush=True)
    if args.bootstrap_draws <= 0:
        return
    t_boot = 1.959964
    print(f"\n(ii) row bootstrap, B = {args.bootstrap_replicates}, 95% intervals theta +- 1.960 se")
    print(HEADER)
    for d in args.dims:
        pop = dict(zip(("rankme", "alpha"), population(d, args.decay), strict=True))
        for n in [n for n in args.ns if n <= 1024]:
            start = time.perf_counter()
            rows = [
                bootstrap_draw(draw(n, d, args.decay, 1000 * n + seed), args.bootstrap_replicates, seed)
                for seed in range(args.bootstrap_draws)
            ]
            for name in ("rankme", "alpha"):
                print(line("bootstrap", d, n, name, summarise(rows, name, pop[name], t_boot)))
            print(f"{'':>9} ({args.bootstrap_draws} draws, {time.perf_counter() - start:.0f} s)", flush=True)


def paired_calibration(args: argparse.Namespace) -> None:
    from geomtrace.phases import paired_jackknife_se

    t_jack = t_quantile(0.975, args.groups - 1)
    print(
        f"\n(v) the error of a change on the same rows: X vs X (I + {args.paired_eps} R / sqrt(d)), G = {args.groups}, "
        f"95% intervals change +- {t_jack:.3f} se"
    )
    print(
        f"{'d':>5} {'N':>5} {'stat':>6} {'mean change':>11} {'sd':>8} {'paired se/sd':>12} {'cov':>6} "
        f"{'indep. se/sd':>12} {'cov':>6}"
    )

    for d, n in args.paired_cases:
        gen = torch.Generator().manual_seed(12345)
        transform = torch.eye(d) + args.paired_eps * torch.randn(d, d, generator=gen) / math.sqrt(d)
        start = time.perf_counter()
        rows: dict[str, list[tuple[float, float, float]]] = {"rankme": [], "alpha": []}
        for seed in range(args.draws):
            x = draw(n, d, args.decay, 7000 * n + seed)
            before, after = jackknife(x, args.groups), jackknife(x @ transform, args.groups)
            for name in rows:
                change = float(getattr(after, name)) - float(getattr(before, name))
                paired = paired_jackknife_se(
                    getattr(before, f"{name}_replicates").tolist(), getattr(after, f"{name}_replicates").tolist()
                )
                independent = math.hypot(float(getattr(before, f"{name}_se")), float(getattr(after, f"{name}_se")))
                rows[name].append((change, math.nan if paired is None else paired, independent))
        for name, values in rows.items():
            change, paired, independent = (np.array(column) for column in zip(*values, strict=True))
            sd, mean = change.std(ddof=1), change.mean()
            ratio_p, ratio_i = (math.sqrt(np.mean(se**2)) / sd for se in (paired, independent))
            cover_p, cover_i = (np.mean(np.abs(change - mean) <= t_jack * se) for se in (paired, independent))
            print(
                f"{d:>5} {n:>5} {name:>6} {mean:11.4f} {sd:8.4f} "
                f"{ratio_p:12.2f} {cover_p:6.1%} {ratio_i:12.2f} {cover_i:6.1%}"
            )
        print(f"      ({args.draws} draws, {time.perf_counter() - start:.0f} s)", flush=True)


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cost(args: argparse.Namespace) -> None:
    print("\n(iii) cost: update (batches of 2048 rows) + compute, best of", args.repeats)
    print(
        f"{'d':>5} {'N':>5} {'plain s':>8} {'G=10 s':>8} {'ratio':>6} {'G=20 s':>8} {'ratio':>6} {'eigh s':>7} "
        f"{'floor10':>7} {'floor20':>7}"
    )
    for d, n in args.cost_cases:
        x = draw(n, d, args.decay, 7)

        def run(x: torch.Tensor = x, **options) -> None:
            metric = Geometry(eigenvalues=False, **options)
            for batch in x.split(2048):
                metric.update(batch)
            metric.compute()

        plain = best_of(args.repeats, run)
        g10 = best_of(args.repeats, lambda: run(uncertainty="jackknife", groups=10))
        g20 = best_of(args.repeats, lambda: run(uncertainty="jackknife", groups=20))
        cov = torch.cov(x.double().T)
        eigh = best_of(args.repeats, lambda: torch.linalg.eigvalsh(cov))  # noqa: B023 - used at once
        print(
            f"{d:>5} {n:>5} {plain:8.3f} {g10:8.3f} {g10 / plain:6.1f} {g20:8.3f} {g20 / plain:6.1f} {eigh:7.3f} "
            f"{1 + 10 * eigh / plain:7.1f} {1 + 20 * eigh / plain:7.1f}",
            flush=True,
        )


def end_to_end(args: argparse.Namespace) -> None:
    """measure_geometry of a Pythia-70m-shaped model (random weights) on 1024 embedded probes."""
    from geomtrace.measure import MeasureConfig, measure_geometry
    from geomtrace.probes import ProbeSet, load_probes
    from geomtrace.tiny import build_tiny_model, train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer()
    model = build_tiny_model("gpt_neox", tokenizer=tokenizer, hidden_size=512, num_layers=6, num_heads=8)
    probes = load_probes(tokenizer, num_sequences=1024, max_tokens=128)
    tokens = sum(len(seq) for seq in probes.sequences)
    print(f"\n(iv) end to end: measure_geometry, d = 512, 6 layers, {len(probes)} probes ({tokens} tokens), best of 1")
    warm = ProbeSet(probes.sequences[:64], probes.description, probes.pad_token_id)
    measure_geometry(model, warm, MeasureConfig(uncertainty="jackknife"))  # warm-up: one-time costs out of the timings
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}
    runs = (("plain", {}), ("G=10", {"uncertainty_groups": 10}), ("G=20", {}), ("plain 2", {}))
    for label, options in runs:
        config = MeasureConfig(**({"uncertainty": "jackknife", **options} if label.startswith("G") else {}))
        # CPU time of this process as well as wall time: on a shared machine the wall time follows
        # the other jobs' load, the process's own CPU time much less.
        start, cpu_start = time.perf_counter(), time.process_time()
        result = measure_geometry(model, probes, config)
        times[label], cpu[label] = time.perf_counter() - start, time.process_time() - cpu_start
        se = result.last.rankme_se
        print(
            f"{label:>7}: wall {times[label]:7.2f} s ({times[label] / times['plain']:.2f}x), "
            f"CPU {cpu[label]:7.2f} s ({cpu[label] / cpu['plain']:.3f}x)  RankMe {result.last.rankme:.3f}"
            + ("" if se is None else f" +- {se:.3f}"),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--draws-large", type=int, default=None, help="draws for d > 64 (default: --draws)")
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--decay", type=float, default=1.0)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--ns", type=int, nargs="+", default=[256, 1024, 8192])
    parser.add_argument("--bootstrap-draws", type=int, default=40)
    parser.add_argument("--bootstrap-replicates", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-calibration", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--end-to-end", action="store_true", help="also (iv): measure_geometry of a 70m-shaped model")
    parser.add_argument("--paired", action="store_true", help="also (v): the error of a change on the same rows")
    parser.add_argument("--paired-eps", type=float, default=0.5, help="(v): the size of the map's perturbation")
    parser.add_argument(
        "--paired-cases", nargs="+", default=["64:256", "64:1024", "512:1024"], help="d:N pairs for (v)"
    )
    parser.add_argument(
        "--cost-cases",
        nargs="+",
        default=["128:1024", "256:1024", "512:1024", "1024:1024", "2048:1024", "512:8192", "1024:8192"],
        help="d:N pairs for (iii)",
    )
    args = parser.parse_args()
    args.cost_cases = [tuple(int(v) for v in case.split(":")) for case in args.cost_cases]
    args.paired_cases = [tuple(int(v) for v in case.split(":")) for case in args.paired_cases]
    if args.quick:
        args.draws, args.bootstrap_draws, args.repeats = 20, 0, 1
        args.cost_cases = [(64, 8192), (512, 1024)]
    torch.set_num_threads(args.threads)
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    if not args.skip_calibration:
        calibration(args)
    if not args.skip_cost:
        cost(args)
    if args.end_to_end:
        end_to_end(args)
    if args.paired:
        paired_calibration(args)


if __name__ == "__main__":
    main()
