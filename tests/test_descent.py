"""Primal and kernel gradient descent: the seed derivation of the kernel trick.

The dual recursion (true GD on L(alpha)) and the closed forms of both are tested in
test_descent_variants.py."""

import pytest
import torch

import ntklib as nk
from conftest import randn


def test_primal_and_kernel_predictions_agree_at_every_step(device, rng):
    X = randn(12, 2, generator=rng, device=device)
    Z = randn(5, 2, generator=rng, device=device)
    y = randn(12, generator=rng, device=device)
    Phi, Phi_Z = nk.polynomial_features(X, 3), nk.polynomial_features(Z, 3)
    thetas = nk.primal_gradient_descent(Phi, y, lr=0.05, steps=40)
    alphas = nk.kernel_gradient_descent(nk.polynomial_kernel(X, degree=3), y, lr=0.05, steps=40)
    assert thetas.shape == (41, Phi.shape[1]) and alphas.shape == (41, 12)
    K_Z = nk.polynomial_kernel(Z, X, degree=3)
    torch.testing.assert_close(thetas @ Phi_Z.T, alphas @ K_Z.T, rtol=1e-10, atol=1e-10)


def test_nonzero_start_is_theta0_plus_span(rng):
    X = randn(6, 2, generator=rng, device="cpu")
    y = randn(6, generator=rng, device="cpu")
    Phi = nk.polynomial_features(X, 4)  # 15 features > 6 points
    theta0 = randn(Phi.shape[1], generator=rng, device="cpu")
    thetas = nk.primal_gradient_descent(Phi, y, lr=0.01, steps=25, theta0=theta0)
    alphas = nk.kernel_gradient_descent(Phi @ Phi.T, y, lr=0.01, steps=25, f0=Phi @ theta0)
    torch.testing.assert_close(thetas, theta0 + alphas @ Phi, rtol=1e-10, atol=1e-10)


def test_gradient_descent_converges_to_least_squares(rng):
    X = randn(30, 3, generator=rng, device="cpu")
    y = randn(30, generator=rng, device="cpu")
    theta_star = torch.linalg.lstsq(X, y).solution
    theta = nk.primal_gradient_descent(X, y, lr=0.5, steps=2000)[-1]
    torch.testing.assert_close(theta, theta_star, rtol=1e-8, atol=1e-8)


def test_zero_steps_return_the_start():
    Phi = torch.eye(3, dtype=torch.float64)
    assert torch.equal(nk.primal_gradient_descent(Phi, torch.ones(3, dtype=torch.float64), lr=1.0, steps=0), torch.zeros(1, 3, dtype=torch.float64))


def test_bad_hyperparameters():
    Phi = torch.eye(3, dtype=torch.float64)
    y = torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="lr must be > 0"):
        nk.primal_gradient_descent(Phi, y, lr=0.0, steps=3)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        nk.dual_gradient_descent(Phi, y, lr=0.1, steps=-1)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        nk.kernel_gradient_descent(Phi, y, lr=0.1, steps=-1)
    with pytest.raises(ValueError, match=r"theta0 must have shape \(3,\)"):
        nk.primal_gradient_descent(Phi, y, lr=0.1, steps=1, theta0=torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="f0 contains 1 NaN"):
        nk.dual_gradient_descent(Phi, y, lr=0.1, steps=1, f0=torch.tensor([0.0, float("nan"), 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="f0 contains 1 NaN"):
        nk.kernel_gradient_descent(Phi, y, lr=0.1, steps=1, f0=torch.tensor([0.0, float("nan"), 0.0], dtype=torch.float64))


def test_divergence_is_an_error_not_a_result():
    """lambda_max(Phi^T Phi) = 4 for Phi = 2 I with n = 3: stable iff lr < 2 * 3 / 4 = 1.5 for
    primal and kernel GD; true GD on L(alpha) with K = 4 I needs lr < 2 * 3 / 16 = 0.375."""
    Phi = 2 * torch.eye(3, dtype=torch.float64)
    y = torch.ones(3, dtype=torch.float64)
    nk.primal_gradient_descent(Phi, y, lr=1.4, steps=2000)
    with pytest.raises(ValueError, match=r"diverged .* stable limit 2n/lambda_max = 1.5"):
        nk.primal_gradient_descent(Phi, y, lr=3.0, steps=5000)
    with pytest.raises(ValueError, match=r"diverged .* stable limit 2n/lambda_max = 1.5"):
        nk.kernel_gradient_descent(Phi @ Phi.T, y, lr=3.0, steps=5000)
    with pytest.raises(ValueError, match=r"diverged .* stable limit 2n/lambda_max\(K\)\^2 = 0.375"):
        nk.dual_gradient_descent(Phi @ Phi.T, y, lr=3.0, steps=5000)


def test_placement_errors_name_the_arguments():
    Phi = torch.eye(3, dtype=torch.float64)
    with pytest.raises(TypeError, match="Phi has dtype torch.float64 but y has torch.float32"):
        nk.primal_gradient_descent(Phi, torch.ones(3, dtype=torch.float32), lr=0.1, steps=1)
    with pytest.raises(TypeError, match="K has dtype torch.float64 but f0 has torch.float32"):
        nk.dual_gradient_descent(Phi, torch.ones(3, dtype=torch.float64), lr=0.1, steps=1, f0=torch.ones(3, dtype=torch.float32))
    with pytest.raises(TypeError, match="K has dtype torch.float64 but y has torch.float32"):
        nk.kernel_gradient_descent(Phi, torch.ones(3, dtype=torch.float32), lr=0.1, steps=1)
