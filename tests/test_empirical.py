"""ntklib.empirical: the empirical NTK against hand-derived gradients, its three methods against
each other, the linearised network, and Monte Carlo kernels against the arc-cosine kernel."""

import math

import pytest
import torch
from torch import nn

import ntklib as nk
from ntklib import MLP, empirical_ntk, infinite_width_kernels, linearize, monte_carlo_kernels
from conftest import randn

# torch's forward-mode AD (behind jvp) scripts its decompositions on first use, which warns.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

F64 = torch.float64
METHODS = ["structured", "jacobian", "ntk_vp"]

# (depth, activation, parameterization, b_std, out_features): every depth 1-3, activation,
# parameterization, bias choice and output kind appears, without the full product's cost.
ARCHITECTURES = [
    (1, "relu", "ntk", 0.0, 1),
    (1, "erf", "standard", 0.5, 1),
    (1, "identity", "ntk", None, 3),
    (2, "relu", "standard", None, 1),
    (2, "erf", "ntk", 0.3, 2),
    (2, "leaky_relu", "ntk", 0.2, 1),
    (3, "abs", "standard", 0.1, 1),
    (3, "identity", "standard", 0.0, 2),
    (3, "erf", "ntk", None, 1),
    (3, "relu", "ntk", 0.4, 3),
]
TOLERANCE = {torch.float32: 1e-5, F64: 1e-10}


def close(actual, expected, rtol):
    """Entrywise within rtol of the kernel's scale (entries near 0 have no relative accuracy)."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize("depth, activation, parameterization, b_std, k", ARCHITECTURES)
def test_methods_agree_on_mlps(depth, activation, parameterization, b_std, k, dtype):
    gen = torch.Generator().manual_seed(depth * 10 + k)
    net = MLP(3, 12, depth, k, activation, W_std=1.3, b_std=b_std, parameterization=parameterization,
              negative_slope=0.1, generator=gen, dtype=dtype)
    X = torch.randn(6, 3, generator=gen, dtype=F64).to(dtype)
    Z = torch.randn(4, 3, generator=gen, dtype=F64).to(dtype)
    for Z_ in (None, Z):
        results = {method: empirical_ntk(net, X, Z_, method=method) for method in METHODS}
        m = 6 if Z_ is None else 4
        assert results["structured"].shape == ((6, m) if k == 1 else (6, m, k, k))
        assert results["structured"].dtype == dtype
        for method in ("jacobian", "ntk_vp"):
            close(results[method], results["structured"], TOLERANCE[dtype])
    # "auto" is "structured" for an MLP.
    torch.testing.assert_close(empirical_ntk(net, X, Z), results["structured"], rtol=0, atol=0)


class Squeezed(nn.Module):
    """A non-MLP with (n,) outputs: Linear -> Tanh -> Linear -> squeeze."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 10), nn.Tanh(), nn.Linear(10, 1))

    def forward(self, x):
        return self.body(x)[:, 0]


@pytest.mark.parametrize("outputs", ["(n,)", "(n, 1)", "(n, 2)"])
def test_jacobian_and_ntk_vp_agree_on_a_generic_module(outputs, device):
    with torch.random.fork_rng(devices=[]):  # nn.Linear draws from the global generator
        torch.manual_seed(0)
        model = {
            "(n,)": Squeezed,
            "(n, 1)": lambda: nn.Sequential(nn.Linear(3, 10), nn.Tanh(), nn.Linear(10, 1)),
            "(n, 2)": lambda: nn.Sequential(nn.Linear(3, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 2)),
        }[outputs]()
    model = model.to(device=device, dtype=F64)
    gen = torch.Generator().manual_seed(1)
    X, Z = randn(7, 3, generator=gen, device=device), randn(5, 3, generator=gen, device=device)
    # The oracle: per-sample gradients by plain autograd (no torch.func), contracted by hand.
    expected = autograd_ntk(model, X, Z)
    for method, options in (("auto", {}), ("jacobian", {}), ("ntk_vp", {"block_size": 3})):
        theta = empirical_ntk(model, X, Z, method=method, **options)
        assert theta.shape == ((7, 5) if outputs != "(n, 2)" else (7, 5, 2, 2)), method
        assert theta.device.type == device.type
        close(theta, expected, 1e-10)


