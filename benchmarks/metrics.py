"""Benchmark the core metrics; prints ratios measured side by side in one run.

(i)   RankMe.update (and Geometry.update) throughput relative to a bare fp32 X^T X on the
      same batches (``acc += x.T @ x``, and one full ``addmm_`` into the buffer).
(ii)  End-to-end RankMe + alpha-ReQ vs the paper scripts' route (stack all features,
      center, full SVD/PCA) at N = 50k, d = 1024, for each way a user may write it:
      ``RankMe()`` and ``AlphaReQ()`` as two separate metrics, the two in a
      ``MetricCollection`` (one compute group: one accumulation), and ``Geometry()``.
(iii) Peak memory (RSS above the post-import baseline, each run in a fresh process) of
      both routes as N grows from 20k to 200k.

Usage: python benchmarks/metrics.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch


def batches(n: int, d: int, batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5
    for start in range(0, n, batch):
        rows = min(batch, n - start)
        yield torch.randn(rows, d, generator=gen) * scales + 3.0


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best(repeats: int, *fns) -> list[float]:
    """Best time of each function, alternating them so machine noise hits all alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def update_throughput(n: int, d: int, batch: int, repeats: int) -> dict:
    from geomtrace import Geometry, RankMe

    data = list(batches(n, d, batch))

    def bare() -> None:
        acc = torch.zeros(d, d)
        for x in data:
            acc += x.T @ x

    def bare_addmm() -> None:  # the full GEMM accumulated in place (issue 18.2's reference)
        acc = torch.zeros(d, d)
        for x in data:
            acc.addmm_(x.T, x)

    def updater(cls):
        def run() -> None:
            m = cls()
            for x in data:
                m.update(x)

        return run

    rankme, geometry = updater(RankMe), updater(Geometry)
    bare(), bare_addmm(), rankme(), geometry()  # warm up threads, allocator and kernels
    t_bare, t_addmm, t_rankme, t_geometry = interleaved_best(repeats, bare, bare_addmm, rankme, geometry)
    return {
        "bare_matmul_s": t_bare,
        "bare_addmm_s": t_addmm,
        "geometry_vs_addmm_ratio": t_addmm / t_geometry,
        "rankme_update_s": t_rankme,
        "geometry_update_s": t_geometry,
        "throughput_ratio": t_bare / t_rankme,
        "geometry_throughput_ratio": t_bare / t_geometry,
    }


def naive_route(data: list[torch.Tensor]) -> tuple[float, float]:
    """What the paper's scripts do: stack all features in numpy, center, full PCA.

    Their ``PCA(svd_solver="full")`` is a LAPACK SVD with U and V^T of the centered
    (N, d) matrix; numpy's ``svd(full_matrices=False)`` is that same computation.
    """
    import numpy as np

    from geomtrace import functional as F

    x = torch.cat(data).numpy()
    centered = x - x.mean(0, keepdims=True)
    _, singular, _ = np.linalg.svd(centered, full_matrices=False)
    eigenvalues = torch.from_numpy(singular.astype(np.float64) ** 2 / (x.shape[0] - 1))
    return float(F.rankme(eigenvalues)), float(F.alpha_req(eigenvalues).alpha)


def naive_svdvals_route(data: list[torch.Tensor]) -> tuple[float, float]:
    """A kinder naive baseline: stack, center, singular values only (torch.linalg.svdvals)."""
    from geomtrace import functional as F

    x = torch.cat(data)
    centered = x - x.mean(0, keepdim=True)
    eigenvalues = torch.linalg.svdvals(centered).double() ** 2 / (x.shape[0] - 1)
    return float(F.rankme(eigenvalues)), float(F.alpha_req(eigenvalues).alpha)


def separate_route(data) -> tuple[float, float]:
    """``RankMe()`` and ``AlphaReQ()`` as two metrics: two accumulations of the covariance."""
    from geomtrace import AlphaReQ, RankMe

    rankme, alpha = RankMe(), AlphaReQ()
    for x in data:
        rankme.update(x)
        alpha.update(x)
    return float(rankme.compute()), float(alpha.compute()["alpha"])


def collection_route(data) -> tuple[float, float]:
    """The two in a ``MetricCollection``: one compute group, one accumulation."""
    from torchmetrics import MetricCollection

    from geomtrace import AlphaReQ, RankMe

    metrics = MetricCollection({"rankme": RankMe(), "alpha": AlphaReQ()})
    for x in data:
        metrics.update(x)
    out = metrics.compute()
    return float(out["rankme"]), float(out["alpha"])


def geometry_route(data) -> tuple[float, float]:
    """``Geometry()``: RankMe, alpha, R^2 and the spectrum from one accumulation."""
    from geomtrace import Geometry

    metric = Geometry(eigenvalues=False)
    for x in data:
        metric.update(x)
    out = metric.compute()
    return float(out["rankme"]), float(out["alpha"])


