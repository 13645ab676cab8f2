"""Kernel ridge regression beyond memory: depth-3 ReLU NTK at n = 10k-40k, kernel + solve.

    .venv/bin/python benchmarks/large_kernels.py [--n 10000 20000 40000] [--methods ...]
        [--store-dir DIR] [--recompute-max-n 10000] [--cholesky-overhead-n 4000]

The problem: inputs x ~ N(0, I_d / d) with d = 32, targets y = sin(1.5 x.w) + 0.1 noise with
|w| = sqrt(d), m = 2000 noiseless test points (the same for every n), float32; the kernel is the
NTK of serial(Dense, Relu) x 3 + Dense (W_std = sqrt 2, b_std = 0.1), ridge 0.1 in
(K + ridge I) alpha = y. Methods, each in a fresh subprocess:

  cholesky       K = nk.kernel_matrix(net, X, get="ntk") in memory, nk.solve_kernel_system
                 (Cholesky: K and its factor, 2 n^2 floats); skipped when they would not fit
  pcg_store      nk.kernel_matrix(..., out=<store>) to disk, then solve_kernel_system(
                 "<store>/ntk.npy", solver="pcg"): CG streams K from the file in row bands
  pcg_recompute  nk.KernelRidge(ntk, solver="pcg"): K recomputed tile by tile at every product
                 (nothing n x n anywhere; one kernel computation per CG iteration), n <= 10k

After an untimed warm-up (the kernel on 2 x tile points), each row records the seconds of the
kernel, of the solve and of the test predictions (k(X_test, X) alpha, a tile at a time, the same
code for every method), the peak resident memory of the process above its level after the
imports, the data and the warm-up (VmHWM after a reset through /proc/self/clear_refs; the OS
page cache holding the store is not the process's), CG's iterations and final relative
residual, and the test mean squared error; the driver adds each PCG method's gaps to the
Cholesky predictions where that ran.

``--cholesky-overhead-n`` (default 4000) also measures nk.solve_kernel_system against a bare
Cholesky, scipy's cho_factor/cho_solve and torch's cholesky_ex/cholesky_solve, on one float64
Gaussian-kernel matrix, interleaved repeats (0 skips it). Writes benchmarks/results/large_kernels.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import (  # benchmarks/machine.py: the script's folder is on sys.path
    available_MiB,
    peak_memory,
    reset_peak_memory,
    write_results,
)

RESULTS = Path(__file__).parent / "results" / "large_kernels.json"
METHODS = ("cholesky", "pcg_store", "pcg_recompute")
RIDGE = 0.1
D, M_TEST = 32, 2000


def network():
    import ntklib as nk

    layers = [layer for _ in range(3) for layer in (nk.Dense(1, W_std=2**0.5, b_std=0.1), nk.Relu())]
    return nk.serial(*layers, nk.Dense(1, W_std=1.0, b_std=0.1))


NET = None


def ntk(X, Z=None):
    """The network's NTK as one tensor (what KernelRidge takes)."""
    return NET.kernels(X, Z).ntk


def problem(n: int, m: int = M_TEST, d: int = D):
    """n training and m test points; the target direction w and the test set do not depend on n."""
    import torch

    def normal(seed: int, *shape: int):
        return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    w = normal(1, d)
    w = w / w.norm() * d**0.5  # x.w ~ N(0, 1)
    X, X_test = normal(3, n, d) / d**0.5, normal(2, m, d) / d**0.5
    y = torch.sin(1.5 * X @ w) + 0.1 * normal(4, n)
    y_test = torch.sin(1.5 * X_test @ w)  # noiseless: the test error is the estimate's
    return X.float(), y.float(), X_test.float(), y_test.float()


