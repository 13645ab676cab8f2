"""Kernels against brute-force definitions and explicit feature maps."""

import math

import pytest
import torch

import ntklib as nk
from conftest import randn


def brute_force(kernel_of_pair, X, Z):
    return torch.tensor([[kernel_of_pair(x, z) for z in Z.cpu()] for x in X.cpu()], dtype=X.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernels_keep_device_dtype_and_shape(device, rng, dtype):
    X = randn(5, 3, generator=rng, device=device, dtype=dtype)
    Z = randn(4, 3, generator=rng, device=device, dtype=dtype)
    for kernel in (nk.linear_kernel, nk.polynomial_kernel, nk.gaussian_kernel):
        K = kernel(X, Z)
        assert K.shape == (5, 4) and K.dtype == dtype and K.device.type == device.type
        assert kernel(X).shape == (5, 5)


def test_linear_and_polynomial_match_their_definitions(device, rng):
    X = randn(6, 3, generator=rng, device=device)
    Z = randn(4, 3, generator=rng, device=device)
    expected_linear = brute_force(lambda x, z: float(sum(a * b for a, b in zip(x, z))), X, Z)
    torch.testing.assert_close(nk.linear_kernel(X, Z).cpu(), expected_linear, rtol=1e-12, atol=1e-12)
    expected_poly = brute_force(lambda x, z: (float(x @ z) + 0.7) ** 3, X, Z)
    torch.testing.assert_close(nk.polynomial_kernel(X, Z, degree=3, c=0.7).cpu(), expected_poly, rtol=1e-12, atol=1e-12)


def test_gaussian_matches_definition_and_is_one_on_the_diagonal(device, rng):
    X = randn(6, 3, generator=rng, device=device)
    Z = randn(5, 3, generator=rng, device=device)
    sigma = 1.3
    expected = brute_force(lambda x, z: math.exp(-float(((x - z) ** 2).sum()) / (2 * sigma**2)), X, Z)
    torch.testing.assert_close(nk.gaussian_kernel(X, Z, sigma=sigma).cpu(), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(nk.gaussian_kernel(X).diagonal().cpu(), torch.ones(6, dtype=torch.float64))


def test_gaussian_has_no_negative_distances_for_duplicate_points(rng):
    X = randn(1, 50, generator=rng, device="cpu", dtype=torch.float32).repeat(4, 1) * 100
    assert (nk.squared_distances(X) >= 0).all()
    assert (nk.gaussian_kernel(X, sigma=10.0) <= 1).all()


def test_polynomial_degree_zero_is_constant_one(rng):
    X = randn(3, 2, generator=rng, device="cpu")
    torch.testing.assert_close(nk.polynomial_kernel(X, degree=0), torch.ones(3, 3, dtype=torch.float64))


def test_squared_distances_have_an_exact_zero_diagonal(rng):
    X = randn(30, 7, generator=rng, device="cpu") * 1e3
    assert torch.equal(nk.squared_distances(X).diagonal(), torch.zeros(30, dtype=torch.float64))
