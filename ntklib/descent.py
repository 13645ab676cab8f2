"""Gradient descent on the squared loss: in feature space, and in the dual coefficients alpha.

Loss: L = 1/(2n) sum_i (f(x_i) - y_i)^2, the scaling used throughout the book, so that gradient
flow in function space reads df/dt = -(1/n) K (f - y).

Three recursions, each with its own stability limit (eta = lr):

- ``primal_gradient_descent``: GD on theta with the (n, k) features Phi,
  theta <- theta - (eta/n) Phi^T (Phi theta - y); stable iff eta < 2n / lambda_max(Phi^T Phi).
- ``kernel_gradient_descent``: the same primal GD written in the coordinates alpha of
  theta = theta_0 + Phi^T alpha (the representer argument),
  alpha <- alpha - (eta/n) (f_0 + K alpha - y),  f_0 = Phi theta_0,  K = Phi Phi^T,
  which touches the features only through K. Started at alpha = 0 it gives the same predictions
  as primal GD at every step, f(z) = phi(z)^T theta_0 + K(z, X) alpha, and the same limit
  eta < 2n / lambda_max(K) (Phi^T Phi and K share their non-zero eigenvalues). It is *not*
  gradient descent on any loss of alpha.
- ``dual_gradient_descent``: true GD on the loss as a function of alpha,
  ``L(alpha) = 1/(2n) |f_0 + K alpha - y|^2``, whose gradient is (1/n) K^T (f_0 + K alpha - y):
  alpha <- alpha - (eta/n) K^T (f_0 + K alpha - y); stable iff eta < 2n / lambda_max(K)^2.
  Its iterates differ from the kernel ones: the residual shrinks by (1 - eta lambda_i^2 / n) per
  step along the i-th eigenvector of K instead of (1 - eta lambda_i / n). Both converge to
  alpha = K^{-1} (y - f_0) when K is invertible.
"""

from __future__ import annotations

from collections.abc import Callable

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

    theta_{t+1} = theta_t - (lr/n) Phi^T (Phi theta_t - y), gradient descent on
    ``L(theta) = 1/(2n) |Phi theta - y|^2``; stable iff lr < 2n / lambda_max(Phi^T Phi).

    Args:
        Phi: (n, k) training features.
        y: (n,) targets.
        lr: step size eta > 0.
        steps: number of steps >= 0.
        theta0: (k,) initial parameters (zeros when None).

    Returns:
        The iterates theta_0 ... theta_steps as rows, (steps + 1, k).

    Raises:
        ValueError: if an iterate overflows (lr past the stable limit); the message names the limit.
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
    _check_converging(thetas, lr, lambda: 2 * n / _lambda_max(Phi.T @ Phi), "2n/lambda_max")
    return thetas


def kernel_gradient_descent(
    K: Tensor, y: Tensor, lr: float, steps: int, f0: Tensor | None = None
) -> Tensor:
    """Run ``steps`` steps of kernel gradient descent: primal GD written in alpha coordinates.

    alpha_{t+1} = alpha_t - (lr/n) (f0 + K alpha_t - y),  alpha_0 = 0.

    With K = Phi Phi^T and f0 = Phi theta_0 this is exactly ``primal_gradient_descent`` on
    theta_t = theta_0 + Phi^T alpha_t: the predictions f0 + K alpha_t on the training points (and
    f0(z) + K(z, X) alpha_t anywhere) are those of primal GD at every step, and in function space
    f_{t+1} = f_t - (lr/n) K (f_t - y), the Euler step of kernel gradient flow. It is not gradient
    descent on a loss of alpha (that is ``dual_gradient_descent``). Stable iff
    lr < 2n / lambda_max(K), the primal limit. For invertible K,
    alpha_t = (I - (I - lr K/n)^t) K^{-1} (y - f0).

    Args:
        K: (n, n) training kernel matrix (symmetric positive semi-definite).
        y: (n,) targets.
        lr: step size eta > 0.
        steps: number of steps >= 0.
        f0: (n,) predictions of theta_0 on the training points, Phi theta_0 (zeros when None).

    Returns:
        The iterates alpha_0 = 0 ... alpha_steps as rows, (steps + 1, n).

    Raises:
        ValueError: if an iterate overflows (lr past the stable limit); the message names the limit.
    """
    K, y, lr, steps, f0 = _dual_arguments(K, y, lr, steps, f0)
    n = K.shape[0]
    alpha = torch.zeros(n, dtype=K.dtype, device=K.device)
    alphas = [alpha]
    for _ in range(steps):
        alpha = alpha - (lr / n) * (f0 + K @ alpha - y)
        alphas.append(alpha)
    alphas = torch.stack(alphas)
    _check_converging(alphas, lr, lambda: 2 * n / _lambda_max((K + K.T) / 2), "2n/lambda_max")
    return alphas


