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


# -- the classical kernels ------------------------------------------------------------------------

BIG = {torch.float32: 1e20, torch.float64: 1e160}  # |x|^2 beyond the dtype's range
TINY = {torch.float32: 1e-25, torch.float64: 1e-300}  # |x|^2 below the smallest normal number
CLASSICAL = {
    "linear": nk.linear_kernel,
    "polynomial": lambda X, Z=None: nk.polynomial_kernel(X, Z, degree=3, c=0.5),
    "squared_distances": nk.squared_distances,
    "gaussian": lambda X, Z=None: nk.gaussian_kernel(X, Z, sigma=1.5),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CLASSICAL))
def test_classical_kernels_on_zero_duplicate_and_tiny_rows(name, dtype):
    """Against the same kernel in float64 on the same (rounded) inputs: zero and duplicate rows,
    and a row so small that its squared norm underflows, are finite and right."""
    kernel = CLASSICAL[name]
    for scale in (1.0, TINY[dtype]):
        X = rows(dtype)
        X[2] *= scale
        for Z in (None, X.flip(0).clone()):
            K = kernel(X, Z)
            assert bool(torch.isfinite(K).all())
            expected = kernel(X.double(), None if Z is None else Z.double())
            torch.testing.assert_close(K.double(), expected, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-5)
    K = kernel(rows(dtype))
    torch.testing.assert_close(K[3], K[4], rtol=0, atol=0)  # a duplicate row gives an identical row


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["linear", "polynomial", "squared_distances"])
def test_classical_kernels_that_overflow_raise_naming_the_row(name, dtype):
    X = rows(dtype)
    X[5] *= BIG[dtype]  # x.x ~ 1e40 in float32, 1e320 in float64: beyond the range
    for Z in (None, X.clone()):
        with pytest.raises(ValueError, match=rf"{name}\w* overflowed to inf/NaN in {dtype} .*, most at rows \[5\] "):
            CLASSICAL[name](X, Z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_kernel_is_finite_for_huge_rows_and_extreme_bandwidths(dtype):
    """exp(-|x - z|^2 / (2 sigma^2)) is in [0, 1] for any finite inputs and sigma: a huge row
    (its |x|^2 overflows) has k = 1 with itself, also when Z is a separate copy of X (where the
    expansion gives inf - inf), and 0 with the others; a bandwidth whose square overflows or
    underflows gives the kernel of the rescaled inputs."""
    X = rows(dtype)
    X[5] *= BIG[dtype]
    for Z in (None, X.clone()):
        K = nk.gaussian_kernel(X, Z)
        assert bool(torch.isfinite(K).all())
        assert float(K[5, 5]) == 1.0 and float(K[5, :5].abs().max()) == 0.0 and float(K[:5, 5].abs().max()) == 0.0
        torch.testing.assert_close(K[:5, :5], nk.gaussian_kernel(X[:5]), rtol=0, atol=0)
    for sigma in (BIG[dtype], 1 / BIG[dtype]):
        X = rows(dtype) * sigma  # the same points in units of sigma
        K = nk.gaussian_kernel(X, X.clone(), sigma=sigma)
        assert bool(torch.isfinite(K).all())
        torch.testing.assert_close(K.double(), nk.gaussian_kernel(rows(torch.float64)), rtol=1e-4, atol=1e-5)


# -- smooth activations, normalisation and deep nets ---------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["erf", "gelu"])
def test_smooth_activations_with_tiny_and_huge_rows(activation, dtype):
    """A row of norm 1e-15 (float32) / 1e-150 (float64) has the kernel of a zero row, to rounding;
    a row of norm 1e15 / 1e150, whose variance products overflow, raises naming it."""
    X = rows(dtype)
    X[2] = X[0] * (1e-15 if dtype == torch.float32 else 1e-150)
    K = nk.infinite_width_kernels(X, depth=3, activation=activation, W_std=1.3, b_std=0.2)
    for M in K:
        assert bool(torch.isfinite(M).all())
        torch.testing.assert_close(M[2], M[1], rtol=1e-5, atol=1e-6)  # row 1 is exactly zero
    X[2] = X[0] * (1e15 if dtype == torch.float32 else 1e150)
    with pytest.raises(ValueError, match=rf"overflowed to inf/NaN in {dtype}, most at rows \[2\] of X"):
        nk.infinite_width_kernels(X, depth=3, activation=activation, W_std=1.3, b_std=0.2)


@pytest.mark.parametrize("activation, W_std, depth", [("relu", 3.0, 20), ("erf", 4.0, 50), ("gelu", 2.5, 12)])
def test_deep_nets_with_large_W_std_agree_in_float32_and_float64(activation, W_std, depth):
    """Deep and far from the edge of chaos (ReLU: the variance grows 4.5x per layer, to 1e13 after
    20 layers): float32 stays finite and within 1e-3 of float64, relative to each kernel's scale."""
    X = rows(torch.float64, seed=3)
    K64 = nk.infinite_width_kernels(X, depth=depth, activation=activation, W_std=W_std, b_std=0.1)
    K32 = nk.infinite_width_kernels(X.float(), depth=depth, activation=activation, W_std=W_std, b_std=0.1)
    for M32, M64 in zip(K32, K64):
        assert bool(torch.isfinite(M32).all())
        torch.testing.assert_close(M32.double(), M64, rtol=1e-3, atol=1e-3 * float(M64.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layernorm_and_pooling_with_zero_duplicate_and_extreme_rows(dtype):
    """LayerNorm after a Dense layer without bias sees a zero variance for the zero row; average
    pooling and Flatten of images with a blank, a duplicated and a huge image. Finite everywhere,
    and float32 agrees with float64."""
    dense = nk.serial(nk.Dense(8, W_std=1.5), nk.LayerNorm(), nk.Relu(), nk.Dense(1))
    images = nk.serial(nk.Conv(3, 3, padding="same", W_std=1.4), nk.Erf(), nk.AvgPool(2), nk.Flatten(),
                       nk.Dense(1, b_std=0.1))  # fmt: skip
    X = rows(torch.float64)
    P = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    P[1], P[3] = 0.0, P[2]
    P[0] *= 1e-15
    for net, inputs in ((dense, X), (images, P)):
        K = net.kernels(inputs.to(dtype))
        reference = net.kernels(inputs)
        for M, R in zip(K, reference):
            assert bool(torch.isfinite(M).all())
            torch.testing.assert_close(M.double(), R, rtol=1e-4, atol=1e-5 * float(R.abs().max()))