def autograd_ntk(model, X, Z):
    """Theta[i, j, a, b] = <d f_a(x_i) / d theta, d f_b(z_j) / d theta> from one backward pass per
    point and output; (n, m) for a single output."""
    params = [p for p in model.parameters() if p.requires_grad]

    def jacobian(points):  # (n, k, P)
        rows = []
        for x in points:
            out = model(x[None]).reshape(-1)
            rows.append(torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(o, params, retain_graph=True)])
                                     for o in out]))  # fmt: skip
        return torch.stack(rows)

    JX, JZ = jacobian(X), jacobian(Z)
    theta = torch.einsum("iap,jbp->ijab", JX, JZ)
    return theta[:, :, 0, 0] if theta.shape[-1] == 1 else theta


def hand_ntk_one_hidden_layer(net, X, Z):
    """Theta(x, z) = sum_p df(x)/dp df(z)/dp written out for f(x) = s2 v . phi(s1 W x + sb b) +
    sb c (erf, "ntk": s1 = W_std/sqrt(d), s2 = W_std/sqrt(w), sb = b_std; "standard": all 1):
      df/dv_u = s2 phi(h_u),  df/dW_uv = s2 v_u phi'(h_u) s1 x_v,  df/db_u = s2 v_u phi'(h_u) sb,
      df/dc = sb.
    """
    W, b = net.hidden[0].weight.detach(), net.hidden[0].bias.detach()
    v = net.readout.weight.detach()[0]
    d, w = X.shape[1], W.shape[0]
    if net.parameterization == "ntk":
        s1, s2, sb = net.W_std / math.sqrt(d), net.W_std / math.sqrt(w), net.b_std
    else:
        s1 = s2 = sb = 1.0
    hx, hz = s1 * X @ W.T + sb * b, s1 * Z @ W.T + sb * b  # (n, w), (m, w)
    dphi = lambda h: 2 / math.sqrt(math.pi) * torch.exp(-h**2)
    readout_weights = s2**2 * torch.special.erf(hx) @ torch.special.erf(hz).T
    hidden_signals = s2**2 * (dphi(hx) * v**2) @ dphi(hz).T  # sum_u v_u^2 phi'(h_u(x)) phi'(h_u(z))
    hidden_weights = hidden_signals * (s1**2 * X @ Z.T)
    hidden_biases = hidden_signals * sb**2
    return readout_weights + hidden_weights + hidden_biases + sb**2


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("method", METHODS)
def test_one_hidden_layer_matches_hand_derived_gradients(parameterization, method, device):
    gen = torch.Generator().manual_seed(2)
    net = MLP(4, 9, depth=1, activation="erf", W_std=1.2, b_std=0.7, parameterization=parameterization,
              generator=gen, dtype=F64, device=device)
    X, Z = randn(5, 4, generator=gen, device=device), randn(3, 4, generator=gen, device=device)
    theta = empirical_ntk(net, X, Z, method=method)
    assert theta.device.type == device.type
    close(theta, hand_ntk_one_hidden_layer(net, X, Z), 1e-12)


def test_vector_output_blocks_follow_the_convention(rng):
    """Theta[i, j, a, b] pairs output a at x_i with output b at z_j: the diagonal blocks are the
    NTKs of the single outputs, and swapping both points and outputs transposes."""
    net = MLP(3, 10, depth=2, out_features=3, activation="erf", b_std=0.2, generator=rng, dtype=F64)
    X = randn(5, 3, generator=rng, device="cpu")
    theta = empirical_ntk(net, X)
    assert theta.shape == (5, 5, 3, 3)
    torch.testing.assert_close(theta, theta.permute(1, 0, 3, 2), rtol=0, atol=1e-14)
    for a in range(3):
        close(empirical_ntk(OutputOf(net, a), X, method="jacobian"), theta[:, :, a, a], 1e-12)


