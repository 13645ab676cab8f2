"""Nystrom-preconditioned conjugate gradients (solver="pcg") against the Cholesky solve."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import ntklib as nk
from ntklib.pcg import NpyOperator
from ntklib.tiled import kernel_matrix

SEED = torch.Generator().manual_seed
NET = nk.serial(nk.Dense(1, W_std=2**0.5, b_std=0.1), nk.Relu(), nk.Dense(1, W_std=2**0.5, b_std=0.1), nk.Relu(),
                nk.Dense(1, W_std=2**0.5, b_std=0.1), nk.Relu(), nk.Dense(1, b_std=0.1))  # fmt: skip


def ntk(X, Z=None):
    """Depth-3 ReLU NTK as one tensor (a kernel function KernelRidge can take)."""
    return NET.kernels(X, Z).ntk


def regression(n: int, m: int = 100, d: int = 8, dtype=torch.float64):
    generator = SEED(n)
    X = torch.randn(n + m, d, generator=generator, dtype=torch.float64) / d**0.5
    w = torch.randn(d, generator=generator, dtype=torch.float64)
    y = torch.sin(3 * X @ w) + 0.1 * torch.randn(n + m, generator=generator, dtype=torch.float64)
    return X[:n].to(dtype), y[:n].to(dtype), X[n:].to(dtype), y[n:].to(dtype)


def relative_residual(K, y, alpha, ridge):
    R = y - K @ alpha - ridge * alpha
    return float((R.norm(dim=0) / y.norm(dim=0)).max())


def test_pcg_solves_the_cholesky_system_on_tensors_and_files(tmp_path):
    X, y, _, _ = regression(400)
    Y = torch.stack([y, y.square()], dim=1)  # (n, 2): two independent CGs in one
    K = kernel_matrix(ntk, X, tile=200, out=tmp_path / "K")  # CPU tensors mapped from the store
    ridge = 1e-3
    exact = nk.solve_kernel_system(K.clone(), Y, ridge)
    for source in (K, tmp_path / "K" / "kernel.npy", str(tmp_path / "K" / "kernel.npy")):
        alpha, info = nk.solve_kernel_system(source, Y, ridge, solver="pcg", tol=1e-10, rank=100, return_info=True)
        assert info.solver == "pcg" and info.converged and 0 < info.iterations < 100
        # The reported residual is the true one, recomputed here independently.
        assert info.residual <= 1e-10
        assert info.residual == pytest.approx(relative_residual(K, Y, alpha, ridge), rel=1e-3, abs=1e-14)
        torch.testing.assert_close(alpha, exact, rtol=0, atol=1e-8 * float(exact.abs().max()))
        assert len(info.history) == info.iterations
    # Row bands of a file: many small bands give the same products as one.
    V = torch.randn(400, 3, generator=SEED(1), dtype=torch.float64)
    torch.testing.assert_close(NpyOperator(tmp_path / "K" / "kernel.npy", band_bytes=7 * 400 * 8).matmul(V), K @ V,
                               rtol=1e-12, atol=1e-12)  # fmt: skip


def test_kernel_ridge_pcg_predicts_as_cholesky_with_the_kernel_recomputed_or_stored(tmp_path):
    X, y, X_test, y_test = regression(300)
    ridge = 1e-2
    kernel = functools.partial(nk.gaussian_kernel, sigma=2.0)
    exact = nk.KernelRidge(kernel, ridge=ridge).fit(X, y)
    error = float((exact.predict(X_test) - y_test).square().mean())
    for store in (None, tmp_path / "store"):
        model = nk.KernelRidge(kernel, ridge=ridge, solver="pcg", tile=100, store=store, tol=1e-10, rank=50).fit(X, y)
        assert repr(model) == "KernelRidge(kernel=gaussian_kernel(sigma=2.0), ridge=0.01, solver='pcg')"
        assert model.solve_info_.converged and model.solve_info_.residual <= 1e-10
        scale = float(exact.dual_coef_.abs().max())
        torch.testing.assert_close(model.dual_coef_, exact.dual_coef_, rtol=0, atol=1e-8 * scale)
        prediction = model.predict(X_test)  # k(Z, X) alpha a tile at a time
        torch.testing.assert_close(prediction, exact.predict(X_test), rtol=1e-8, atol=1e-8)
        assert float((prediction - y_test).square().mean()) == pytest.approx(error, rel=1e-7)
    assert (tmp_path / "store" / "kernel.npy").exists()
    assert exact.solve_info_.solver == "cholesky" and exact.solve_info_.residual < 1e-12


def test_float32_kernels_are_solved_more_accurately_than_by_float32_cholesky():
    """Products with K are summed in float64, so CG reaches its tolerance on a float32 K and its
    alpha is as close to the float64 answer as K's own rounding allows, closer than Cholesky in
    float32."""
    X, y, _, _ = regression(800)
    ridge = 1e-2
    truth = nk.solve_kernel_system(ntk(X), y, ridge)
    K32, y32 = kernel_matrix(ntk, X.float(), tile=400), y.float()
    alpha, info = nk.solve_kernel_system(K32, y32, ridge, solver="pcg", rank=200, return_info=True)
    assert info.converged and info.residual <= 1e-5  # float32's default tolerance
    cholesky = nk.solve_kernel_system(K32, y32, ridge)

    def error(a):
        return float((a.double() - truth).norm() / truth.norm())

    assert error(alpha) < 2e-5 and error(alpha) < error(cholesky)


def test_the_preconditioner_cuts_the_iterations():
    X, y, _, _ = regression(300)
    K = ntk(X)
    iterations = {}
    for rank in (1, 60, 300):
        _, info = nk.solve_kernel_system(K, y, 1e-3, solver="pcg", rank=rank, max_iter=800, return_info=True)
        assert info.converged
        iterations[rank] = info.iterations
    assert iterations[300] <= 3  # every landmark: P^-1 is (K + ridge I)^-1 up to rounding
    assert iterations[60] < iterations[1] / 2


def test_an_iteration_cap_warns_with_the_residual_reached():
    X, y, _, _ = regression(300)
    K = nk.gaussian_kernel(X, sigma=0.5)
    with pytest.warns(RuntimeWarning, match=r"stopped at relative residual .* > tol=1e-12 after 2 iterations"):
        alpha, info = nk.solve_kernel_system(K, y, 1e-6, solver="pcg", rank=5, max_iter=2, tol=1e-12, return_info=True)
    assert not info.converged and info.iterations == 2
    assert info.residual == pytest.approx(relative_residual(K, y, alpha, 1e-6), rel=1e-6)


def test_pcg_errors(tmp_path):
    K = nk.gaussian_kernel(regression(30)[0])
    y = torch.ones(30, dtype=torch.float64)
    with pytest.raises(ValueError, match="solver='pcg' needs ridge > 0"):
        nk.solve_kernel_system(K, y, 0.0, solver="pcg")
    with pytest.raises(ValueError, match="unknown solver 'lu'"):
        nk.solve_kernel_system(K, y, 0.1, solver="lu")
    with pytest.raises(TypeError, match="solver='cholesky' needs K in memory"):
        nk.solve_kernel_system(tmp_path / "K.npy", y, 0.1)
    with pytest.raises(ValueError, match="is not a file"):
        nk.solve_kernel_system(tmp_path / "K.npy", y, 0.1, solver="pcg")
    np.save(tmp_path / "rect.npy", np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"must hold a square \(n, n\) floating-point matrix.*shape \(3, 4\)"):
        nk.solve_kernel_system(tmp_path / "rect.npy", y[:3], 0.1, solver="pcg")
    bad = K.numpy().copy()
    bad[17, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        nk.solve_kernel_system(tmp_path / "nan.npy", y, 0.1, solver="pcg", rank=5)
    np.save(tmp_path / "K.npy", K.numpy())
    with pytest.raises(TypeError, match=r"has dtype torch.float64 but y has torch.float32"):
        nk.solve_kernel_system(tmp_path / "K.npy", y.float(), 0.1, solver="pcg")
    with pytest.raises(ValueError, match="y has 29 rows but there are n=30"):
        nk.solve_kernel_system(tmp_path / "K.npy", y[:29], 0.1, solver="pcg")
    indefinite = torch.diag(torch.tensor([1.0, 1.0, -5.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="not positive (semi-)?definite"):
        nk.solve_kernel_system(indefinite, torch.ones(4, dtype=torch.float64), 0.1, solver="pcg", rank=1, seed=3)
    for name, value in (("tol", 0.0), ("max_iter", 0), ("rank", 0)):
        with pytest.raises(ValueError, match=f"{name} must be"):
            nk.solve_kernel_system(K, y, 0.1, solver="pcg", **{name: value})
    with pytest.raises(ValueError, match="solver='pcg' needs ridge > 0"):
        nk.KernelRidge(nk.gaussian_kernel, ridge=0.0, solver="pcg")
    with pytest.raises(ValueError, match="store= and client= go with solver='pcg'"):
        nk.KernelRidge(nk.gaussian_kernel, store=tmp_path / "s")
    with pytest.raises(ValueError, match="the kernel returns nk.Kernels"):
        nk.KernelRidge(NET.kernels, ridge=0.1, solver="pcg").fit(K[:, :2].contiguous(), y)
    with pytest.raises(ValueError, match="tol must be > 0"):
        nk.KernelRidge(functools.partial(nk.gaussian_kernel, sigma=2.0), ridge=0.1, solver="pcg", tol=-1.0)


def test_large_kernels_benchmark_runs_at_tiny_sizes(tmp_path, monkeypatch):
    """benchmarks/large_kernels.py end to end (in one process): every method's predictions agree
    with the Cholesky solution's, and the Cholesky-overhead timings check their answers."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    spec = importlib.util.spec_from_file_location("bench_large_kernels", benchmarks / "large_kernels.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    result = tmp_path / "large_kernels.json"
    monkeypatch.setattr(script, "RESULTS", result)
    monkeypatch.setattr(sys, "argv", ["large_kernels.py", "--n", "300", "--m", "40", "--tile", "128", "--rank", "60",
                                      "--store-dir", str(tmp_path), "--cholesky-overhead-n", "60", "--repeats", "1",
                                      "--in-process"])  # fmt: skip
    script.main()
    written = json.loads(result.read_text())
    (row,) = written["rows"]
    assert set(row["methods"]) == set(script.METHODS)
    for method in ("pcg_store", "pcg_recompute"):
        r = row["methods"][method]
        assert r["converged"] and r["relative_residual"] <= 1e-5 and r["iterations"] > 0
        assert r["prediction_gap_to_cholesky"] < 1e-3 and abs(r["test_mse_gap_to_cholesky"]) < 1e-3
    assert row["methods"]["cholesky"]["iterations"] == 0
    assert list(tmp_path.glob("ntk-store-*")) == []  # the store is removed after its run
    assert set(written["cholesky_overhead"]["seconds"]) == {"ntklib", "scipy_bare", "scipy_default", "torch_bare"}