def measure(n: int, method: str, args, predictions_to: str | None = None) -> dict:
    global NET
    import numpy as np
    import torch

    import ntklib as nk
    from ntklib.tiled import TileOperator, kernel_matrix

    NET = network()
    X, y, X_test, y_test = problem(n, args.m)
    options = {"tol": args.tol, "rank": args.rank, "max_iter": args.max_iter}
    kernel_matrix(NET, X[: 2 * args.tile], get="ntk", tile=args.tile)  # warm-up (allocator, threads), untimed
    base = reset_peak_memory()
    start = time.perf_counter()
    store = None
    if method == "cholesky":
        K = kernel_matrix(NET, X, get="ntk", tile=args.tile)
        kernel_done = time.perf_counter()
        alpha, info = nk.solve_kernel_system(K, y, RIDGE, return_info=True)
        del K
    elif method == "pcg_store":
        store = tempfile.mkdtemp(prefix="ntk-store-", dir=args.store_dir)
        kernel_matrix(NET, X, get="ntk", tile=args.tile, out=store)
        kernel_done = time.perf_counter()
        alpha, info = nk.solve_kernel_system(os.path.join(store, "ntk.npy"), y, RIDGE, solver="pcg",
                                             return_info=True, **options)  # fmt: skip
    elif method == "pcg_recompute":
        kernel_done = start  # no separate kernel stage: every CG product recomputes K
        model = nk.KernelRidge(ntk, ridge=RIDGE, solver="pcg", tile=args.tile, **options).fit(X, y)
        alpha, info = model.dual_coef_, model.solve_info_
    else:
        raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(METHODS)}")
    solve_done = time.perf_counter()
    predictions = TileOperator(ntk, X, tile=args.tile).products(X_test, alpha[:, None])[:, 0]
    predict_done = time.perf_counter()
    peak = peak_memory() - base
    if store is not None:
        shutil.rmtree(store)
    if predictions_to is not None:
        np.save(predictions_to, predictions.numpy())
    return {"kernel_seconds": kernel_done - start, "solve_seconds": solve_done - kernel_done,
            "predict_seconds": predict_done - solve_done, "peak_extra_MiB": peak,
            "iterations": info.iterations, "relative_residual": info.residual, "converged": info.converged,
            "test_mse": float((predictions - y_test).square().mean()), "threads": torch.get_num_threads()}  # fmt: skip


def fits_in_memory(n: int, fraction: float = 0.8) -> bool:
    """K and its Cholesky factor, 2 n^2 float32, within ``fraction`` of the available memory."""
    return 2 * n * n * 4 / 2**20 < fraction * available_MiB()


