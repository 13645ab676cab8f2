"""Classical kernels as pure functions ``(X, Z) -> K``.

All take ``X: (n, d)`` and ``Z: (m, d)`` (``Z=None`` means ``Z = X``) and return ``K: (n, m)``
on the inputs' device and dtype.
"""

from __future__ import annotations

from torch import Tensor

from ._checks import as_matrix_pair, nonnegative_int, nonnegative_real, positive_real


def linear_kernel(X: Tensor, Z: Tensor | None = None) -> Tensor:
    """k(x, z) = x . z"""
    X, Z = as_matrix_pair(X, Z)
    return X @ Z.T


def polynomial_kernel(X: Tensor, Z: Tensor | None = None, degree: int = 2, c: float = 1.0) -> Tensor:
    """k(x, z) = (x . z + c)^degree, with c >= 0 so that it is a valid (PSD) kernel.

    Its explicit feature map has C(d + degree, degree) coordinates: see
    :func:`ntklib.polynomial_features`.
    """
    X, Z = as_matrix_pair(X, Z)
    degree = nonnegative_int("degree", degree)
    c = nonnegative_real("c", c)
    return (X @ Z.T + c) ** degree


def squared_distances(X: Tensor, Z: Tensor | None = None) -> Tensor:
    """``D[i, j] = |x_i - z_j|^2``, computed as ``|x|^2 + |z|^2 - 2 x.z`` and clamped at 0.

    With ``Z=None`` the diagonal is exactly 0.

    The expansion costs one matrix product instead of an (n, m, d) difference tensor; rounding
    can push it slightly below zero for (near-)duplicate points, hence the clamp.
    """
    X, Z = as_matrix_pair(X, Z)
    x_sq = (X * X).sum(dim=1)  # (n,)
    z_sq = (Z * Z).sum(dim=1)  # (m,)
    D = (x_sq[:, None] + z_sq[None, :] - 2.0 * (X @ Z.T)).clamp_min_(0.0)
    if Z is X:
        D.fill_diagonal_(0.0)  # exactly, so that sqrt(D) is 0 there and not ~1e-8
    return D


def gaussian_kernel(X: Tensor, Z: Tensor | None = None, sigma: float = 1.0) -> Tensor:
    """``k(x, z) = exp(-|x - z|^2 / (2 sigma^2))``, the Gaussian (RBF) kernel, sigma > 0."""
    sigma = positive_real("sigma", sigma)
    return (squared_distances(X, Z) / (-2.0 * sigma * sigma)).exp_()
