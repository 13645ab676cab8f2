"""Kernel ridge regression against the primal ridge solution and numpy's solver."""

import functools
import math

import numpy as np
import pytest
import torch

import ntklib as nk
from conftest import randn


def test_kernel_ridge_equals_primal_ridge_with_explicit_features(device, rng):
    X = randn(20, 2, generator=rng, device=device)
    Z = randn(7, 2, generator=rng, device=device)
    y = randn(20, generator=rng, device=device)
    ridge = 0.3
    Phi, Phi_Z = nk.polynomial_features(X, 3), nk.polynomial_features(Z, 3)
    # Primal: theta = (Phi^T Phi + ridge I)^-1 Phi^T y, an independent k x k system.
    theta = torch.linalg.solve(Phi.T @ Phi + ridge * torch.eye(Phi.shape[1], dtype=X.dtype, device=device), Phi.T @ y)
    model = nk.KernelRidge(functools.partial(nk.polynomial_kernel, degree=3), ridge=ridge).fit(X, y)
    assert model.dual_coef_.shape == (20,)
    torch.testing.assert_close(model.predict(Z), Phi_Z @ theta, rtol=1e-9, atol=1e-9)


def test_solve_matches_numpy_for_matrix_targets(rng):
    X = randn(15, 3, generator=rng, device="cpu")
    Y = randn(15, 2, generator=rng, device="cpu")
    K = nk.gaussian_kernel(X)
    alpha = nk.solve_kernel_system(K, Y, ridge=1e-2)
    expected = np.linalg.solve(K.numpy() + 1e-2 * np.eye(15), Y.numpy())
    np.testing.assert_allclose(alpha.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_ridge_zero_interpolates_on_a_full_rank_kernel(rng):
    X = randn(10, 2, generator=rng, device="cpu")
    y = randn(10, generator=rng, device="cpu")
    model = nk.KernelRidge(nk.gaussian_kernel, ridge=0.0).fit(X, y)
    torch.testing.assert_close(model.predict(X), y, rtol=1e-8, atol=1e-8)


def test_ridge_zero_on_a_singular_kernel_raises(rng):
    # 10 points, linear kernel in d=2: rank 2, so K alpha = y has no meaningful solution.
    X = randn(10, 2, generator=rng, device="cpu")
    y = randn(10, generator=rng, device="cpu")
    with pytest.raises(ValueError, match="singular|not positive definite"):
        nk.KernelRidge(nk.linear_kernel, ridge=0.0).fit(X, y)
    # Exactly duplicated points make even the Gaussian kernel singular.
    X2 = torch.cat([X, X[:1]])
    with pytest.raises(ValueError, match="singular|not positive definite"):
        nk.solve_kernel_system(nk.gaussian_kernel(X2), torch.ones(11, dtype=torch.float64), ridge=0.0)
    # A ridge repairs both: the fits then solve (K + ridge I) alpha = y, checked against numpy.
    ridge = 1e-3
    model = nk.KernelRidge(nk.linear_kernel, ridge=ridge).fit(X, y)
    K = (X @ X.T).numpy()
    np.testing.assert_allclose(model.dual_coef_.numpy(), np.linalg.solve(K + ridge * np.eye(10), y.numpy()), rtol=1e-8)
    K2 = nk.gaussian_kernel(X2)
    alpha2 = nk.solve_kernel_system(K2, torch.ones(11, dtype=torch.float64), ridge=ridge)
    np.testing.assert_allclose(alpha2.numpy(), np.linalg.solve(K2.numpy() + ridge * np.eye(11), np.ones(11)), rtol=1e-8)
    # The duplicated points get equal coefficients (their rows of K2 are equal).
    assert float(alpha2[0]) == pytest.approx(float(alpha2[10]), rel=1e-10)


def test_non_psd_matrix_raises():
    K = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)  # eigenvalues 3, -1
    with pytest.raises(ValueError, match="not positive definite"):
        nk.solve_kernel_system(K, torch.ones(2, dtype=torch.float64), ridge=0.5)