class OutputOf(nn.Module):
    """Output ``a`` of a network, shape (n,), as a generic (non-MLP) module."""

    def __init__(self, net, a):
        super().__init__()
        self.net, self.a = net, a

    def forward(self, x):
        return self.net(x)[:, self.a]


def test_frozen_parameters_are_left_out_by_every_method(rng):
    net = MLP(3, 8, depth=2, b_std=0.3, parameterization="standard", generator=rng, dtype=F64)
    X = randn(4, 3, generator=rng, device="cpu")
    full = empirical_ntk(net, X)
    frozen = [net.readout.weight, net.hidden[0].bias]
    # Their share of Theta, from per-sample gradients by plain autograd, one sample at a time.
    rows = [torch.cat([g.flatten() for g in torch.autograd.grad(net(X[i:i + 1]).sum(), frozen)]) for i in range(4)]
    J = torch.stack(rows)
    for p in frozen:
        p.requires_grad_(False)
    partial = {method: empirical_ntk(net, X, method=method) for method in METHODS}
    for method in ("jacobian", "ntk_vp"):
        close(partial[method], partial["structured"], 1e-12)
    close(full - partial["structured"], J @ J.T, 1e-12)


def test_symmetric_psd_and_consistent_rows(rng):
    net = MLP(4, 16, depth=3, activation="relu", b_std=0.1, generator=rng, dtype=F64)
    X = randn(10, 4, generator=rng, device="cpu")
    theta = empirical_ntk(net, X)
    torch.testing.assert_close(theta, theta.T, rtol=0, atol=1e-13)
    assert float(torch.linalg.eigvalsh(theta).min()) > -1e-12
    torch.testing.assert_close(empirical_ntk(net, X[:3], X), theta[:3], rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------------- linearize


@pytest.fixture
def net_and_data():
    gen = torch.Generator().manual_seed(5)
    net = MLP(3, 16, depth=2, out_features=2, activation="erf", b_std=0.3, generator=gen, dtype=F64)
    X = randn(6, 3, generator=gen, device="cpu")
    direction = {name: torch.randn(p.shape, generator=gen, dtype=F64) for name, p in net.named_parameters()}
    return net, X, direction


def shifted(params, direction, eps):
    return {name: p + eps * direction[name] for name, p in params.items()}


def test_linearize_equals_the_model_at_theta0(net_and_data):
    net, X, _ = net_and_data
    f_lin = linearize(net)
    torch.testing.assert_close(f_lin(f_lin.params0, X), net(X), rtol=0, atol=0)


def test_linearize_is_second_order_accurate(net_and_data):
    """|f(theta0 + eps d) - f_lin(theta0 + eps d)| = O(eps^2): halving eps divides it by ~4."""
    net, X, direction = net_and_data
    f_lin = linearize(net)
    errors = []
    for eps in (2e-2, 1e-2, 5e-3):
        params = shifted(f_lin.params0, direction, eps)
        exact = torch.func.functional_call(net, params, (X,))
        errors.append(float((exact - f_lin(params, X)).abs().max()))
    assert errors[0] > 1e-8  # the model is not linear in its parameters
    for big, small in zip(errors, errors[1:]):
        assert 3.5 < big / small < 4.5


def test_linearize_is_exactly_affine_and_its_gradient_is_the_jacobian(net_and_data):
    net, X, direction = net_and_data
    f_lin = linearize(net)
    p0 = f_lin.params0
    other = {name: torch.cos(torch.arange(p.numel(), dtype=F64)).view(p.shape) for name, p in p0.items()}
    base = f_lin(p0, X)
    delta_1 = f_lin(shifted(p0, direction, 1.0), X) - base
    delta_2 = f_lin(shifted(p0, other, 1.0), X) - base
    combined = {name: p0[name] + 0.7 * direction[name] - 2.5 * other[name] for name in p0}
    torch.testing.assert_close(f_lin(combined, X) - base, 0.7 * delta_1 - 2.5 * delta_2, rtol=1e-12, atol=1e-12)
    # Gradient w.r.t. params anywhere = the model's gradient at theta0.
    far = {name: (p + 3.0 * direction[name]).requires_grad_() for name, p in p0.items()}
    grads = torch.autograd.grad(f_lin(far, X)[:, 1].sum(), list(far.values()))
    expected = torch.autograd.grad(net(X)[:, 1].sum(), list(net.parameters()))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-13, atol=1e-13)


