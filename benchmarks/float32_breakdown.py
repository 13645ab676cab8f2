"""Float32 kernel regression on the digits: where it breaks down as n grows, and the fixes.

    .venv/bin/python benchmarks/float32_breakdown.py [--sizes 100 200 400 700 1000 1300 1497]

Lee et al. (2020, "Finite Versus Infinite Neural Networks: an Empirical Study") report that
kernel regression computed in float32 breaks down once the training set is large enough, and
compute their kernels in float64; they also regularise the kernel's diagonal by eps * tr(K) / n.
This script measures the same on scikit-learn's digits (1797 images of 8 x 8 pixels, bundled).

Data: the images are shuffled with seed 0; the last 300 are the test set, the training sets
the first n of the other 1497 (nested). Each image is scaled to unit norm; targets are one-hot
minus 0.1 (mean zero), predicted class = argmax.
Kernels: the NTK of depth-3 networks without biases (``nk.infinite_width_kernels``), ReLU with
W_std = sqrt(2) and erf with W_std = 1, each computed once for all 1797 images in float64 and in
float32 (from float32 inputs); the splits take sub-matrices.
For each kernel and n, with ridge 0 unless said:

  condition        the exact condition number of the float64 K_train (eigenvalues)
  float64          nk.solve_kernel_system on the float64 kernel (the reference)
  float32          the same on the float32 kernel: raised or not (and why), and what a bare
                   float32 Cholesky (torch.linalg.cholesky_ex, no checks) gives
  fixes            on the float32 kernel: fallback="float64", "jitter" and "eigh"; the diagonal
                   regulariser ridge = r * mean(diag K), r = 1e-4, 1e-3, 1e-2, in float32 (and in
                   float64, to compare like with like); and the float64 kernel, Lee et al.'s fix
Each records test accuracy, test mean squared error, and the relative difference of its test
predictions to the float64 reference's. Writes benchmarks/results/float32_breakdown.json
(``--out``). Runs in well under a minute on two cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine.py, when run from elsewhere
from machine import write_results

import ntklib as nk

RESULTS = Path(__file__).parent / "results" / "float32_breakdown.json"
TEST = 300  # held-out images
SIZES = (100, 200, 400, 700, 1000, 1300, 1497)
KERNELS = {"relu": {"activation": "relu", "W_std": 2**0.5}, "erf": {"activation": "erf", "W_std": 1.0}}
DEPTH = 3
DIAG_REGS = (1e-4, 1e-3, 1e-2)  # relative diagonal regularisers: ridge = r * mean(diag K_train)


def digits(seed: int = 0):
    """(X (1797, 64) float64 unit-norm rows, labels (1797,)) shuffled with ``seed``."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X = torch.tensor(data.data, dtype=torch.float64)
    labels = torch.tensor(data.target)
    order = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))
    X, labels = X[order], labels[order]
    return X / X.norm(dim=1, keepdim=True), labels


def scores(prediction: torch.Tensor, labels: torch.Tensor, Y: torch.Tensor, reference: torch.Tensor | None) -> dict:
    prediction = prediction.double()
    out = {"accuracy": float((prediction.argmax(1) == labels).double().mean()),
           "test_mse": float((prediction - Y).square().sum(1).mean())}  # fmt: skip
    if reference is not None:
        out["prediction_gap"] = float((prediction - reference).norm() / reference.norm())
    return out


def attempt(K: torch.Tensor, Y: torch.Tensor, K_test: torch.Tensor, labels, Y_test, reference, **options) -> dict:
    """nk.solve_kernel_system(K, Y, **options): its scores and SolveInfo, or the error it raised."""
    start = time.perf_counter()
    try:
        alpha, info = nk.solve_kernel_system(K, Y, return_info=True, **options)
    except ValueError as error:
        message = str(error)
        kind = "cholesky_failed" if "Cholesky failed" in message else "numerically_singular"
        return {"raised": True, "why": kind, "message": message}
    out = {"raised": False, "seconds": time.perf_counter() - start, "condition_estimate": info.condition,
           "relative_residual": info.residual, "fallback": info.fallback, "jitter": info.jitter,
           "jitter_relative": info.jitter / float(K.diagonal().mean()), "clipped": info.clipped}  # fmt: skip
    out.update(scores(K_test @ alpha, labels, Y_test, reference))
    return out


