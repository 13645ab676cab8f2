"""Analytic NTK speed and memory: nk.infinite_width_kernels vs a naive torch version and the X @ X.T floor.

    .venv/bin/python benchmarks/analytic_ntk.py [--n 1000 2000 4000 8000] [--d 64] [--depth 3] [--repeats 3]

"naive" is the textbook recursion written directly in torch on whole n x n matrices (one
temporary per formula term, no row blocks); it is checked against ntklib before it is timed.

Each configuration runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own. Times are medians over repeats after one warm-up. Writes benchmarks/results/analytic_ntk.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import write_results  # benchmarks/machine.py: the script's folder is on sys.path

RESULTS = Path(__file__).parent / "results" / "analytic_ntk.json"


def naive_relu_kernels(X, depth: int):
    """NNGP and NTK of the depth-`depth` ReLU MLP (W_std=1, b_std=0, "ntk"), written plainly."""
    import math

    import torch

    nngp = X @ X.T / X.shape[1]
    ntk = nngp.clone()
    for _ in range(depth):
        diagonal = torch.diagonal(nngp)
        norms = torch.sqrt(diagonal[:, None] * diagonal[None, :])
        cos = torch.clamp(nngp / norms, -1.0, 1.0)
        angle = torch.arccos(cos)
        nngp = norms * (torch.sin(angle) + (math.pi - angle) * cos) / (2 * math.pi)
        ntk = nngp + ntk * (math.pi - angle) / (2 * math.pi)
    return nngp, ntk


def measure(n: int, d: int, depth: int, dtype: str, what: str, repeats: int, device: str) -> dict:
    import torch

    import ntklib as nk

    torch.manual_seed(0)
    X = torch.randn(n, d, dtype=getattr(torch, dtype), device=device)
    work = {
        "matmul": lambda: X @ X.T,
        "ntklib": lambda: nk.infinite_width_kernels(X, depth=depth, activation="relu"),
        "naive": lambda: naive_relu_kernels(X, depth),
    }[what]
    if what == "naive":  # time it only if it computes the same kernels
        reference = nk.infinite_width_kernels(X[:256], depth=depth, activation="relu")
        mine = naive_relu_kernels(X[:256], depth)
        tol = 1e-5 if X.dtype == torch.float32 else 1e-10
        for a, b in zip(mine, reference):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    work(), sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # KiB on Linux
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() // 1024
    return {"seconds": statistics.median(times), "peak_extra_MiB": peak / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=6, help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.one:
        n, d, depth, dtype, what, device = args.one
        print(json.dumps(measure(int(n), int(d), int(depth), dtype, what, args.repeats, device)))
        return

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for n in args.n:
            for dtype in ("float64", "float32"):
                row = {"device": device, "n": n, "d": args.d, "depth": args.depth, "dtype": dtype}
                for what in ("matmul", "ntklib", "naive"):
                    out = subprocess.run(
                        [sys.executable, __file__, "--repeats", str(args.repeats), "--one",
                         str(n), str(args.d), str(args.depth), dtype, what, device],
                        capture_output=True, text=True, check=True,
                    )
                    row[what] = json.loads(out.stdout)
                row["ratio"] = row["ntklib"]["seconds"] / row["matmul"]["seconds"]
                row["naive_ratio"] = row["naive"]["seconds"] / row["matmul"]["seconds"]
                rows.append(row)
                print(f"{device} n={n} {dtype}: X@X.T {row['matmul']['seconds'] * 1e3:8.1f} ms, "
                      f"NTK+NNGP depth {args.depth} {row['ntklib']['seconds'] * 1e3:8.1f} ms "
                      f"(x{row['ratio']:.1f}), peak +{row['ntklib']['peak_extra_MiB']:.0f} MiB; naive "
                      f"{row['naive']['seconds'] * 1e3:8.1f} ms (x{row['naive_ratio']:.1f}), "
                      f"peak +{row['naive']['peak_extra_MiB']:.0f} MiB")
    write_results(RESULTS, rows=rows)


if __name__ == "__main__":
    main()
