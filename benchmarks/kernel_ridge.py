"""Kernel ridge fit on a precomputed kernel: ntklib vs scikit-learn vs a plain Cholesky solve.

    .venv/bin/python benchmarks/kernel_ridge.py [--n 1000 2000 4000 8000] [--repeats 3]

All three solve (K + ridge I) alpha = y for the same Gaussian-kernel matrix K (float64, d = 16):
  ntklib   nk.solve_kernel_system (what nk.KernelRidge.fit calls): Cholesky plus the singularity check
  sklearn  sklearn.kernel_ridge.KernelRidge(kernel="precomputed", alpha=ridge).fit on numpy arrays
  cholesky torch.linalg.cholesky + torch.cholesky_solve, no checks (the floor)
Each (device, n, method) runs in a fresh subprocess so that its peak memory is its own (resident
memory on the CPU, torch's peak allocation on CUDA); times are medians over repeats after one
warm-up. Every solution is checked against the Cholesky solve. When CUDA is available the same run
also measures ntklib and the Cholesky floor on the GPU (scikit-learn has no GPU path).
Writes benchmarks/results/kernel_ridge.json.
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

RESULTS = Path(__file__).parent / "results" / "kernel_ridge.json"
METHODS = ("ntklib", "sklearn", "cholesky")
RIDGE = 1e-3


def problem(n: int, device: str = "cpu"):
    import torch

    import ntklib as nk

    generator = torch.Generator().manual_seed(n)
    X = torch.randn(n, 16, generator=generator, dtype=torch.float64)
    y = torch.randn(n, generator=generator, dtype=torch.float64)
    return nk.gaussian_kernel(X.to(device), sigma=4.0), y.to(device)


def methods_on(device: str) -> tuple[str, ...]:
    return METHODS if device == "cpu" else tuple(m for m in METHODS if m != "sklearn")


def solvers(K, y):
    import numpy as np
    import torch
    from sklearn.kernel_ridge import KernelRidge

    import ntklib as nk

    eye = torch.eye(K.shape[0], dtype=K.dtype, device=K.device)

    def cholesky():
        L = torch.linalg.cholesky(K + RIDGE * eye)
        return torch.cholesky_solve(y[:, None], L)[:, 0]

    def sklearn():  # .numpy() shares memory with the tensors: no copy is timed
        model = KernelRidge(alpha=RIDGE, kernel="precomputed").fit(K.numpy(), y.numpy())
        return torch.from_numpy(np.asarray(model.dual_coef_))

    work = {"ntklib": lambda: nk.solve_kernel_system(K, y, RIDGE), "cholesky": cholesky}
    if K.device.type == "cpu":
        work["sklearn"] = sklearn
    return work


def measure(n: int, method: str, repeats: int, device: str = "cpu") -> dict:
    import torch

    K, y = problem(n, device)
    all_solvers = solvers(K, y)
    if method not in all_solvers:
        raise ValueError(f"method {method!r} does not run on {device}; it has: {', '.join(all_solvers)}")
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()
    work = all_solvers[method]
    alpha = work()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - start)
    if cuda:  # bytes beyond K and y, which every method shares
        peak = (torch.cuda.max_memory_allocated() - allocated_before) // 1024
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # KiB on Linux
    # The check runs after the memory reading, so that the reference solve does not count in it.
    reference = all_solvers["cholesky"]()
    gap = float((alpha - reference).abs().max() / reference.abs().max())
    if gap > 1e-8:
        raise AssertionError(f"{method} disagrees with the Cholesky solve at n={n}: relative gap {gap:.2e}")
    return {"seconds": statistics.median(times), "all_seconds": times, "peak_extra_MiB": peak / 1024,
            "relative_difference_to_cholesky": gap, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # worker mode: n method device
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.repeats, args.one[2])))
        return

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for n in args.n:
            row = {"device": device, "n": n, "dtype": "float64", "ridge": RIDGE, "methods": {}}
            for method in methods_on(device):
                out = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats),
                                      "--one", str(n), method, device],
                                     capture_output=True, text=True, check=True)  # fmt: skip
                row["methods"][method] = json.loads(out.stdout)
            rows.append(row)
            print(f"{device} n={n}: " + ", ".join(f"{m} {r['seconds'] * 1e3:8.1f} ms (+{r['peak_extra_MiB']:.0f} MiB)"
                                                  for m, r in row["methods"].items()))  # fmt: skip
    write_results(RESULTS, rows=rows)


if __name__ == "__main__":
    main()
