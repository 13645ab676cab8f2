"""ntklib.gpytorch_kernels: the infinite-width NNGP/NTK as GPyTorch kernels with learnable
sigma_w, sigma_b, and the differentiable layer rules underneath (W_std, b_std as tensors)."""

import subprocess
import sys

import pytest
import torch

import ntklib as nk
from conftest import randn

gpytorch = pytest.importorskip("gpytorch")
from ntklib.gpytorch_kernels import NNGPKernel, NTKKernel  # noqa: E402

KERNELS = {"nngp": NNGPKernel, "ntk": NTKKernel}
CLOSED_FORM = ["relu", "leaky_relu", "abs", "erf", "gelu", "identity"]
f64 = torch.float64


def make_kernel(which, device=None, *, W_std=1.3, b_std=0.4, **options):
    """A kernel in float64, its hyperparameters set after the cast (set before, they would be
    rounded to float32 by the initial parameters' dtype)."""
    kernel = KERNELS[which](**options).to(device=device, dtype=f64)
    kernel.W_std, kernel.b_std = W_std, b_std
    return kernel


class ExactGP(gpytorch.models.ExactGP):
    def __init__(self, X, Y, likelihood, kernel):
        super().__init__(X, Y, likelihood)
        self.mean, self.kernel = gpytorch.means.ZeroMean(), kernel

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean(x), self.kernel(x))


def gp_problem(which, X, Y, *, W_std, b_std, noise, depth=2):
    """An ExactGP on y (n,) or on the columns of Y (n, k) (independent outputs sharing the
    kernel), and its negative marginal log likelihood (gpytorch's, summed over the columns)."""
    likelihood = gpytorch.likelihoods.GaussianLikelihood().to(dtype=f64, device=X.device)
    targets = Y if Y.ndim == 1 else Y.T.contiguous()
    model = ExactGP(X, targets, likelihood, make_kernel(which, X.device, depth=depth)).to(X.device)
    model.kernel.W_std, model.kernel.b_std, likelihood.noise = W_std, b_std, noise
    model.train(), likelihood.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    return model, likelihood, lambda: -mll(model(X), model.train_targets).sum()


# ---------------------------------------------------------------- the kernel equals ntklib's


