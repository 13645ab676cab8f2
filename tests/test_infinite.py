"""Analytic infinite-width kernels against closed forms, Gaussian Monte Carlo and each other."""

import json
import math
from pathlib import Path

import pytest
import torch

from ntklib import infinite_width_kernels, infinite_width_kernels_by_depth
from conftest import randn

F64 = torch.float64
# Kernels computed in a different order (row blocks, one recursion for all depths) agree to a few
# ulps of their O(1) entries in float64, not bit for bit.
ULPS = dict(rtol=1e-14, atol=1e-15)

ACTIVATION_FUNCTIONS = {
    "relu": torch.relu,
    "erf": torch.special.erf,
    "identity": lambda u: u,
    "abs": torch.abs,
    "leaky_relu": lambda u: torch.nn.functional.leaky_relu(u, 0.2),
}
DERIVATIVES = {
    "relu": lambda u: (u > 0).to(u.dtype),
    "erf": lambda u: 2 / math.sqrt(math.pi) * torch.exp(-u * u),
    "identity": torch.ones_like,
    "abs": torch.sign,
    "leaky_relu": lambda u: torch.where(u > 0, 1.0, 0.2).to(u.dtype),
}


@pytest.mark.parametrize("activation", sorted(ACTIVATION_FUNCTIONS))
def test_dual_maps_match_gaussian_monte_carlo(activation):
    """E[phi(u) phi(v)] and E[phi'(u) phi'(v)] over (u, v) ~ N(0, C), by 400,000 samples with
    antithetic pairs. Both integrands have variance below ~10 here, so 6 standard errors are
    below 6 * sqrt(10 / 4e5) ~ 0.03.

    The dual maps are read through the public API: two inputs x, z in d = 2 with x.z/d = C_xz
    (and likewise on the diagonal) give Sigma^(1) = C for one hidden layer with W_std = 1,
    b_std = 0; then Sigma^(2)(x, z) = E[phi(u) phi(v)] and Theta^(2)(x, z) - Sigma^(2)(x, z) =
    E[phi'(u) phi'(v)] C_xz (so the derivative's dual is not seen when C_xz = 0)."""
    gen = torch.Generator().manual_seed(0)
    for s_xx, s_zz, s_xz in [(1.0, 1.0, 0.3), (2.0, 0.5, -0.8), (1.5, 1.5, 1.49), (0.7, 1.2, 0.0)]:
        L = torch.linalg.cholesky(torch.tensor([[s_xx, s_xz], [s_xz, s_zz]], dtype=torch.float64))
        g = torch.randn(200_000, 2, generator=gen, dtype=torch.float64)
        uv = torch.cat([g, -g]) @ L.T
        u, v = uv[:, 0], uv[:, 1]
        phi, dphi = ACTIVATION_FUNCTIONS[activation], DERIVATIVES[activation]
        expected = (phi(u) * phi(v)).mean(), (dphi(u) * dphi(v)).mean()
        inputs = math.sqrt(2.0) * L  # rows x, z with x.z / 2 = C
        k = infinite_width_kernels(inputs, depth=1, activation=activation, negative_slope=0.2)
        assert float(k.nngp[0, 1]) == pytest.approx(float(expected[0]), abs=0.03)
        if s_xz != 0.0:
            derivative = float(k.ntk[0, 1] - k.nngp[0, 1]) / s_xz
            assert derivative == pytest.approx(float(expected[1]), abs=0.03)


def test_one_hidden_layer_relu_matches_the_arc_cosine_formula(device, rng):
    """K(x, z) = |x||z|/d J(t) with the Cho & Saul form J = (sin t + (pi - t) cos t)/(2 pi) and
    NTK = NNGP + (x.z/d)(pi - t)/(2 pi), for W_std = 1, b_std = 0."""
    X = randn(7, 4, generator=rng, device=device)
    Z = randn(5, 4, generator=rng, device=device)
    k = infinite_width_kernels(X, Z, depth=1, activation="relu")
    dot = (X @ Z.T).cpu() / 4
    norms = X.norm(dim=1).cpu()[:, None] * Z.norm(dim=1).cpu()[None, :] / 4
    t = torch.arccos(dot / norms)
    nngp = norms * (torch.sin(t) + (math.pi - t) * torch.cos(t)) / (2 * math.pi)
    torch.testing.assert_close(k.nngp.cpu(), nngp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k.ntk.cpu(), nngp + dot * (math.pi - t) / (2 * math.pi), rtol=1e-12, atol=1e-12)
    assert k.nngp.device.type == device.type and k.ntk.dtype == torch.float64