def test_linearize_keeps_theta0_when_the_model_trains(net_and_data):
    net, X, direction = net_and_data
    f_lin = linearize(net)
    before = f_lin(f_lin.params0, X)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.add_(direction[name])
    torch.testing.assert_close(f_lin(f_lin.params0, X), before, rtol=0, atol=0)


def test_linearize_errors(net_and_data):
    net, X, _ = net_and_data
    f_lin = linearize(net)
    partial = dict(f_lin.params0)
    readout_bias = [name for name, _ in net.named_parameters()][-1]  # the readout's bias
    assert readout_bias == f"body.{2 * net.depth}.bias"
    del partial[readout_bias]
    with pytest.raises(ValueError, match=rf"missing \['{readout_bias}'\], unexpected \[\]"):
        f_lin(partial, X)
    with pytest.raises(ValueError, match=rf"params\['{readout_bias}'\] must have shape \(2,\); got \(3,\)"):
        f_lin({**f_lin.params0, readout_bias: torch.zeros(3, dtype=F64)}, X)
    with pytest.raises(TypeError, match="params must be a dict"):
        f_lin(list(f_lin.params0.values()), X)
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        f_lin(f_lin.params0, bad)
    with pytest.raises(ValueError, match="no trainable parameters"):
        linearize(nn.ReLU())


# ------------------------------------------------------------------------------ Monte Carlo


def test_monte_carlo_estimator_is_the_documented_average(rng):
    """One network: nngp = W_std^2/width a_L . a_L + b_std^2 from the same seeded network, and
    ntk its empirical NTK."""
    X = randn(5, 3, generator=rng, device="cpu")
    k = monte_carlo_kernels(X, depth=2, width=20, activation="erf", W_std=1.5, b_std=0.4, num_samples=1,
                            generator=torch.Generator().manual_seed(9))
    assert isinstance(k, nk.MonteCarloKernels) and k.nngp_stderr is None and k.ntk_stderr is None
    net = MLP(3, 20, 2, 1, "erf", 1.5, 0.4, generator=torch.Generator().manual_seed(9), dtype=F64)
    a = torch.special.erf(net.hidden[1](torch.special.erf(net.hidden[0](X)))).detach()
    torch.testing.assert_close(k.nngp, 1.5**2 / 20 * a @ a.T + 0.4**2, rtol=1e-13, atol=1e-13)
    # Its NTK by another code path than the structured one monte_carlo_kernels uses.
    close(k.ntk, empirical_ntk(net, X, method="jacobian"), 1e-12)


def test_monte_carlo_relu_converges_to_the_arc_cosine_kernel(device):
    """One hidden ReLU layer, W_std = 1, b_std = 0 (Cho & Saul 2009; Jacot et al. 2018):
    NNGP = |x||z|/d (sin t + (pi - t) cos t) / (2 pi), NTK = NNGP + x.z/d (pi - t) / (2 pi).
    With width 4096 and 16 networks (65,536 hidden units) the estimates' relative standard error
    is about 1/sqrt(65536) ~ 0.004 times an O(1) constant. We allow 0.05 of the kernel's scale:
    over 20 seeds the worst entry was off by 0.016, the mean worst by 0.011."""
    gen = torch.Generator().manual_seed(11)
    X = randn(5, 3, generator=gen, device=device)
    Z = randn(4, 3, generator=gen, device=device)
    k = monte_carlo_kernels(X, Z, depth=1, width=4096, num_samples=16, generator=gen)
    assert k.nngp.shape == k.ntk.shape == (5, 4) and k.ntk.device.type == device.type
    X, Z = X.cpu(), Z.cpu()
    dot = X @ Z.T / 3
    norms = X.norm(dim=1)[:, None] * Z.norm(dim=1)[None, :] / 3
    t = torch.arccos((dot / norms).clamp(-1, 1))
    nngp = norms * (torch.sin(t) + (math.pi - t) * torch.cos(t)) / (2 * math.pi)
    ntk = nngp + dot * (math.pi - t) / (2 * math.pi)
    close(k.nngp.cpu(), nngp, 0.05)
    close(k.ntk.cpu(), ntk, 0.05)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_monte_carlo_agrees_with_the_analytic_module(parameterization):
    """Two hidden erf layers with biases against ntklib.infinite (same stax conventions; for
    "standard" the analytic NTK grows with the width, which it is given). 32 networks of width
    512; tolerance 0.06 of the kernel's scale, where over 40 seeds the worst entry was off by
    0.028 and the mean worst by 0.014 (statistical error plus an O(1/width) finite-width bias)."""
    gen = torch.Generator().manual_seed(12)
    X = torch.randn(4, 3, generator=gen, dtype=F64)
    args = dict(depth=2, activation="erf", W_std=1.2, b_std=0.3, parameterization=parameterization)
    k = monte_carlo_kernels(X, width=512, num_samples=32, generator=gen, **args)
    exact = infinite_width_kernels(X, width=512, **args)
    close(k.nngp, exact.nngp, 0.06)
    close(k.ntk, exact.ntk, 0.06)


