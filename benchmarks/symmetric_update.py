"""The update's upper-block-triangle X^T X (issue 18.2); prints ratios measured side by side.

(a) Block size and switch: ``add_gram`` with blocks of 128/256/512 rows against one full
    ``addmm_`` into the same buffer, per d (batches of 1024 rows): where blocking pays.
(b) ``Geometry.update`` throughput against a bare full ``addmm_`` GEMM (and the ``acc += x.T @ x``
    of benchmarks/metrics.py) at d = 1024, N = 65,536, batches of 1024; also ``Geometry.update``
    with the blocking switched off, in the same run.
(c) ``Geometry`` end to end (update + compute) against the paper's route (stack, center, full
    SVD as ``PCA(svd_solver="full")``, see benchmarks/metrics.py) at N = 50,000, d = 1024.
(p) Where ``Geometry.update``'s time goes at d = 1024, N = 65,536, batches of 1024: each step
    of the update timed alone over the same batches (the fp64 column sum, ``aminmax``, the
    centering, the block GEMMs, the fold per batch, torchmetrics' wrapper), per batch. With
    ``--threads 1`` it reads the thread's CPU time, which other jobs on a shared machine
    disturb least.

Every comparison alternates its routes (best of the rounds each). Usage:
    python benchmarks/symmetric_update.py [--quick] [--part a|b|c|p|all] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from metrics import batches, geometry_route, interleaved_best, naive_route  # noqa: E402

import geomtrace.covariance as cov  # noqa: E402
from geomtrace import Geometry  # noqa: E402


def block_sweep(dims: list[int], blocks: list[int], rows: int, repeats: int) -> None:
    print(f"(a) add_gram vs one full addmm_, batches of 1024, {rows} rows per d: throughput ratio (> 1: blocking pays)")
    for d in dims:
        data = list(batches(rows, d, 1024))
        out = torch.zeros(d, d)

        def full(data: list[torch.Tensor] = data, out: torch.Tensor = out) -> None:
            for x in data:
                out.addmm_(x.T, x)

        def blocked(block: int | None, data: list[torch.Tensor] = data, out: torch.Tensor = out):
            def run() -> None:
                for x in data:
                    cov.add_gram(out, x, block)

            return run

        usable: list[int | None] = [b for b in blocks if b < d]
        usable.append(None)  # what the update uses: SYMMETRIC_MIN_DIM and SYMMETRIC_BLOCK
        times = interleaved_best(repeats, full, *(blocked(b) for b in usable))
        ratios = "  ".join(f"block {b or 'auto'}: {times[0] / t:.2f}" for b, t in zip(usable, times[1:]))
        print(f"    d={d:>5}: full {times[0]:.3f}s  {ratios}", flush=True)


def update_throughput(n: int, d: int, repeats: int) -> None:
    data = list(batches(n, d, 1024))

    def bare_addmm() -> None:
        acc = torch.zeros(d, d)
        for x in data:
            acc.addmm_(x.T, x)

    def bare_matmul() -> None:  # what benchmarks/metrics.py (i) calls the bare X^T X
        acc = torch.zeros(d, d)
        for x in data:
            acc += x.T @ x

    def geometry(switch: int):
        def run() -> None:
            saved = cov.SYMMETRIC_MIN_DIM
            cov.SYMMETRIC_MIN_DIM = switch
            try:
                m = Geometry()
                for x in data:
                    m.update(x)
            finally:
                cov.SYMMETRIC_MIN_DIM = saved

        return run

    routes = [bare_addmm, bare_matmul, geometry(cov.SYMMETRIC_MIN_DIM), geometry(10**9)]
    for fn in routes:
        fn()  # warm up
    t_addmm, t_matmul, t_blocked, t_full = interleaved_best(repeats, *routes)
    print(f"(b) update at d={d}, N={n}, batches of 1024 (block {cov.SYMMETRIC_BLOCK}):")
    print(f"    bare addmm_ {t_addmm:.3f}s, bare acc += x.T @ x {t_matmul:.3f}s")
    print(
        f"    Geometry.update (upper blocks) {t_blocked:.3f}s -> {t_addmm / t_blocked:.2f}x the bare addmm_'s "
        f"throughput ({t_matmul / t_blocked:.2f}x the += matmul's); goal >= 1.2x"
    )
    print(
        f"    Geometry.update (full GEMM)   {t_full:.3f}s -> {t_addmm / t_full:.2f}x the bare addmm_'s; "
        f"blocking speeds the update up {t_full / t_blocked:.2f}x",
        flush=True,
    )


def end_to_end(n: int, d: int, repeats: int) -> None:
    data = list(batches(n, d, 1024))
    result: dict = {}

    def timed(name, route):
        return lambda: result.__setitem__(name, route(data))

    def geometry_full(data) -> tuple[float, float]:
        saved = cov.SYMMETRIC_MIN_DIM
        cov.SYMMETRIC_MIN_DIM = 10**9
        try:
            return geometry_route(data)
        finally:
            cov.SYMMETRIC_MIN_DIM = saved

    names = ["naive", "blocked", "full"]
    routes = [naive_route, geometry_route, geometry_full]
    t_naive, t_blocked, t_full = interleaved_best(repeats, *(timed(a, r) for a, r in zip(names, routes)))
    rel = abs(result["blocked"][0] - result["naive"][0]) / result["naive"][0]
    rel_alpha = abs(result["blocked"][1] - result["naive"][1]) / result["naive"][1]
    print(f"(c) end to end N={n}, d={d}: stack + full SVD {t_naive:.2f}s")
    print(
        f"    Geometry (upper blocks) {t_blocked:.2f}s -> {t_naive / t_blocked:.1f}x faster (goal >= 8x); "
        f"RankMe rel diff {rel:.1e}, alpha {rel_alpha:.1e}"
    )
    print(f"    Geometry (full GEMM)    {t_full:.2f}s -> {t_naive / t_full:.1f}x faster", flush=True)


def profile_update(n: int, d: int, repeats: int) -> None:
    data = list(batches(n, d, 1024))
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    f64 = torch.float64
    means = [x.mean(0) for x in data]
    out = torch.zeros(d, d)

    def each(step):
        def run() -> None:
            for x, m in zip(data, means):
                step(x, m)  # the result is dropped, as in the update

        return run

    def fold_all() -> None:  # the folds of one pass over the data, without its GEMMs
        state = cov.CovarianceAccumulator()
        state.update(data[0][:64])
        for _ in range(len(data) // cov.FOLD_EVERY):
            state.pending_count.fill_(cov.FOLD_EVERY)
            cov.fold(state)

    def metric() -> None:
        m = Geometry()
        for x in data:
            m.update(x)

    def accumulator() -> None:
        a = cov.CovarianceAccumulator()
        for x in data:
            a.update(x)

    steps = {
        "bare addmm_": each(lambda x, m: out.addmm_(x.T, x)),
        "add_gram (the block GEMMs)": each(lambda x, m: cov.add_gram(out, x)),
        "column_sum64": each(lambda x, m: cov.column_sum64(x)),  # what prepare_rows runs
        "torch.sum(dtype=float64)": each(lambda x, m: torch.sum(x, 0, dtype=f64)),
        "aminmax": each(lambda x, m: torch.aminmax(x)),
        "centering x - m": each(lambda x, m: x - m),
        "folds": fold_all,
        "CovarianceAccumulator.update": accumulator,
        "Geometry.update": metric,
    }
    if not hasattr(cov, "column_sum64"):  # an older geomtrace on the path (to compare versions)
        del steps["column_sum64"]
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeats):
        for name, fn in steps.items():
            start = clock()
            fn()
            best[name] = min(best[name], clock() - start)
    per = {name: 1e3 * t / len(data) for name, t in best.items()}
    print(
        f"(p) where Geometry.update's time goes, d={d}, N={n}, batches of 1024, "
        f"{'thread CPU time' if clock is time.thread_time else 'wall time'}, ms per batch:"
    )
    for name, ms in per.items():
        print(f"    {name:30s} {ms:7.3f}")
    outside = per["Geometry.update"] - per["add_gram (the block GEMMs)"]
    print(
        f"    outside the GEMMs: {outside:.3f} ms ({outside / per['Geometry.update']:.0%} of the update); "
        f"Geometry.update {per['bare addmm_'] / per['Geometry.update']:.2f}x the bare addmm_'s throughput",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    parser.add_argument("--part", default="all", choices=["a", "b", "c", "p", "all"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# symmetric update — {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; SYMMETRIC_MIN_DIM={cov.SYMMETRIC_MIN_DIM}, "
        f"SYMMETRIC_BLOCK={cov.SYMMETRIC_BLOCK}"
    )
    if args.part in ("a", "all"):
        dims = [256, 512] if args.quick else [128, 256, 384, 512, 768, 1024, 1536, 2048]
        block_sweep(dims, [128, 256, 512], 8192 if args.quick else 16384, args.repeats)
    if args.part in ("b", "all"):
        update_throughput(8192 if args.quick else 65536, 256 if args.quick else 1024, args.repeats)
    if args.part in ("c", "all"):
        end_to_end(10000 if args.quick else 50000, 256 if args.quick else 1024, 3)
    if args.part == "p":
        profile_update(8192 if args.quick else 65536, 256 if args.quick else 1024, args.repeats)


if __name__ == "__main__":
    main()