def test_one_hidden_layer_erf_matches_the_arcsine_formula(rng):
    X = randn(6, 3, generator=rng, device="cpu")
    W_std, b_std = 1.3, 0.4
    k = infinite_width_kernels(X, depth=1, activation="erf", W_std=W_std, b_std=b_std)
    s = W_std**2 * X @ X.T / 3 + b_std**2  # first Dense
    dxx = s.diagonal()
    prod = (1 + 2 * dxx)[:, None] * (1 + 2 * dxx)[None, :]
    nngp1 = 2 / math.pi * torch.arcsin(2 * s / prod.sqrt())
    derivative = 4 / math.pi / (prod - 4 * s**2).sqrt()
    torch.testing.assert_close(k.nngp, W_std**2 * nngp1 + b_std**2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k.ntk, W_std**2 * (nngp1 + s * derivative) + b_std**2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_deep_linear_network_closed_form(depth, rng):
    """Identity activation, "ntk": Sigma_l = W^2 Sigma_{l-1} + b^2 and Theta_l = W^2(Sigma_{l-1}
    + Theta_{l-1}) + b^2 are linear recursions with depth + 1 Dense layers."""
    X = randn(4, 3, generator=rng, device="cpu")
    W2, b2 = 1.5**2, 0.3**2
    sigma, theta = X @ X.T / 3, torch.zeros(4, 4, dtype=torch.float64)
    for _ in range(depth + 1):
        sigma, theta = W2 * sigma + b2, W2 * (sigma + theta) + b2
    k = infinite_width_kernels(X, depth=depth, activation="identity", W_std=1.5, b_std=0.3)
    torch.testing.assert_close(k.nngp, sigma, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k.ntk, theta, rtol=1e-12, atol=1e-12)


def test_standard_parameterization_of_a_linear_network():
    """One hidden layer, identity, "standard", width w, bias: Theta = d Sigma0 + 1 (first layer)
    then w Sigma1 + W^2 Theta1 + 1 (readout), with Sigma1 = W^2 Sigma0 + b^2."""
    X = torch.tensor([[1.0, 2.0], [-0.5, 0.3]], dtype=torch.float64)
    W2, b2, w = 2.0, 0.25, 100
    sigma0 = X @ X.T / 2
    theta1 = 2 * sigma0 + 1
    sigma1 = W2 * sigma0 + b2
    k = infinite_width_kernels(X, depth=1, activation="identity", W_std=math.sqrt(W2), b_std=0.5,
                               parameterization="standard", width=w)
    torch.testing.assert_close(k.ntk, w * sigma1 + W2 * theta1 + 1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k.nngp, W2 * sigma1 + b2, rtol=1e-12, atol=1e-12)
    no_bias = infinite_width_kernels(X, depth=1, activation="identity", W_std=math.sqrt(W2), b_std=None,
                                     parameterization="standard", width=w)
    torch.testing.assert_close(no_bias.ntk, w * W2 * sigma0 + W2 * 2 * sigma0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "erf", "abs", "leaky_relu"])
def test_row_blocks_do_not_change_the_result(activation, rng):
    X = randn(9, 3, generator=rng, device="cpu")
    Z = randn(4, 3, generator=rng, device="cpu")
    whole = infinite_width_kernels(X, Z, depth=3, activation=activation, b_std=0.2)
    blocks = infinite_width_kernels(X, Z, depth=3, activation=activation, b_std=0.2, block_size=2)
    # Same formulas, but BLAS may round X_B @ Z^T differently for different block shapes (~1e-16
    # here): a few ulps of the O(1) entries, far below any real difference.
    torch.testing.assert_close(whole.nngp, blocks.nngp, **ULPS)
    torch.testing.assert_close(whole.ntk, blocks.ntk, **ULPS)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("pair", ["X", "XZ"])