def dual_gradient_descent(
    K: Tensor, y: Tensor, lr: float, steps: int, f0: Tensor | None = None
) -> Tensor:
    """Run ``steps`` steps of gradient descent on the dual loss L(alpha).

    ``L(alpha) = 1/(2n) |f0 + K alpha - y|^2``, the training loss of f = f0 + K(., X) alpha as a
    function of alpha, has gradient (1/n) K^T (f0 + K alpha - y), so

    alpha_{t+1} = alpha_t - (lr/n) K^T (f0 + K alpha_t - y),  alpha_0 = 0.

    This is ``primal_gradient_descent`` with K in the place of the features (a linear model in
    alpha whose design matrix is K), so it is stable iff lr < 2n / lambda_max(K^T K), which is
    2n / lambda_max(K)^2 for a positive semi-definite K: a much smaller step than the
    2n / lambda_max(K) of ``kernel_gradient_descent`` when lambda_max(K) > 1. Along the i-th
    eigenvector of K the residual shrinks by (1 - lr lambda_i^2 / n) per step, against
    (1 - lr lambda_i / n) for kernel gradient descent; for invertible K both converge to
    K^{-1} (y - f0), and alpha_t = (I - (I - lr K^2/n)^t) K^{-1} (y - f0). The iterates stay in
    the range of K, so for a singular K they converge to the minimum-norm least-squares
    solution K^+ (y - f0).

    Before ntklib 0.2 this name ran the recursion alpha <- alpha - (lr/n)(f0 + K alpha - y),
    which is now called ``kernel_gradient_descent``.

    Args:
        K: (n, n) training kernel matrix.
        y: (n,) targets.
        lr: step size eta > 0.
        steps: number of steps >= 0.
        f0: (n,) predictions of theta_0 on the training points, Phi theta_0 (zeros when None).

    Returns:
        The iterates alpha_0 = 0 ... alpha_steps as rows, (steps + 1, n).

    Raises:
        ValueError: if an iterate overflows (lr past the stable limit); the message names the limit.
    """
    K, y, lr, steps, f0 = _dual_arguments(K, y, lr, steps, f0)
    n = K.shape[0]
    alpha = torch.zeros(n, dtype=K.dtype, device=K.device)
    alphas = [alpha]
    for _ in range(steps):
        alpha = alpha - (lr / n) * (K.T @ (f0 + K @ alpha - y))
        alphas.append(alpha)
    alphas = torch.stack(alphas)
    _check_converging(alphas, lr, lambda: 2 * n / _lambda_max(K.T @ K), "2n/lambda_max(K)^2")
    return alphas


def _dual_arguments(K, y, lr, steps, f0):
    K = as_square("K", K)
    y = _as_vector_targets(y, K, "K")
    lr = positive_real("lr", lr)
    steps = nonnegative_int("steps", steps)
    f0 = as_initial("f0", f0, (K.shape[0],), like=K, like_name="K")
    return K, y, lr, steps, f0


def _lambda_max(S: Tensor) -> float:
    """Largest eigenvalue of the symmetric matrix ``S``."""
    return float(torch.linalg.eigvalsh((S + S.T) / 2)[-1])


def _check_converging(iterates: Tensor, lr: float, limit: Callable[[], float], name: str) -> None:
    """GD on a quadratic is stable iff lr < limit (2n over the Hessian's largest eigenvalue times
    n); past it the iterates blow up to inf/NaN, which must not be handed back as a result."""
    finite = torch.isfinite(iterates).all(dim=1)
    if not bool(finite.all()):
        step = int((~finite).nonzero()[0])
        raise ValueError(
            f"gradient descent diverged (non-finite iterate at step {step}): lr={lr:g} exceeds the "
            f"stable limit {name} = {limit():.4g}"
        )


def _as_vector_targets(y: Tensor, like: Tensor, like_name: str) -> Tensor:
    y = as_targets("y", y, like.shape[0], like=like, like_name=like_name)
    if y.ndim != 1:
        raise ValueError(f"y must have shape (n,) here; got {tuple(y.shape)}")
    return y