def test_predict_before_fit_and_repr():
    model = nk.KernelRidge(nk.gaussian_kernel, ridge=0.1)
    assert repr(model) == "KernelRidge(kernel=gaussian_kernel, ridge=0.1)"
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict(torch.zeros(1, 2, dtype=torch.float64))


def test_repr_unwraps_partial_kernels():
    model = nk.KernelRidge(functools.partial(nk.polynomial_kernel, degree=3, c=0.5), ridge=1e-3)
    assert repr(model) == "KernelRidge(kernel=polynomial_kernel(degree=3, c=0.5), ridge=0.001)"


def test_cholesky_checks_ride_on_the_factorisation_with_the_same_errors(rng):
    """No scan of K before factorising: NaN/inf anywhere in K still raise the message they did,
    K itself is never changed, and alpha is bit for bit that of factorising K + ridge*eye(n)."""
    X = randn(12, 3, generator=rng, device="cpu")
    y = randn(12, generator=rng, device="cpu")
    K = nk.gaussian_kernel(X)
    before = K.clone()
    alpha, info = nk.solve_kernel_system(K, y, 0.1, return_info=True)
    assert torch.equal(K, before)
    L = torch.linalg.cholesky(K + 0.1 * torch.eye(12, dtype=K.dtype))
    assert torch.equal(alpha, torch.cholesky_solve(y[:, None], L)[:, 0])
    assert info.solver == "cholesky" and info.converged and info.residual < 1e-14
    for where in [(5, 2), (2, 5), (4, 4)]:  # lower triangle, upper triangle (not read), diagonal
        for bad in (float("nan"), float("inf"), -float("inf")):
            broken = K.clone()
            broken[where] = bad
            with pytest.raises(ValueError, match="K contains 1 NaN or infinite value"):
                nk.solve_kernel_system(broken, y, 0.1)
    with pytest.raises(TypeError, match="K must have a floating-point dtype"):
        nk.solve_kernel_system(torch.ones(3, 3, dtype=torch.int64), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"K must be 2-D of shape \(n, d\); got shape \(3,\)"):
        nk.solve_kernel_system(torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"K is empty: shape \(0, 0\)"):
        nk.solve_kernel_system(torch.ones(0, 0, dtype=torch.float64), torch.ones(0, dtype=torch.float64))


# -- condition number estimate and the float32 fallbacks ------------------------------------------


def known_spectrum(eigenvalues, seed=0):
    """Q diag(eigenvalues) Q^T with a seeded random orthogonal Q (float64)."""
    n = eigenvalues.shape[0]
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    A = (Q * eigenvalues) @ Q.T
    return (A + A.T) / 2


@pytest.mark.parametrize("n", [30, 300])
@pytest.mark.parametrize("decades", [2, 6, 10, 13])
def test_condition_estimate_is_a_lower_bound_within_400_on_known_spectra(decades, n):
    """cond(A) = 10^decades exactly; the estimate is below it (a proven bound) and, with random
    eigenvectors, above cond / 400 (measured over 10 seeds, n = 30 to 300: cond / 310 at worst,
    at 10^13; cond / 16 at 10^2)."""
    A = known_spectrum(torch.logspace(0, -decades, n, dtype=torch.float64))
    truth = float(torch.linalg.cond(A))
    assert truth == pytest.approx(10.0**decades, rel=1e-2)  # torch agrees with the spectrum we built
    _, info = nk.solve_kernel_system(A, torch.ones(n, dtype=torch.float64), return_info=True)
    assert truth / (20 if decades == 2 else 400) <= info.condition <= truth * (1 + 1e-6)


