"""Explicit feature maps against their kernels."""

import math

import pytest
import torch

import ntklib as nk
from conftest import randn


@pytest.mark.parametrize("d,degree,c", [(1, 0, 1.0), (1, 4, 2.0), (2, 2, 1.0), (3, 3, 0.5), (4, 2, 0.0), (5, 4, 1.0)])
def test_polynomial_features_reproduce_the_kernel(device, rng, d, degree, c):
    X = randn(7, d, generator=rng, device=device)
    Z = randn(3, d, generator=rng, device=device)
    Phi_X = nk.polynomial_features(X, degree, c=c)
    Phi_Z = nk.polynomial_features(Z, degree, c=c)
    assert Phi_X.shape == (7, math.comb(d + degree, degree)) == (7, nk.polynomial_feature_count(d, degree))
    assert Phi_X.device.type == device.type and Phi_X.dtype == torch.float64
    torch.testing.assert_close(Phi_X @ Phi_Z.T, nk.polynomial_kernel(X, Z, degree=degree, c=c), rtol=1e-12, atol=1e-12)


def test_polynomial_features_textbook_map_in_two_dimensions():
    x = torch.tensor([[2.0, 3.0]], dtype=torch.float64)
    r2 = math.sqrt(2)
    expected = torch.tensor([[1, r2 * 2, r2 * 3, 4, r2 * 6, 9]], dtype=torch.float64)
    torch.testing.assert_close(nk.polynomial_features(x, 2, c=1.0), expected)


def test_monomial_exponents_are_distinct_and_complete():
    exponents = nk.monomial_exponents(3, 4)
    assert len(set(exponents)) == len(exponents) == math.comb(7, 4)
    assert all(sum(a) <= 4 and len(a) == 3 for a in exponents)


def test_random_fourier_features_converge_to_the_gaussian_kernel(device):
    """Monte Carlo: each entry of Phi Phi^T averages D terms with variance <= 2 (|2cos cos| <= 2),
    so with D = 40,000 the error of an entry is below 6 sigma = 6 sqrt(2/D) ~ 0.042 with
    overwhelming probability; the mean error shrinks like D^-1/2 (checked by the 16x ratio)."""
    gen = torch.Generator(device=device.type).manual_seed(1)
    X = torch.randn(12, 3, dtype=torch.float64, generator=gen, device=device)
    K = nk.gaussian_kernel(X, sigma=1.5)
    errors = {}
    for D in (2_500, 40_000):
        Phi = nk.random_fourier_features(X, D, sigma=1.5, generator=gen)
        assert Phi.shape == (12, D) and Phi.device.type == device.type
        errors[D] = (Phi @ Phi.T - K).abs()
    assert errors[40_000].max() < 6 * math.sqrt(2 / 40_000)
    assert errors[40_000].mean() < errors[2_500].mean()


def test_random_fourier_features_share_a_draw_when_seeded_alike():
    X = torch.randn(4, 2, dtype=torch.float64)
    a = nk.random_fourier_features(X, 10, generator=torch.Generator().manual_seed(3))
    b = nk.random_fourier_features(X, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs cuda")
def test_random_fourier_features_same_draw_on_every_device():
    X = torch.randn(4, 2, dtype=torch.float64)
    cpu = nk.random_fourier_features(X, 10, generator=torch.Generator().manual_seed(3))
    gpu = nk.random_fourier_features(X.cuda(), 10, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(gpu.cpu(), cpu)