def cholesky_overhead(n: int, repeats: int) -> dict:
    """nk.solve_kernel_system against bare Cholesky solves of the same float64 system."""
    import numpy as np
    import scipy.linalg
    import torch

    import ntklib as nk

    generator = torch.Generator().manual_seed(n)
    X = torch.randn(n, 16, generator=generator, dtype=torch.float64)
    y = torch.randn(n, generator=generator, dtype=torch.float64)
    K, ridge = nk.gaussian_kernel(X, sigma=4.0), 1e-3

    def scipy_bare():
        factor = scipy.linalg.cho_factor(K.numpy() + ridge * np.eye(n), check_finite=False)
        return torch.from_numpy(scipy.linalg.cho_solve(factor, y.numpy(), check_finite=False))

    def scipy_default():  # cho_factor/cho_solve as called without options (they scan for NaN/inf)
        factor = scipy.linalg.cho_factor(K.numpy() + ridge * np.eye(n))
        return torch.from_numpy(scipy.linalg.cho_solve(factor, y.numpy()))

    def torch_bare():
        L, _ = torch.linalg.cholesky_ex(K + ridge * torch.eye(n, dtype=K.dtype))
        return torch.cholesky_solve(y[:, None], L)[:, 0]

    work = {"ntklib": lambda: nk.solve_kernel_system(K, y, ridge), "scipy_bare": scipy_bare,
            "scipy_default": scipy_default, "torch_bare": torch_bare}  # fmt: skip
    reference = scipy_bare()
    times: dict[str, list[float]] = {name: [] for name in work}
    for name, solve in work.items():  # warm-up, and every answer checked
        gap = float((solve() - reference).abs().max() / reference.abs().max())
        if gap > 1e-8:
            raise AssertionError(f"{name} disagrees with scipy's Cholesky solve: relative gap {gap:.1e}")
    for _ in range(repeats):  # interleaved, so that a change of load hits every method alike
        for name, solve in work.items():
            start = time.perf_counter()
            solve()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"n": n, "dtype": "float64", "repeats": repeats, "seconds": medians, "all_seconds": times,
            "ratio_to_scipy_bare": {name: t / medians["scipy_bare"] for name, t in medians.items()},
            "ratio_to_torch_bare": {name: t / medians["torch_bare"] for name, t in medians.items()},
            "threads": torch.get_num_threads()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10000, 20000, 40000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--m", type=int, default=M_TEST, help="test points")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--tol", type=float, default=None, help="CG tolerance (default: solve_kernel_system's)")
    parser.add_argument("--rank", type=int, default=500, help="Nystrom landmarks of the preconditioner")
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--store-dir", default=None, help="where the pcg_store kernel goes (default: the temp dir)")
    parser.add_argument("--recompute-max-n", type=int, default=10000, help="largest n for pcg_recompute")
    parser.add_argument("--cholesky-overhead-n", type=int, default=4000, help="0 skips that measurement")
    parser.add_argument("--repeats", type=int, default=7, help="repeats of the Cholesky-overhead timings")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # tests: no subprocesses
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # worker mode: n method predictions.npy
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args, args.one[2])))
        return

    import numpy as np

    forwarded = ["--m", str(args.m), "--tile", str(args.tile), "--rank", str(args.rank), "--max-iter",
                 str(args.max_iter)] + (["--tol", str(args.tol)] if args.tol else []) + (
                 ["--store-dir", args.store_dir] if args.store_dir else [])  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in args.n:
            row = {"n": n, "dtype": "float32", "ridge": RIDGE, "d": D, "m": args.m, "methods": {}}
            predictions = {}
            for method in args.methods:
                if method == "cholesky" and not fits_in_memory(n):
                    row["methods"][method] = {"skipped": "K and its Cholesky factor do not fit in memory"}
                    continue
                if method == "pcg_recompute" and n > args.recompute_max_n:
                    row["methods"][method] = {"skipped": f"n > --recompute-max-n {args.recompute_max_n}"}
                    continue
                path = os.path.join(scratch, f"{n}-{method}.npy")
                if args.in_process:
                    result = measure(n, method, args, path)
                else:
                    out = subprocess.run([sys.executable, __file__, *forwarded, "--one", str(n), method, path],
                                         capture_output=True, text=True, check=False)  # fmt: skip
                    if out.returncode != 0:
                        result = {"failed": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "no output"}
                    else:
                        result = json.loads(out.stdout.strip().splitlines()[-1])
                if "failed" not in result:
                    predictions[method] = np.load(path)
                row["methods"][method] = result
            if "cholesky" in predictions:
                exact = predictions["cholesky"]
                for method, values in predictions.items():
                    if method != "cholesky":
                        result = row["methods"][method]
                        result["prediction_gap_to_cholesky"] = float(np.abs(values - exact).max() / np.abs(exact).max())
                        reference = row["methods"]["cholesky"]["test_mse"]
                        result["test_mse_gap_to_cholesky"] = result["test_mse"] / reference - 1
            rows.append(row)
            print(f"n={n}: " + "; ".join(
                f"{method} " + (f"kernel {r['kernel_seconds']:.1f} s + solve {r['solve_seconds']:.1f} s "
                                f"({r['iterations']} it), +{r['peak_extra_MiB']:.0f} MiB, test mse {r['test_mse']:.4f}"
                                if "test_mse" in r else str(r)) for method, r in row["methods"].items()))  # fmt: skip
    sections = {"rows": rows}
    if args.cholesky_overhead_n:
        sections["cholesky_overhead"] = cholesky_overhead(args.cholesky_overhead_n, args.repeats)
        ratios = sections["cholesky_overhead"]["ratio_to_scipy_bare"]
        print("seconds / scipy's bare Cholesky:", {name: round(ratio, 3) for name, ratio in ratios.items()})
    write_results(RESULTS, **sections)


if __name__ == "__main__":
    main()
