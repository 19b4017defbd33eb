"""Measure the round-off of the fp32 covariance route, in units of u * trace(C).

The alpha fit treats eigenvalues at or below ``u * trace(C)`` (u = 2**-24) as round-off
(see docs/concepts.md, "Round-off and rank"). This script measures, on LayerNorm'd features
with power-law spectra, how large the round-off really is and how small genuine tails get:

* the null eigenvalue (the direction a LayerNorm removes), which must lie below the floor;
* the largest error of any eigenvalue of rank <= 100 against a float64 two-pass reference;
* lambda_100 of an alpha = 3 spectrum, which must lie above the floor.

Usage: python benchmarks/roundoff.py [--quick]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

from geomtrace import EigenSpectrum

UNIT = 2.0**-24


def features(n: int, d: int, alpha: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.arange(1, d + 1, dtype=torch.float64) ** (-alpha / 2)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    mean = 3.0 * torch.randn(d, generator=gen, dtype=torch.float64)
    x = ((torch.randn(n, d, generator=gen, dtype=torch.float64) * scales) @ basis.T + mean).float()
    weight, bias = 1 + 0.3 * torch.randn(d, generator=gen), 0.1 * torch.randn(d, generator=gen)
    return torch.nn.functional.layer_norm(x, (d,), weight, bias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="d <= 256, N <= 8192")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    dims = (64, 128, 256) if args.quick else (64, 128, 256, 512, 1024)
    sizes = (160, 1024, 8192) if args.quick else (160, 1024, 8192, 32768)
    worst_null, worst_error, smallest_tail = 0.0, 0.0, float("inf")
    print("all in units of u * trace(C), u = 2**-24")
    for d in dims:
        for n in sizes:
            for alpha in (0.5, 1.0, 2.0, 3.0):
                x = features(n, d, alpha, seed=d + n + int(alpha * 10))
                metric = EigenSpectrum()
                for rows in x.split(1024):
                    metric.update(rows)
                route = metric.compute().numpy()
                centered = x.double() - x.double().mean(0)
                reference = np.sort(np.linalg.eigvalsh((centered.T @ centered / (n - 1)).numpy()))[::-1]
                unit_trace = UNIT * reference.sum()
                rank = min(n - 1, d - 1)
                if n > d:
                    worst_null = max(worst_null, route[d - 1] / unit_trace)
                top = min(100, rank)
                worst_error = max(worst_error, np.max(np.abs(route[:top] - reference[:top])) / unit_trace)
                if alpha == 3.0 and rank >= 100:
                    smallest_tail = min(smallest_tail, reference[99] / unit_trace)
        print(f"d <= {d:4d}: null eigenvalue <= {worst_null:.3f}, error of ranks <= 100 <= {worst_error:.3f}, "
              f"alpha = 3 lambda_100 >= {smallest_tail:.1f}", flush=True)


if __name__ == "__main__":
    main()
