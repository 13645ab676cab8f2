"""The layer contract: every layer's kernel rule against Monte Carlo of its own finite module, the
structured empirical NTK against torch.func, dual maps against quadrature, composition laws, and
errors that name the layer.

One list of layers (``CASES``), each placed in a small network that feeds it what it needs
(Gaussian pre-activations, images or vectors) and ends in a Dense readout; one test runs over it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.special import erf, roots_hermitenorm
from scipy.stats import norm

import ntklib as nk
from ntklib.layers.activations import ABReluDual, erf_dual, gelu_dual

F64 = torch.float64


def _vectors(middle):
    return lambda k: nk.serial(nk.Dense(k, 1.3, 0.2), *middle(k), nk.Dense(1, 0.9, 0.1))


def _images(middle, readout=None):
    return lambda k: nk.serial(nk.Conv(k, (3, 2), padding="same", W_std=1.4, b_std=0.1), *middle(k),
                               readout or nk.GlobalAvgPool(), nk.Dense(1, 1.1, 0.2))  # fmt: skip


# name -> (network of width k, input kind); the layer under test is in the middle of each.
CASES = {
    "Dense ntk": (_vectors(lambda k: [nk.Relu(), nk.Dense(k, 0.8, 0.3)]), "vectors"),
    "Dense standard": (lambda k: nk.serial(nk.Dense(k, 1.3, 0.2, "standard"), nk.Relu(),
                                           nk.Dense(1, 0.9, 0.1, "standard")), "vectors"),  # fmt: skip
    "Dense no bias": (lambda k: nk.serial(nk.Dense(k, 1.3), nk.Erf(), nk.Dense(1, 0.9)), "vectors"),
    "Relu": (_vectors(lambda k: [nk.Relu()]), "vectors"),
    "LeakyRelu": (_vectors(lambda k: [nk.LeakyRelu(0.2)]), "vectors"),
    "Abs": (_vectors(lambda k: [nk.Abs()]), "vectors"),
    "ABRelu": (_vectors(lambda k: [nk.ABRelu(-0.5, 1.5)]), "vectors"),
    "Erf": (_vectors(lambda k: [nk.Erf()]), "vectors"),
    "Gelu": (_vectors(lambda k: [nk.Gelu()]), "vectors"),
    "Elementwise tanh": (_vectors(lambda k: [nk.Elementwise(torch.tanh)]), "vectors"),
    "Elementwise sin": (_vectors(lambda k: [nk.Elementwise(torch.sin)]), "vectors"),
    "LayerNorm features": (_vectors(lambda k: [nk.LayerNorm(), nk.Relu()]), "vectors"),
    "residual dense": (_vectors(lambda k: [nk.FanOut(2), nk.parallel(nk.serial(nk.Relu(), nk.Dense(k, 1.2, 0.1)),
                                                                     nk.Identity()), nk.FanInSum(), nk.Gelu()]),
                       "vectors"),  # fmt: skip
    # A skip branch that is not Gaussian (post-activation) next to a fresh Dense branch: allowed,
    # since the fresh branch is zero-mean and independent of it (neural-tangents refuses it).
    "residual non-Gaussian skip": (_vectors(lambda k: [nk.Relu(), nk.FanOut(2), nk.parallel(nk.Dense(k, 1.1, 0.2),
                                                                                            nk.Identity()),
                                                       nk.FanInSum()]), "vectors"),  # fmt: skip
    "Conv same": (_images(lambda k: [nk.Relu(), nk.Conv(k, 3, padding="same", W_std=1.2, b_std=0.2), nk.Relu()]),
                  "images"),  # fmt: skip
    "Conv valid strided": (_images(lambda k: [nk.Erf(), nk.Conv(k, 2, stride=(2, 1), padding="valid")]),
                           "images"),  # fmt: skip
    "Conv circular": (_images(lambda k: [nk.Relu(), nk.Conv(k, (2, 3), padding="circular", b_std=0.1), nk.Abs()]),
                      "images"),  # fmt: skip
    "Conv standard": (lambda k: nk.serial(nk.Conv(k, 3, padding="same", W_std=1.3, b_std=0.1,
                                                  parameterization="standard"),
                                          nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1, 1.0, 0.1, "standard")),
                      "images"),  # fmt: skip
    "Conv 1-D": (lambda k: nk.serial(nk.Conv(k, (3,), padding="same", W_std=1.3, b_std=0.1), nk.Relu(),
                                     nk.Conv(k, (2,), stride=2, padding="valid"), nk.Gelu(), nk.GlobalAvgPool(),
                                     nk.Dense(1)), "signals"),  # fmt: skip
    # One output pixel: the structured NTK takes its Gram form for this layer (few positions).
    "Conv to one pixel": (_images(lambda k: [nk.Relu(), nk.Conv(k, (5, 4), padding="valid", b_std=0.1), nk.Erf()]),
                          "images"),  # fmt: skip
    "AvgPool valid": (_images(lambda k: [nk.Relu(), nk.AvgPool(2)], readout=nk.Flatten()), "images"),
    "AvgPool same": (_images(lambda k: [nk.Relu(), nk.AvgPool((3, 2), stride=1, padding="same")],
                             readout=nk.Flatten()), "images"),  # fmt: skip
    "AvgPool circular": (_images(lambda k: [nk.Relu(), nk.AvgPool(2, stride=1, padding="circular")],
                                 readout=nk.Flatten()), "images"),  # fmt: skip
    "GlobalAvgPool": (_images(lambda k: [nk.Relu()]), "images"),
    # Pooling before a layer that uses the inputs' variances: they are then tracked over all
    # pixel pairs (ntklib.layers.base.layout_for).
    "AvgPool then Relu": (_images(lambda k: [nk.Relu(), nk.AvgPool(2, stride=1), nk.Conv(k, 2, W_std=1.2, b_std=0.1),
                                             nk.Relu()]), "images"),  # fmt: skip
    "GlobalAvgPool then Dense": (lambda k: nk.serial(nk.Conv(k, 3, padding="same", W_std=1.4, b_std=0.1), nk.Relu(),
                                                     nk.GlobalAvgPool(), nk.Dense(k, 1.3, 0.2), nk.Erf(),
                                                     nk.Dense(1, 1.1, 0.1)), "images"),  # fmt: skip
    "Flatten": (_images(lambda k: [nk.Relu()], readout=nk.Flatten()), "images"),
    "LayerNorm channels": (_images(lambda k: [nk.LayerNorm(), nk.Erf()]), "images"),
    "residual conv": (_images(lambda k: [nk.FanOut(2), nk.parallel(nk.serial(nk.Relu(), nk.Conv(k, 3, padding="same")),
                                                                   nk.Identity()), nk.FanInSum(), nk.Relu()]),
                      "images"),  # fmt: skip
    # Activations in a row compose (ntklib.layers.activations.compose). A residual block (README):
    # the branch's Relu acts on the first Relu's outputs, through a FanOut.
    "activations in a row: residual block": (lambda k: nk.serial(
        nk.Conv(k, (3, 3), stride=1, padding="same", W_std=2**0.5, b_std=0.1), nk.Relu(), nk.FanOut(2),
        nk.parallel(nk.serial(nk.Relu(), nk.Conv(k, (3, 3), padding="same")), nk.Identity()), nk.FanInSum(),
        nk.GlobalAvgPool(), nk.Dense(1, W_std=1.0, b_std=0.1)), "images"),  # fmt: skip
    "activations in a row: Relu, Erf": (_vectors(lambda k: [nk.Relu(), nk.Erf()]), "vectors"),  # polar quadrature
    "activations in a row: Erf, Relu": (_vectors(lambda k: [nk.Erf(), nk.Relu()]), "vectors"),
    "activations in a row: Gelu, Erf": (_vectors(lambda k: [nk.Gelu(), nk.Erf()]), "vectors"),  # Hermite series
    "activations in a row: three": (_vectors(lambda k: [nk.Erf(), nk.LeakyRelu(0.2), nk.Abs()]), "vectors"),
    # Two branches compose with the same recorded pre-activations (neither may overwrite them).
    "activations in a row: two branches": (_vectors(lambda k: [nk.Relu(), nk.FanOut(2), nk.parallel(
        nk.serial(nk.Erf(), nk.Dense(k, 1.1, 0.1)), nk.serial(nk.Abs(), nk.Dense(k, 0.9, 0.2))), nk.FanInSum()]),
        "vectors"),  # fmt: skip
    "activations in a row: conv": (_images(lambda k: [nk.Erf(), nk.Abs()]), "images"),
}


def inputs(kind: str, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shape = {"vectors": (n, 3), "images": (n, 2, 5, 4), "signals": (n, 2, 7)}[kind]
    return torch.randn(shape, generator=gen, dtype=F64)


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_rule_matches_monte_carlo_of_its_finite_network(name):
    """Means of 16 random networks of width k = 128 against the analytic kernels: within 5 standard
    errors plus the O(1/k) finite-width bias (allowed as 3 max|K| / k)."""
    factory, kind = CASES[name]
    width = 128
    X = inputs(kind, 3, seed=1)
    analytic = factory(width).kernels(X)
    mc = nk.monte_carlo_kernels(factory(width), X, n_samples=16, generator=torch.Generator().manual_seed(2))
    for get in ("nngp", "ntk"):
        exact, mean, se = getattr(analytic, get), getattr(mc, get), getattr(mc, f"{get}_stderr")
        allowed = 5 * se + 3 * exact.abs().max() / width
        assert bool(((mean - exact).abs() <= allowed).all()), (name, get, (mean - exact).abs() / se)


@pytest.mark.parametrize("name", sorted(CASES))
def test_structured_ntk_equals_jacobian(name):
    factory, kind = CASES[name]
    X, Z = inputs(kind, 4, seed=3), inputs(kind, 3, seed=4)
    model = factory(6).init(tuple(X.shape[1:]), generator=torch.Generator().manual_seed(5), dtype=F64)
    for B in (None, Z):
        structured = nk.empirical_ntk(model, X, B, method="structured")
        jacobian = nk.empirical_ntk(model, X, B, method="jacobian")
        torch.testing.assert_close(structured, jacobian, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------ dual maps


def _quadrature(fn, q_a, q_b, s, nodes=400):
    """E[f(u) g(v)] for (u, v) ~ N(0, [[q_a, s], [s, q_b]]) by a 2-D Gauss-Hermite product rule."""
    x, w = roots_hermitenorm(nodes)
    w = w / w.sum()
    rho = s / math.sqrt(q_a * q_b)
    u = math.sqrt(q_a) * x[:, None]
    v = math.sqrt(q_b) * (rho * x[:, None] + math.sqrt(1 - rho * rho) * x[None, :])
    return float((w[:, None] * w[None, :] * fn(u, v)).sum())


def _piecewise_linear_reference(a, b, q_a, q_b, s):
    """E[f(u) f(v)] and E[f'(u) f'(v)] for f(t) = b t (t > 0), a t (t < 0): the inner expectation
    over v given u in closed form (E[(c + d y)_+] = c Phi(c/d) + d phi(c/d)), the outer one by
    adaptive quadrature split at the kink."""
    rho = s / math.sqrt(q_a * q_b)
    d = math.sqrt(q_b * (1 - rho * rho))

    def inner(x, derivative):
        c = math.sqrt(q_b) * rho * x
        if d == 0:  # rho = 1: v is determined by u
            return (b if c > 0 else a) if derivative else (b * c if c > 0 else a * c)
        if derivative:
            return a + (b - a) * norm.cdf(c / d)
        return (b - a) * (c * norm.cdf(c / d) + d * norm.pdf(c / d)) + a * c

    def outer(x, derivative):
        t = math.sqrt(q_a) * x
        f = (b if t > 0 else a) if derivative else (b * t if t > 0 else a * t)
        return norm.pdf(x) * f * inner(x, derivative)

    return tuple(sum(quad(outer, lo, hi, args=(derivative,), epsabs=1e-13, epsrel=1e-12)[0] for lo, hi in
                     ((-40, 0), (0, 40))) for derivative in (False, True))  # fmt: skip


GELU = lambda t: t * norm.cdf(t)  # noqa: E731
GELU_PRIME = lambda t: norm.cdf(t) + t * norm.pdf(t)  # noqa: E731


@pytest.mark.parametrize("q_a, q_b, s", [(1.0, 1.0, 0.3), (0.5, 2.0, -0.8), (2.0, 3.0, 2.4), (1.5, 1.5, 1.5)])
@pytest.mark.parametrize("name", ["relu", "abrelu", "erf", "gelu", "tanh"])
def test_dual_maps_against_quadrature(name, q_a, q_b, s):
    """Closed forms (and the Hermite series of Elementwise) against numerical integration."""
    smooth = {
        "erf": (erf_dual, erf, lambda t: 2 / math.sqrt(math.pi) * np.exp(-t * t)),
        "gelu": (gelu_dual, GELU, GELU_PRIME),
        "tanh": (nk.Elementwise(torch.tanh).dual, np.tanh, lambda t: 1 / np.cosh(t) ** 2),
    }
    t = lambda v: torch.tensor([[v]], dtype=F64)  # noqa: E731
    if name in smooth:
        dual, fn, derivative = smooth[name]
        expected = (_quadrature(lambda u, v: fn(u) * fn(v), q_a, q_b, s),
                    _quadrature(lambda u, v: derivative(u) * derivative(v), q_a, q_b, s))  # fmt: skip
    else:
        a, b = (0.0, 1.0) if name == "relu" else (-0.5, 1.5)
        dual = ABReluDual(a, b)
        expected = _piecewise_linear_reference(a, b, q_a, q_b, s)
    nngp, dot = dual(t(q_a), t(q_b), t(s))
    # Closed forms to quadrature accuracy; the Hermite series to its documented 1e-8 (relative
    # to E[phi^2] <= 1 here).
    tol = 1e-8 if name == "tanh" else 1e-9
    assert float(nngp) == pytest.approx(expected[0], abs=tol, rel=tol)
    assert float(dot) == pytest.approx(expected[1], abs=tol, rel=tol)


def test_hermite_series_of_sin_matches_its_closed_form():
    """E[sin u sin v] = e^{-(q_a + q_b)/2} sinh(s) and E[cos u cos v] = e^{-(q_a + q_b)/2} cosh(s)."""
    q_a = torch.tensor([[0.3], [1.0], [4.0], [9.0]], dtype=F64)
    q_b = torch.tensor([[0.5, 2.0, 6.0]], dtype=F64)
    s = 0.7 * (q_a * q_b).sqrt() * torch.tensor([[1.0, -0.4, 0.9]], dtype=F64)
    nngp, dot = nk.Elementwise(torch.sin).dual(q_a, q_b, s.clone())
    damping = torch.exp(-(q_a + q_b) / 2)
    torch.testing.assert_close(nngp, damping * torch.sinh(s), rtol=0, atol=1e-10)
    torch.testing.assert_close(dot, damping * torch.cosh(s), rtol=0, atol=1e-10)


def test_hermite_series_refuses_a_variance_it_cannot_resolve():
    with pytest.raises(ValueError, match=r"Elementwise\(tanh\): the Hermite series of .* up to degree 64"):
        nk.Elementwise(torch.tanh, max_degree=64).dual(*(torch.tensor([[40.0]], dtype=F64),) * 2,
                                                       torch.tensor([[10.0]], dtype=F64))  # fmt: skip


# -------------------------------------------------------------------------- composition laws


def test_serial_is_associative_through_nesting():
    """Nested serial objects (not flattened) give the same kernels as one flat serial; the
    pooling inside the inner one must still switch on pixel pairs for the outer."""
    from ntklib.layers.base import Serial

    a = nk.Conv(3, 3, padding="same", W_std=1.3, b_std=0.1)
    b, c, d = nk.Relu(), nk.AvgPool(2, stride=1), nk.Flatten()
    X = inputs("images", 4, seed=6)
    flat = nk.serial(a, b, c, d, nk.Dense(1))
    left = Serial((Serial((a, Serial((b, c)))), d, nk.Dense(1)))
    right = Serial((a, Serial((b, Serial((c, d)), nk.Dense(1)))))
    for nested in (left, right):
        K, K_flat = nested.kernels(X), flat.kernels(X)
        assert torch.equal(K.nngp, K_flat.nngp) and torch.equal(K.ntk, K_flat.ntk)


def test_residual_with_a_zero_variance_branch_is_the_identity():
    conv = nk.Conv(3, 3, padding="same", W_std=1.3, b_std=0.2)
    off = nk.serial(nk.Relu(), nk.Conv(3, 3, padding="same", W_std=0.0, b_std=0.0))
    head = [nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1)]
    X = inputs("images", 4, seed=7)
    with_block = nk.serial(conv, nk.FanOut(2), nk.parallel(off, nk.Identity()), nk.FanInSum(), *head).kernels(X)
    without = nk.serial(conv, *head).kernels(X)
    torch.testing.assert_close(with_block.nngp, without.nngp, rtol=1e-14, atol=0)
    torch.testing.assert_close(with_block.ntk, without.ntk, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", ["residual conv", "Flatten", "Relu", "Conv valid strided", "AvgPool valid",
                                  "activations in a row: residual block", "activations in a row: two branches"])
def test_symmetric_kernels_are_exactly_symmetric_and_blocks_do_not_matter(name):
    """One block against blocks of 3 and 2 inputs (whose tensors the driver's pool recycles from
    block to block, edge blocks of other shapes included), and K(X, Z) against K(Z, X)^T."""
    factory, kind = CASES[name]
    net = factory(1)
    X = inputs(kind, 7, seed=8)
    whole = net.kernels(X, block_size=7)
    blocked = net.kernels(X, block_size=3)
    for K, B in zip(whole, blocked):
        assert torch.equal(K, K.T) and torch.equal(B, B.T)
        torch.testing.assert_close(K, B, rtol=1e-14, atol=1e-15)
    Z = inputs(kind, 5, seed=9)
    torch.testing.assert_close(net.kernels(X, Z, block_size=2).ntk, net.kernels(Z, X).ntk.T, rtol=1e-14, atol=1e-15)


def test_per_pixel_variances_give_the_kernels_of_pixel_pair_variances():
    """With pooling only at the end, the driver tracks the inputs' variances per pixel (cheap);
    tracking them over all pixel pairs, as pooling before an activation needs, is the other path."""
    from ntklib.layers.state import Layout

    net = CASES["residual conv"][0](1)
    X, Z = inputs("images", 4, seed=11), inputs("images", 3, seed=12)
    cheap = net.kernel_of_inputs(X, Z, False, Layout(True, False))
    pairs = net.kernel_of_inputs(X, Z, False, Layout(True, True))
    assert cheap.cov1 is None and not cheap.variances_known  # not needed after the final pooling
    assert pairs.cov1.shape == (4,) and pairs.variances_known
    torch.testing.assert_close(cheap.nngp, pairs.nngp, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(cheap.ntk, pairs.ntk, rtol=1e-14, atol=1e-15)


def test_fan_in_sum_of_correlated_branches_raises_where_it_would_be_wrong():
    """Two identity branches sum to 2h, with covariance 4 Sigma, not the 2 Sigma of the branch sum."""
    X = inputs("vectors", 3, seed=10)
    twice = nk.serial(nk.Dense(8), nk.FanOut(2), nk.parallel(nk.Identity(), nk.Identity()), nk.FanInSum(), nk.Dense(1))
    with pytest.raises(ValueError, match=r"FanInSum: branches \[0, 1\] do not end in weights of their own"):
        twice.kernels(X)
    # A Monte Carlo check that 2 Sigma would indeed be wrong: the finite network doubles h.
    model = twice.init(3, dtype=F64)
    with torch.no_grad():
        h = model.body[0](X)
        assert torch.equal(model.body[:4](X), 2 * h)


# ------------------------------------------------------------------------- activations in a row


def _relu_then_residual(k, inner_relu=True):
    branch = nk.Conv(k, (3, 3), padding="same")
    return nk.serial(nk.Conv(k, (3, 3), stride=1, padding="same", W_std=2**0.5, b_std=0.1), nk.Relu(), nk.FanOut(2),
                     nk.parallel(nk.serial(nk.Relu(), branch) if inner_relu else branch, nk.Identity()),
                     nk.FanInSum(), nk.GlobalAvgPool(), nk.Dense(1, W_std=1.0, b_std=0.1))  # fmt: skip


def test_relu_after_relu_residual_has_the_kernels_of_the_network_without_its_second_relu():
    """Relu(Relu(h)) = Relu(h): the branch's Relu changes nothing, so the kernels are those of the
    same network without it (an independent path: no composition there)."""
    X, Z = inputs("images", 4, seed=20), inputs("images", 3, seed=21)
    for B in (None, Z):
        with_it, without = _relu_then_residual(8).kernels(X, B), _relu_then_residual(8, inner_relu=False).kernels(X, B)
        for get in ("nngp", "ntk"):
            torch.testing.assert_close(getattr(with_it, get), getattr(without, get), rtol=0, atol=1e-12)


@pytest.mark.parametrize("first, second, same_as", [(nk.Relu, nk.Abs, nk.Relu), (nk.Abs, nk.Relu, nk.Abs),
                                                    (nk.Relu, nk.Relu, nk.Relu),
                                                    (nk.Relu, nk.layers.Linear, nk.Relu)])  # fmt: skip
def test_relu_family_activations_in_a_row_are_one_relu_family_activation(first, second, same_as):
    """Abs after Relu is Relu, Relu after Abs is Abs: the kernels of the two in a row equal those of one."""
    X, Z = inputs("vectors", 5, seed=22), inputs("vectors", 4, seed=23)
    two = nk.serial(nk.Dense(6, 1.3, 0.2), first(), second(), nk.Dense(1, 0.9, 0.1))
    one = nk.serial(nk.Dense(6, 1.3, 0.2), same_as(), nk.Dense(1, 0.9, 0.1))
    for B in (None, Z):
        for a, b in zip(two.kernels(X, B), one.kernels(X, B)):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


@pytest.mark.parametrize("inner", [(0.0, 1.0), (-1.0, 1.0), (0.3, -2.0), (-0.5, 1.5), (2.0, 0.0), (-1.0, -0.5)])
@pytest.mark.parametrize("outer", [(0.0, 1.0), (-1.0, 1.0), (0.3, -2.0), (1.5, 1.5)])
def test_relu_family_composite_is_the_function_composed(inner, outer):
    """The closed-form slopes of compose against outer(inner(u)) evaluated, and its kernels against the
    polar quadrature of the same function (a second method)."""
    from ntklib.layers.activations import compose
    from ntklib.layers.quadrature import PolarDual

    first, second = nk.ABRelu(*inner), nk.ABRelu(*outer)
    both = compose(first, second)
    u = torch.linspace(-3, 3, 61, dtype=F64)
    torch.testing.assert_close(both.fn(u), second.fn(first.fn(u)), rtol=0, atol=1e-15)
    q_a = torch.tensor([[0.7], [2.0]], dtype=F64)
    q_b = torch.tensor([[1.3, 0.4, 2.0]], dtype=F64)
    s = (q_a * q_b).sqrt() * torch.tensor([[0.3, -0.9, 1.0]], dtype=F64)
    polar = PolarDual(lambda h: second.fn(first.fn(h)), lambda h: second.derivative(first.fn(h)) * first.derivative(h),
                      1e-10, "test")  # fmt: skip
    for closed, quadrature in zip(both.dual(q_a, q_b, s.clone()), polar(q_a, q_b, s.clone())):
        torch.testing.assert_close(closed, quadrature, rtol=1e-12, atol=1e-12)


@functools.cache
def _erf_positive_part(q_a, q_b, s):
    """E[f(u) f(v)] and E[f'(u) f'(v)] for f(t) = erf(t) (t > 0), 0 (t <= 0)."""
    return (_positive_part_reference(erf, q_a, q_b, s),
            _positive_part_reference(lambda t: 2 / math.sqrt(math.pi) * math.exp(-t * t), q_a, q_b, s))  # fmt: skip


def _positive_part_reference(g, q_a, q_b, s):
    """E[f(u) f(v)] for f(t) = g(t) (t > 0), 0 (t <= 0): nested adaptive quadrature over the quadrant u, v > 0,
    the inner integral over v given u starting at its kink v = 0."""
    rho = s / math.sqrt(q_a * q_b)
    sd = math.sqrt(max(q_b * (1 - rho * rho), 0.0))

    def given(x):  # E[f(v) | u = sqrt(q_a) x]
        mean = math.sqrt(q_b) * rho * x
        if sd == 0:
            return g(mean) if mean > 0 else 0.0
        if -mean / sd >= 12:
            return 0.0
        return quad(lambda y: norm.pdf(y) * g(mean + sd * y), -mean / sd, 12, epsabs=1e-13, epsrel=1e-11, limit=200)[0]

    # (the normal density is below 1e-31 beyond 12)
    return quad(lambda x: norm.pdf(x) * g(math.sqrt(q_a) * x) * given(x), 0, 12, epsabs=1e-13, epsrel=1e-11,
                limit=200)[0]  # fmt: skip


@pytest.mark.parametrize("q_a, q_b, s", [(1.0, 1.0, 0.3), (0.5, 2.0, -0.8), (2.0, 3.0, 2.4), (1.5, 1.5, 1.5),
                                         (9.0, 16.0, 11.9)])  # fmt: skip
@pytest.mark.parametrize("order", ["Erf after Relu", "Relu after Erf"])
def test_composite_dual_maps_against_quadrature(order, q_a, q_b, s):
    """erf(relu(u)) = relu(erf(u)) = erf(u) for u > 0, 0 otherwise: both composites (each with its own chain
    rule for f') against a nested adaptive quadrature over the quadrant where f is not 0."""
    from ntklib.layers.activations import compose
    from ntklib.layers.quadrature import PolarDual

    parts = (nk.Relu(), nk.Erf()) if order == "Erf after Relu" else (nk.Erf(), nk.Relu())
    dual = compose(*parts).dual
    assert isinstance(dual, PolarDual)
    expected = _erf_positive_part(q_a, q_b, s)
    t = lambda v: torch.tensor([[v]], dtype=F64)  # noqa: E731
    for got, want in zip(dual(t(q_a), t(q_b), t(s)), expected):
        assert float(got) == pytest.approx(want, abs=1e-9, rel=1e-9)


@pytest.mark.parametrize("q_a, q_b, s", [(1.0, 1.0, 0.3), (0.5, 2.0, -0.8), (2.0, 3.0, 2.4), (1.5, 1.5, 1.5)])
def test_smooth_composite_uses_the_hermite_series(q_a, q_b, s):
    """Erf after Gelu: the Hermite series of f = erf(gelu(u)) against the 2-D quadrature (smooth integrands)."""
    from ntklib.layers.activations import compose
    from ntklib.layers.quadrature import HermiteDual

    dual = compose(nk.Gelu(), nk.Erf()).dual
    assert isinstance(dual, HermiteDual)
    f = lambda t: erf(GELU(t))  # noqa: E731
    f_prime = lambda t: 2 / math.sqrt(math.pi) * np.exp(-GELU(t) ** 2) * GELU_PRIME(t)  # noqa: E731
    expected = (_quadrature(lambda u, v: f(u) * f(v), q_a, q_b, s),
                _quadrature(lambda u, v: f_prime(u) * f_prime(v), q_a, q_b, s))  # fmt: skip
    t = lambda v: torch.tensor([[v]], dtype=F64)  # noqa: E731
    for got, want in zip(dual(t(q_a), t(q_b), t(s)), expected):
        assert float(got) == pytest.approx(want, abs=1e-8, rel=1e-8)


def test_activations_in_a_row_through_nesting_identity_and_branches():
    """Where the two activations meet across a nested serial, an Identity or two parallels in a row, the
    kernels are those of the one activation they compose to."""
    from ntklib.layers.base import Serial

    d, out = nk.Dense(5, 1.3, 0.2), nk.Dense(1, 0.9, 0.1)
    X = inputs("vectors", 4, seed=24)
    relu_once = nk.serial(d, nk.Relu(), out).kernels(X)
    for net in (Serial((Serial((d, nk.Relu())), Serial((nk.Relu(), out)))),
                nk.serial(d, nk.Relu(), nk.Identity(), nk.Abs(), out)):  # fmt: skip
        for a, b in zip(net.kernels(X), relu_once):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    branches = nk.parallel(nk.Dense(5, 1.1, 0.1), nk.Dense(5, 0.8))
    rows = nk.serial(d, nk.Relu(), nk.FanOut(2), nk.parallel(nk.Relu(), nk.Abs()), nk.parallel(nk.Abs(), nk.Relu()),
                     branches, nk.FanInSum(), out)  # fmt: skip
    once = nk.serial(d, nk.Relu(), nk.FanOut(2), branches, nk.FanInSum(), out)
    for a, b in zip(rows.kernels(X), once.kernels(X)):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    # Two branches compose with one record: neither may spoil it for the other, in either order.
    erf_branch, abs_branch = nk.serial(nk.Erf(), nk.Dense(5, 1.1, 0.1)), nk.serial(nk.Abs(), nk.Dense(5, 0.8))
    for pair, reference in (((erf_branch, abs_branch), (erf_branch, nk.Dense(5, 0.8))),
                            ((abs_branch, erf_branch), (nk.Dense(5, 0.8), erf_branch))):  # fmt: skip
        composed, expected = (nk.serial(d, nk.Relu(), nk.FanOut(2), nk.parallel(*branches), nk.FanInSum(), out)
                              for branches in (pair, reference))  # fmt: skip
        for a, b in zip(composed.kernels(X), expected.kernels(X)):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_the_pre_activations_are_copied_only_where_an_activation_may_follow(monkeypatch):
    """The record costs a copy of the pre-activation kernels: none in a plain MLP (also through the MLP
    helpers), one per activation that precedes an activation or a FanOut."""
    from ntklib.layers.state import KernelState

    copies = []
    snapshot = KernelState.snapshot
    monkeypatch.setattr(KernelState, "snapshot", lambda self: copies.append(1) or snapshot(self))
    X = inputs("vectors", 4, seed=25)
    nk.serial(nk.Dense(4), nk.Relu(), nk.Dense(4), nk.Erf(), nk.Dense(1)).kernels(X)
    nk.infinite_width_kernels(X, depth=3)
    nk.infinite_width_kernels_by_depth(X, max_depth=3)
    assert not copies
    nk.serial(nk.Dense(4), nk.Relu(), nk.Abs(), nk.Erf(), nk.Dense(1)).kernels(X)
    assert len(copies) == 1  # the first Relu; the composites reuse its record
    _relu_then_residual(2).kernels(inputs("images", 2, seed=26))
    assert len(copies) == 2  # the Relu before the FanOut


# ---------------------------------------------------------------------------------- errors


BAD = [
    (lambda: nk.serial(nk.Conv(4, 3), nk.Dense(1)), (2, 5, 5),
     r"Dense\(1, .*\) expects vectors but receives inputs of shape \(4, 3, 3\).*Flatten\(\) or GlobalAvgPool\(\)"),
    (lambda: nk.serial(nk.Conv(4, 7), nk.Flatten(), nk.Dense(1)), (2, 5, 5),
     r"Conv\(4, \(7, 7\).*the filter \(7, 7\) is larger than the input's pixels \(5, 5\).*padding='valid'"),
    (lambda: nk.serial(nk.Conv(4, 3, padding="same"), nk.Relu(), nk.AvgPool(6), nk.Flatten(), nk.Dense(1)),
     (2, 5, 5), r"AvgPool\(\(6, 6\).*the window \(6, 6\) is larger than the input's pixels \(5, 5\)"),
    (lambda: nk.serial(nk.Dense(1), nk.LayerNorm(), nk.Dense(1)), (3,),
     r"LayerNorm\(eps=1e-12\) normalises over 1 feature\(s\) of inputs of shape \(1,\)"),
    (lambda: nk.serial(nk.Dense(4), nk.FanOut(2), nk.parallel(nk.Dense(3), nk.Dense(4)), nk.FanInSum()), (3,),
     r"FanInSum: the branches have different shapes \[\(3,\), \(4,\)\]"),
    (lambda: nk.serial(nk.Conv(4, 3), nk.Flatten(), nk.Dense(1)), (5,),
     r"Conv\(4, \(3, 3\).* expects \(C, H, W\) images but receives inputs of shape \(5,\)"),
    # An activation after a sum with a non-Gaussian skip, or after pooling an activation's outputs:
    # its inputs are no elementwise function of one Gaussian.
    (lambda: nk.serial(nk.Dense(4), nk.Relu(), nk.FanOut(2), nk.parallel(nk.Dense(4), nk.Identity()), nk.FanInSum(),
                       nk.Relu(), nk.Dense(1)), (3,),
     r"Relu\(\) needs Gaussian pre-activations.*put a Dense or Conv layer before it, or an activation directly"),
    (lambda: nk.serial(nk.Conv(4, 3, padding="same"), nk.Relu(), nk.AvgPool(2), nk.Erf(), nk.Flatten(), nk.Dense(1)),
     (2, 5, 5), r"Erf\(\) needs Gaussian pre-activations"),
    (lambda: nk.serial(nk.Conv(4, 3), nk.Relu()), (2, 5, 5),
     r"the network's output has shape \(4, 3, 3\) per input.*end it with Flatten\(\) or GlobalAvgPool\(\)"),
    (lambda: nk.serial(nk.Dense(4), nk.FanOut(2), nk.Dense(1)), (3,),
     r"Dense\(1, .*\) receives 2 branches: combine them with FanInSum\(\) first"),
]  # fmt: skip


@pytest.mark.parametrize("make, in_shape, message", BAD)
def test_bad_networks_raise_naming_the_layer_and_the_shapes(make, in_shape, message):
    X = torch.ones((2, *in_shape), dtype=F64)
    with pytest.raises(ValueError, match=message):
        make().kernels(X)
    if "per input" not in message and "Gaussian" not in message:
        with pytest.raises(ValueError, match=message):
            make().init(in_shape)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: nk.Conv(4, 3, stride=0), ValueError, r"stride must be >= 1; got 0"),
        (lambda: nk.Conv(4, 0), ValueError, r"filter_shape must be >= 1; got 0"),
        (lambda: nk.AvgPool(0), ValueError, r"window must be >= 1; got 0"),
        (lambda: nk.Conv(4, 3, padding="SAME"), ValueError, r"unknown padding 'SAME'; expected one of: 'valid', 'same', 'circular'"),
        (lambda: nk.AvgPool(2, padding="full"), ValueError, r"unknown padding 'full'"),
        (lambda: nk.Dense(4, parameterization="ntp"), ValueError, r"unknown parameterization 'ntp'; expected one of: ntk, standard, mup"),
        (lambda: nk.Dense(4, W_std=-1.0), ValueError, r"W_std must be >= 0; got -1.0"),
        (lambda: nk.serial(nk.Dense(4), "relu"), TypeError, r"serial: argument 1 is not an ntklib layer: 'relu'"),
    ],
)  # fmt: skip
def test_bad_layer_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_inputs_that_do_not_fit_the_network():
    net = nk.serial(nk.Conv(4, 3, padding="same"), nk.GlobalAvgPool(), nk.Dense(1))
    X = torch.ones(2, 2, 5, 5, dtype=F64)
    with pytest.raises(ValueError, match=r"X and Z must have the same per-input shape; got X \(2, 2, 5, 5\) and Z \(3, 2, 5, 4\)"):
        net.kernels(X, torch.ones(3, 2, 5, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"X contains 1 NaN"):
        net.kernels(X.clone().index_put_((torch.tensor([0]),) * 4, torch.tensor(float("nan"), dtype=F64)))
    model = net.init((2, 5, 5), dtype=F64)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2, 5, 5\) for this network; got \(2, 2, 5, 4\)"):
        model(torch.ones(2, 2, 5, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"method='structured' cannot handle this model: module '0' \(BatchNorm1d\)"):
        nk.empirical_ntk(torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 1)).double(),
                         torch.ones(4, 3, dtype=F64), method="structured")  # fmt: skip
    with pytest.raises(ValueError, match=r"each layer called once per forward pass"):
        linear = torch.nn.Linear(3, 3).double()
        nk.empirical_ntk(torch.nn.Sequential(linear, torch.nn.Tanh(), linear), torch.ones(4, 3, dtype=F64),
                         method="structured")  # fmt: skip


