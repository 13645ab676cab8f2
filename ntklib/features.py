"""Explicit feature maps phi: R^d -> R^k whose inner products are kernels."""

from __future__ import annotations

import math
from itertools import combinations_with_replacement

import torch
from torch import Tensor

from ._checks import as_matrix, nonnegative_int, nonnegative_real, positive_int, positive_real


def polynomial_feature_count(d: int, degree: int) -> int:
    """Number of monomials of total degree <= ``degree`` in d variables: C(d + degree, degree)."""
    d = positive_int("d", d)
    degree = nonnegative_int("degree", degree)
    return math.comb(d + degree, degree)


def monomial_exponents(d: int, degree: int) -> list[tuple[int, ...]]:
    """All exponent vectors a in N^d with ``|a| <= degree``, by total degree, then lexicographically.

    For d = 2, degree = 2: (0,0), (1,0), (0,1), (2,0), (1,1), (0,2).
    """
    d = positive_int("d", d)
    degree = nonnegative_int("degree", degree)
    exponents = []
    for total in range(degree + 1):
        for variables in combinations_with_replacement(range(d), total):
            exponent = [0] * d
            for i in variables:
                exponent[i] += 1
            exponents.append(tuple(exponent))
    return exponents


def polynomial_feature_weights(exponents: list[tuple[int, ...]], degree: int, c: float) -> list[float]:
    """Squared feature weights ``w_a = degree! / ((degree - |a|)! a_1! ... a_d!) * c^(degree - |a|)``.

    They are the multinomial coefficients of (c + x.z)^degree, so that
    sum_a w_a x^a z^a = (x.z + c)^degree.
    """
    weights = []
    for a in exponents:
        rest = degree - sum(a)
        coefficient = math.factorial(degree) // math.factorial(rest)
        for a_i in a:
            coefficient //= math.factorial(a_i)
        weights.append(coefficient * c**rest)
    return weights


def polynomial_features(X: Tensor, degree: int, c: float = 1.0) -> Tensor:
    """The explicit feature map of the polynomial kernel (x.z + c)^degree.

    ``phi(x)_a = sqrt(w_a) x^a`` for every exponent a with ``|a| <= degree`` (see
    :func:`monomial_exponents` for the order and ``polynomial_feature_weights`` for w_a), so
    ``Phi @ Phi.T == polynomial_kernel(X, degree=degree, c=c)`` up to rounding and
    ``Phi.shape[1] == C(d + degree, degree)``. For d = 2, degree = 2, c = 1:
    phi(x) = [1, sqrt2 x1, sqrt2 x2, x1^2, sqrt2 x1 x2, x2^2].

    Args:
        X: (n, d) inputs.
        degree: the polynomial degree p >= 0.
        c: the constant c >= 0 (with c = 0 the features of degree < p are zero).

    Returns:
        The feature matrix Phi, (n, C(d + p, p)), on X's device and dtype.
    """
    X = as_matrix("X", X)
    degree = nonnegative_int("degree", degree)
    c = nonnegative_real("c", c)
    exponents = monomial_exponents(X.shape[1], degree)
    weights = torch.tensor(polynomial_feature_weights(exponents, degree, c), dtype=X.dtype, device=X.device)
    powers = torch.tensor(exponents, dtype=X.dtype, device=X.device)  # (k, d)
    # x^a as a product over coordinates; 0^0 = 1 in torch.pow, as the monomial needs.
    monomials = torch.pow(X[:, None, :], powers[None, :, :]).prod(dim=2)  # (n, k)
    return monomials * weights.sqrt()


def random_fourier_features(
    X: Tensor,
    num_features: int,
    sigma: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random Fourier features of the Gaussian kernel (Rahimi & Recht, 2007).

    phi(x) = sqrt(2 / D) cos(W^T x + b), W ~ N(0, I / sigma^2) of shape (d, D), b ~ U[0, 2 pi).
    ``E[phi(x) . phi(z)] = exp(-|x - z|^2 / (2 sigma^2))``, with Monte Carlo error O(D^-1/2).

    To map two sets of points with the same random draw, pass two generators seeded alike (or
    map their concatenation once).

    Args:
        X: (n, d) inputs.
        num_features: D >= 1.
        sigma: bandwidth of the Gaussian kernel, > 0.
        generator: a ``torch.Generator`` (on any device: the draw is moved to X's device);
            the global generator when None.

    Returns:
        The feature matrix Phi, (n, D), on X's device and dtype.
    """
    X = as_matrix("X", X)
    num_features = positive_int("num_features", num_features)
    sigma = positive_real("sigma", sigma)
    d = X.shape[1]
    # Drawn on the generator's device, then moved: one seed gives the same features everywhere.
    where = X.device if generator is None else generator.device
    W = torch.randn(d, num_features, generator=generator, dtype=X.dtype, device=where).to(X.device) / sigma
    b = torch.rand(num_features, generator=generator, dtype=X.dtype, device=where).to(X.device) * (2 * math.pi)
    return math.sqrt(2.0 / num_features) * torch.cos(X @ W + b)
