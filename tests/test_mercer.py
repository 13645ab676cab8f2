"""mercer_check passes valid kernels and fails functions that are not kernels."""

import pytest
import torch

import ntklib as nk
from conftest import randn


def test_valid_kernels_and_their_combinations_pass(device, rng):
    X = randn(40, 3, generator=rng, device=device)
    K1, K2 = nk.gaussian_kernel(X, sigma=0.7), nk.polynomial_kernel(X, degree=3)
    for K in (nk.linear_kernel(X), K1, K2, K1 + K2, K1 * K2, 3.0 * K1):
        report = nk.mercer_check(K)
        assert report.is_psd and report.symmetric, report


def test_non_kernels_fail(rng):
    X = randn(30, 2, generator=rng, device="cpu")
    minus_distance = -nk.squared_distances(X).sqrt()
    report = nk.mercer_check(minus_distance)
    # trace 0 with nonzero entries: some eigenvalue must be negative.
    assert report.symmetric and not report.is_psd and report.min_eigenvalue < -0.1
    sigmoid = torch.tanh(1.0 * nk.linear_kernel(X) - 1.0)
    assert not nk.mercer_check(sigmoid).is_psd
    non_symmetric = nk.linear_kernel(X) + X[:, :1]  # k(x, z) = x.z + x_1
    report = nk.mercer_check(non_symmetric)
    assert not report.symmetric and not report.is_psd


def test_report_fields_against_closed_form():
    K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)  # eigenvalues 1 and 3
    report = nk.mercer_check(K)
    assert report.min_eigenvalue == pytest.approx(1.0) and report.max_eigenvalue == pytest.approx(3.0)
    assert "PSD" in str(report)
    assert not nk.mercer_check(torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)).is_psd


def test_tolerance_decides_borderline_cases():
    K = torch.tensor([[1.0, 0.0], [0.0, -1e-9]], dtype=torch.float64)
    assert not nk.mercer_check(K).is_psd
    assert nk.mercer_check(K, tol=1e-6).is_psd
    with pytest.raises(ValueError, match="tol must be >= 0"):
        nk.mercer_check(K, tol=-1.0)


def test_numerical_rank_of_a_low_rank_kernel(rng):
    X = randn(25, 3, generator=rng, device="cpu")
    report = nk.mercer_check(nk.polynomial_kernel(X, degree=2))  # C(3 + 2, 2) = 10 features
    assert report.numerical_rank == 10 and report.eigenvalues.shape == (25,)
