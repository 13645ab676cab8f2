"""Kernel ridge regression against the primal ridge solution and numpy's solver."""

import functools

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
