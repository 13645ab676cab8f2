"""Bad input gets a clear error that names the problem."""

import numpy as np
import pytest
import torch

import ntklib as nk

X = torch.ones(4, 3, dtype=torch.float64)
KERNELS = [nk.linear_kernel, nk.polynomial_kernel, nk.gaussian_kernel]


@pytest.mark.parametrize("kernel", KERNELS)
def test_feature_dimension_mismatch(kernel):
    with pytest.raises(ValueError, match="feature dimensions differ: X has d=3 columns but Z has d=2"):
        kernel(X, torch.ones(2, 2, dtype=torch.float64))


@pytest.mark.parametrize("kernel", KERNELS)
def test_wrong_rank(kernel):
    with pytest.raises(ValueError, match=r"X must be 2-D of shape \(n, d\); got shape \(4,\).*X\[:, None\]"):
        kernel(torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf(kernel, bad):
    Z = X.clone()
    Z[1, 2] = bad
    with pytest.raises(ValueError, match="Z contains 1 NaN or infinite value"):
        kernel(X, Z)


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty(kernel):
    with pytest.raises(ValueError, match="X is empty"):
        kernel(torch.ones(0, 3, dtype=torch.float64))


@pytest.mark.parametrize("kernel", KERNELS)
def test_mixed_dtypes(kernel):
    with pytest.raises(TypeError, match="X has dtype torch.float64 but Z has torch.float32"):
        kernel(X, torch.ones(2, 3, dtype=torch.float32))


@pytest.mark.parametrize("kernel", KERNELS)
def test_integer_dtype(kernel):
    with pytest.raises(TypeError, match="floating-point dtype"):
        kernel(torch.ones(2, 3, dtype=torch.int64))


@pytest.mark.parametrize("kernel", KERNELS)
def test_non_tensor(kernel):
    with pytest.raises(TypeError, match="X must be a torch.Tensor.*got ndarray"):
        kernel(np.ones((2, 3)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
@pytest.mark.parametrize("kernel", KERNELS)
def test_mixed_devices(kernel):
    with pytest.raises(ValueError, match="X is on cpu but Z is on cuda"):
        kernel(X, X.cuda())


@pytest.mark.parametrize("sigma", [0.0, -1.0])
def test_non_positive_bandwidth(sigma):
    with pytest.raises(ValueError, match="sigma must be > 0"):
        nk.gaussian_kernel(X, sigma=sigma)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        nk.random_fourier_features(X, 10, sigma=sigma)


def test_negative_degree_and_c():
    with pytest.raises(ValueError, match="degree must be >= 0"):
        nk.polynomial_kernel(X, degree=-1)
    with pytest.raises(ValueError, match="degree must be >= 0"):
        nk.polynomial_features(X, -2)
    with pytest.raises(TypeError, match="degree must be an integer"):
        nk.polynomial_kernel(X, degree=1.5)
    with pytest.raises(ValueError, match="c must be >= 0"):
        nk.polynomial_kernel(X, c=-1.0)


def test_ridge_errors():
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        nk.KernelRidge(nk.gaussian_kernel, ridge=-0.1)
    with pytest.raises(TypeError, match="kernel must be a function"):
        nk.KernelRidge("rbf")
    model = nk.KernelRidge(nk.gaussian_kernel, ridge=0.1)
    with pytest.raises(ValueError, match="y has 3 rows but there are n=4 training points"):
        model.fit(X, torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="X has dtype torch.float64 but y has torch.float32"):
        model.fit(X, torch.ones(4, dtype=torch.float32))
    model.fit(X + torch.arange(4.0, dtype=torch.float64)[:, None], torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="Z has d=2 features but the model was fitted on d=3"):
        model.predict(torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"K must be square \(n, n\)"):
        nk.solve_kernel_system(torch.ones(3, 2, dtype=torch.float64), torch.ones(3, dtype=torch.float64))


def test_feature_map_errors():
    with pytest.raises(ValueError, match="num_features must be >= 1"):
        nk.random_fourier_features(X, 0)
    with pytest.raises(ValueError, match="contains 1 NaN"):
        nk.polynomial_features(torch.tensor([[float("nan")]], dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="K contains 1 NaN"):
        nk.mercer_check(torch.tensor([[1.0, float("nan")], [0.0, 1.0]], dtype=torch.float64))
