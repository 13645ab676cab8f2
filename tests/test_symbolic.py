"""Symbolic proofs of the polynomial-kernel identities, and that a wrong map is refused."""

import math

import pytest
import sympy as sp

from ntklib import symbolic


def test_six_feature_map_proves_x_dot_z_plus_one_squared():
    x, z = symbolic.vectors(2)
    gap = symbolic.inner_product_gap(
        symbolic.polynomial_kernel_expr(x, z, 2, 1), symbolic.degree2_map_d2(x), symbolic.degree2_map_d2(z)
    )
    assert gap == 0


def test_three_feature_map_proves_x_dot_z_squared():
    x, z = symbolic.vectors(2)
    phi = lambda v: symbolic.degree2_map_d2(v, constant=False)  # noqa: E731
    assert symbolic.inner_product_gap((x.dot(z)) ** 2, phi(x), phi(z)) == 0


def test_a_wrong_map_is_not_proved():
    x, z = symbolic.vectors(2)
    wrong = lambda v: [v[0] ** 2, v[0] * v[1], v[1] ** 2]  # noqa: E731  (missing sqrt 2)
    gap = symbolic.inner_product_gap((x.dot(z)) ** 2, wrong(x), wrong(z))
    assert sp.expand(gap - x[0] * x[1] * z[0] * z[1]) == 0


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_general_identity_for_symbolic_c(d, degree):
    assert symbolic.proves_polynomial_identity(d, degree)


def test_identity_for_c_zero():
    assert symbolic.proves_polynomial_identity(2, 3, c=0)


@pytest.mark.parametrize("d,degree", [(1, 5), (2, 4), (3, 3), (4, 2), (5, 3)])
def test_stars_and_bars_count(d, degree):
    assert symbolic.count_monomials_by_enumeration(d, degree) == math.comb(d + degree, degree)


def test_degree2_map_rejects_other_dimensions():
    x, _ = symbolic.vectors(3)
    with pytest.raises(ValueError, match="map for d = 2; got a vector of length 3"):
        symbolic.degree2_map_d2(x)
