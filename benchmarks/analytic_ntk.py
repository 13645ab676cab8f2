"""Analytic NTK speed and memory: nk.infinite_width_kernels vs a naive torch version and the X @ X.T floor.

    .venv/bin/python benchmarks/analytic_ntk.py [--n 1000 2000 4000 8000] [--d 64] [--depth 3] [--repeats 3]

"naive" is the textbook recursion written directly in torch on whole n x n matrices (one
temporary per formula term, no row blocks); it is checked against ntklib before it is timed.

Two references say how close ntklib is to what this machine allows. "outputs" allocates the two
n x n results and writes them once: the page faults of fresh memory, which every method pays
(X @ X.T pays them for one output). "fused" is the same recursion in the same blocks of input
pairs as ntklib, but with each layer's elementwise work fused into one loop by torch.compile
(inductor, which needs a C++ compiler; it is skipped when compiling fails), also checked against
ntklib first: the time ntklib's chain of torch operations would take if every layer were one
pass over a block.

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


def fused_relu_layer(s, ntk, q_a, q_b):
    """One Dense(W_std=1) + ReLU layer on a block, (Sigma, Theta) -> (Sigma', Theta'): the
    arc-cosine recursion of ``naive_relu_kernels`` as one function, for torch.compile to fuse."""
    import math

    import torch

    norms = torch.sqrt(q_a[:, None] * q_b[None, :])
    cos = torch.clamp(s / norms, -1.0, 1.0)
    angle = torch.arccos(cos)
    derivative = (math.pi - angle) / (2 * math.pi)  # exactly 1/2 at angle 0
    nngp = s * derivative + norms * torch.sin(angle) / (2 * math.pi)
    return nngp, nngp + ntk * derivative


def blocked_relu_kernels(X, depth: int, layer=fused_relu_layer, block: int = 500):
    """ntklib's schedule by hand: blocks on and above the diagonal, each through ``layer``
    ``depth`` times, stored and mirrored into the two outputs."""
    import torch

    n, d = X.shape
    variances = (X * X).sum(dim=1) / d  # Sigma(x, x) halves at each ReLU layer
    nngp_out, ntk_out = X.new_empty(n, n), X.new_empty(n, n)
    for row in range(0, n, block):
        for col in range(row, n, block):
            rows, cols = slice(row, row + block), slice(col, col + block)
            s = X[rows] @ X[cols].T / d
            ntk, q_a, q_b = s, variances[rows], variances[cols]
            if row == col:  # as ntklib: cos = 1 exactly for a point with itself
                q_a = q_b = s.diagonal().clone()
            for _ in range(depth):
                s, ntk = layer(s, ntk, q_a, q_b)
                q_a, q_b = q_a / 2, q_b / 2
            nngp_out[rows, cols], ntk_out[rows, cols] = s, ntk
            if row != col:
                nngp_out[cols, rows], ntk_out[cols, rows] = s.T, ntk.T
    return nngp_out, ntk_out


def two_outputs(X):
    """The two fresh n x n results, each written once."""
    n = X.shape[0]
    return X.new_empty(n, n).fill_(1.0), X.new_empty(n, n).fill_(1.0)


def measure(n: int, d: int, depth: int, dtype: str, what: str, repeats: int, device: str) -> dict:
    import torch

    import ntklib as nk

    torch.manual_seed(0)
    X = torch.randn(n, d, dtype=getattr(torch, dtype), device=device)
    if what == "fused":
        try:
            layer = torch.compile(fused_relu_layer, dynamic=False)
            blocked_relu_kernels(X[:16], depth, layer, block=8)
        except Exception as error:  # noqa: BLE001 - no compiler, no fused reference
            return {"skipped": f"torch.compile failed: {type(error).__name__}: {str(error)[:200]}"}
    work = {
        "matmul": lambda: X @ X.T,
        "ntklib": lambda: nk.infinite_width_kernels(X, depth=depth, activation="relu"),
        "naive": lambda: naive_relu_kernels(X, depth),
        "fused": lambda: blocked_relu_kernels(X, depth, layer),
        "outputs": lambda: two_outputs(X),
    }[what]
    if what in ("naive", "fused"):  # time it only if it computes the same kernels
        reference = nk.infinite_width_kernels(X[:256], depth=depth, activation="relu")
        if what == "naive":
            mine = naive_relu_kernels(X[:256], depth)
        else:
            mine = blocked_relu_kernels(X[:256], depth, layer, block=128)
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
                for what in ("matmul", "ntklib", "naive", "outputs") + (("fused",) if device == "cpu" else ()):
                    out = subprocess.run(
                        [sys.executable, __file__, "--repeats", str(args.repeats), "--one",
                         str(n), str(args.d), str(args.depth), dtype, what, device],
                        capture_output=True, text=True, check=True,
                    )
                    row[what] = json.loads(out.stdout)
                for what in ("ntklib", "naive", "outputs", "fused"):
                    if "seconds" in row.get(what, {}):
                        row[f"{what}_ratio" if what != "ntklib" else "ratio"] = (
                            row[what]["seconds"] / row["matmul"]["seconds"])  # fmt: skip
                rows.append(row)
                print(f"{device} n={n} {dtype}: X@X.T {row['matmul']['seconds'] * 1e3:8.1f} ms, "
                      f"NTK+NNGP depth {args.depth} {row['ntklib']['seconds'] * 1e3:8.1f} ms "
                      f"(x{row['ratio']:.1f}), peak +{row['ntklib']['peak_extra_MiB']:.0f} MiB; naive "
                      f"{row['naive']['seconds'] * 1e3:8.1f} ms (x{row['naive_ratio']:.1f}), "
                      f"peak +{row['naive']['peak_extra_MiB']:.0f} MiB; two outputs x{row['outputs_ratio']:.1f}; "
                      f"fused x{row.get('fused_ratio', float('nan')):.1f}")
    write_results(RESULTS, rows=rows)


if __name__ == "__main__":
    main()
