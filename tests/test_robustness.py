"""Extreme but finite inputs: every kernel is finite and right, or raises naming the rows; never a
silent NaN (issue: a float32 row of norm ~1e15 used to turn the whole NNGP/NTK into NaN)."""

from __future__ import annotations

import pytest
import torch

import ntklib as nk

ACTIVATIONS = ["relu", "abs", "leaky_relu", "erf", "gelu"]


def rows(dtype, seed=0):
    X = torch.randn(6, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    X[1] = 0.0  # a zero row
    X[4] = X[3]  # a duplicate
    return X.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_zero_and_duplicate_rows(activation, dtype):
    K = nk.infinite_width_kernels(rows(dtype), depth=3, activation=activation, W_std=1.3, b_std=0.2)
    for M in K:
        assert bool(torch.isfinite(M).all())
        torch.testing.assert_close(M[3], M[4], rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-7)
    if activation in ("relu", "abs", "leaky_relu"):  # b_std = 0: a zero input stays exactly 0
        K0 = nk.infinite_width_kernels(rows(dtype), depth=3, activation=activation, b_std=0.0)
        assert bool((K0.nngp[1] == 0).all()) and bool((K0.ntk[1] == 0).all())


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e15), (torch.float32, 1e-15), (torch.float64, 1e150)])
@pytest.mark.parametrize("activation", ["relu", "abs", "leaky_relu"])
def test_huge_and_tiny_rows_by_homogeneity(activation, dtype, scale):
    """Without biases the piecewise-linear kernels are homogeneous: K(s x, z) = s K(x, z). A row
    scaled by 1e15 in float32 (its variance ~1e30, products ~1e60 past float32's 3e38) gives the
    unscaled kernel times s, to float32 accuracy."""
    X = rows(dtype, seed=1)
    scaled = X.clone()
    scaled[2] *= scale
    for depth in (1, 4):
        K = nk.infinite_width_kernels(scaled, depth=depth, activation=activation)
        base = nk.infinite_width_kernels(X, depth=depth, activation=activation)
        for M, B in zip(K, base):
            assert bool(torch.isfinite(M).all())
            expected = B.clone()
            expected[2] *= scale
            expected[:, 2] *= scale
            expected[2, 2] /= scale  # the diagonal entry scales by s^2: once for each side
            expected[2, 2] *= scale
            # Past the overflow threshold the norms are sqrt(q_a) sqrt(q_b), not sqrt(q_a q_b): a
            # row's correlation with itself is 1 only to rounding, and the arc-cosine's infinite
            # slope at 1 turns that into ~1e-8 of the NTK's diagonal entry.
            tol = 1e-4 if dtype == torch.float32 else 1e-7
            torch.testing.assert_close(M.double(), expected.double(), rtol=tol, atol=tol * float(B.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_images_with_extreme_pixels(dtype):
    net = nk.serial(nk.Conv(4, 3, padding="same", W_std=1.4), nk.Relu(), nk.Conv(4, 3, padding="same"), nk.Relu(),
                    nk.GlobalAvgPool(), nk.Dense(1))  # fmt: skip
    X = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    X[1] = 0.0
    X[2] *= 1e15
    K = net.kernels(X)
    assert all(bool(torch.isfinite(M).all()) for M in K)
    assert float(K.nngp[1].abs().max()) == 0.0  # no biases: the blank image has a zero kernel row


def test_overflow_raises_naming_the_rows():
    X = rows(torch.float32)
    X[5] *= 1e25  # |x|^2 ~ 1e50 overflows float32 in the first layer's variance
    with pytest.raises(ValueError, match=r"the nngp overflowed to inf/NaN in torch.float32, most at rows \[5\] of X"):
        nk.infinite_width_kernels(X, depth=3, activation="erf")
    deep = rows(torch.float32)
    with pytest.raises(ValueError, match="overflowed to inf/NaN in torch.float32"):
        nk.infinite_width_kernels(deep, depth=200, activation="relu", W_std=3.0)  # variance x4.5 per layer