STREAMING_ROUTES = {"separate": separate_route, "collection": collection_route, "geometry": geometry_route}
streaming_route = geometry_route  # the one the memory sweep runs


def end_to_end(n: int, d: int, batch: int, repeats: int) -> dict:
    data = list(batches(n, d, batch))
    result: dict = {}

    def timed(name, route):
        return lambda: result.__setitem__(name, route(data))

    names = [*STREAMING_ROUTES, "naive", "svdvals"]
    routes = [*STREAMING_ROUTES.values(), naive_route, naive_svdvals_route]
    times = dict(zip(names, interleaved_best(repeats, *(timed(n, r) for n, r in zip(names, routes)))))
    out: dict = {"naive_s": times["naive"], "svdvals_s": times["svdvals"]}
    for name in STREAMING_ROUTES:
        out[name] = {
            "seconds": times[name],
            "speedup": times["naive"] / times[name],
            "speedup_vs_svdvals": times["svdvals"] / times[name],
            "rankme_rel_diff": abs(result[name][0] - result["naive"][0]) / result["naive"][0],
            "alpha_rel_diff": abs(result[name][1] - result["naive"][1]) / result["naive"][1],
        }
    return out


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def memory_child(route: str, n: int, d: int, batch: int) -> None:
    import geomtrace  # noqa: F401  (imports count in the baseline)
    from geomtrace import functional  # noqa: F401

    streaming_route(batches(2 * batch, d, batch))  # warm up allocator and kernels
    with open("/proc/self/clear_refs", "w") as handle:  # reset the peak (VmHWM) to the current RSS
        handle.write("5")
    baseline = _status_mib("VmRSS")
    if route == "naive":
        naive_route(list(batches(n, d, batch)))
    else:
        streaming_route(batches(n, d, batch))
    print(json.dumps({"extra_peak_mib": _status_mib("VmHWM") - baseline}))


def memory_sweep(ns: list[int], d: int, batch: int) -> list[dict]:
    rows = []
    for n in ns:
        row = {"N": n}
        for route in ("geomtrace", "naive"):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", route, str(n), str(d), str(batch)],
                capture_output=True, text=True, check=True,
            )
            row[f"{route}_extra_peak_mib"] = json.loads(out.stdout.strip().splitlines()[-1])["extra_peak_mib"]
        rows.append(row)
        print(f"  N={n:>7}: geomtrace +{row['geomtrace_extra_peak_mib']:.0f} MiB, naive +{row['naive_extra_peak_mib']:.0f} MiB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes for a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="end-to-end rounds (best of each route)")
    parser.add_argument("--skip-memory", action="store_true", help="leave out (iii)")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        route, n, d, batch = args.memory_child
        memory_child(route, int(n), int(d), int(batch))
        return
    d = 256 if args.quick else 1024
    print(f"# geomtrace metrics benchmark — {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    n_update = 8192 if args.quick else 65536
    up = update_throughput(n_update, d, 1024, repeats=5)
    print(f"(i)   update: bare X^T X {up['bare_matmul_s']:.3f}s, RankMe.update {up['rankme_update_s']:.3f}s "
          f"-> throughput ratio {up['throughput_ratio']:.2f}; Geometry.update {up['geometry_update_s']:.3f}s "
          f"-> {up['geometry_throughput_ratio']:.2f} (aim >= 0.8)", flush=True)
    print(f"      vs a bare full addmm_ {up['bare_addmm_s']:.3f}s: Geometry.update "
          f"{up['geometry_vs_addmm_ratio']:.2f}x its throughput (issue 18.2 aims >= 1.2)", flush=True)
    n_e2e = 10000 if args.quick else 50000
    e2e = end_to_end(n_e2e, d, 1024, repeats=args.repeats)
    print(f"(ii)  end-to-end N={n_e2e} d={d}: naive (stack + full SVD) {e2e['naive_s']:.2f}s, "
          f"svdvals-only {e2e['svdvals_s']:.2f}s", flush=True)
    for name in STREAMING_ROUTES:
        row = e2e[name]
        print(f"      {name:>10}: {row['seconds']:.2f}s -> {row['speedup']:.1f}x faster than naive, "
              f"{row['speedup_vs_svdvals']:.1f}x than svdvals; RankMe rel diff {row['rankme_rel_diff']:.1e}, "
              f"alpha rel diff {row['alpha_rel_diff']:.1e}", flush=True)
    if args.skip_memory:
        return
    ns = [5000, 10000, 20000] if args.quick else [20000, 50000, 100000, 200000]
    print(f"(iii) peak memory above baseline, d={d}:")
    memory_sweep(ns, d, 1024)


if __name__ == "__main__":
    main()
