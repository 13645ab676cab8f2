"""Gradient descent on the squared loss, in feature space (primal) and with the kernel (dual).

Loss: L = 1/(2n) sum_i (f(x_i) - y_i)^2, the scaling used throughout the book, so that gradient
flow in function space reads df/dt = -(1/n) K (f - y).

Primal, with Phi the (n, k) features:  theta <- theta - (lr/n) Phi^T (Phi theta - y).
Dual, writing theta = theta_0 + Phi^T alpha (the representer argument):
    alpha <- alpha - (lr/n) (f_0 + K alpha - y),  f_0 = Phi theta_0,  K = Phi Phi^T,
which only touches features through K. Started at alpha = 0 both give the same predictions at
every step: f(z) = phi(z).theta_0 + k(z, X) alpha.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import (
    as_initial,
    as_matrix,
    as_square,
    as_targets,
    nonnegative_int,
    positive_real,
)


def primal_gradient_descent(
    Phi: Tensor, y: Tensor, lr: float, steps: int, theta0: Tensor | None = None
) -> Tensor:
    """Run ``steps`` GD steps on theta in feature space.

    Args:
        Phi: (n, k) training features.
        y: (n,) targets.
        lr: step size eta > 0.
        steps: number of steps >= 0.
        theta0: (k,) initial parameters (zeros when None).

    Returns:
        The iterates theta_0 ... theta_steps as rows, (steps + 1, k).
    """
    Phi = as_matrix("Phi", Phi)
    y = _as_vector_targets(y, Phi, "Phi")
    lr = positive_real("lr", lr)
    steps = nonnegative_int("steps", steps)
    n, k = Phi.shape
    theta = as_initial("theta0", theta0, (k,), like=Phi, like_name="Phi")
    thetas = [theta]
    for _ in range(steps):
        theta = theta - (lr / n) * (Phi.T @ (Phi @ theta - y))
        thetas.append(theta)
    thetas = torch.stack(thetas)
    _check_converging(thetas, lr, n, lambda: torch.linalg.eigvalsh(Phi.T @ Phi)[-1])
    return thetas


def dual_gradient_descent(
    K: Tensor, y: Tensor, lr: float, steps: int, f0: Tensor | None = None
) -> Tensor:
    """Run ``steps`` GD steps on the dual coefficients alpha (theta = theta_0 + Phi^T alpha).

    Args:
        K: (n, n) training kernel matrix.
        y: (n,) targets.
        lr: step size eta > 0.
        steps: number of steps >= 0.
        f0: (n,) predictions of theta_0 on the training points, Phi theta_0 (zeros when None).

    Returns:
        The iterates alpha_0 = 0 ... alpha_steps as rows, (steps + 1, n).
    """
    K = as_square("K", K)
    y = _as_vector_targets(y, K, "K")
    lr = positive_real("lr", lr)
    steps = nonnegative_int("steps", steps)
    n = K.shape[0]
    f0 = as_initial("f0", f0, (n,), like=K, like_name="K")
    alpha = torch.zeros(n, dtype=K.dtype, device=K.device)
    alphas = [alpha]
    for _ in range(steps):
        alpha = alpha - (lr / n) * (f0 + K @ alpha - y)
        alphas.append(alpha)
    alphas = torch.stack(alphas)
    _check_converging(alphas, lr, n, lambda: torch.linalg.eigvalsh((K + K.T) / 2)[-1])
    return alphas


def _check_converging(iterates: Tensor, lr: float, n: int, lambda_max) -> None:
    """GD on this quadratic is stable iff lr < 2 n / lambda_max(K); past it the iterates blow up
    to inf/NaN, which must not be handed back as a result."""
    finite = torch.isfinite(iterates).all(dim=1)
    if not bool(finite.all()):
        step = int((~finite).nonzero()[0])
        raise ValueError(
            f"gradient descent diverged (non-finite iterate at step {step}): lr={lr:g} exceeds the "
            f"stable limit 2n/lambda_max = {2 * n / float(lambda_max()):.4g}"
        )


def _as_vector_targets(y: Tensor, like: Tensor, like_name: str) -> Tensor:
    y = as_targets("y", y, like.shape[0], like=like, like_name=like_name)
    if y.ndim != 1:
        raise ValueError(f"y must have shape (n,) here; got {tuple(y.shape)}")
    return y

