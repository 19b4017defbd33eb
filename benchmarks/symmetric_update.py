"""The update's upper-block-triangle X^T X (issue 18.2); prints ratios measured side by side.

(a) Block size and switch: ``add_gram`` with blocks of 128/256/512 rows against one full
    ``addmm_`` into the same buffer, per d (batches of 1024 rows): where blocking pays.
(b) ``Geometry.update`` throughput against a bare full ``addmm_`` GEMM (and the ``acc += x.T @ x``
    of benchmarks/metrics.py) at d = 1024, N = 65,536, batches of 1024; also ``Geometry.update``
    with the blocking switched off, in the same run.
(c) ``Geometry`` end to end (update + compute) against the paper's route (stack, center, full
    SVD as ``PCA(svd_solver="full")``, see benchmarks/metrics.py) at N = 50,000, d = 1024.

Every comparison alternates its routes (best of the rounds each). Usage:
    python benchmarks/symmetric_update.py [--quick] [--part a|b|c|all]
"""

from __future__ import annotations

import argparse
import platform
import sys
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
    print(f"    Geometry.update (upper blocks) {t_blocked:.3f}s -> {t_addmm / t_blocked:.2f}x the bare addmm_'s "
          f"throughput ({t_matmul / t_blocked:.2f}x the += matmul's); goal >= 1.2x")
    print(f"    Geometry.update (full GEMM)   {t_full:.3f}s -> {t_addmm / t_full:.2f}x the bare addmm_'s; "
          f"blocking speeds the update up {t_full / t_blocked:.2f}x", flush=True)


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
    print(f"    Geometry (upper blocks) {t_blocked:.2f}s -> {t_naive / t_blocked:.1f}x faster (goal >= 8x); "
          f"RankMe rel diff {rel:.1e}, alpha {rel_alpha:.1e}")
    print(f"    Geometry (full GEMM)    {t_full:.2f}s -> {t_naive / t_full:.1f}x faster", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    parser.add_argument("--part", default="all", choices=["a", "b", "c", "all"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# symmetric update — {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; SYMMETRIC_MIN_DIM={cov.SYMMETRIC_MIN_DIM}, "
          f"SYMMETRIC_BLOCK={cov.SYMMETRIC_BLOCK}")
    if args.part in ("a", "all"):
        dims = [256, 512] if args.quick else [128, 256, 384, 512, 768, 1024, 1536, 2048]
        block_sweep(dims, [128, 256, 512], 8192 if args.quick else 16384, args.repeats)
    if args.part in ("b", "all"):
        update_throughput(8192 if args.quick else 65536, 256 if args.quick else 1024, args.repeats)
    if args.part in ("c", "all"):
        end_to_end(10000 if args.quick else 50000, 256 if args.quick else 1024, 3)


if __name__ == "__main__":
    main()
