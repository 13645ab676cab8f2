"""Kernel ridge fit on a precomputed kernel: ntklib vs scikit-learn vs a plain Cholesky solve.

    .venv/bin/python benchmarks/kernel_ridge.py [--n 1000 2000 4000 8000] [--repeats 3]

All three solve (K + ridge I) alpha = y for the same Gaussian-kernel matrix K (float64, d = 16):
  ntklib   nk.solve_kernel_system (what nk.KernelRidge.fit calls): Cholesky plus the singularity check
  sklearn  sklearn.kernel_ridge.KernelRidge(kernel="precomputed", alpha=ridge).fit on numpy arrays
  cholesky torch.linalg.cholesky + torch.cholesky_solve, no checks (the floor)
Each (n, method) runs in a fresh subprocess so that its peak resident memory is its own; times
are medians over repeats after one warm-up. The three solutions are compared before timing.
Writes benchmarks/results/kernel_ridge.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "kernel_ridge.json"
METHODS = ("ntklib", "sklearn", "cholesky")
RIDGE = 1e-3


def problem(n: int):
    import torch

    import ntklib as nk

    generator = torch.Generator().manual_seed(n)
    X = torch.randn(n, 16, generator=generator, dtype=torch.float64)
    y = torch.randn(n, generator=generator, dtype=torch.float64)
    return nk.gaussian_kernel(X, sigma=4.0), y


def solvers(K, y):
    import numpy as np
    import torch
    from sklearn.kernel_ridge import KernelRidge

    import ntklib as nk

    K_np, y_np = K.numpy(), y.numpy()
    eye = torch.eye(K.shape[0], dtype=K.dtype)

    def cholesky():
        L = torch.linalg.cholesky(K + RIDGE * eye)
        return torch.cholesky_solve(y[:, None], L)[:, 0]

    return {
        "ntklib": lambda: nk.solve_kernel_system(K, y, RIDGE),
        "sklearn": lambda: torch.from_numpy(np.asarray(KernelRidge(alpha=RIDGE, kernel="precomputed").fit(K_np, y_np).dual_coef_)),
        "cholesky": cholesky,
    }


def measure(n: int, method: str, repeats: int) -> dict:
    import torch

    K, y = problem(n)
    all_solvers = solvers(K, y)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    work = all_solvers[method]
    alpha = work()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
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
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # worker mode: n method
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.repeats)))
        return

    import torch

    rows = []
    for n in args.n:
        row = {"device": "cpu", "n": n, "dtype": "float64", "ridge": RIDGE, "methods": {}}
        for method in METHODS:
            out = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--one", str(n), method],
                                 capture_output=True, text=True, check=True)
            row["methods"][method] = json.loads(out.stdout)
        rows.append(row)
        print(f"n={n}: " + ", ".join(f"{m} {row['methods'][m]['seconds'] * 1e3:8.1f} ms "
                                     f"(+{row['methods'][m]['peak_extra_MiB']:.0f} MiB)" for m in METHODS))
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
               "load_average_at_end": list(os.getloadavg()),
               "threads": torch.get_num_threads(), "torch": torch.__version__}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