def test_by_depth_equals_one_call_per_depth(parameterization, pair, rng):
    """One recursion with a readout after every layer does the same arithmetic as separate calls."""
    X = randn(7, 3, generator=rng, device="cpu")
    Z = randn(5, 3, generator=rng, device="cpu") if pair == "XZ" else None
    options = dict(activation="relu", W_std=1.4, b_std=0.3, parameterization=parameterization, width=16)
    by_depth = infinite_width_kernels_by_depth(X, Z, max_depth=4, block_size=3, **options)
    assert len(by_depth) == 4
    for depth, kernels in enumerate(by_depth, start=1):
        alone = infinite_width_kernels(X, Z, depth=depth, **options)
        torch.testing.assert_close(kernels.nngp, alone.nngp, **ULPS)
        torch.testing.assert_close(kernels.ntk, alone.ntk, **ULPS)
    with pytest.raises(ValueError, match="max_depth must be >= 1"):
        infinite_width_kernels_by_depth(X, max_depth=0)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        infinite_width_kernels_by_depth(X, block_size=0)


def relu_diagonal_closed_form(sq_norm: float, d: int, depth: int, W_std: float, b_std: float) -> tuple[float, float]:
    """Sigma^(L+1)(x, x) and Theta^(L+1)(x, x) of a ReLU network with L = depth hidden layers.

    At x = z the ReLU dual maps are E[relu(u)^2] = q/2 and E[relu'(u)^2] = 1/2, so with
    a = W_std^2 / 2, q_1 = W_std^2 |x|^2 / d + b_std^2 and q_{l+1} = a q_l + b_std^2:
        q_l = a^(l-1) q_1 + b_std^2 (1 - a^(l-1)) / (1 - a)        (q_1 + (l - 1) b_std^2 if a = 1),
        Theta^(L+1) = sum_{j=1}^{L+1} a^(L+1-j) q_j
                    = (L+1) a^L q_1 + b_std^2 / (1 - a) [(1 - a^(L+1)) / (1 - a) - (L+1) a^L]
                    (= (L+1) q_1 + b_std^2 L (L+1) / 2 if a = 1).
    """
    a, b2, L = W_std**2 / 2, b_std**2, depth
    q1 = W_std**2 * sq_norm / d + b2
    if math.isclose(a, 1.0, rel_tol=1e-12):  # W_std = sqrt(2): the geometric sums are plain sums
        return q1 + L * b2, (L + 1) * q1 + b2 * L * (L + 1) / 2
    nngp = a**L * q1 + b2 * (1 - a**L) / (1 - a)
    ntk = (L + 1) * a**L * q1 + b2 / (1 - a) * ((1 - a ** (L + 1)) / (1 - a) - (L + 1) * a**L)
    return nngp, ntk


@pytest.mark.parametrize("W_std, b_std", [(1.0, 0.1), (math.sqrt(2.0), 0.5), (1.7, 0.3)])
def test_symmetric_psd_and_the_closed_form_diagonal(W_std, b_std, rng):
    X = randn(12, 5, generator=rng, device="cpu")
    k = infinite_width_kernels(X, depth=3, activation="relu", W_std=W_std, b_std=b_std)
    for K in k:
        torch.testing.assert_close(K, K.T, rtol=0, atol=1e-14)
        assert torch.linalg.eigvalsh(K).min() > -1e-12
    # The self kernel's diagonal against the closed form of the ReLU recursion at x = z.
    expected = [relu_diagonal_closed_form(float(x @ x), 5, 3, W_std, b_std) for x in X]
    torch.testing.assert_close(k.nngp.diagonal(), torch.tensor([e[0] for e in expected], dtype=F64), rtol=1e-13, atol=0)
    torch.testing.assert_close(k.ntk.diagonal(), torch.tensor([e[1] for e in expected], dtype=F64), rtol=1e-13, atol=0)
    # The cross kernel's rows agree with the self kernel's. Near-duplicate pairs lose digits:
    # arccos(1 - e) ~ sqrt(2 e), so a last-bit difference in x.x moves the NTK by ~1e-8.
    cross = infinite_width_kernels(X[:3], X, depth=3, activation="relu", W_std=W_std, b_std=b_std)
    torch.testing.assert_close(cross.ntk, k.ntk[:3], rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "erf", "abs", "leaky_relu", "identity"])