@pytest.mark.parametrize("which", ["gaussian", "ntk"])
@pytest.mark.parametrize("ridge", [1e-6, 1e-3])
def test_condition_estimate_on_kernel_matrices_within_a_factor_10(which, ridge):
    X = torch.randn(400, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    K = nk.gaussian_kernel(X) if which == "gaussian" else nk.infinite_width_kernels(X, depth=3).ntk
    y = torch.randn(400, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    model = nk.KernelRidge(lambda A, B: K if A is B else None, ridge=ridge).fit(X, y)  # K as the kernel
    truth = float(torch.linalg.cond(K + ridge * torch.eye(400, dtype=torch.float64)))
    info = model.solve_info_  # KernelRidge exposes the Cholesky path's SolveInfo
    assert info.solver == "cholesky" and info.fallback is None and info.jitter == 0.0 and info.clipped == 0
    assert truth / 10 <= info.condition <= truth * (1 + 1e-6)


def graded(dtype, n=100, decades=6):
    """A diagonal matrix with pivots 1 ... 10^-decades: Cholesky is exact, cond = 10^decades."""
    return torch.diag(torch.logspace(0, -decades, n, dtype=torch.float64)).to(dtype)


def failing_float32_kernel(n=300):
    """A Gaussian kernel of n points in the plane that float32 cannot solve, though float64 can:
    n = 300, sigma = 0.3: cond = 7e11, the float32 Cholesky fails; n = 60, sigma = 0.7: cond =
    1.3e8, it runs but fails the pivot test (and the float32-rounded K is still positive definite)."""
    X = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    K = nk.gaussian_kernel(X, sigma=0.3 if n == 300 else 0.7)
    assert int(torch.linalg.cholesky_ex(K.float())[1]) == (0 if n == 60 else 173)
    assert int(torch.linalg.cholesky_ex(K)[1]) == 0
    return K.float(), torch.sin(X[:, 0]).float()


def test_failure_messages_name_the_dtype_the_condition_and_the_fallbacks():
    y = torch.ones(100, dtype=torch.float32)
    # The pivot test: exact pivots, cond = 1e6 >= 1/(n eps) = 8.4e4 in float32.
    with pytest.raises(ValueError) as caught:
        nk.solve_kernel_system(graded(torch.float32), y)
    message = str(caught.value)
    expected = "is numerically singular (estimated condition number 1.0e+06 >= 1/(n*eps) = 8.4e+04) in torch.float32"
    assert expected in message
    for offer in ("fallback= 'float64' (solve in float64", "'jitter' (the smallest diagonal jitter", "'eigh' (eigen"):
        assert offer in message
    # The same matrix in float64 is fine (cond 1e6 < 1/(n eps) = 4.5e13), and its estimate is exact.
    _, info = nk.solve_kernel_system(graded(torch.float64), y.double(), return_info=True)
    assert info.condition == pytest.approx(1e6, rel=1e-12)
    # A failed factorisation.
    K, y = failing_float32_kernel()
    with pytest.raises(ValueError, match=r"is not positive definite \(Cholesky failed; its condition number is beyond "
                                         r"the 1/\(n\*eps\) = 2.8e\+04 that torch.float32 resolves, or K is not PSD\) "
                                         r"in torch.float32 \(n=300, ridge=0\).*fallback= 'float64'"):  # fmt: skip
        nk.solve_kernel_system(K, y)
    # In float64 there is nothing to upcast to: 'float64' is not offered, and asking for it raises.
    with pytest.raises(ValueError, match=r"in torch.float64 \(n=2, ridge=0\)") as caught:
        nk.solve_kernel_system(torch.diag(torch.tensor([1.0, 1e-17], dtype=torch.float64)), torch.ones(2).double(),
                               fallback="float64")  # fmt: skip
    assert "'float64'" not in str(caught.value) and "'jitter'" in str(caught.value)


def test_fallback_float64_solves_the_float32_matrix_in_float64():
    K, y = failing_float32_kernel(60)
    with pytest.raises(ValueError, match="torch.float32"):
        nk.solve_kernel_system(K, y)
    alpha, info = nk.solve_kernel_system(K, y, fallback="float64", return_info=True)
    assert alpha.dtype == torch.float32 and info.fallback == "float64"
    expected = np.linalg.solve(K.double().numpy(), y.double().numpy())  # an independent float64 solver
    np.testing.assert_allclose(alpha.numpy(), expected.astype(np.float32), rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())  # fmt: skip
    truth = np.linalg.cond(K.double().numpy())  # 1.3e8; the estimate is 1.8e6 (Gaussian kernel in 2-D)
    assert truth / 100 <= info.condition <= truth * (1 + 1e-6)
    # Rounding K to float32 can itself make it indefinite: then float64 cannot help either.
    K_bad, y_bad = failing_float32_kernel(300)
    with pytest.raises(ValueError, match=r"fallback='float64' failed too: K \+ ridge\*I is not positive definite .* in "
                                         r"torch.float64 .* a kernel computed in float64"):  # fmt: skip
        nk.solve_kernel_system(K_bad, y_bad, fallback="float64")


def test_fallback_jitter_reports_the_first_jitter_that_works_and_a_bounded_residual():
    K, y = failing_float32_kernel()
    alpha, info = nk.solve_kernel_system(K, y, fallback="jitter", return_info=True)
    scale, eps = float(K.diagonal().mean()), torch.finfo(torch.float32).eps
    k = math.log10(info.jitter / (eps * scale))
    assert info.fallback == "jitter" and abs(k - round(k)) < 1e-4 and 1 <= round(k) <= 6  # eps * scale * 10^k
    # The jitter before it does not factorise (or fails the pivot test) with ridge = jitter / 10.
    with pytest.raises(ValueError, match="torch.float32"):
        nk.solve_kernel_system(K, y, ridge=info.jitter / 10)
    # alpha solves the jittered system: against numpy's float64 solve of it.
    jittered = K.double().numpy() + info.jitter * np.eye(300)
    expected = np.linalg.solve(jittered, y.double().numpy())
    # float32 rounding: relative error ~ eps * cond, and the pivot test keeps cond below 1/(n eps).
    np.testing.assert_allclose(alpha.double().numpy(), expected, rtol=0, atol=1e-2 * np.abs(expected).max())
    # The reported residual is that of the system asked for (K alpha = y), recomputed here in float64:
    # it is the jitter's share, jitter |alpha| / |y|, small against 1.
    residual = np.linalg.norm(y.double().numpy() - K.double().numpy() @ alpha.double().numpy()) / float(y.norm())
    assert info.residual == pytest.approx(residual, rel=0.05)
    assert residual == pytest.approx(info.jitter * float(alpha.norm() / y.norm()), rel=0.05)
    assert residual < 1e-2
    # Not a fix for a matrix that is not PSD: a negative eigenvalue of half the diagonal.
    indefinite = torch.diag(torch.tensor([1.0, 1.0, -0.5, 1.0]))
    with pytest.raises(ValueError, match=r"does not factorise in torch.float32 even with a jitter of .* not positive"):
        nk.solve_kernel_system(indefinite, torch.ones(4), fallback="jitter")


def test_fallback_eigh_equals_cholesky_when_well_conditioned_and_the_pseudo_inverse_when_singular(rng):
    from ntklib.ridge import _eigh

    X = randn(40, 3, generator=rng, device="cpu")
    Y = randn(40, 2, generator=rng, device="cpu")
    K = nk.gaussian_kernel(X, sigma=1.0)
    alpha, condition, clipped = _eigh(K, Y, 0.1)  # the fallback's own path, on a system Cholesky solves
    torch.testing.assert_close(alpha, nk.solve_kernel_system(K, Y, 0.1), rtol=1e-10, atol=1e-10)
    assert clipped == 0
    assert condition == pytest.approx(float(torch.linalg.cond(K + 0.1 * torch.eye(40, dtype=K.dtype))), rel=1e-8)
    # Duplicated points: K has rank 38 of 40; eigh drops the 2 null directions, = pinv(K) y.
    X_dup = torch.cat([X[:38], X[:2]])
    K_dup = nk.polynomial_kernel(X_dup, degree=1)  # rank 4 (features 1, x1, x2, x3) of 40
    y = torch.sin(X_dup[:, 0])
    with pytest.raises(ValueError, match="fallback="):
        nk.solve_kernel_system(K_dup, y)
    alpha, info = nk.solve_kernel_system(K_dup, y, fallback="eigh", return_info=True)
    assert info.fallback == "eigh" and info.clipped == 36
    torch.testing.assert_close(alpha, torch.linalg.pinv(K_dup, hermitian=True) @ y, rtol=1e-8, atol=1e-8)
    # The residual reported is that of K alpha = y: y's part outside K's 4-dimensional range.
    residual = float((y - K_dup @ alpha).norm() / y.norm())
    assert info.residual == pytest.approx(residual, rel=1e-6) and residual > 0.01
    # A kernel that is not PSD beyond rounding is refused, not pseudo-inverted.
    with pytest.raises(ValueError, match=r"not positive semi-definite in torch.float64: its smallest eigenvalue is -1"):
        nk.solve_kernel_system(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64), torch.ones(2).double(),
                               fallback="eigh")  # fmt: skip


def test_fallback_argument_errors_and_kernel_ridge(tmp_path):
    K, y = failing_float32_kernel(60)
    with pytest.raises(ValueError, match=r"unknown fallback 'lu'; expected None \(raise\) or one of: float64, jitter"):
        nk.solve_kernel_system(K, y, fallback="lu")
    with pytest.raises(ValueError, match="fallback='jitter' goes with solver='cholesky'"):
        nk.solve_kernel_system(K, y, 0.1, solver="pcg", fallback="jitter")
    with pytest.raises(ValueError, match="fallback='eigh' goes with solver='cholesky'"):
        nk.KernelRidge(nk.gaussian_kernel, 0.1, solver="pcg", fallback="eigh")
    X = torch.randn(60, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64).float()
    kernel = functools.partial(nk.gaussian_kernel, sigma=0.7)
    model = nk.KernelRidge(kernel, ridge=0.0, fallback="float64")
    assert repr(model) == "KernelRidge(kernel=gaussian_kernel(sigma=0.7), ridge=0, fallback='float64')"
    model.fit(X, y)
    assert model.solve_info_.fallback == "float64" and model.solve_info_.condition > 1e6
    torch.testing.assert_close(model.dual_coef_, nk.solve_kernel_system(kernel(X, X), y, fallback="float64"))


def test_float32_breakdown_benchmark_runs_at_small_sizes(tmp_path):
    """benchmarks/float32_breakdown.py end to end at n = 100 and 400: its records agree with
    solving the same systems here, and the erf NTK's float32 system is refused at n = 400."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    try:
        spec = importlib.util.spec_from_file_location("bench_float32_breakdown", benchmarks / "float32_breakdown.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        script.main(["--sizes", "100", "400", "--test", "100", "--out", str(tmp_path / "out.json")])
    finally:
        sys.path.remove(str(benchmarks))
    written = json.loads((tmp_path / "out.json").read_text())
    assert set(written) == {"machine", "settings", "rows"}
    rows = {(r["kernel"], r["n"]): r for r in written["rows"]}
    assert set(rows) == {(k, n) for k in ("relu", "erf") for n in (100, 400)}
    assert not rows["relu", 400]["float32"]["raised"] and rows["erf", 400]["float32"]["raised"]
    assert rows["erf", 400]["fixes"]["jitter"]["jitter_relative"] > 0
    X, labels = script.digits()
    K = nk.infinite_width_kernels(X[:100], depth=3, activation="relu", W_std=2**0.5, b_std=0.0).ntk
    eigenvalues = torch.linalg.eigvalsh(K)
    assert rows["relu", 100]["condition"] == pytest.approx(float(eigenvalues[-1] / eigenvalues[0]), rel=1e-9)
    Y = torch.nn.functional.one_hot(labels, 10).double() - 0.1
    K_test = nk.infinite_width_kernels(X[-100:], X[:100], depth=3, activation="relu", W_std=2**0.5, b_std=0.0).ntk
    prediction = K_test @ torch.linalg.solve(K, Y[:100])  # an independent solver
    accuracy = float((prediction.argmax(1) == labels[-100:]).double().mean())
    assert rows["relu", 100]["float64"]["accuracy"] == accuracy
