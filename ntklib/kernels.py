"""Classical kernels as pure functions ``(X, Z) -> K``.

All take ``X: (n, d)`` and ``Z: (m, d)`` (``Z=None`` means ``Z = X``) and return ``K: (n, m)``
on the inputs' device and dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import (
    as_matrix_pair,
    check_kernel_finite,
    nonnegative_int,
    nonnegative_real,
    positive_real,
)

RESCALE = "the kernel's values are beyond the dtype's range; rescale the inputs or use float64"


def linear_kernel(X: Tensor, Z: Tensor | None = None) -> Tensor:
    """k(x, z) = x . z; a ValueError naming the rows when a value overflows the dtype."""
    X, Z = as_matrix_pair(X, Z)
    return check_kernel_finite("linear_kernel", X @ Z.T, X, Z, RESCALE)


def polynomial_kernel(X: Tensor, Z: Tensor | None = None, degree: int = 2, c: float = 1.0) -> Tensor:
    """k(x, z) = (x . z + c)^degree, with c >= 0 so that it is a valid (PSD) kernel.

    Its explicit feature map has C(d + degree, degree) coordinates: see
    :func:`ntklib.polynomial_features`. A value beyond the dtype's range (large inputs, high
    degree) raises a ValueError naming the rows.
    """
    X, Z = as_matrix_pair(X, Z)
    degree = nonnegative_int("degree", degree)
    c = nonnegative_real("c", c)
    return check_kernel_finite("polynomial_kernel", (X @ Z.T + c) ** degree, X, Z, RESCALE)


def squared_distances(X: Tensor, Z: Tensor | None = None) -> Tensor:
    """``D[i, j] = |x_i - z_j|^2``, computed as ``|x|^2 + |z|^2 - 2 x.z`` and clamped at 0.

    With ``Z=None`` the diagonal is exactly 0.

    The expansion costs one matrix product instead of an (n, m, d) difference tensor; rounding
    can push it slightly below zero for (near-)duplicate points, hence the clamp. A distance
    beyond the dtype's range (or an ``|x|^2`` that overflows) raises a ValueError naming the rows.
    """
    X, Z = as_matrix_pair(X, Z)
    return check_kernel_finite("squared_distances", _squared_distances(X, Z), X, Z, RESCALE)


def _squared_distances(X: Tensor, Z: Tensor) -> Tensor:
    """squared_distances without checks: inf where a distance overflows, NaN where |x|^2 does."""
    x_sq = (X * X).sum(dim=1)  # (n,)
    z_sq = (Z * Z).sum(dim=1)  # (m,)
    D = (x_sq[:, None] + z_sq[None, :] - 2.0 * (X @ Z.T)).clamp_min_(0.0)
    if Z is X:
        D.fill_diagonal_(0.0)  # exactly, so that sqrt(D) is 0 there and not ~1e-8
    return D


def gaussian_kernel(X: Tensor, Z: Tensor | None = None, sigma: float = 1.0) -> Tensor:
    """``k(x, z) = exp(-|x - z|^2 / (2 sigma^2))``, the Gaussian (RBF) kernel, sigma > 0.

    Finite for any finite inputs and sigma: where the expansion ``|x|^2 + |z|^2 - 2 x.z`` or
    ``sigma^2`` overflows (norms near the dtype's largest value, an extreme sigma), those entries
    are recomputed from the differences, ((x - z) / sigma)^2, whose overflow means k = 0.
    """
    sigma = positive_real("sigma", sigma)
    X, Z = as_matrix_pair(X, Z)
    scale, limits = 2.0 * sigma * sigma, torch.finfo(X.dtype)
    if limits.tiny <= scale <= limits.max:
        K = (_squared_distances(X, Z) / -scale).exp_()
    else:  # 2 sigma^2 is beyond the dtype's range: scale the inputs instead
        X_s = X / sigma
        K = (_squared_distances(X_s, X_s if Z is X else Z / sigma) / -2.0).exp_()
    if not bool(torch.isfinite(K).all()):
        i, j = torch.nonzero(~torch.isfinite(K), as_tuple=True)
        scaled = (X[i] - Z[j]) / sigma  # (b, d): finite or +-inf, never NaN
        K[i, j] = (scaled.square().sum(1) / -2.0).exp()
    return K