# ----------------------------------------------------------------------------------- errors


def test_empirical_ntk_errors():
    net = MLP(3, 4, depth=1, dtype=F64)
    X = torch.ones(4, 3, dtype=F64)
    generic = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    normalised = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2), nn.Linear(2, 1)).double()
    with pytest.raises(ValueError, match=r"method='structured' cannot handle this model: module '1' \(LayerNorm\) has "
                                         "trainable parameters of a kind it does not know; use method='jacobian'"):
        empirical_ntk(normalised, X, method="structured")
    with pytest.raises(ValueError, match="unknown method 'exact'; expected one of: auto, structured, jacobian, ntk_vp"):
        empirical_ntk(net, X, method="exact")
    with pytest.raises(ValueError, match=r"model \(ReLU\) has no trainable parameters"):
        empirical_ntk(nn.ReLU(), X, method="jacobian")
    with pytest.raises(ValueError, match="feature dimensions differ: X has d=3 columns but Z has d=2"):
        empirical_ntk(net, X, torch.ones(2, 2, dtype=F64))
    with pytest.raises(ValueError, match="X has 2 features but this MLP expects in_features=3"):
        empirical_ntk(net, torch.ones(4, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"model failed on inputs of shape \(4, 5\)"):
        empirical_ntk(generic, torch.ones(4, 5, dtype=F64))
    bad = X.clone()
    bad[2, 1] = float("nan")
    for method in METHODS:
        with pytest.raises(ValueError, match="Z contains 1 NaN or infinite value"):
            empirical_ntk(net, X, bad, method=method)
    with pytest.raises(TypeError, match="X has dtype torch.float32 but model parameter 'body.0.weight' has torch.float64"):
        empirical_ntk(net, X.float())
    with pytest.raises(ValueError, match=r"outputs of shape \(n,\) or \(n, k\); for n=1 it gave \(1, 2, 1\)"):
        empirical_ntk(nn.Sequential(nn.Linear(3, 2), nn.Unflatten(1, (2, 1))).double(), X)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        empirical_ntk(net, X, method="ntk_vp", block_size=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        empirical_ntk(lambda x: x, X)


def test_monte_carlo_errors():
    X = torch.ones(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        monte_carlo_kernels(X, num_samples=0)
    with pytest.raises(TypeError, match=r"net must be an ntklib layer description \(e.g. nk.serial\(...\)\); got str"):
        monte_carlo_kernels("relu", X)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['depth'\]"):
        monte_carlo_kernels(nk.serial(nk.Dense(3), nk.Relu(), nk.Dense(1)), X, depth=2)
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        monte_carlo_kernels(X, activation="tanh")
    with pytest.raises(ValueError, match="width must be >= 1"):
        monte_carlo_kernels(X, width=0)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        monte_carlo_kernels(X, torch.ones(2, 3, dtype=F64))