def test_float32_has_no_nan_for_duplicates_and_zero_vectors(activation):
    X = torch.tensor([[0.0, 0.0], [1.0, 2.0], [1.0, 2.0], [1e-20, 0.0], [-3.0, 10.0]], dtype=torch.float32)
    for b_std in (0.0, 0.5):
        for scale in (1e-30, 1.0, 1e3):
            k = infinite_width_kernels(X * scale, depth=4, activation=activation, b_std=b_std)
            assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
        k = infinite_width_kernels(X, depth=4, activation=activation, b_std=b_std)
        k64 = infinite_width_kernels(X.double(), depth=4, activation=activation, b_std=b_std)
        torch.testing.assert_close(k.ntk.double(), k64.ntk, rtol=1e-4, atol=1e-5)


def test_errors():
    X = torch.ones(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown activation 'tanh'; expected one of: abs, erf, gelu, identity, leaky_relu, relu"):
        infinite_width_kernels(X, activation="tanh")
    with pytest.raises(ValueError, match="unknown parameterization 'ntp'"):
        infinite_width_kernels(X, parameterization="ntp")
    with pytest.raises(ValueError, match="the maximal update parameterisation has no fixed infinite-width kernels"):
        infinite_width_kernels(X, parameterization="mup")
    with pytest.raises(ValueError, match="depth must be >= 1"):
        infinite_width_kernels(X, depth=0)
    with pytest.raises(ValueError, match="width is required"):
        infinite_width_kernels(X, parameterization="standard")
    with pytest.raises(ValueError, match="width must be >= 1"):
        infinite_width_kernels(X, parameterization="standard", width=0)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        infinite_width_kernels(X, torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="W_std must be >= 0"):
        infinite_width_kernels(X, W_std=-0.5)


REFERENCE = json.loads((Path(__file__).parent / "data" / "neural_tangents_reference.json").read_text())


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: "{activation}-d{depth}-W{W_std}-b{b_std}-{parameterization}-{pair}".format(**c))
def test_matches_neural_tangents(case):
    """Numbers computed by neural-tangents 0.6.5 in float64 (tests/data/make_neural_tangents_reference.py)."""
    X = torch.tensor(REFERENCE["X"], dtype=torch.float64)
    Z = torch.tensor(REFERENCE["Z"], dtype=torch.float64) if case["pair"] == "XZ" else None
    k = infinite_width_kernels(
        X, Z, depth=case["depth"], activation=case["activation"], W_std=case["W_std"], b_std=case["b_std"],
        parameterization=case["parameterization"], width=case["width"], negative_slope=case["negative_slope"],
    )
    for ours, name in ((k.nngp, "nngp"), (k.ntk, "ntk")):
        reference = torch.tensor(case[name], dtype=torch.float64)
        atol = 1e-12 * float(reference.abs().max())
        if Z is None:
            # On the self-kernel's diagonal neural-tangents takes the cosine from x.x, whose last
            # bit can put it just below 1, and arccos(1 - e) ~ sqrt(2 e) turns that into ~1e-8;
            # ours uses cosine 1 there (exactness checked in test_relu_diagonal_is_exact).
            off = ~torch.eye(len(X), dtype=torch.bool)
            torch.testing.assert_close(ours[off], reference[off], rtol=1e-10, atol=atol)
            torch.testing.assert_close(ours.diagonal(), reference.diagonal(), rtol=1e-7, atol=atol)
        else:
            torch.testing.assert_close(ours, reference, rtol=1e-10, atol=atol)


def test_relu_diagonal_is_exact():
    """At x = z the angle is 0, so ReLU halves Sigma and its derivative term is exactly 1/2:
    a scalar recursion in Python floats."""
    X = torch.tensor([[0.3, -1.2, 2.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    W2, b2, depth = 1.7**2, 0.1**2, 4
    k = infinite_width_kernels(X, depth=depth, W_std=1.7, b_std=0.1)
    for i, x in enumerate(X.tolist()):
        sigma, theta = sum(v * v for v in x) / 3, 0.0
        for _ in range(depth):
            sigma, theta = W2 * sigma + b2, W2 * (sigma + theta) + b2
            sigma, theta = sigma / 2, theta / 2
        sigma, theta = W2 * sigma + b2, W2 * (sigma + theta) + b2
        assert float(k.nngp[i, i]) == pytest.approx(sigma, rel=1e-14)
        assert float(k.ntk[i, i]) == pytest.approx(theta, rel=1e-14)
