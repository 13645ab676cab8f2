"""Kernel ridge regression: alpha = (K + lambda I)^-1 y, f(z) = k(z, X) alpha."""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor

from ._checks import as_matrix, as_square, as_targets, check_same_placement, nonnegative_real
from .kernels import gaussian_kernel

Kernel = Callable[[Tensor, Tensor], Tensor]


def solve_kernel_system(K: Tensor, y: Tensor, ridge: float = 0.0) -> Tensor:
    """Solve (K + ridge I) alpha = y by Cholesky factorisation.

    Raises a ValueError when K + ridge I is not numerically positive definite (a non-PSD K, or a
    singular one with ridge = 0), rather than returning a meaningless alpha. The test is the
    Cholesky pivots: (min_i L_ii / max_i L_ii)^2 estimates 1 / cond(K + ridge I), and below
    n * eps the solution would carry no correct digits.

    Args:
        K: (n, n) symmetric kernel matrix.
        y: (n,) or (n, k) targets.
        ridge: lambda >= 0.

    Returns:
        The dual coefficients alpha, the same shape as y.
    """
    K = as_square("K", K)
    y = as_targets("y", y, K.shape[0], like=K, like_name="K")
    ridge = nonnegative_real("ridge", ridge)
    n = K.shape[0]
    A = K + ridge * torch.eye(n, dtype=K.dtype, device=K.device)
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise ValueError(
            f"K + ridge*I is not positive definite (Cholesky failed at column {int(info)}, ridge={ridge}): "
            "the kernel matrix is singular or not PSD; use ridge > 0 or check the kernel"
        )
    pivots = L.diagonal()
    inverse_condition = float((pivots.min() / pivots.max()) ** 2)
    if inverse_condition < n * torch.finfo(K.dtype).eps:
        raise ValueError(
            f"K + ridge*I is numerically singular (estimated condition number {1 / inverse_condition:.1e}, "
            f"ridge={ridge}): the solution would be meaningless; use ridge > 0"
        )
    rhs = y[:, None] if y.ndim == 1 else y
    alpha = torch.cholesky_solve(rhs, L)
    return alpha[:, 0] if y.ndim == 1 else alpha


class KernelRidge:
    r"""Kernel ridge regression with any kernel function ``(X, Z) -> K``.

    Minimises ``sum_i (f(x_i) - y_i)^2 + ridge |f|_H^2`` over the kernel's RKHS; the minimiser is
    f(z) = k(z, X) alpha with alpha = (K + ridge I)^-1 y (the representer theorem).

    Example:
        >>> model = KernelRidge(functools.partial(gaussian_kernel, sigma=0.5), ridge=1e-3)
        >>> model.fit(X, y).predict(Z)

    Attributes (after ``fit``):
        X_fit\_: (n, d) training inputs.
        dual_coef\_: alpha, (n,) or (n, k).
    """

    def __init__(self, kernel: Kernel = gaussian_kernel, ridge: float = 1.0) -> None:
        if not callable(kernel):
            raise TypeError(f"kernel must be a function (X, Z) -> K; got {type(kernel).__name__}")
        self.kernel = kernel
        self.ridge = nonnegative_real("ridge", ridge)

    def fit(self, X: Tensor, y: Tensor) -> "KernelRidge":
        X = as_matrix("X", X)
        y = as_targets("y", y, X.shape[0], like=X)
        self.dual_coef_ = solve_kernel_system(self.kernel(X, X), y, self.ridge)
        self.X_fit_ = X
        return self

    def predict(self, Z: Tensor) -> Tensor:
        """f(Z) = k(Z, X) alpha: (m,) or (m, k)."""
        if not hasattr(self, "dual_coef_"):
            raise RuntimeError("this KernelRidge is not fitted yet; call fit(X, y) first")
        Z = as_matrix("Z", Z)
        check_same_placement(("X (fit)", "Z"), self.X_fit_, Z)
        if Z.shape[1] != self.X_fit_.shape[1]:
            raise ValueError(f"Z has d={Z.shape[1]} features but the model was fitted on d={self.X_fit_.shape[1]}")
        return self.kernel(Z, self.X_fit_) @ self.dual_coef_

    def __repr__(self) -> str:
        return f"KernelRidge(kernel={_describe(self.kernel)}, ridge={self.ridge:g})"


def _describe(kernel: Kernel) -> str:
    """``polynomial_kernel(degree=3)`` for ``functools.partial(polynomial_kernel, degree=3)``."""
    if isinstance(kernel, functools.partial):
        arguments = [repr(a) for a in kernel.args] + [f"{k}={v!r}" for k, v in kernel.keywords.items()]
        return f"{_describe(kernel.func)}({', '.join(arguments)})"
    return getattr(kernel, "__name__", None) or type(kernel).__name__