def test_pcg_condition_estimate_from_the_nystrom_approximation():
    """(Lambda_1 + ridge) / ridge against torch.linalg.cond of K + ridge I. A smooth Gaussian
    kernel (lambda_min(K) = 7e-7, far below the ridges): equal within 5%. The NTK (lambda_min(K)
    = 0.027, not below them): an upper bound, above the truth by at most (lambda_min + ridge) / ridge."""
    X, y, _, _ = regression(300)
    eye = torch.eye(300, dtype=torch.float64)
    for kernel, ridges in ((functools.partial(nk.gaussian_kernel, sigma=2.0), (1e-3, 1e-1)), (ntk, (1e-3, 1e-1))):
        K = kernel(X)
        smallest = float(torch.linalg.eigvalsh(K)[0])
        for ridge in ridges:
            _, info = nk.solve_kernel_system(K, y, ridge, solver="pcg", rank=100, return_info=True)
            truth = float(torch.linalg.cond(K + ridge * eye))
            assert info.fallback is None and info.jitter == 0.0 and info.clipped == 0
            if smallest < 1e-3 * ridge:
                assert info.condition == pytest.approx(truth, rel=0.05)
            else:  # the bound (lambda_1 + ridge) / ridge, lambda_1 from the Nystrom approximation
                assert truth <= info.condition <= truth * (smallest + ridge) / ridge * (1 + 1e-6)
