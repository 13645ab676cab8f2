"""Symbolic proofs (sympy) of the polynomial-kernel identities used in the book.

An identity k(x, z) = <phi(x), phi(z)> is proved for symbolic x, z by expanding the difference to
the zero polynomial: exact arithmetic, no sampled points.
"""

from __future__ import annotations

from itertools import product

import sympy as sp

from ._checks import nonnegative_int, positive_int
from .features import monomial_exponents, polynomial_feature_weights


def vectors(d: int) -> tuple[sp.Matrix, sp.Matrix]:
    """Symbolic real column vectors x = (x1..xd) and z = (z1..zd)."""
    d = positive_int("d", d)
    x = sp.Matrix(sp.symbols(f"x1:{d + 1}", real=True))
    z = sp.Matrix(sp.symbols(f"z1:{d + 1}", real=True))
    return x, z


def polynomial_kernel_expr(x: sp.Matrix, z: sp.Matrix, degree: int, c: sp.Expr = sp.Integer(1)) -> sp.Expr:
    """(x . z + c)^degree as a sympy expression."""
    return (x.dot(z) + c) ** nonnegative_int("degree", degree)


def polynomial_feature_map_expr(x: sp.Matrix, degree: int, c: sp.Expr = sp.Integer(1)) -> list[sp.Expr]:
    """The map of :func:`ntklib.polynomial_features`, symbolically: ``sqrt(w_a c^(p-|a|)) x^a``.

    The weights are the multinomial coefficients, rebuilt here with c kept symbolic.
    """
    degree = nonnegative_int("degree", degree)
    exponents = monomial_exponents(len(x), degree)
    coefficients = polynomial_feature_weights(exponents, degree, 1)  # integers: c handled below
    return [
        sp.sqrt(sp.Integer(int(w)) * c ** (degree - sum(a))) * sp.Mul(*[xi**ai for xi, ai in zip(x, a)])
        for a, w in zip(exponents, coefficients)
    ]


def degree2_map_d2(x: sp.Matrix, constant: bool = True) -> list[sp.Expr]:
    """The textbook maps in d = 2, written out by hand.

    constant=True:  phi(x) = [1, sqrt2 x1, sqrt2 x2, x1^2, sqrt2 x1 x2, x2^2]  for (x.z + 1)^2;
    constant=False: phi(x) = [x1^2, sqrt2 x1 x2, x2^2]                          for (x.z)^2.
    """
    if len(x) != 2:
        raise ValueError(f"degree2_map_d2 is the map for d = 2; got a vector of length {len(x)}")
    x1, x2 = x
    r2 = sp.sqrt(2)
    quadratic = [x1**2, r2 * x1 * x2, x2**2]
    return [sp.Integer(1), r2 * x1, r2 * x2, *quadratic] if constant else quadratic


def inner_product_gap(kernel: sp.Expr, phi_x: list[sp.Expr], phi_z: list[sp.Expr]) -> sp.Expr:
    """k(x, z) - <phi(x), phi(z)>, expanded: the zero polynomial exactly when the identity holds."""
    if len(phi_x) != len(phi_z):
        raise ValueError(f"phi(x) has {len(phi_x)} coordinates but phi(z) has {len(phi_z)}")
    return sp.expand(kernel - sum(a * b for a, b in zip(phi_x, phi_z)))


def proves_polynomial_identity(d: int, degree: int, c: sp.Expr | None = None) -> bool:
    """Prove (x.z + c)^p = <phi(x), phi(z)> for the map of ``polynomial_features`` in d variables.

    ``c=None`` keeps c as a positive symbol, so one proof covers every c > 0.
    """
    c = sp.Symbol("c", positive=True) if c is None else sp.sympify(c)
    x, z = vectors(d)
    gap = inner_product_gap(
        polynomial_kernel_expr(x, z, degree, c),
        polynomial_feature_map_expr(x, degree, c),
        polynomial_feature_map_expr(z, degree, c),
    )
    return gap == 0


def count_monomials_by_enumeration(d: int, degree: int) -> int:
    """``#{a in {0..p}^d : |a| <= p}``, by listing every candidate: the stars-and-bars count checked
    without the formula C(d + p, p)."""
    d = positive_int("d", d)
    degree = nonnegative_int("degree", degree)
    return sum(1 for a in product(range(degree + 1), repeat=d) if sum(a) <= degree)
