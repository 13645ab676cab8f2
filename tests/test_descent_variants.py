"""Kernel gradient descent (primal GD in alpha coordinates) against true gradient descent on the
dual loss L(alpha) = 1/(2n) |f0 + K alpha - y|^2: closed forms of both, independent oracles
(autograd, primal GD with K as design matrix, primal GD on a feature map), stability limits."""

import math

import pytest
import torch

import ntklib as nk
from conftest import randn


def spd_kernel(rng, device, n=6, d=3, scale=1.0):
    """A positive-definite Gaussian-kernel matrix on n random points, times ``scale``."""
    X = randn(n, d, generator=rng, device=device)
    return scale * nk.gaussian_kernel(X, sigma=1.5), X


def closed_form(K, r, lr, t, power):
    """alpha_t = U diag((1 - (1 - lr lam^power / n)^t) / lam) U^T r, by eigendecomposition:
    power 1 is kernel GD, power 2 true GD on L(alpha) (started at alpha = 0, r = y - f0)."""
    lam, U = torch.linalg.eigh(K)
    n = K.shape[0]
    steps = torch.arange(t + 1, dtype=K.dtype, device=K.device)[:, None]  # (t + 1, 1)
    gains = (1 - (1 - lr * lam**power / n) ** steps) / lam  # (t + 1, n)
    return (gains * (U.T @ r)) @ U.T  # (t + 1, n)


def test_kernel_gradient_descent_matches_its_closed_form(device, rng):
    K, _ = spd_kernel(rng, device, scale=3.0)
    y, f0 = randn(6, generator=rng, device=device), randn(6, generator=rng, device=device)
    lr = 0.9 * 2 * 6 / float(torch.linalg.eigvalsh(K)[-1])
    alphas = nk.kernel_gradient_descent(K, y, lr, 60, f0=f0)
    torch.testing.assert_close(alphas, closed_form(K, y - f0, lr, 60, 1), rtol=1e-9, atol=1e-9)
    # same as the matrix form (I - (I - lr K / n)^t) K^{-1} (y - f0) at t = 60
    step = torch.eye(6, dtype=K.dtype, device=device) - lr * K / 6
    expected = (torch.eye(6, dtype=K.dtype, device=device) - torch.linalg.matrix_power(step, 60)) @ (
        torch.linalg.solve(K, y - f0)
    )
    torch.testing.assert_close(alphas[-1], expected, rtol=1e-9, atol=1e-9)


def test_dual_gradient_descent_matches_its_closed_form(device, rng):
    K, _ = spd_kernel(rng, device, scale=3.0)
    y, f0 = randn(6, generator=rng, device=device), randn(6, generator=rng, device=device)
    lr = 0.9 * 2 * 6 / float(torch.linalg.eigvalsh(K)[-1]) ** 2
    alphas = nk.dual_gradient_descent(K, y, lr, 60, f0=f0)
    torch.testing.assert_close(alphas, closed_form(K, y - f0, lr, 60, 2), rtol=1e-9, atol=1e-9)
    # and the iterates differ from kernel GD's at the same step size
    kernel = nk.kernel_gradient_descent(K, y, lr, 60, f0=f0)
    assert float((alphas[1:] - kernel[1:]).abs().max()) > 1e-2