def measure(sizes, test: int = TEST) -> list[dict]:
    X, labels = digits()
    Y_all = torch.nn.functional.one_hot(labels, 10).double() - 0.1
    pool = X.shape[0] - test
    if max(sizes) > pool:
        raise ValueError(f"the largest training set is {pool} images (the last {test} are the test set)")
    train, test_index = torch.arange(pool), torch.arange(pool, X.shape[0])
    labels_test, Y_test = labels[test_index], Y_all[test_index]
    rows = []
    for name, options in KERNELS.items():
        K64 = nk.infinite_width_kernels(X, depth=DEPTH, b_std=0.0, **options).ntk  # (1797, 1797)
        K32 = nk.infinite_width_kernels(X.float(), depth=DEPTH, b_std=0.0, **options).ntk
        for n in sizes:
            Y = Y_all[:n]
            row = {"kernel": name, "n": n}
            eigenvalues = torch.linalg.eigvalsh(K64[:n, :n])
            row["condition"] = float(eigenvalues[-1] / eigenvalues[0]) if eigenvalues[0] > 0 else float("inf")
            row["one_over_n_eps_float32"] = 1 / (n * torch.finfo(torch.float32).eps)
            k64, k64_test = K64[:n, :n], K64[test_index][:, train[:n]]
            k32, k32_test = K32[:n, :n], K32[test_index][:, train[:n]]
            reference = attempt(k64, Y, k64_test, labels_test, Y_test, None)
            if reference["raised"]:
                raise RuntimeError(f"{name} n={n}: the float64 reference raised: {reference['message']}")
            alpha = nk.solve_kernel_system(k64, Y)
            reference_prediction = k64_test @ alpha
            reference["prediction_gap"] = 0.0
            row["float64"] = reference
            args = (k32_test, labels_test, Y_test, reference_prediction)
            row["float32"] = attempt(k32, Y.float(), *args)
            L, info = torch.linalg.cholesky_ex(k32)  # no checks at all
            bare = {"info": int(info)}
            if int(info) == 0:
                bare.update(scores(k32_test @ torch.cholesky_solve(Y.float(), L), labels_test, Y_test,
                                   reference_prediction))  # fmt: skip
            row["float32_bare_cholesky"] = bare
            fixes = {fallback: attempt(k32, Y.float(), *args, fallback=fallback) for fallback in nk.ridge.FALLBACKS}
            for r in DIAG_REGS:
                ridge32, ridge64 = r * float(k32.diagonal().mean()), r * float(k64.diagonal().mean())
                fixes[f"diag_reg_{r:g}_float32"] = attempt(k32, Y.float(), *args, ridge=ridge32)
                fixes[f"diag_reg_{r:g}_float64"] = attempt(k64, Y, k64_test, labels_test, Y_test, reference_prediction,
                                                           ridge=ridge64)  # fmt: skip
            row["fixes"] = fixes
            rows.append(row)
            f32 = row["float32"]
            fixed = "  ".join(f"{k} " + ("raised" if v["raised"] else f"{v['accuracy']:.3f}") for k, v in fixes.items())
            status = f"raised ({f32['why']})" if f32["raised"] else f"acc {f32['accuracy']:.3f}"
            print(f"{name:4s} n={n:5d} cond {row['condition']:8.1e}  float64 acc {reference['accuracy']:.3f}  "
                  f"float32 {status}  bare info {bare['info']:4d}  {fixed}", flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--test", type=int, default=TEST, help="held-out images (the last of the shuffle)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = measure(args.sizes, args.test)
    settings = {"depth": DEPTH, "kernels": KERNELS, "b_std": 0.0, "test_images": args.test, "diag_regs": DIAG_REGS,
                "inputs": "digits, unit-norm rows, shuffled with seed 0", "targets": "one-hot minus 0.1",
                "seconds": time.perf_counter() - start}  # fmt: skip
    write_results(args.out, settings=settings, rows=rows)
    return {"settings": settings, "rows": rows}


if __name__ == "__main__":
    main()