@pytest.mark.parametrize("which", ["nngp", "ntk"])
@pytest.mark.parametrize("activation", CLOSED_FORM)
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_kernel_equals_infinite_width_kernels(which, activation, parameterization, device, rng):
    X, Z = randn(9, 4, generator=rng, device=device), randn(6, 4, generator=rng, device=device)
    options = dict(depth=3, activation=activation, parameterization=parameterization, width=5)
    kernel = make_kernel(which, device, **options)
    reference = dict(W_std=1.3, b_std=0.4, **options)
    K_xz = getattr(nk.infinite_width_kernels(X, Z, **reference), which)
    K_xx = getattr(nk.infinite_width_kernels(X, **reference), which)
    with torch.no_grad():
        # Two code paths: gpytorch's lazy evaluation of the adapter (W_std, b_std through the
        # softplus constraint, as tensors) and nk.infinite_width_kernels with plain floats.
        torch.testing.assert_close(kernel(X, Z).to_dense(), K_xz, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(kernel(X).to_dense(), K_xx, rtol=1e-12, atol=1e-12)
        # The O(n) diagonal (1 x 1 convolutions over the inputs as positions) against the full kernel's.
        torch.testing.assert_close(kernel(X, diag=True), K_xx.diagonal(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(kernel(X[:6], Z, diag=True), K_xz[:6].diagonal(), rtol=1e-12, atol=1e-12)
        # Batched inputs: one matrix expanded, and a genuine batch.
        expanded = kernel(X.expand(3, *X.shape), Z).to_dense()
        torch.testing.assert_close(expanded, K_xz.expand(3, *K_xz.shape), rtol=1e-12, atol=1e-12)
        batch = kernel(torch.stack([X[:6], Z]), torch.stack([Z, X[:6]])).to_dense()
        torch.testing.assert_close(batch[1], K_xz[:6].T, rtol=1e-12, atol=1e-12)


def test_exact_gp_prediction_is_kernel_ridge_regression(rng):
    """gpytorch's posterior mean and variance (which asks for the diagonal) against the closed
    forms computed with ntklib alone."""
    X, Z = randn(30, 3, generator=rng, device="cpu"), randn(8, 3, generator=rng, device="cpu")
    y = torch.sin(X[:, 0]) + 0.1 * randn(30, generator=rng, device="cpu")
    model, likelihood, _ = gp_problem("ntk", X, y, W_std=1.2, b_std=0.3, noise=0.05)
    model.eval(), likelihood.eval()
    with torch.no_grad(), gpytorch.settings.fast_pred_var(False):
        posterior = model(Z)
        mean, variance = posterior.mean, posterior.variance
    net = model.kernel.network()
    K, K_zx, K_zz = net.kernels(X).ntk, net.kernels(Z, X).ntk, net.kernels(Z).ntk
    noise = float(likelihood.noise.detach())
    torch.testing.assert_close(mean, K_zx @ nk.solve_kernel_system(K, y, noise), rtol=1e-8, atol=1e-10)
    exact_var = K_zz.diagonal() - (K_zx * nk.solve_kernel_system(K, K_zx.T, noise).T).sum(1)
    torch.testing.assert_close(variance, exact_var, rtol=1e-6, atol=1e-8)


# -------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("activation", CLOSED_FORM)
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_kernels_are_differentiable_in_W_std_and_b_std(activation, parameterization, rng):
    """Autograd through the layer recursion against central finite differences (gradcheck),
    in float64, for both kernels, symmetric (with a duplicate row: cos t = 1 off the diagonal
    too) and not, over several blocks."""
    X, Z = randn(7, 3, generator=rng, device="cpu"), randn(5, 3, generator=rng, device="cpu")
    X[3] = X[1]

    def kernels(W_std, b_std):
        out = []
        for Z_ in (None, Z):
            K = nk.infinite_width_kernels(X, Z_, depth=2, activation=activation, W_std=W_std, b_std=b_std,
                                          parameterization=parameterization, width=4, block_size=3)  # fmt: skip
            out += [K.nngp, K.ntk]
        return tuple(out)

    W_std = torch.tensor(1.3, dtype=f64, requires_grad=True)
    b_std = torch.tensor(0.4, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(kernels, (W_std, b_std), fast_mode=True)
    # The tensor path gives the float path's values.
    for K, K_float in zip(kernels(W_std, b_std), kernels(1.3, 0.4)):
        torch.testing.assert_close(K.detach(), K_float, rtol=1e-13, atol=1e-13)


def test_convolutional_kernels_are_differentiable(rng):
    images = randn(4, 2, 4, 4, generator=rng, device="cpu")

    def kernels(W_std, b_std):
        net = nk.serial(nk.Conv(3, 3, padding="same", W_std=W_std, b_std=b_std), nk.Relu(),
                        nk.Conv(3, 3, W_std=W_std, b_std=b_std), nk.Erf(), nk.GlobalAvgPool(),
                        nk.Dense(1, W_std, b_std))  # fmt: skip
        return tuple(net.kernels(images))

    W_std = torch.tensor(1.3, dtype=f64, requires_grad=True)
    b_std = torch.tensor(0.4, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(kernels, (W_std, b_std), fast_mode=True)


@pytest.mark.parametrize("which", ["nngp", "ntk"])
def test_adapter_gradients_match_finite_differences(which, rng):
    """The gradient of the kernel matrix (full and diagonal) with respect to the raw
    (unconstrained) parameters, by gradcheck through torch.func.functional_call."""
    X, Z = randn(6, 3, generator=rng, device="cpu"), randn(4, 3, generator=rng, device="cpu")
    kernel = make_kernel(which, depth=2, activation="relu")

    def matrices(raw_W, raw_b):
        params = {"raw_W_std": raw_W, "raw_b_std": raw_b}
        full = torch.func.functional_call(kernel, params, (X, Z)).to_dense()
        diag = torch.func.functional_call(kernel, params, (X,), {"diag": True})
        return full, diag

    raws = (kernel.raw_W_std.detach().clone().requires_grad_(), kernel.raw_b_std.detach().clone().requires_grad_())
    assert torch.autograd.gradcheck(matrices, raws, fast_mode=True)


@pytest.mark.parametrize("which", ["nngp", "ntk"])
def test_marginal_likelihood_gradient_matches_central_differences(which, rng):
    X = randn(25, 3, generator=rng, device="cpu")
    Y = torch.stack([torch.sin(X[:, 0]), X[:, 1] * X[:, 2]], dim=1)
    model, likelihood, loss = gp_problem(which, X, Y, W_std=1.2, b_std=0.6, noise=0.1)
    params = [model.kernel.raw_W_std, model.kernel.raw_b_std, likelihood.noise_covar.raw_noise]
    analytic = torch.autograd.grad(loss(), params)
    step = 1e-5
    for param, grad in zip(params, analytic):
        with torch.no_grad():
            param += step
            up = float(loss())
            param -= 2 * step
            down = float(loss())
            param += step
        central = (up - down) / (2 * step)  # error O(step^2) ~ 1e-10 relative, plus rounding ~1e-10
        assert abs(float(grad) - central) <= 1e-6 * max(1.0, abs(central)), (float(grad), central)


# ------------------------------------------------------------ maximising the likelihood


@pytest.mark.parametrize("which", ["nngp", "ntk"])
def test_maximum_likelihood_recovers_the_true_hyperparameters(which):
    """Sample 16 independent outputs at 200 points from the GP with this kernel at known
    sigma_w = 1.6, sigma_b = 0.5 and noise variance 0.3, start far away (1, 1, 0.2) and
    maximise the marginal likelihood with L-BFGS.

    Tolerances: relative errors of 8% for sigma_w, 30% for sigma_b and 50% for the noise.
    Over six seeds the estimates' largest relative errors were 3%, 12% and 27%: the
    tolerances are about 2.5 times the spread, and the start is outside them for sigma_w and
    sigma_b. The optimum must also beat the likelihood at the truth (it maximises it).
    """
    truth = dict(W_std=1.6, b_std=0.5, noise=0.3)
    generator = torch.Generator().manual_seed(0)
    n, outputs = 200, 16
    X = torch.randn(n, 3, generator=generator, dtype=f64)
    K = getattr(nk.infinite_width_kernels(X, depth=2, W_std=truth["W_std"], b_std=truth["b_std"]), which)
    L = torch.linalg.cholesky(K + truth["noise"] * torch.eye(n, dtype=f64))
    Y = L @ torch.randn(n, outputs, generator=generator, dtype=f64)

    _, _, loss_at_truth = gp_problem(which, X, Y, **truth)
    model, likelihood, loss = gp_problem(which, X, Y, W_std=1.0, b_std=1.0, noise=0.2)
    start = float(loss().detach())
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
    found = {name: float(value.detach()) for name, value in
             (("W_std", model.kernel.W_std), ("b_std", model.kernel.b_std), ("noise", likelihood.noise))}
    tolerance = dict(W_std=0.08, b_std=0.3, noise=0.5)
    with torch.no_grad():
        assert float(loss()) < start and float(loss()) <= float(loss_at_truth()) + 1e-9
    for name, value in found.items():
        assert abs(value / truth[name] - 1) < tolerance[name], (name, value, truth[name])
    assert abs(1.0 / truth["W_std"] - 1) > tolerance["W_std"] and abs(1.0 / truth["b_std"] - 1) > tolerance["b_std"]


# ------------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors(rng):
    X = randn(5, 3, generator=rng, device="cpu")
    with pytest.raises(ValueError, match="W_std must be > 0"):
        NTKKernel(W_std=-1.0)
    with pytest.raises(ValueError, match="b_std must be > 0.*b_std=0"):
        NNGPKernel(b_std=0.0)
    with pytest.raises(TypeError, match="W_std must be a real number"):
        NTKKernel(W_std="big")
    with pytest.raises(ValueError, match="depth must be >= 1"):
        NTKKernel(depth=0)
    with pytest.raises(ValueError, match="parameterization must be 'ntk' or 'standard'"):
        NTKKernel(parameterization="mup")
    with pytest.raises(ValueError, match="width is required"):
        NTKKernel(parameterization="standard")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        NTKKernel(activation="swish")
    with pytest.raises(ValueError, match="Elementwise activation are not differentiable"):
        NTKKernel(activation=nk.Elementwise(torch.tanh))
    with pytest.raises(ValueError, match="batch_shape=\\(2,\\) is not supported"):
        NTKKernel(batch_shape=torch.Size([2]))
    with pytest.raises(TypeError, match="W_std_constraint must be a gpytorch constraint"):
        NTKKernel(W_std_constraint="positive")
    kernel = make_kernel("ntk")
    with pytest.raises(RuntimeError, match="same number of dimensions"):  # gpytorch's own check
        kernel(X, randn(4, 2, generator=rng, device="cpu")).to_dense()
    with pytest.raises(ValueError, match="feature dimensions differ: x1 has d=3 but x2 has d=2"):
        kernel.forward(X, randn(4, 2, generator=rng, device="cpu"))
    with pytest.raises(ValueError, match="x2 must be a tensor of shape"):
        kernel.forward(X, torch.ones(3, dtype=f64))
    with pytest.raises(ValueError, match="diag=True needs as many x1 as x2 rows"):
        kernel.forward(X, X[:2], diag=True)
    with pytest.raises(ValueError, match="x1 contains 1 NaN"):
        bad = X.clone()
        bad[0, 0] = float("nan")
        kernel.forward(bad, X)
    with pytest.raises(ValueError, match="last_dim_is_batch"):
        kernel.forward(X, X, last_dim_is_batch=True)


def test_layers_take_tensor_scales_only_when_they_require_grad():
    """The float path is untouched: a tensor that does not require grad is read as a number,
    as before; one that does is kept (0-d), and checked like a number."""
    assert nk.Dense(2, torch.tensor(1.5), torch.tensor(0.5)).W_std == 1.5
    assert isinstance(nk.Dense(2, torch.tensor(1.5)).W_std, float)
    W_std = torch.tensor([1.5], requires_grad=True)
    layer = nk.Dense(2, W_std, W_std)
    assert isinstance(layer.W_std, torch.Tensor) and layer.W_std.shape == ()
    assert repr(layer) == "Dense(2, W_std=1.5, b_std=1.5, parameterization='ntk')"
    with pytest.raises(ValueError, match="W_std must be >= 0; got -1.0"):
        nk.Dense(2, torch.tensor(-1.0, requires_grad=True))
    with pytest.raises(ValueError, match="b_std must be finite"):
        nk.Conv(2, 3, b_std=torch.tensor(float("inf"), requires_grad=True))
    with pytest.raises(TypeError, match="one-element floating-point tensor; got a torch.float32 tensor of shape"):
        nk.Dense(2, torch.ones(2, requires_grad=True))
    X = torch.randn(4, 3, dtype=f64)
    with pytest.raises(nk.LayerError, match="not differentiable in W_std and b_std"):
        nk.infinite_width_kernels(X, activation=nk.Elementwise(torch.tanh), W_std=torch.tensor(1.0, dtype=f64,
                                  requires_grad=True))  # fmt: skip


def test_import_ntklib_does_not_import_gpytorch():
    code = "import sys, ntklib; assert 'gpytorch' not in sys.modules and 'linear_operator' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