def test_dual_gradient_descent_is_gradient_descent_on_the_dual_loss(rng):
    """Oracle 1: autograd's gradient of L(alpha). Oracle 2: primal GD with design matrix K."""
    K, _ = spd_kernel(rng, "cpu")
    y, f0 = randn(6, generator=rng, device="cpu"), randn(6, generator=rng, device="cpu")
    lr, steps = 1.8 * 6 / float(torch.linalg.eigvalsh(K)[-1]) ** 2, 30

    def loss(alpha):
        return ((f0 + K @ alpha - y) ** 2).sum() / (2 * 6)

    alpha, expected = torch.zeros(6, dtype=K.dtype), [torch.zeros(6, dtype=K.dtype)]
    for _ in range(steps):
        alpha = alpha - lr * torch.func.grad(loss)(alpha)
        expected.append(alpha)
    alphas = nk.dual_gradient_descent(K, y, lr, steps, f0=f0)
    torch.testing.assert_close(alphas, torch.stack(expected), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(alphas, nk.primal_gradient_descent(K, y - f0, lr, steps), rtol=1e-12, atol=1e-12)
    assert loss(alphas[-1]) < loss(alphas[0])


def test_kernel_gradient_descent_reproduces_primal_gd_on_random_fourier_features(rng):
    """K = Phi Phi^T for an explicit feature map: predictions equal primal GD's at every step."""
    X = randn(10, 2, generator=rng, device="cpu")
    Z = randn(4, 2, generator=rng, device="cpu")
    y = randn(10, generator=rng, device="cpu")
    B = randn(2, 50, generator=rng, device="cpu")
    b = 2 * math.pi * torch.rand(50, generator=rng, dtype=torch.float64)
    Phi, Phi_Z = torch.cos(X @ B + b), torch.cos(Z @ B + b)  # (10, 50), (4, 50)
    theta0 = randn(50, generator=rng, device="cpu")
    lr = 1.5 * 10 / float(torch.linalg.eigvalsh(Phi @ Phi.T)[-1])
    thetas = nk.primal_gradient_descent(Phi, y, lr, 80, theta0=theta0)
    alphas = nk.kernel_gradient_descent(Phi @ Phi.T, y, lr, 80, f0=Phi @ theta0)
    torch.testing.assert_close(thetas @ Phi_Z.T, Phi_Z @ theta0 + alphas @ (Phi_Z @ Phi.T).T)
    # the true dual GD is not primal GD: its predictions differ
    lr_dual = lr / float(torch.linalg.eigvalsh(Phi @ Phi.T)[-1])
    duals = nk.dual_gradient_descent(Phi @ Phi.T, y, lr_dual, 80, f0=Phi @ theta0)
    primal = nk.primal_gradient_descent(Phi, y, lr_dual, 80, theta0=theta0)
    assert float((primal @ Phi.T - Phi @ theta0 - duals @ (Phi @ Phi.T)).abs().max()) > 1e-3


def test_singular_kernel_dual_gd_finds_the_pseudo_inverse(rng):
    """K of rank 3 on 6 points (duplicated inputs): true dual GD stays in range(K) and converges
    to K^+ (y - f0); kernel GD fits the same predictions but its alpha drifts along null(K)."""
    X = randn(3, 2, generator=rng, device="cpu").repeat(2, 1)  # (6, 2), every point twice
    K = nk.gaussian_kernel(X, sigma=1.0)
    y = randn(6, generator=rng, device="cpu")
    lam_max = float(torch.linalg.eigvalsh(K)[-1])
    alpha = nk.dual_gradient_descent(K, y, 1.9 * 6 / lam_max**2, 4000)[-1]
    torch.testing.assert_close(alpha, torch.linalg.pinv(K, hermitian=True) @ y, rtol=1e-8, atol=1e-8)
    kernel = nk.kernel_gradient_descent(K, y, 1.9 * 6 / lam_max, 4000)[-1]
    torch.testing.assert_close(K @ kernel, K @ alpha, rtol=1e-8, atol=1e-8)
    assert float(kernel.norm()) > 10 * float(alpha.norm())


@pytest.mark.parametrize("which", ["kernel", "dual"])
def test_stability_limits_are_bracketed(which, rng):
    """Just below the stated limit the iterates converge; just above they overflow, and the
    error names the limit: 2n/lambda_max(K) for kernel GD, 2n/lambda_max(K)^2 for dual GD."""
    K, _ = spd_kernel(rng, "cpu", n=5, scale=4.0)
    y = randn(5, generator=rng, device="cpu")
    lam_max = float(torch.linalg.eigvalsh(K)[-1])
    assert lam_max > 1  # so the two limits differ
    run = {"kernel": nk.kernel_gradient_descent, "dual": nk.dual_gradient_descent}[which]
    limit = 2 * 5 / (lam_max if which == "kernel" else lam_max**2)
    alpha = run(K, y, 0.98 * limit, 20_000)[-1]
    torch.testing.assert_close(alpha, torch.linalg.solve(K, y), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=rf"diverged .* = {limit:.4g}$"):
        run(K, y, 1.05 * limit, 20_000)
    if which == "dual":  # the kernel GD step that is stable is far past the dual limit
        with pytest.raises(ValueError, match=r"lambda_max\(K\)\^2"):
            run(K, y, 0.98 * 2 * 5 / lam_max, 20_000)
