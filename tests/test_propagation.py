"""nk.signal_propagation against closed forms (ReLU) and independent Gauss-Hermite quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.optimize import brentq
from scipy.special import erf, roots_hermitenorm

import ntklib as nk

NODES, WEIGHTS = roots_hermitenorm(200)
WEIGHTS = WEIGHTS / WEIGHTS.sum()


def expect(fn) -> float:
    """E[fn(z)] for a standard normal z, by adaptive quadrature."""
    return quad(lambda z: float(fn(np.array(z))) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi), -40, 40,
                points=[0.0], epsabs=1e-14, epsrel=1e-13, limit=200)[0]  # fmt: skip


def expect2(fn, c: float) -> float:
    """E[fn(u, v)] for standard normals with correlation c."""
    u = NODES[:, None]
    v = c * NODES[:, None] + math.sqrt(max(1 - c * c, 0.0)) * NODES[None, :]
    return float((WEIGHTS[:, None] * WEIGHTS[None, :] * fn(u, v)).sum())


@pytest.mark.parametrize("W_std, b_std", [(1.2, 0.3), (0.8, 1.0), (1.4, 0.05)])
def test_relu_closed_forms(W_std, b_std):
    """q* = b^2 / (1 - W^2/2), chi_1 = chi_q = chi_c = W^2/2, c* = 1 (ordered for W^2 < 2)."""
    sp = nk.signal_propagation("relu", W_std, b_std)
    assert sp.q_star == pytest.approx(b_std**2 / (1 - W_std**2 / 2), rel=1e-10)
    for chi in (sp.chi_1, sp.chi_q, sp.chi_c):
        assert chi == pytest.approx(W_std**2 / 2, rel=1e-6)
    assert sp.c_star == 1.0
    assert sp.depth_scale_c == pytest.approx(-1 / math.log(W_std**2 / 2), rel=1e-6)


@pytest.mark.parametrize("W_std, b_std", [(1.0, 0.3), (1.5, 0.1), (3.0, 0.05), (1.4**0.5, 0.05**0.5)])
def test_erf_against_quadrature(W_std, b_std):
    """The fixed points by iterating quadrature maps; the slopes as their defining expectations
    (Schoenholz et al. 2017, eqs. 5-9): chi_q = W^2 E[phi'^2 + phi phi''] at q*."""
    phi = erf
    dphi = lambda x: 2 / math.sqrt(math.pi) * np.exp(-x * x)  # noqa: E731
    ddphi = lambda x: -2 * x * dphi(x)  # noqa: E731
    def length_map(q):
        return W_std**2 * expect(lambda z: phi(math.sqrt(q) * z) ** 2) + b_std**2

    q = brentq(lambda q: length_map(q) - q, b_std**2 / 2, 100.0, xtol=1e-15, rtol=1e-14)
    s = math.sqrt(q)
    chi_1 = W_std**2 * expect(lambda z: dphi(s * z) ** 2)
    chi_q = W_std**2 * expect(lambda z: dphi(s * z) ** 2 + phi(s * z) * ddphi(s * z))
    c = 1.0
    if chi_1 > 1:  # the stable fixed point below 1 (c = 1 is the unstable one)
        def correlation_map(c):
            return (W_std**2 * expect2(lambda u, v: phi(s * u) * phi(s * v), c) + b_std**2) / q

        c = brentq(lambda c: correlation_map(c) - c, 0.0, 0.999, xtol=1e-14)
    chi_c = W_std**2 * expect2(lambda u, v: dphi(s * u) * dphi(s * v), c)
    sp = nk.signal_propagation("erf", W_std, b_std)
    assert sp.q_star == pytest.approx(q, rel=1e-9)
    assert sp.chi_1 == pytest.approx(chi_1, rel=1e-9)
    assert sp.chi_q == pytest.approx(chi_q, rel=1e-6)  # a central difference in ntklib
    assert sp.c_star == pytest.approx(c, abs=1e-8)
    assert sp.chi_c == pytest.approx(chi_c, rel=1e-8)


def test_tanh_by_hermite_series_matches_erf_like_quadrature():
    W_std, b_std = 1.5, 0.1
    sp = nk.signal_propagation(nk.Elementwise(torch.tanh), W_std, b_std)
    q = sp.q_star
    assert q == pytest.approx(W_std**2 * expect(lambda z: np.tanh(math.sqrt(q) * z) ** 2) + b_std**2, rel=1e-8)
    chi_1 = W_std**2 * expect(lambda z: 1 / np.cosh(math.sqrt(q) * z) ** 4)
    assert sp.chi_1 == pytest.approx(chi_1, rel=1e-7)
    assert sp.chi_1 > 1 and sp.c_star < 1  # chaotic at these scales


def test_edge_of_chaos_has_infinite_correlation_depth():
    sp = nk.signal_propagation("relu", math.sqrt(2), 0.0)
    assert sp.chi_1 == pytest.approx(1.0) and sp.depth_scale_c == math.inf


def test_errors():
    with pytest.raises(ValueError, match=r"the length map .* diverges"):
        nk.signal_propagation("relu", 1.6, 0.1)  # W^2 > 2: the variance grows geometrically
    with pytest.raises(ValueError, match="W_std must be > 0"):
        nk.signal_propagation("erf", 0.0, 0.1)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        nk.signal_propagation("swish", 1.0)
    with pytest.raises(ValueError, match=r"the network's units vanish with depth; use b_std > 0"):
        nk.signal_propagation("erf", 0.8, 0.0)  # 0.64 * 4/pi < 1: the variance shrinks to 0