# -------------------------------------------------------------------------------------- lift


def test_lift_gives_the_kernels_of_the_torch_model():
    """A torch Sequential re-initialised with Gaussian weights N(0, W_std^2 / fan_in), biases
    N(0, b_std^2): the mean empirical NTK of 24 draws at width 256 matches lift(model).kernels."""
    width = 256
    model = torch.nn.Sequential(torch.nn.Conv2d(2, width, 3, padding=1), torch.nn.Tanh(),
                                torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(width * 2 * 2, 1)).double()  # fmt: skip
    X = inputs("images", 3, seed=11)[:, :, :4, :4]
    kernels = nk.lift(model, W_std=1.5, b_std=0.2).kernels(X)
    gen = torch.Generator().manual_seed(12)
    draws = []
    for _ in range(24):
        for layer in (model[0], model[4]):
            fan_in = layer.weight[0].numel()
            layer.weight.data = torch.randn(layer.weight.shape, generator=gen, dtype=F64) * 1.5 / math.sqrt(fan_in)
            layer.bias.data = torch.randn(layer.bias.shape, generator=gen, dtype=F64) * 0.2
        draws.append(nk.empirical_ntk(model, X))
    draws = torch.stack(draws)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert bool(((mean - kernels.ntk).abs() <= 5 * se + 3 * kernels.ntk.abs().max() / width).all())


def test_lift_names_what_it_cannot_translate():
    with pytest.raises(ValueError, match=r"lift cannot translate 1 \(Dropout\)"):
        nk.lift(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(), torch.nn.Linear(4, 1)))
    with pytest.raises(ValueError, match=r"lift: 0 \(LayerNorm\) has trainable scale and shift"):
        nk.lift(torch.nn.Sequential(torch.nn.LayerNorm(3)))
    with pytest.raises(ValueError, match=r"lift: 0 \(Conv2d\) has padding \(2, 2\) with kernel \(3, 3\)"):
        nk.lift(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=2)))
